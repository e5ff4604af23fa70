"""The LLM extractor through the real ``openai`` client against a local OpenAI-compatible server.

The server (http.server in a thread, on 127.0.0.1) answers per class from a script: answers in
several list styles, a 429 then success, a 500 then success, a malformed body, an answer slower
than the client's timeout. Expected keywords are written by hand from the canned answers.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("openai", reason="the openai client is not installed")

from stzsar.attributes import (  # noqa: E402
    AttributeCache,
    ExtractionError,
    LLMConfigError,
    LLMExtractor,
    extract_attributes,
    load_attributes,
    parse_keyword_list,
)


def _completion(content):
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": "test-model",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


OK, STATUS, RAW, SLOW = "ok", "status", "raw", "slow"

ANSWERS = {
    "numbered": "1. Eyeliner\n2. Mascara\n3. Brushes\n4. Mirror\n5. Eyes\n6. Cosmetics\n7. Applying\n8. Face\n9. Lipstick\n10. Brush",
    "bullets": "Here are the keywords:\n- Brass instruments\n- Uniforms\n* Drums\n• Parade\n- Street\n- Marching\n- Uniform\n- Formation\n- Musicians",
    "comma": "cliff, jump, water, height, sea, rocks, diver, splash, plunge",
    "chatter": (
        'Sure! Based on the description, the keywords are: "drum", "sticks", "rhythm", '
        '"percussion", "beat", "drummer", "drum kit", "music", "hands".\nI hope this helps!'
    ),
    "json": 'Keywords: ["string", "toy", "spin", "Hand", "Wrist", "yo-yos", "trick", "disc", "spinning"]',
    "markdown": (
        "**Keywords:**\n1. **Fist** - the closed hand\n2. **Boxing gloves**\n3) Punching bag: a heavy bag\n"
        "4. Strike\n5. Opponent (a person)\n6. Jab\n7. Ring\n8. Arm\n9. Fists"
    ),
}

# Expected attributes (num=8, class-name words dropped), written from the answers above.
EXPECTED = {
    "ApplyEyeMakeup": ["eyeliner", "mascara", "brushes", "mirror", "cosmetics", "face", "lipstick"],
    "BandMarching": ["brass instruments", "uniforms", "drums", "parade", "street", "formation", "musicians"],
    "CliffDiving": ["jump", "water", "height", "sea", "rocks", "diver", "splash", "plunge"],
    "Drumming": ["sticks", "rhythm", "percussion", "beat", "drummer", "drum kit", "music", "hands"],
    "YoYo": ["string", "toy", "spin", "hand", "wrist", "trick", "disc"],
    "Punch": ["fist", "boxing gloves", "punching bag", "strike", "opponent", "jab", "ring", "arm"],
}

SCRIPTS = {
    "apply eye makeup": [(OK, "numbered")],
    "band marching": [(OK, "bullets")],
    "cliff diving": [(STATUS, 429), (OK, "comma")],
    "drumming": [(STATUS, 500), (OK, "chatter")],
    "yo yo": [(RAW, "this is not json"), (OK, "json")],
    "punch": [(SLOW, 1.5), (OK, "markdown")],
}
CLASSES = list(EXPECTED)


class FakeServer:
    """A tiny OpenAI-compatible chat-completions server; counts requests per class."""

    def __init__(self, scripts, key="test-key"):
        self.scripts = {k: list(v) for k, v in scripts.items()}
        self.key = key
        self.requests = []  # (class name, parsed body)
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def _send(self, code, body, content_type="application/json"):
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                if code == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                if not self.path.endswith("/chat/completions"):
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                if self.headers.get("Authorization") != f"Bearer {server.key}":
                    return self._send(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}})
                user = body["messages"][-1]["content"]
                name = re.search(r'the action "([^"]+)"', user).group(1)
                with server.lock:
                    server.requests.append((name, body))
                    script = server.scripts[name]
                    step = script.pop(0) if len(script) > 1 else script[0]
                kind, value = step
                if kind == OK:
                    return self._send(200, _completion(ANSWERS[value]))
                if kind == STATUS:
                    return self._send(value, {"error": {"message": f"scripted {value}", "type": "server_error"}})
                if kind == RAW:
                    return self._send(200, value, "application/json")
                if kind == SLOW:
                    time.sleep(value)
                    return self._send(200, _completion(ANSWERS["comma"]))
                raise AssertionError(step)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def count(self, name=None):
        with self.lock:
            return sum(1 for n, _ in self.requests if name is None or n == name)


def _extractor(url, **kw):
    options = dict(model="test-model", base_url=url, api_key="test-key", timeout=0.5,
                   max_retries=3, backoff=0.01, max_backoff=0.05, concurrency=3)
    options.update(kw)
    return LLMExtractor(**options)


def test_llm_pipeline_retries_caches_and_reproduces(tmp_path):
    cache_path = tmp_path / "cache.json"
    with FakeServer(SCRIPTS) as server:
        extractor = _extractor(server.url)
        first = extract_attributes(CLASSES, None, extractor, num=8, cache=cache_path, progress=False)
        assert first.attributes == EXPECTED
        # one request per class, one more for each scripted failure (429, 500, malformed, slow)
        assert server.count() == len(CLASSES) + 4
        for name in ("cliff diving", "drumming", "yo yo", "punch"):
            assert server.count(name) == 2, name
        assert extractor.retries == 4
        # the request carries the paper's sampling settings and the model name
        for _, body in server.requests:
            assert body["model"] == "test-model"
            assert body["temperature"] == pytest.approx(0.7)
            assert body["max_tokens"] == 256
            assert "5-10 essential keywords" in body["messages"][-1]["content"]
            assert "objects, motions and context" in body["messages"][-1]["content"]
        out1 = first.save(tmp_path / "a.json")

        # A rerun with the cache makes zero requests and writes the identical file.
        before = server.count()
        second = extract_attributes(CLASSES, None, _extractor(server.url), num=8, cache=cache_path, progress=False)
        assert server.count() == before
        assert second.requests == 0
        out2 = second.save(tmp_path / "b.json")
        assert out1.read_bytes() == out2.read_bytes()
    header = json.loads(out1.read_text())["header"]
    assert header["extractor"] == "llm" and header["model"] == "test-model" and header["num"] == 8
    assert "5-10 essential keywords" in header["prompt"]
    assert load_attributes(out1) == EXPECTED
    assert sorted(first.short) == ["ApplyEyeMakeup", "BandMarching", "YoYo"]


def test_interrupted_run_resumes_without_refetching(tmp_path):
    cache_path = tmp_path / "cache.json"
    scripts = dict(SCRIPTS, punch=[(STATUS, 503)])  # punch keeps failing
    with FakeServer(scripts) as server:
        with pytest.raises(ExtractionError, match="Punch"):
            extract_attributes(CLASSES, None, _extractor(server.url, max_retries=1), cache=cache_path, progress=False)
        assert server.count("punch") == 2  # the try and one retry
    # everything that succeeded was written to the cache before the error
    assert len(AttributeCache(cache_path)) == len(CLASSES) - 1
    with FakeServer(SCRIPTS) as server:
        result = extract_attributes(CLASSES, None, _extractor(server.url), cache=cache_path, progress=False)
        assert [n for n, _ in server.requests] == ["punch", "punch"]  # slow first answer, then ok
    assert result.attributes == EXPECTED


def test_rejected_key_stops_with_a_clear_error(tmp_path):
    with FakeServer(SCRIPTS, key="the-right-key") as server:
        extractor = _extractor(server.url, api_key="wrong-key", concurrency=1)
        with pytest.raises(LLMConfigError, match=r"rejected the API key \(401\).*OPENAI_API_KEY"):
            extract_attributes(CLASSES, None, extractor, cache=tmp_path / "c.json", progress=False)


def test_missing_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(LLMConfigError, match="OPENAI_API_KEY"):
        LLMExtractor(model="gpt-4o-mini")


def test_environment_variables_configure_the_client(monkeypatch, tmp_path):
    with FakeServer({"cliff diving": [(OK, "comma")]}) as server:
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        extractor = LLMExtractor(model="test-model", timeout=5)
        result = extract_attributes(["CliffDiving"], None, extractor, progress=False)
        assert result.attributes["CliffDiving"] == EXPECTED["CliffDiving"]
        assert server.count() == 1


def test_gives_up_after_retries_on_persistent_malformed_answers():
    with FakeServer({"punch": [(RAW, '{"choices": []}')]}) as server:
        with pytest.raises(ExtractionError, match="gave up after 3 tries"):
            extract_attributes(["Punch"], None, _extractor(server.url, max_retries=2), progress=False)
        assert server.count() == 3


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("1. rope\n2. jump\n3) feet\n(4) rhythm", ["rope", "jump", "feet", "rhythm"]),
        ("- rope\n* jump\n• feet", ["rope", "jump", "feet"]),
        ("rope, jump, feet; rhythm", ["rope", "jump", "feet", "rhythm"]),
        ("Here are 3 keywords:\nrope, jump, and feet\nLet me know if you need more!", ["rope", "jump", "feet"]),
        ('["rope", "jump"]', ["rope", "jump"]),
        ("```\nrope, jump\n```", ["rope", "jump"]),
        ("Keywords: rope, jump rope, feet.", ["rope", "jump rope", "feet"]),
        ("1. **Rope** - what they swing\n2. Jump: leaving the ground", ["Rope", "Jump"]),
        ("rope\njump\nfeet", ["rope", "jump", "feet"]),
        ("", []),
        ("I cannot help with that.", []),
    ],
)
def test_parse_keyword_list(answer, expected):
    assert parse_keyword_list(answer) == expected
