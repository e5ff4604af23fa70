"""The trainer on real (generated) video files: learning, exact resume, the NaN guard, checkpoints."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch

from stzsar.config import load_config
import numpy as np

from stzsar.demo.actions import encode_video
from stzsar.train.checkpoint import (
    CheckpointError,
    CheckpointManager,
    load_model_from_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from stzsar.train.trainer import NonFiniteLossError, Trainer, train

CLASSES = [("red", "moving right"), ("blue", "moving right"), ("red", "spinning"), ("blue", "spinning")]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: the tiny model gains nothing from more, and a busy box loses a lot."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


_RGB = {"red": (220, 40, 40), "blue": (40, 60, 220)}


def render_video(colour: str, motion: str, num_frames: int, size: int, rng: random.Random) -> np.ndarray:
    """A plain, easily learnt clip (the trainer is under test, not the demo's harder videos): a
    large square of the class colour on grey that slides right or turns between two sizes."""
    frames = np.full((num_frames, size, size, 3), 128, dtype=np.uint8)
    half = size // 4
    x0, y0 = rng.randint(half, size // 2), rng.randint(half, size - half)
    for t in range(num_frames):
        if motion == "moving right":
            cx, h = x0 + t * (size // 2 - half) // max(1, num_frames - 1), half
        else:
            cx, h = size // 2, half if t % 2 == 0 else half // 2
        frames[t, max(0, y0 - h):y0 + h, max(0, cx - h):cx + h] = _RGB[colour]
    noise = np.random.default_rng(rng.randrange(2**32)).integers(-8, 9, frames.shape)
    return np.clip(frames.astype(np.int16) + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def video_list(tmp_path_factory) -> Path:
    """12 short H.264 videos of 4 classes (3 each) with a BIKE list and an id,name class list."""
    root = tmp_path_factory.mktemp("videos")
    lines = []
    for n in range(12):
        label = n % 4
        colour, motion = CLASSES[label]
        rel = f"v{n:02d}.mp4"
        encode_video(root / rel, render_video(colour, motion, 8, 36, random.Random(n)))
        lines.append(f"{rel} {label}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "labels.csv").write_text("id,name\n" + "".join(f"{i},{c} {m}\n" for i, (c, m) in enumerate(CLASSES)))
    return root


def tiny_config(root: Path, out: Path, *extra: str):
    return load_config(None, [
        "model.name=stzsar-tiny", "model.pretrained=null", "model.frozen_blocks=0", "model.backend=torch",
        f"data.root={root}", f"data.train_list={root / 'train.txt'}", f"data.labels={root / 'labels.csv'}",
        "data.num_frames=4", "data.size=32", "data.short_side=36", "data.hflip=0.5", "data.num_workers=0",
        "train.batch_size=4", "train.epochs=2", "train.progress=false", "train.tensorboard=false",
        "train.log_every=1", f"train.output_dir={out}", "optim.lr=1e-3", "optim.warmup_epochs=0.5",
        *extra,
    ])


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_training_lowers_the_loss(video_list, tmp_path):
    """The in-batch loss of a fixed batch (test clips) drops after a few optimizer steps."""
    from stzsar.data import ClipSpec, VideoDataset, build_split
    from stzsar.train.loss import in_batch_loss

    config = tiny_config(video_list, tmp_path / "run", "train.epochs=5", "optim.lr=3e-3", "train.checkpoint_every=0")
    trainer = Trainer(config, save_checkpoints=False)
    split = build_split("bike", video_list / "train.txt", video_list, labels=video_list / "labels.csv")
    fixed = VideoDataset(split, ClipSpec(num_frames=4, size=32, short_side=36), training=False)
    items = [fixed[i] for i in range(8)]
    video = torch.stack([item["video"] for item in items])
    labels = torch.tensor([item["label"] for item in items])

    def fixed_loss(model) -> float:
        model.eval()
        with torch.no_grad():
            value = float(in_batch_loss(model, video, labels, trainer.bank).loss)
        model.train()
        return value

    before = fixed_loss(trainer.model)
    result = trainer.fit()
    after = fixed_loss(result.model)
    assert result.step == 15  # 12 videos / batch 4 = 3 steps per epoch, 5 epochs
    assert all(math.isfinite(h["loss"]) for h in result.history)
    assert after < 0.8 * before, (before, after)
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert any('"loss"' in line and '"clips_per_s"' in line for line in metrics)
    assert (tmp_path / "run" / "config.yaml").is_file()


class _Killed(RuntimeError):
    pass


def test_kill_and_resume_equals_uninterrupted(video_list, tmp_path):
    """A run killed mid-epoch and resumed ends with the same weights and optimizer state as a run
    that was never interrupted (accumulation, random clips, crops and flips included)."""
    extra = ("optim.grad_accum=2", "train.checkpoint_every=2", "train.epochs=2", "train.keep_last=10")
    reference = train(tiny_config(video_list, tmp_path / "a", *extra))
    assert reference.step == 6  # 12 videos / (2 per micro-batch x 2) = 3 steps per epoch

    def kill_at_5(trainer, step):
        if step == 5:  # after step 5, whose checkpoint is not written: the resume redoes it
            raise _Killed()

    with pytest.raises(_Killed):
        train(tiny_config(video_list, tmp_path / "b", *extra), callbacks=[kill_at_5])
    saved = CheckpointManager(tmp_path / "b" / "checkpoints").list()
    assert [step for step, _ in saved] == [2, 3, 4]
    resumed = train(tiny_config(video_list, tmp_path / "b", *extra), resume=tmp_path / "b")
    assert resumed.step == 6 and resumed.epoch == 2
    expected, got = _params(reference.model), _params(resumed.model)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in reference.history[4:]]
    a = read_checkpoint(reference.checkpoint)["optimizer"]["state"]
    b = read_checkpoint(resumed.checkpoint)["optimizer"]["state"]
    for index in a:
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(a[index][name], b[index][name])


def test_resume_rejects_another_batch_composition(video_list, tmp_path):
    run = train(tiny_config(video_list, tmp_path / "a", "train.epochs=1"))
    with pytest.raises(RuntimeError, match="global micro-batches"):
        Trainer(tiny_config(video_list, tmp_path / "a", "train.epochs=1", "train.batch_size=8"),
                resume=run.checkpoint)


class _NaNAt(torch.utils.data.Dataset):
    """Wraps a dataset and poisons one video with NaN."""

    def __init__(self, dataset, index):
        self.dataset, self.index = dataset, index
        self.classes = dataset.classes

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        item = dict(self.dataset[i])
        if i == self.index:
            item["video"] = torch.full_like(item["video"], float("nan"))
        return item


def test_nan_guard_stops_with_step_batch_and_checkpoint(video_list, tmp_path):
    from stzsar.data import ClipSpec, VideoDataset, build_split

    split = build_split("bike", video_list / "train.txt", video_list, labels=video_list / "labels.csv")
    clean = VideoDataset(split, ClipSpec(num_frames=4, size=32, short_side=36), training=True, seed=0)
    config = tiny_config(video_list, tmp_path / "run", "train.epochs=3")
    # Find where video 7 comes in the seeded order: epoch 0, global micro-batch position // 4.
    from stzsar.train.sampling import EpochSampler

    order = EpochSampler(12, 4, seed=config.train.seed).epoch_order(0)
    batch = order.index(7) // 4
    with pytest.raises(NonFiniteLossError) as caught:
        train(config, _NaNAt(clean, 7))
    error = caught.value
    assert error.step == batch + 1 and error.epoch == 0 and error.batch == batch
    assert 7 in error.indices and sorted(error.indices) == sorted(order[batch * 4:(batch + 1) * 4])
    assert f"optimizer step {batch + 1}" in str(error) and "7" in str(error)
    # The state before the bad step was saved and loads.
    assert error.checkpoint is not None and error.checkpoint.name == f"nan_step_{batch + 1:08d}.pt"
    model, meta = load_model_from_checkpoint(error.checkpoint)
    assert meta["step"] == batch
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_checkpoint_stores_only_trained_weights_when_clip_is_reproducible(tmp_path):
    """Random init: every weight is stored. A model built from a CLIP weights file: only the
    trained ones, and loading rebuilds the same model from the file."""
    import open_clip

    from stzsar.model import build_model, register_model_configs

    register_model_configs()
    torch.manual_seed(0)
    clip = open_clip.create_model("stzsar-tiny", pretrained=None)
    weights = tmp_path / "clip.pt"
    torch.save(clip.state_dict(), weights)

    video = torch.randn(2, 3, 3, 32, 32)
    for pretrained, expect in ((None, "full"), (str(weights), "trainable")):
        torch.manual_seed(1)
        model = build_model("stzsar-tiny", pretrained, temporal_layers=1)
        with torch.no_grad():  # make the trained weights differ from any fresh build
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.01 * torch.randn_like(p))
        path = save_checkpoint(tmp_path / f"{expect}.pt", model, step=3, extra={"note": "x"})
        payload = read_checkpoint(path)
        assert payload["weights"] == expect
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        if expect == "trainable":
            assert set(payload["model"]) == trainable
        else:
            assert set(payload["model"]) == set(model.state_dict())
        loaded, meta = load_model_from_checkpoint(path)
        assert meta["step"] == 3 and meta["extra"]["note"] == "x" and "model" not in meta
        bank = model.encode_classes(["a red ball", "a blue bar"])
        model.eval()
        with torch.no_grad():
            assert torch.allclose(model(video, bank), loaded(video, loaded.encode_classes(["a red ball", "a blue bar"])),
                                  atol=1e-5)
        assert not list(tmp_path.glob(".*.tmp*"))  # the temporary file was renamed away

    # A trainable-only checkpoint whose CLIP weights are gone says so.
    weights.unlink()
    with pytest.raises(Exception, match="clip.pt"):
        load_model_from_checkpoint(tmp_path / "trainable.pt")


def test_checkpoint_errors_and_pruning(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        read_checkpoint(tmp_path / "junk.pt")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an stzsar checkpoint"):
        read_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "missing.pt")

    from stzsar.model import build_model

    model = build_model("stzsar-tiny", None)
    manager = CheckpointManager(tmp_path / "ckpt", keep_last=2)
    for step in (1, 2, 3):
        manager.save(step, model=model)
    assert [s for s, _ in manager.list()] == [2, 3]
    assert manager.latest().name == "step_00000003.pt"


def test_ctrl_c_stops_at_a_step_checkpoints_and_resumes_exactly(video_list, tmp_path):
    """SIGINT during training: the run stops after the step in flight with a checkpoint of that
    step, raises TrainingInterrupted, and resuming it ends where an uninterrupted run ends."""
    import os
    import signal

    from stzsar.train.trainer import TrainingInterrupted

    extra = ("train.checkpoint_every=0", "train.epochs=2")
    reference = train(tiny_config(video_list, tmp_path / "a", *extra))

    def ctrl_c_at_2(trainer, step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as stop:
        train(tiny_config(video_list, tmp_path / "b", *extra), callbacks=[ctrl_c_at_2])
    assert signal.getsignal(signal.SIGINT) is previous  # the handler is put back
    assert stop.value.step == 2 and stop.value.checkpoint is not None
    assert read_checkpoint(stop.value.checkpoint)["step"] == 2
    resumed = train(tiny_config(video_list, tmp_path / "b", *extra), resume=stop.value.run_dir)
    expected, got = _params(reference.model), _params(resumed.model)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
