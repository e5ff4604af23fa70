"""Attributes: post-processing, description files, the attributes file, the cache and the command."""

from __future__ import annotations

import json
import threading

import pytest

from stzsar.attributes import (
    AttributeCache,
    AttributeFileError,
    DescriptionError,
    Extraction,
    Extractor,
    extract_attributes,
    load_attributes,
    match_descriptions,
    normalize_keyword,
    postprocess_keywords,
    read_attributes_file,
    read_descriptions,
)
from stzsar.attributes.compare import measure
from stzsar.attributes.postprocess import light_stem
from stzsar.classes import read_class_list

# ------------------------------------------------------------------------------------------
# post-processing


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("1. Jump Rope", "jump rope"),
        ("2) \"Feet\"", "feet"),
        ("(3) rope.", "rope"),
        ("- the ball", "ball"),
        ("* **Brass instruments**,", "brass instruments"),
        ("• person’s hair", "person hair"),
        ("a", ""),
        ("of the", ""),
        ("  Rope / Handle ", "rope handle"),
        ("7.", ""),
    ],
)
def test_normalize_keyword(raw, clean):
    assert normalize_keyword(raw) == clean


@pytest.mark.parametrize(
    "forms",
    [("band", "bands"), ("march", "marching", "marches"), ("dive", "dives", "diving"), ("run", "running", "runs"),
     ("body", "bodies"), ("swing", "swinging"), ("clap", "clapping", "clapped"), ("glass", "glasses"),
     ("ski", "skis", "skiing")],
)
def test_light_stem_merges_inflections(forms):
    assert len({light_stem(f) for f in forms}) == 1, {f: light_stem(f) for f in forms}


@pytest.mark.parametrize("a, b", [("bus", "bu"), ("tennis", "tenni"), ("string", "str"), ("bed", "b"), ("ring", "r")])
def test_light_stem_leaves_short_words_alone(a, b):
    assert light_stem(a) != light_stem(b)
    assert light_stem(a).startswith(b[:2])


def test_postprocess_dedups_drops_name_words_and_truncates():
    raw = ["1. Marching Bands", "2) brass", "- Uniforms", "* uniform", "the band", "percussion instruments",
           "instruments", "Music.", "of the", "", "Brass", "parade", "street", "drums", "crowd", "flags"]
    out = postprocess_keywords(raw, 8, "BandMarching")
    # "marching bands" and "the band" are only name words; "uniform", "instruments", "Brass" repeat earlier ones
    assert out == ["brass", "uniforms", "percussion instruments", "music", "parade", "street", "drums", "crowd"]
    kept = postprocess_keywords(raw, None, "BandMarching", drop_name_words=False)
    assert kept[:3] == ["marching bands", "brass", "uniforms"]
    assert "band" not in kept  # sub-phrase of "marching bands"
    assert postprocess_keywords(raw, 3) == ["marching bands", "brass", "uniforms"]
    spelled = ["handstand push-up", "push-up", "inverted push-up", "hand stand", "yo-yo"]
    assert postprocess_keywords(spelled, 8, "HandstandPushups") == ["inverted push-up", "yo-yo"]
    assert postprocess_keywords(["yo-yos", "yoyo", "string"], 8, "YoYo") == ["string"]


# ------------------------------------------------------------------------------------------
# descriptions


def test_er_zsar_descriptions_match_the_ucf101_class_list(shared_data):
    classes = read_class_list(shared_data / "lists/ucf101/ucf_labels.csv")
    descriptions = read_descriptions(shared_data / "descriptions/ucf101_label_defn.json")
    assert len(descriptions) == 101
    matched = match_descriptions(classes, descriptions)
    assert matched.missing == [] and matched.unused == []
    got = matched.as_dict()
    # the ER-ZSAR file is in another order than BIKE's list, and spells some names differently
    assert got["HandstandPushups"] == descriptions["hand stand pushups"]
    assert got["Hammering"] == descriptions["hammering"] and got["HammerThrow"] == descriptions["hammer throw"]
    assert got["ApplyEyeMakeup"].startswith("put or spread (a substance) on a surface.")


def test_er_zsar_descriptions_match_the_hmdb51_class_list(shared_data):
    classes = read_class_list(shared_data / "lists/hmdb51/hmdb51_labels.csv")
    matched = match_descriptions(classes, read_descriptions(shared_data / "descriptions/hmdb51_label_defn.json"))
    assert matched.missing == [] and len(matched.classes) == 51


def test_description_map_formats(tmp_path):
    (tmp_path / "map.json").write_text(json.dumps({"JumpRope": "skip over a rope", "apply_eye_makeup": "paint eyes"}))
    (tmp_path / "map.csv").write_text('class,description\nJumpRope,"skip over a rope, fast"\nYoYo,a toy, with string\n')
    (tmp_path / "list.json").write_text(json.dumps([{"name": "Punch", "description": "strike  with\nthe fist"}]))
    assert read_descriptions(tmp_path / "map.json") == {"JumpRope": "skip over a rope", "apply_eye_makeup": "paint eyes"}
    assert read_descriptions(tmp_path / "map.csv") == {"JumpRope": "skip over a rope, fast", "YoYo": "a toy, with string"}
    assert read_descriptions(tmp_path / "list.json") == {"Punch": "strike with the fist"}
    matched = match_descriptions(
        ["ApplyEyeMakeup", "jump rope", "Swing"], read_descriptions(tmp_path / "map.json")
    )
    assert matched.descriptions == ["paint eyes", "skip over a rope", None]
    assert matched.missing == ["Swing"]


@pytest.mark.parametrize(
    "content, message",
    [
        ("[1, 2]", "item 0"),
        ('[{"word": "jump"}]', "no 'defn'"),
        ('{"jump": 3}', "must be a string"),
        ('[{"word": "a", "defn": "x"}, {"word": "a", "defn": "y"}]', "two descriptions"),
        ("{oops", "invalid JSON"),
    ],
)
def test_bad_description_files_say_where(tmp_path, content, message):
    path = tmp_path / "d.json"
    path.write_text(content)
    with pytest.raises(DescriptionError, match=message) as error:
        read_descriptions(path)
    assert str(path) in str(error.value)


# ------------------------------------------------------------------------------------------
# extraction with a scripted extractor: cache, file, missing descriptions


class ScriptedExtractor(Extractor):
    """Returns a fixed list per class and counts calls (the pipeline around an extractor)."""

    name = "scripted"
    model = "none"

    def __init__(self, answers, concurrency=1):
        self.answers = answers
        self.concurrency = concurrency
        self.calls = []
        self.lock = threading.Lock()

    @property
    def prompt(self):
        return "scripted v1"

    def extract(self, class_name, text):
        with self.lock:
            self.calls.append((class_name, text))
        return Extraction(keywords=list(self.answers[class_name]))


ANSWERS = {
    "JumpRope": ["Rope", "jumping", "feet", "ropes", "rhythm", "skipping", "handles", "gym", "sneakers", "count"],
    "Punch": ["fist", "fists", "boxing", "gloves", "bag", "punches"],
}


@pytest.mark.parametrize("concurrency", [1, 3])
def test_pipeline_with_cache_and_file(tmp_path, caplog, concurrency):
    cache = tmp_path / "cache.json"
    extractor = ScriptedExtractor(ANSWERS, concurrency)
    with caplog.at_level("WARNING"):
        result = extract_attributes(["JumpRope", "Punch"], {"jump rope": "skip over a rope"}, extractor,
                                    num=4, cache=cache, progress=False, source="d.json")
    assert result.attributes == {"JumpRope": ["feet", "rhythm", "skipping", "handles"],
                                 "Punch": ["fist", "boxing", "gloves", "bag"]}
    # the class with no description is named in the log and gets its name as the text
    assert "Punch" in caplog.text and result.missing == ["Punch"]
    assert sorted(extractor.calls) == [("JumpRope", "skip over a rope"), ("Punch", "punch")]
    path = result.save(tmp_path / "attributes.json")
    data = json.loads(path.read_text())
    assert data["header"]["extractor"] == "scripted" and data["header"]["num"] == 4
    assert data["header"]["missing_descriptions"] == ["Punch"]
    assert list(data["attributes"]) == ["JumpRope", "Punch"]
    # one class a line: easy to edit by hand
    assert '    "JumpRope": ["feet", "rhythm", "skipping", "handles"],' in path.read_text()

    again = ScriptedExtractor(ANSWERS, concurrency)
    second = extract_attributes(["JumpRope", "Punch"], {"jump rope": "skip over a rope"}, again,
                                num=4, cache=cache, progress=False, source="d.json")
    assert again.calls == [] and second.requests == 0
    assert second.save(tmp_path / "again.json").read_bytes() == path.read_bytes()

    # another description is another cache key: extracted again
    third = ScriptedExtractor(ANSWERS)
    extract_attributes(["JumpRope"], {"jump rope": "a different text"}, third, num=4, cache=cache, progress=False)
    assert third.calls == [("JumpRope", "a different text")]


class RankedExtractor(ScriptedExtractor):
    """A scripted extractor that, like the offline ones, asks for the distinctive re-ranking."""

    name = "ranked"
    distinctive = True


# Every class's extractor ranks the shared "frame" first; "ball" is shared by two of the three.
SHARED = {
    "vorpel": ["frame", "ball", "red", "left", "trail"],
    "glimmer": ["frame", "ball", "blue", "right", "halo"],
    "quorn": ["frame", "bar", "green", "spin"],  # exactly Na = 4 candidates, "frame" included
}


def test_distinctive_words_beat_shared_ones_and_no_class_loses_attributes():
    result = extract_attributes(list(SHARED), None, RankedExtractor(SHARED), num=4, progress=False)
    assert result.header["distinctive"] is True
    # a word every class uses loses to any word that tells the class apart ...
    assert "frame" not in result.attributes["vorpel"] and "frame" not in result.attributes["glimmer"]
    # ... but a class with no more candidates than Na keeps it: nobody drops below Na
    assert sorted(result.attributes["quorn"]) == ["bar", "frame", "green", "spin"]
    assert result.attributes["quorn"][-1] == "frame" and result.short == []
    # by hand: N = 3; "ball" (2 classes, rank 1) scores log(3/2)/2 = 0.20, "red" (1 class, rank 2)
    # log(3)/3 = 0.37, "left" log(3)/4 = 0.27, "trail" log(3)/5 = 0.22
    assert result.attributes["vorpel"] == ["red", "left", "trail", "ball"]
    # switched off: the extractor's order
    plain = extract_attributes(list(SHARED), None, RankedExtractor(SHARED), num=4, progress=False, distinctive=False)
    assert plain.attributes["vorpel"] == ["frame", "ball", "red", "left"] and plain.header["distinctive"] is False


def test_extractors_that_rank_per_description_are_re_ranked_by_default():
    from stzsar.attributes import make_offline_extractor

    assert all(make_offline_extractor(name).distinctive for name in ("yake", "rake"))
    descriptions = {  # the synthetic demo's style: every description says "across the empty frame"
        "vorpel": "A red ball slides left across the empty frame, leaving a fading trail on the wooden floor.",
        "glimmer": "A blue ball slides right across the empty frame, a glowing halo around the bright ball.",
        "quorn": "A green bar spins round across the empty frame; a propeller blade turning fast.",
    }
    plain = extract_attributes(list(descriptions), descriptions, make_offline_extractor("rake"), num=4,
                               progress=False, distinctive=False)
    assert all("empty frame" in k for k in plain.attributes.values()), plain.attributes  # RAKE's own order
    result = extract_attributes(list(descriptions), descriptions, make_offline_extractor("rake"), num=4, progress=False)
    assert not any("empty frame" in k for k in result.attributes.values()), result.attributes
    assert all(len(k) == 4 for k in result.attributes.values())


def test_cache_file_is_valid_after_every_write(tmp_path):
    path = tmp_path / "c.json"
    cache = AttributeCache(path)
    for i in range(5):
        cache.put(f"k{i}", Extraction([f"w{i}"], raw=f"raw {i}"))
        assert len(AttributeCache(path)) == i + 1  # a fresh reader sees every entry so far
    assert AttributeCache(path).get("k3").keywords == ["w3"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    path.write_text('{"something": "else"}')
    with pytest.raises(ValueError, match="not an stzsar attribute cache"):
        AttributeCache(path)


def test_load_attributes_formats_and_errors(tmp_path):
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"JumpRope": ["rope", " feet "], "Punch": "fist, boxing gloves"}))
    assert load_attributes(plain) == {"JumpRope": ["rope", "feet"], "Punch": ["fist", "boxing gloves"]}
    with_header = tmp_path / "h.json"
    with_header.write_text(json.dumps({"header": {"num": 2}, "attributes": {"JumpRope": ["rope"]}}))
    assert read_attributes_file(with_header) == ({"JumpRope": ["rope"]}, {"num": 2})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"JumpRope": [1, 2]}))
    with pytest.raises(AttributeFileError, match="JumpRope"):
        load_attributes(bad)
    bad.write_text(json.dumps({"JumpRope": ["a"], "jump_rope": ["b"]}))
    with pytest.raises(AttributeFileError, match="same class"):
        load_attributes(bad)
    with pytest.raises(FileNotFoundError):
        load_attributes(tmp_path / "nope.json")


def test_measure_counts_by_hand():
    attributes = {"a": ["rope", "feet", "sport"], "b": ["sport", "glove"], "c": ["sports", "ball"], "d": ["sport"]}
    descriptions = {"a": "a rope under the feet", "b": "a sport with a glove", "c": "ball games", "d": ""}
    m = measure(attributes, descriptions, num=2, shared_by=3)
    assert m["full"] == pytest.approx(3 / 4)
    assert m["mean"] == pytest.approx(8 / 4)
    # grounded: rope, feet (a), sport, glove (b), ball (c) = 5 of 8
    assert m["grounded"] == pytest.approx(5 / 8)
    # "sport" is in 4 lists (a, b, c as "sports", d): each of its 4 uses has 3 other owners
    assert m["shared"] == pytest.approx(4 / 8)


# ------------------------------------------------------------------------------------------
# the command (rake: offline, no model to load)


def test_command_end_to_end(tmp_path, capsys, shared_data):
    from stzsar.cli.main import main

    out = tmp_path / "hmdb_attributes.json"
    args = ["attributes", "--classes", str(shared_data / "lists/hmdb51/hmdb51_labels.csv"),
            "--descriptions", str(shared_data / "descriptions/hmdb51_label_defn.json"),
            "--out", str(out), "--extractor", "rake", "--num", "5", "--show", "--quiet"]
    assert main(args) == 0
    first = out.read_bytes()
    shown = capsys.readouterr().out.splitlines()
    assert len(shown) == 51
    line = next(s for s in shown if s.startswith("brush hair "))
    assert "/77  This is a video about brush hair, " in line
    attributes = load_attributes(out)
    assert len(attributes) == 51 and all(1 <= len(v) <= 5 for v in attributes.values())
    assert (tmp_path / "hmdb_attributes.cache.json").is_file()
    assert main(args[:-2] + ["--quiet"]) == 0  # rerun from the cache: same file
    assert out.read_bytes() == first
    assert main(["attributes", "--classes", args[2], "--out", str(out), "--show-only"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 51


def test_command_errors(tmp_path, capsys, monkeypatch):
    from stzsar.cli.main import main

    classes = tmp_path / "classes.txt"
    classes.write_text("JumpRope\nPunch\n")
    assert main(["attributes", "--classes", str(tmp_path / "none.txt"), "--out", str(tmp_path / "o.json")]) == 2
    assert "class list not found" in capsys.readouterr().err
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert main(["attributes", "--classes", str(classes), "--out", str(tmp_path / "o.json"), "--llm-model", "m"]) == 2
    assert "OPENAI_API_KEY" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()
