"""Built-in class lists, zero-shot splits and attribute files (stzsar.resources), by name everywhere.

The class lists are checked against the public files in ../shared/data, read here with the csv
and json modules (not the package's readers); the attribute files against the same independent
checks as freshly extracted ones (tests/test_attributes_offline.py); the description fetch
against a local HTTP server that serves the ../shared/data copies.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import http.server
import json
import os
import shutil
import threading
from collections import Counter
from pathlib import Path

import pytest

from stzsar.attributes import load_attributes, read_attributes_file
from stzsar.classes import canonical_name, read_class_list
from stzsar.cli.main import main
from stzsar.resources import RESOURCES, get, resolve_attributes, resolve_class_list
from test_attributes_offline import NUM, check_attributes

REPO = Path(__file__).resolve().parent.parent
NAMES = ["ucf101", "hmdb51", "k400", "k600-added", "k600-split1", "k600-split2", "k600-split3"]
SIZES = {"ucf101": 101, "hmdb51": 51, "k400": 400, "k600-added": 220,
         "k600-split1": 160, "k600-split2": 160, "k600-split3": 160}


def _csv_names(path: Path):
    rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))
    assert rows[0] == ["id", "name"]
    assert [int(r[0]) for r in rows[1:]] == list(range(len(rows) - 1))  # 0-based, in order
    return [r[1] for r in rows[1:]]


def _words(shared_data: Path, name: str):
    return [item["word"] for item in json.loads((shared_data / "descriptions" / name).read_text())]


def test_the_names_and_sizes():
    assert list(RESOURCES) == NAMES
    for name in NAMES:
        assert len(read_class_list(name)) == SIZES[name] and get(name).size == SIZES[name]
        assert resolve_class_list(name).is_file() and resolve_attributes(name).is_file()


def test_class_lists_are_the_public_lists(shared_data):
    lists = shared_data / "lists"
    assert read_class_list("ucf101") == _csv_names(lists / "ucf101/ucf_labels.csv")
    assert read_class_list("hmdb51") == _csv_names(lists / "hmdb51/hmdb51_labels.csv")
    assert read_class_list("k400") == _csv_names(lists / "k400/kinetics_400_labels.csv")
    for n in (1, 2, 3):
        assert read_class_list(f"k600-split{n}") == _csv_names(lists / f"k600/k160_labels_split{n}.csv")


def test_class_lists_agree_with_each_other_and_the_descriptions(shared_data):
    k620 = _words(shared_data, "kinetics620_label_defn.json")
    splits = json.loads((shared_data / "descriptions/kinetics620_zsl_test_class_idxs.json").read_text())
    assert len(k620) == 620 and [len(s) for s in splits] == [160, 160, 160]
    k400, added = read_class_list("k400"), read_class_list("k600-added")
    assert k400 == k620[:400] and added == k620[400:]
    assert not set(k400) & set(added)  # the 220 are new classes
    for n, indices in enumerate(splits, start=1):
        split = read_class_list(f"k600-split{n}")
        assert split == [k620[i] for i in indices]  # ER-ZSAR's index list, in order
        assert all(400 <= i < 620 for i in indices) and set(split) <= set(added)
    covered = set().union(*(read_class_list(f"k600-split{n}") for n in (1, 2, 3)))
    assert len(covered) == 217  # three of the 220 are in no test split
    # the UCF-101 / HMDB-51 descriptions cover their lists (names in another style)
    for name, file in (("ucf101", "ucf101_label_defn.json"), ("hmdb51", "hmdb51_label_defn.json")):
        letters = {canonical_name(w).replace(" ", "") for w in _words(shared_data, file)}
        assert {canonical_name(c).replace(" ", "") for c in read_class_list(name)} == letters


def test_a_file_wins_over_a_name_and_unknown_names_list_the_known(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("ucf101").write_text("only\none\n")
    assert read_class_list("ucf101") == ["only", "one"]
    Path("k400").write_text(json.dumps({"abseiling": ["rope"]}))
    assert load_attributes("k400") == {"abseiling": ["rope"]}
    for reader in (read_class_list, load_attributes):
        with pytest.raises(FileNotFoundError, match="neither a file nor a built-in name.*k600-split1"):
            reader("k600-split4")


def _check_shipped(name, classes, attributes, header):
    assert header["extractor"] == "keybert" and header["num"] == NUM and header["classes"] == len(classes)
    assert header["distinctive"] is True and header["missing_descriptions"] == []
    assert header["descriptions"].startswith("DeLightCMU/ElaborativeRehearsal datasets/")
    check_attributes(classes, attributes)  # Na each, no stopwords, no duplicates, no name words, fits 77 tokens
    # words that tell the classes apart: no two classes share their attribute set, no keyword is
    # used by more than 15 % of the classes, and at least half of every class's keywords are rare
    # (used by at most 5 % of the classes, or by two)
    sets = [frozenset(v) for v in attributes.values()]
    assert len(set(sets)) == len(sets), name
    counts = Counter(k for v in attributes.values() for k in v)
    word, most = counts.most_common(1)[0]
    assert most <= 0.15 * len(classes), (name, word, most)
    rare = max(2, 0.05 * len(classes))
    for cls, keywords in attributes.items():
        assert sum(counts[k] <= rare for k in keywords) >= NUM // 2, (name, cls, keywords)


@pytest.mark.parametrize("name", NAMES)
def test_shipped_attribute_files_pass_the_checks_of_fresh_ones(name):
    classes = read_class_list(name)
    attributes, header = read_attributes_file(name)
    _check_shipped(name, classes, attributes, header)


@pytest.mark.skipif(not os.environ.get("STZSAR_SLOW_TESTS"),
                    reason="slow (keybert over 152 classes, and the 21,000-word fill vocabulary once): set STZSAR_SLOW_TESTS=1")
@pytest.mark.parametrize("name, file", [("ucf101", "ucf101_label_defn.json"), ("hmdb51", "hmdb51_label_defn.json")])
def test_shipped_attribute_files_are_what_the_command_writes(shared_data, tmp_path, name, file):
    out = tmp_path / f"{name}.json"
    assert main(["attributes", "--dataset", name, "--descriptions", str(shared_data / "descriptions" / file),
                 "--out", str(out), "--no-cache", "--quiet"]) == 0
    assert out.read_bytes() == get(name).attributes_path.read_bytes()


def test_the_package_data_patterns_cover_every_resource_file():
    import fnmatch

    try:
        import tomllib
    except ImportError:  # Python < 3.11
        tomllib = pytest.importorskip("tomli")
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["stzsar"]
    files = [p.relative_to(REPO / "stzsar").as_posix() for p in (REPO / "stzsar/resources").rglob("*")
             if p.is_file() and p.suffix in (".csv", ".json")]
    assert len(files) == 2 * len(NAMES)
    for file in files:
        assert any(fnmatch.fnmatch(file, pattern) for pattern in patterns), file


# ------------------------------------------------------------------------------------------
# the commands


def test_data_inspect_with_a_built_in_split(shared_data, tmp_path, capsys):
    listing = shared_data / "lists/k600/test_split1_exist.txt"
    lines = [line.split() for line in listing.read_text().splitlines() if line.strip()]
    code = main(["data", "inspect", "--format", "bike", "--list", str(listing), "--labels", "k600-split1",
                 "--root", str(tmp_path), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code in (0, 1)  # an empty root: every video is missing
    assert report["classes"] == len({label for _, label in lines}) == 160
    assert report["videos"] == len(lines) == 14119


def test_predict_ranks_the_built_in_classes(tmp_path, capsys):
    import torch

    from stzsar.data.synthetic import write_video
    from stzsar.model import build_model
    from stzsar.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "tiny.pt", build_model("stzsar-tiny", backend="torch"))
    video = tmp_path / "clip.mp4"
    write_video(video, 8, 64, 48)
    code = main(["predict", str(video), "--classes", "ucf101", "--attributes", "ucf101", "--checkpoint",
                 str(checkpoint), "--num-frames", "4", "--device", "cpu", "--no-cache", "--top-k", "101", "--json"])
    assert code == 0
    (prediction,) = json.loads(capsys.readouterr().out)["predictions"]
    ranked = [t["class"] for t in prediction["top"]]
    assert sorted(ranked) == sorted(_csv_names(get("ucf101").classes_path)) and len(ranked) == 101
    assert abs(sum(t["prob"] for t in prediction["top"]) - 1) < 1e-4


def test_resources_list_and_show(capsys):
    assert main(["resources", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["resources"]}
    assert list(rows) == NAMES
    for name in NAMES:
        assert rows[name]["classes"] == SIZES[name] and rows[name]["attributes"]["classes"] == SIZES[name]
        assert "e8f6a8b" in rows[name]["origin"] or "e3130fd" in rows[name]["origin"]
    assert main(["resources", "list"]) == 0
    listing = capsys.readouterr().out
    assert all(f"{name} " in listing for name in NAMES)
    assert main(["resources", "show", "k600-split2"]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if not l.startswith("#")]
    classes = _csv_names(get("k600-split2").classes_path)
    assert [l.split("\t")[1] for l in lines] == classes
    assert all(len(l.split("\t")[2].split(", ")) == NUM for l in lines)
    assert main(["resources", "show", "k600"]) == 2
    assert "known: ucf101" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# fetching the descriptions


@pytest.fixture
def description_server(shared_data, tmp_path, monkeypatch):
    """A local HTTP server laid out like the public repository, serving the ../shared/data copies."""
    from stzsar.resources.descriptions import DESCRIPTION_FILES

    site = tmp_path / "site"
    copies = {"ucf101": "ucf101_label_defn.json", "hmdb51": "hmdb51_label_defn.json",
              "kinetics620": "kinetics620_label_defn.json"}
    for key, file in copies.items():
        target = site / DESCRIPTION_FILES[key].path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_data / "descriptions" / file, target)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("STZSAR_DESCRIPTIONS_URL", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("STZSAR_CACHE_DIR", str(tmp_path / "cache"))
    yield {"site": site, "cache": tmp_path / "cache" / "descriptions", "server": server}
    server.shutdown()
    server.server_close()


def test_fetch_checks_the_pinned_checksum(description_server, shared_data, capsys):
    from stzsar.resources.descriptions import DescriptionFetchError, fetch_descriptions

    assert main(["resources", "fetch", "descriptions"]) == 0
    fetched = sorted(p.name for p in description_server["cache"].iterdir())
    assert fetched == ["hmdb51_label_defn.json", "kinetics620_label_defn.json", "ucf101_label_defn.json"]
    for name in fetched:
        assert (description_server["cache"] / name).read_bytes() == (shared_data / "descriptions" / name).read_bytes()
    # a built-in list names its descriptions; a verified copy is not fetched again
    description_server["server"].shutdown()
    assert fetch_descriptions("k600-split3").name == "kinetics620_label_defn.json"


def test_fetch_refuses_a_file_that_differs(description_server):
    from stzsar.resources.descriptions import DESCRIPTION_FILES, DescriptionFetchError, fetch_descriptions

    served = description_server["site"] / DESCRIPTION_FILES["hmdb51"].path
    served.write_bytes(served.read_bytes().replace(b"brush", b"brash", 1))
    expected = hashlib.sha256(served.read_bytes()).hexdigest()
    with pytest.raises(DescriptionFetchError, match=f"refusing .*{expected}.*expected 61b88c03"):
        fetch_descriptions("hmdb51")
    assert not (description_server["cache"] / "hmdb51_label_defn.json").exists()
    assert main(["resources", "fetch", "descriptions", "--dataset", "hmdb51"]) == 1


def test_attributes_command_fetches_the_descriptions_of_a_dataset(description_server, tmp_path):
    out = tmp_path / "hmdb51.json"
    assert main(["attributes", "--dataset", "hmdb51", "--extractor", "rake", "--out", str(out), "--quiet"]) == 0
    attributes, header = read_attributes_file(out)
    assert list(attributes) == _csv_names(get("hmdb51").classes_path)
    assert header["descriptions"].startswith("DeLightCMU/ElaborativeRehearsal datasets/HMDB51/classes_label_defn.json at e3130fd")
    assert header["missing_descriptions"] == [] and header["extractor"] == "rake"
