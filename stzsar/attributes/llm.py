"""Keyword extraction with a large language model through the official ``openai`` client.

Any OpenAI-compatible chat-completions endpoint works: the hosted API, or a local vLLM, Ollama
or llama.cpp server through ``base_url``. Requests are retried with exponential backoff on rate
limits (429), server errors (5xx), timeouts, dropped connections and answers with no usable
list; a missing or rejected key stops the run with a message that says what to set.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import threading
import time
from typing import List, Optional

from stzsar.attributes.base import Extraction, ExtractionError, Extractor
from stzsar.classes import display_name

logger = logging.getLogger(__name__)

# The paper's prompt, in substance (docs/method.md section 1, step 2).
DEFAULT_SYSTEM = "You are a precise assistant that extracts keywords describing human actions in videos."
DEFAULT_PROMPT = (
    'Extract 5-10 essential keywords from the description below that best describe the action '
    '"{name}", focusing on the objects, motions and context of the action. '
    "Answer with the keywords only, as a comma-separated list.\n\n"
    "Description: {description}"
)
DEFAULT_TEMPERATURE = 0.7
DEFAULT_MAX_TOKENS = 256


class LLMConfigError(ExtractionError):
    """The LLM cannot be used as configured (no key, key rejected, unknown model, bad request)."""


class MalformedAnswer(ValueError):
    """The server's answer held no usable keyword list."""


# ---------------------------------------------------------------------------------------------
# Answer parsing

_FENCE = re.compile(r"```[a-zA-Z]*\n?|```")
_MARKDOWN = re.compile(r"[*_`#]+")
_ITEM = re.compile(r"^\s*(?:\d{1,3}\s*[.):]|\(\d{1,3}\)|[-*•·–—+]|[a-zA-Z][.)])\s+(.*)$")
_LEAD_IN = re.compile(r"^\s*(?:\*\*)?(?:keywords?|key words|attributes?|answer)(?:\*\*)?\s*[:\-]\s*", re.I)
_CHATTER_START = re.compile(
    r"^\s*(?:sure|certainly|of course|here (?:are|is)|these (?:are|keywords)|the (?:keywords|following)|"
    r"i (?:hope|have|extracted|can)|note|let me|okay|ok\b|based on)",
    re.I,
)
# "jump rope - a rope used for ..." / "jump rope: a rope ..." / "jump rope (equipment)": keep the keyword.
_EXPLANATION = re.compile(r"\s+(?:-|–|—)\s+.*$|\s*:\s+.*$|\s*\(.*?\)\s*$")
_MAX_WORDS = 6  # longer "keywords" are sentences, not keywords


def _strip_item(text: str) -> str:
    text = _MARKDOWN.sub("", text).strip()
    text = _EXPLANATION.sub("", text).strip()
    return text.strip(" \t\"'“”‘’.;,")


def _json_list(text: str) -> Optional[List[str]]:
    start, end = text.find("["), text.rfind("]")
    if start < 0 or end <= start:
        return None
    try:
        data = json.loads(text[start : end + 1])
    except json.JSONDecodeError:
        return None
    if isinstance(data, list) and data and all(isinstance(x, str) for x in data):
        return data
    return None


def parse_keyword_list(text: str) -> List[str]:
    """The keywords in an LLM answer, in order, whatever the list style.

    Copes with numbered lists (``1. rope``, ``2) jump``), bullets (``-``, ``*``, ``•``), comma or
    semicolon lists, JSON arrays, quotes, markdown, explanations after the keyword
    (``rope - the thing they jump over``) and chatter around the list (``Here are the keywords:``).
    Returns ``[]`` when nothing looks like a keyword.
    """
    if not isinstance(text, str) or not text.strip():
        return []
    text = _FENCE.sub("\n", text)
    as_json = _json_list(text)
    if as_json is not None:
        return [k for k in (_strip_item(x) for x in as_json) if k]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    items: List[str] = []
    for line in lines:
        match = _ITEM.match(line)
        if match:
            items.append(match.group(1))
    if len(items) < 2:
        # Not a one-per-line list: the comma (or semicolon) list is the line with most separators.
        candidates = []
        for line in lines:
            body = _LEAD_IN.sub("", line)
            if _CHATTER_START.match(body) and body.rstrip().endswith(":"):
                continue
            if ":" in body and not _LEAD_IN.match(line) and _CHATTER_START.match(body):
                body = body.split(":", 1)[1]
            separators = body.count(",") + body.count(";")
            candidates.append((separators, body))
        best = max(candidates, key=lambda c: c[0], default=(0, ""))
        if best[0] > 0:
            items = re.split(r"[;,]", best[1])
        elif not items:
            # One keyword a line with no markers: keep the short lines that are not chatter.
            items = [
                _LEAD_IN.sub("", line) for line in lines
                if not _CHATTER_START.match(line) and not line.rstrip().endswith(":")
            ]
    keywords = []
    for item in items:
        item = re.sub(r"^(?:and|or)\s+", "", _strip_item(item), flags=re.I)
        if item and len(item.split()) <= _MAX_WORDS:
            keywords.append(item)
    return keywords


# ---------------------------------------------------------------------------------------------
# The extractor


class LLMExtractor(Extractor):
    """Extracts keywords with a chat model through the official ``openai`` client.

    Args:
        model: model name on the server (``gpt-4o-mini``, ``llama3.1:8b``...).
        base_url: server URL (default: ``OPENAI_BASE_URL``, else the hosted OpenAI API).
        api_key: default ``OPENAI_API_KEY``. A local server (``base_url`` given) that needs no
            key gets a placeholder; the hosted API without a key is an error.
        prompt: user message template with ``{name}`` and ``{description}``.
        concurrency: requests in flight at once.
        max_retries: retries of one class after the first try (429, 5xx, timeouts, malformed).
        backoff, max_backoff: the n-th retry waits ``min(max_backoff, backoff * 2**n)`` seconds
            (or the server's ``Retry-After``), plus up to 10% jitter.
        timeout: seconds to wait for one answer.
    """

    name = "llm"

    def __init__(
        self,
        model: str,
        base_url: Optional[str] = None,
        api_key: Optional[str] = None,
        prompt: str = DEFAULT_PROMPT,
        system: str = DEFAULT_SYSTEM,
        temperature: float = DEFAULT_TEMPERATURE,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        concurrency: int = 4,
        max_retries: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        timeout: float = 60.0,
    ):
        if not model:
            raise LLMConfigError("the LLM extractor needs a model name (--llm-model)")
        for field_name in ("{name}", "{description}"):
            if field_name not in prompt:
                raise LLMConfigError(f"the LLM prompt template must contain {field_name}: {prompt!r}")
        if concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise ValueError("concurrency must be >= 1, max_retries >= 0 and timeout > 0")
        self.model = model
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            if self.base_url is None:
                raise LLMConfigError(
                    "no OpenAI API key: set the OPENAI_API_KEY environment variable, or point "
                    "--llm-base-url / OPENAI_BASE_URL at a local OpenAI-compatible server; "
                    "without an LLM, leave out --llm-model to use the offline extractor"
                )
            key = "no-key"  # local servers ignore it; the client refuses an empty one
        self._api_key = key
        self.template = prompt
        self.system = system
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.concurrency = int(concurrency)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.timeout = float(timeout)
        self._client = None
        self._client_lock = threading.Lock()
        self._fatal: Optional[BaseException] = None
        #: requests sent and retries made (all threads), for logs and tests.
        self.requests = 0
        self.retries = 0
        self._count_lock = threading.Lock()

    @property
    def prompt(self) -> str:
        # System message, template and sampling settings all change the answer: all key the cache.
        return (
            f"system: {self.system}\nuser: {self.template}\n"
            f"temperature={self.temperature:g} max_tokens={self.max_tokens}"
        )

    def identity(self):
        identity = super().identity()
        if self.base_url:
            identity["base_url"] = self.base_url
        return identity

    def _get_client(self):
        with self._client_lock:
            if self._client is None:
                import openai

                # Retries are ours (with logging and the malformed-answer case), not the client's.
                self._client = openai.OpenAI(
                    api_key=self._api_key, base_url=self.base_url, timeout=self.timeout, max_retries=0
                )
            return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def messages(self, class_name: str, text: str) -> List[dict]:
        user = self.template.format(name=display_name(class_name), description=text)
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]

    def _delay(self, attempt: int, error: Optional[BaseException]) -> float:
        delay = min(self.max_backoff, self.backoff * (2 ** attempt))
        response = getattr(error, "response", None)
        retry_after = None
        if response is not None:
            try:
                retry_after = float(response.headers.get("retry-after"))
            except (TypeError, ValueError):
                retry_after = None
        if retry_after is not None and retry_after >= 0:
            delay = min(self.max_backoff, retry_after)
        return delay * (1.0 + 0.1 * random.random())

    def extract(self, class_name: str, text: str) -> Extraction:
        import openai

        if self._fatal is not None:
            raise LLMConfigError(f"not sent after an earlier fatal error: {self._fatal}")
        client = self._get_client()
        messages = self.messages(class_name, text)
        last_error: Optional[BaseException] = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = self._delay(attempt - 1, last_error)
                with self._count_lock:
                    self.retries += 1
                logger.info("%s: retry %d/%d in %.1fs after %s", class_name, attempt, self.max_retries, delay, last_error)
                time.sleep(delay)
            with self._count_lock:
                self.requests += 1
            try:
                response = client.chat.completions.create(
                    model=self.model,
                    messages=messages,
                    temperature=self.temperature,
                    max_tokens=self.max_tokens,
                )
                answer = _answer_text(response)
                keywords = parse_keyword_list(answer)
                if not keywords:
                    raise MalformedAnswer(f"no keyword list in the answer {answer[:200]!r}")
                return Extraction(keywords=keywords, raw=answer)
            except openai.AuthenticationError as error:
                self._fatal = error
                raise LLMConfigError(
                    f"the server at {self.base_url or 'api.openai.com'} rejected the API key (401): "
                    f"check OPENAI_API_KEY ({_detail(error)})"
                ) from None
            except (openai.PermissionDeniedError, openai.NotFoundError, openai.BadRequestError,
                    openai.UnprocessableEntityError) as error:
                self._fatal = error
                raise LLMConfigError(
                    f"the server refused the request for model {self.model!r} "
                    f"({error.status_code}): {_detail(error)}"
                ) from None
            except (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError,
                    openai.APIConnectionError, openai.APIResponseValidationError) as error:
                last_error = error
            except ValueError as error:
                # MalformedAnswer, or a body that is not JSON / not a chat completion.
                last_error = MalformedAnswer(f"malformed answer: {error}")
            except openai.APIStatusError as error:
                if error.status_code >= 500 or error.status_code in (408, 409, 429):
                    last_error = error
                else:
                    raise ExtractionError(f"{class_name}: request failed ({error.status_code}): {_detail(error)}") from None
        raise ExtractionError(f"{class_name}: gave up after {self.max_retries + 1} tries; last error: {last_error}")


def _detail(error: BaseException) -> str:
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error")
        message = body.get("message") or (inner.get("message") if isinstance(inner, dict) else None)
        if message:
            return str(message)
    return str(error)


def _answer_text(response) -> str:
    """The text of the first choice; a response without one is a malformed answer."""
    try:
        content = response.choices[0].message.content
    except (AttributeError, IndexError, TypeError, KeyError):
        raise MalformedAnswer(f"response without choices[0].message.content: {str(response)[:200]}") from None
    if not isinstance(content, str) or not content.strip():
        raise MalformedAnswer("empty answer")
    return content
