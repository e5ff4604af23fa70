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


def _actor_pixels(frame: np.ndarray, rgb) -> np.ndarray:
    """Pixels close to the actor's colour (an independent look at the drawing: distractors have
    other colours, the clutter is grey)."""
    return np.abs(frame.astype(int) - np.array(rgb)).sum(-1) < 60


def _centroid(frame: np.ndarray, rgb):
    ys, xs = np.nonzero(_actor_pixels(frame, rgb))
    if not len(xs):
        return None, 0
    return np.array([xs.mean(), ys.mean()]), len(xs)


def _window(frames, rgb):
    lit = [t for t, f in enumerate(frames) if _actor_pixels(f, rgb).any()]
    return lit


def test_rendered_motions_do_what_they_say_inside_their_window():
    rng = random.Random
    rgb = COLOURS["green"]
    for seed in range(4):
        right, (first, length) = render_video("green", "moving right", 16, 36, rng(seed), return_window=True)
        assert right.shape == (16, 36, 36, 3) and right.dtype == np.uint8
        assert 4 <= length <= 6
        lit = _window(right, rgb)
        assert lit == list(range(first, first + length))  # the actor only inside its window
        (x0, y0), _ = _centroid(right[first], rgb)
        (x1, y1), _ = _centroid(right[first + length - 1], rgb)
        assert x1 - x0 > 10 and abs(y1 - y0) < 2
        up, (first, length) = render_video("green", "moving up", 16, 36, rng(seed), return_window=True)
        (x0, y0), _ = _centroid(up[first], rgb)
        (x1, y1), _ = _centroid(up[first + length - 1], rgb)
        assert y0 - y1 > 10 and abs(x1 - x0) < 2
        grow, (first, length) = render_video("green", "growing", 16, 36, rng(seed), return_window=True)
        assert _centroid(grow[first + length - 1], rgb)[1] > 4 * _centroid(grow[first], rgb)[1]
        blink, (first, length) = render_video("green", "blinking", 16, 36, rng(seed), return_window=True)
        lit = [_actor_pixels(f, rgb).any() for f in blink[first:first + length]]
        assert 0 < sum(lit) < length and not any(_actor_pixels(f, rgb).any() for f in blink[:first])
    # The same seed draws the same video; another seed another one.
    assert np.array_equal(render_video("red", "spinning", 8, 32, rng(3)), render_video("red", "spinning", 8, 32, rng(3)))
    assert not np.array_equal(render_video("red", "spinning", 8, 32, rng(3)), render_video("red", "spinning", 8, 32, rng(4)))


def test_actor_is_small_among_distractors_of_other_colours():
    from stzsar.demo.actions import DISTRACTOR_COLOURS

    palette = {**COLOURS, **DISTRACTOR_COLOURS}
    for seed in range(6):
        colour = list(COLOURS)[seed % 4]
        frames, (first, length) = render_video(colour, "moving right", 16, 36, random.Random(seed),
                                               return_window=True)
        frame = frames[first + length // 2]
        actor = _actor_pixels(frame, COLOURS[colour]).mean()
        assert 0 < actor < 0.05  # a few patches' worth at most of the 36 x 36 frame
        others = [name for name, rgb in palette.items() if name != colour and _actor_pixels(frame, rgb).sum() >= 3]
        assert 2 <= len(others) <= 3, others  # the distractors, each in a colour of its own


def test_generated_files_are_the_same_for_a_seed(tmp_path):
    def digest(root: Path):
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    a = generate_dataset(tmp_path / "a", train_per_class=1, test_per_class=1, unseen_per_class=2, num_frames=4,
                         progress=False)
    b = generate_dataset(tmp_path / "b", train_per_class=1, test_per_class=1, unseen_per_class=2, num_frames=4,
                         progress=False)
    assert digest(a.root) == digest(b.root)
    assert a.counts == {"train": 18, "seen_test": 18, "unseen_test": 12}
    windows = json.loads(a.windows.read_text())
    assert len(windows) == 18 * 2 + 12 and all(0 <= w[0] and w[0] + w[1] <= 4 for w in windows.values())
    from stzsar.data import PyAVVideo

    with PyAVVideo(a.example_video) as video:
        assert video.num_frames == 4


def test_demo_reduced_run_writes_its_report(tmp_path):
    from stzsar.demo.runner import DemoSettings, demo_config, run_demo
    from stzsar.train.checkpoint import load_model_from_checkpoint

    config = demo_config(["train.epochs=1", "train.batch_size=6", "train.tensorboard=false"])
    settings = DemoSettings(seed=1, train_per_class=1, test_per_class=1, unseen_per_class=2, progress=False)
    out = tmp_path / "demo"
    report = run_demo(out, settings, config)

    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["seen_accuracy"] == report["seen_accuracy"]
    for key in ("seen_accuracy", "unseen_accuracy", "chance_seen", "chance_unseen", "ablations", "checkpoint",
                "unseen_classes", "attributes", "example_video"):
        assert key in on_disk, key
    assert report["chance_seen"] == pytest.approx(100 / 18) and report["chance_unseen"] == pytest.approx(100 / 6)
    ablations = report["ablations"]
    assert set(ablations) == {"no_interaction", "spatial_only", "temporal_only", "no_attributes"}
    # (spatial, temporal, attributes) of each row; sti true only for the full spatio-temporal module
    expected = {"no_interaction": (False, False, True), "spatial_only": (True, False, True),
                "temporal_only": (False, True, True), "no_attributes": (True, True, False)}
    for key, (spatial, temporal, attributes) in expected.items():
        entry = ablations[key]
        assert (entry["spatial"], entry["temporal"], entry["attributes"]) == (spatial, temporal, attributes), key
        assert entry["sti"] is (spatial and temporal) and set(entry) >= {"label", "attributes", "sti", "seen_accuracy",
                                                         "unseen_accuracy"}
    assert report["variants"]["full"]["sti"] is True
    for entry in report["variants"].values():
        assert 0 <= entry["seen_accuracy"] <= 100 and 0 <= entry["unseen_accuracy"] <= 100
    full = report["variants"]["full"]
    assert full["seen_videos_scored"] == 18 and full["unseen_videos_scored"] == 12
    assert full["diagnostics"]["videos"] == 12 and len(full["epoch_losses"]) == 1
    assert 1 / 8 - 1e-9 <= full["diagnostics"]["s_temp"]["max"] <= 1 + 1e-9
    # The window share, independently: 16-frame videos, the test clip takes the middle frame of each
    # of 8 two-frame segments (1, 3, ..., 15); mean pooling's uniform weights put exactly that share
    # on the window.
    windows = json.loads((out / "data" / "windows.json").read_text())
    unseen_videos = [line.split()[0] for line in (out / "data" / "unseen_test.txt").read_text().split("\n") if line]
    share = np.mean([np.mean([windows[v][0] <= t < sum(windows[v]) for t in range(1, 16, 2)]) for v in unseen_videos])
    pooled = report["variants"]["no_interaction"]["diagnostics"]["s_temp"]
    assert pooled["window_share"] == pytest.approx(share)
    assert pooled["window_weight"] == pytest.approx(share) and pooled["max"] == pytest.approx(1 / 8)
    assert set(full["example"]) >= {"winning_words", "class_and_attribute_weight", "window_winners_on_actor"}
    assert all(w["role"] in ("class", "attribute") for w in full["example"]["winning_words"])
    for key in ("checkpoint", "unseen_classes", "attributes", "example_video", "config"):
        assert Path(report[key]).is_file(), key
    assert all(Path(p).is_file() for p in report["plots"].values())
    unseen = Path(report["unseen_classes"]).read_text().split()
    assert len(unseen) == 6 and report["example_video_class"] in unseen
    attributes = json.loads(Path(report["attributes"]).read_text())["attributes"]
    assert set(attributes) == {c["name"] for c in report["classes"]}
    assert "| STI + attributes | yes | yes |" in (out / "report.md").read_text()
    model, meta = load_model_from_checkpoint(report["checkpoint"])
    assert meta["extra"]["class_names"] == Path(report["seen_classes"]).read_text().split()
    assert model.config.word_tokens == "class_and_attributes"
    # A second run into the same folder replaces the first; a foreign folder is refused.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not the output of an earlier stzsar demo"):
        run_demo(tmp_path / "other", settings, config)


def test_seeds_summary_is_mean_and_sample_std_of_the_runs(tmp_path):
    import statistics

    from stzsar.demo.runner import DemoSettings, demo_config, run_seeds

    config = demo_config(["train.epochs=1", "train.batch_size=6", "train.tensorboard=false"])
    settings = DemoSettings(train_per_class=1, test_per_class=1, unseen_per_class=1, ablations="none",
                            progress=False)
    summary = run_seeds(tmp_path / "seeds", [0, 1], settings, config)
    reports = [json.loads((tmp_path / "seeds" / f"seed_{s}" / "report.json").read_text()) for s in (0, 1)]
    assert [r["seed"] for r in reports] == [0, 1]
    values = [r["unseen_accuracy"] for r in reports]
    entry = summary["models"]["full"]["unseen_accuracy"]
    assert entry["values"] == values
    assert entry["mean"] == pytest.approx(statistics.mean(values))
    assert entry["std"] == pytest.approx(statistics.stdev(values))
    assert json.loads((tmp_path / "seeds" / "summary.json").read_text())["seeds"] == [0, 1]


def test_full_sweep_reuses_a_model_whose_prompts_it_already_trained(tmp_path):
    """Na = 16 gives the same prompts as Na = 8 when no class has more than 8 attributes: the sweep
    reports the Na = 8 model for it instead of training the same model again."""
    from stzsar.demo.runner import DemoSettings, demo_config, run_demo

    config = demo_config(["train.epochs=1", "train.batch_size=6", "train.tensorboard=false"])
    settings = DemoSettings(seed=0, train_per_class=1, test_per_class=1, unseen_per_class=1, ablations="full",
                            progress=False)
    report = run_demo(tmp_path / "demo", settings, config)
    attributes = json.loads(Path(report["attributes"]).read_text())["attributes"]
    assert max(len(words) for words in attributes.values()) <= 8  # the premise
    variants = report["variants"]
    assert variants["na_16"]["same_as"] == "full" and variants["na_16"]["num_attributes"] == 16
    assert variants["na_16"]["unseen_accuracy"] == variants["full"]["unseen_accuracy"]
    assert "same_as" not in variants["na_4"] and "same_as" not in variants["na_2"]
    trained = {p.name for p in (tmp_path / "demo" / "ablations").iterdir()}
    assert "na_16" not in trained and {"na_2", "na_4"} <= trained
    assert "not trained again" in (tmp_path / "demo" / "report.md").read_text()
