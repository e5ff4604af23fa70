"""The synthetic dataset and `stzsar demo` in a reduced setting."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from stzsar.demo.actions import COLOURS, MOTIONS, generate_dataset, make_classes, render_video


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_unseen_classes_recombine_seen_colours_and_motions():
    classes = make_classes(seed=0)
    assert len(classes) == len(COLOURS) * len(MOTIONS) == 24
    assert len({c.name for c in classes}) == 24
    seen = [c for c in classes if not c.unseen]
    unseen = [c for c in classes if c.unseen]
    assert len(unseen) == len(MOTIONS)
    assert {c.motion for c in unseen} == set(MOTIONS)  # one unseen colour per motion
    for c in unseen:
        assert any(s.colour == c.colour for s in seen) and any(s.motion == c.motion for s in seen)
        assert c.colour in c.description and c.name not in c.description
    with pytest.raises(ValueError, match="unknown colour"):
        make_classes(colours=("red", "mauve"))


def _centroid(frame: np.ndarray, rgb) -> np.ndarray:
    """Centre of the pixels close to the object colour (an independent look at the drawing)."""
    mask = np.abs(frame.astype(int) - np.array(rgb)).sum(-1) < 60
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None, 0
    return np.array([xs.mean(), ys.mean()]), mask.sum()


def test_rendered_motions_do_what_they_say():
    rng = random.Random
    rgb = COLOURS["green"]
    right = render_video("green", "moving right", 16, 36, rng(1))
    up = render_video("green", "moving up", 16, 36, rng(1))
    grow = render_video("green", "growing", 16, 36, rng(1))
    blink = render_video("green", "blinking", 16, 36, rng(1))
    assert right.shape == (16, 36, 36, 3) and right.dtype == np.uint8
    (x0, y0), _ = _centroid(right[0], rgb)
    (x1, y1), _ = _centroid(right[-1], rgb)
    assert x1 - x0 > 10 and abs(y1 - y0) < 2
    (x0, y0), _ = _centroid(up[0], rgb)
    (x1, y1), _ = _centroid(up[-1], rgb)
    assert y0 - y1 > 10 and abs(x1 - x0) < 2
    assert _centroid(grow[-1], rgb)[1] > 4 * _centroid(grow[0], rgb)[1]
    lit = [_centroid(f, rgb)[1] > 0 for f in blink]
    assert 0 < sum(lit) < 16
    # The same seed draws the same video; another seed another one.
    assert np.array_equal(render_video("red", "spinning", 8, 32, rng(3)), render_video("red", "spinning", 8, 32, rng(3)))
    assert not np.array_equal(render_video("red", "spinning", 8, 32, rng(3)), render_video("red", "spinning", 8, 32, rng(4)))


def test_generated_files_are_the_same_for_a_seed(tmp_path):
    def digest(root: Path):
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    a = generate_dataset(tmp_path / "a", train_per_class=1, test_per_class=1, num_frames=4, progress=False)
    b = generate_dataset(tmp_path / "b", train_per_class=1, test_per_class=1, num_frames=4, progress=False)
    assert digest(a.root) == digest(b.root)
    assert a.counts == {"train": 18, "seen_test": 18, "unseen_test": 6}
    from stzsar.data import PyAVVideo

    with PyAVVideo(a.example_video) as video:
        assert video.num_frames == 4


def test_demo_reduced_run_writes_its_report(tmp_path):
    from stzsar.demo.runner import DemoSettings, demo_config, run_demo
    from stzsar.train.checkpoint import load_model_from_checkpoint

    config = demo_config(["train.epochs=1", "train.batch_size=6", "train.tensorboard=false"])
    settings = DemoSettings(seed=1, train_per_class=1, test_per_class=1, video_frames=8, progress=False)
    out = tmp_path / "demo"
    report = run_demo(out, settings, config)

    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["seen_accuracy"] == report["seen_accuracy"]
    for key in ("seen_accuracy", "unseen_accuracy", "chance_seen", "chance_unseen", "ablations", "checkpoint",
                "unseen_classes", "attributes", "example_video"):
        assert key in on_disk, key
    assert report["chance_seen"] == pytest.approx(100 / 18) and report["chance_unseen"] == pytest.approx(100 / 6)
    assert set(report["ablations"]) == {"no_attributes", "no_sti"}
    assert not report["ablations"]["no_attributes"]["attributes"] and not report["ablations"]["no_sti"]["sti"]
    for entry in [report["variants"]["full"], *report["ablations"].values()]:
        assert 0 <= entry["seen_accuracy"] <= 100 and 0 <= entry["unseen_accuracy"] <= 100
    assert report["variants"]["full"]["seen_videos_scored"] == 18
    assert report["variants"]["full"]["unseen_videos_scored"] == 6
    for key in ("checkpoint", "unseen_classes", "attributes", "example_video", "config"):
        assert Path(report[key]).is_file(), key
    assert all(Path(p).is_file() for p in report["plots"].values())
    unseen = Path(report["unseen_classes"]).read_text().split()
    assert len(unseen) == 6 and report["example_video_class"] in unseen
    attributes = json.loads(Path(report["attributes"]).read_text())["attributes"]
    assert set(attributes) == {c["name"] for c in report["classes"]}
    assert "| STI + attributes | yes |" in (out / "report.md").read_text()
    model, meta = load_model_from_checkpoint(report["checkpoint"])
    assert meta["extra"]["class_names"] == Path(report["seen_classes"]).read_text().split()
    # A second run into the same folder replaces the first; a foreign folder is refused.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not the output of an earlier stzsar demo"):
        run_demo(tmp_path / "other", settings, config)
