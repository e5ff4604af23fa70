"""``stzsar eval`` killed part-way (SIGKILL) and run again with the same command gives the numbers
of an uninterrupted run; ``stzsar eval report`` rebuilds the reports, class subsets included,
from the store alone."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from stzsar.cli.main import main
from stzsar.data.synthetic import write_video
from stzsar.model import build_model
from stzsar.train.checkpoint import save_checkpoint

CLASSES = ["archery", "bowling", "surfing", "juggling"]
NUM_VIDEOS = 24


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    torch.manual_seed(3)
    save_checkpoint(root / "tiny.pt", build_model("stzsar-tiny", backend="torch"))
    videos = root / "videos"
    videos.mkdir()
    lines = []
    for i in range(NUM_VIDEOS):
        write_video(videos / f"v{i}.mp4", 4 + i % 5, 48, 32)
        lines.append(f"v{i}.mp4 {i % len(CLASSES)}")
    lines.insert(5, "missing.mp4 1")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    (root / "labels.csv").write_text("id,name\n" + "".join(f"{i},{n}\n" for i, n in enumerate(CLASSES)))
    return root


def command(setup, out):
    return ["eval", "--protocol", "zero-shot", "--checkpoint", str(setup / "tiny.pt"),
            "--list", str(setup / "list.txt"), "--labels", str(setup / "labels.csv"), "--root",
            str(setup / "videos"), "--splits", "1", "--num-frames", "2", "--workers", "0", "--batch-size", "1",
            "--flush-every", "1", "--device", "cpu", "--no-progress", "--no-cache", "--out", str(out),
            "--allow-unscored", "0.05"]  # missing.mp4: 1 of 25


def scores(report):
    """The numbers of a report.json, without what says how the run went."""
    result = dict(report["results"]["split 1"])
    result.pop("resumed_videos")
    result.pop("class_subsets", None)
    return result


def predictions(out):
    with open(out / "predictions_split_1.csv", newline="") as stream:
        return list(csv.reader(stream))


def test_a_killed_run_resumes_to_the_numbers_of_an_uninterrupted_one(setup, tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(command(setup, whole)) == 0
    process = subprocess.Popen([sys.executable, "-m", "stzsar.cli"] + command(setup, cut),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = cut / "store" / "split_1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if len(list(store.glob("part-*.npz"))) >= 2:
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    parts = len(list(store.glob("part-*.npz")))
    assert 2 <= parts < NUM_VIDEOS + 1  # killed part-way
    assert not (cut / "report.json").exists()

    assert main(command(setup, cut)) == 0  # the same command again
    resumed = json.loads((cut / "report.json").read_text())
    reference = json.loads((whole / "report.json").read_text())
    assert 0 < resumed["resumed_videos"] < NUM_VIDEOS + 1 and reference["resumed_videos"] == 0
    assert resumed["results"]["split 1"]["videos_scored"] == NUM_VIDEOS
    assert scores(resumed) == scores(reference)
    assert predictions(cut) == predictions(whole)
    assert "read back from the results store" in (cut / "report.md").read_text()


def test_another_configuration_is_refused(setup, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(command(setup, out)) == 0
    changed = command(setup, out)
    changed[changed.index("--num-frames") + 1] = "3"
    capsys.readouterr()
    assert main(changed) == 2
    error = capsys.readouterr().err
    assert "num_frames: 2 stored, 3 now" in error and "--fresh" in error
    assert main(changed + ["--fresh"]) == 0
    assert json.loads((out / "report.json").read_text())["meta"]["num_frames"] == 3


def _raw_logits(store):
    """Every part read with numpy alone: {index: (label, [V, C] logits)}."""
    rows = {}
    for path in sorted(store.glob("part-*.npz")):
        data = np.load(path)
        start = 0
        for index, label, views in zip(data["indices"], data["labels"], data["view_counts"]):
            rows[int(index)] = (int(label), data["logits"][start:start + views].astype(np.float64))
            start += views
    return rows


def test_eval_report_rebuilds_every_report_and_the_class_subsets(setup, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(command(setup, out) + ["--class-subsets", "5"]) == 0
    printed = capsys.readouterr().out
    assert "Random class subsets (BIKE / Text4Vis protocol)" in printed  # next to the full-class table
    first = json.loads((out / "report.json").read_text())
    rebuilt_dir = tmp_path / "rebuilt"
    assert main(["eval", "report", str(out), "--class-subsets", "5", "--out", str(rebuilt_dir)]) == 0
    rebuilt = json.loads((rebuilt_dir / "report.json").read_text())
    assert rebuilt["results"] == first["results"] and rebuilt["summary"] == first["summary"]
    assert predictions(rebuilt_dir) == predictions(out)

    subsets = first["results"]["split 1"]["class_subsets"]
    assert subsets["draws"] == 5 and subsets["classes_per_draw"] == 2 and subsets["fraction"] == 0.5
    raw = _raw_logits(out / "store" / "split_1")
    top1 = []
    for draw in subsets["per_draw"]:
        kept = [CLASSES.index(name) for name in draw["classes"]]
        hits = n = 0
        for label, views in raw.values():
            if label not in kept:
                continue
            sub = views[:, kept]
            probs = np.exp(sub - sub.max(1, keepdims=True))
            probs = (probs / probs.sum(1, keepdims=True)).mean(0)
            hits += kept[int(probs.argmax())] == label
            n += 1
        assert draw["videos"] == n
        top1.append(100.0 * hits / n)
    assert [d["top1"] for d in subsets["per_draw"]] == pytest.approx(top1)
    assert subsets["top1_mean"] == pytest.approx(np.mean(top1))
    assert subsets["top1_std"] == pytest.approx(np.std(top1))

    assert main(["eval", "report", str(tmp_path / "nothing")]) == 2
    assert "no results store" in capsys.readouterr().err
