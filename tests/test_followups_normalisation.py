"""Training, the demo and checkpoints normalise with the model's own mean and std.

The videos are a flat colour, so every pixel of a clip, whatever the crop, resize or flip, is
``(rgb / 255 - mean) / std``: the expected values are computed from PyAV's own decode of the file
and the equation, with the model's (non-OpenAI) mean and std."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stzsar.data.spec import CLIP_MEAN, CLIP_STD
from stzsar.demo.actions import encode_video
from stzsar.model import build_model
from stzsar.train.checkpoint import load_model_from_checkpoint, read_checkpoint, save_checkpoint
from test_train import one_thread  # noqa: F401  (autouse: one intra-op thread for the tiny model)
from test_train import tiny_config as train_config

MEAN = (0.1, 0.2, 0.3)  # far from OpenAI CLIP's (0.48, 0.46, 0.41) / (0.27, 0.26, 0.28)
STD = (0.5, 0.4, 0.3)
COLOUR = (200, 120, 40)


@pytest.fixture(scope="module")
def flat_videos(tmp_path_factory) -> Path:
    """Four 8-frame 36 px videos of one flat colour, a BIKE list and an id,name class list."""
    root = tmp_path_factory.mktemp("flat")
    frames = np.empty((8, 36, 36, 3), dtype=np.uint8)
    frames[...] = COLOUR
    lines = []
    for n in range(4):
        encode_video(root / f"v{n}.mp4", frames)
        lines.append(f"v{n}.mp4 {n % 2}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "labels.csv").write_text("id,name\n0,red spinning\n1,blue spinning\n")
    return root


def decoded_rgb(path: Path) -> np.ndarray:
    """The file's mean RGB on [0, 1], decoded by PyAV directly."""
    import av

    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    return np.stack(frames).reshape(-1, 3).mean(0) / 255.0


def expected(rgb: np.ndarray, mean, std) -> torch.Tensor:
    return torch.tensor((rgb - np.asarray(mean)) / np.asarray(std), dtype=torch.float32)


def channel_values(clip: torch.Tensor) -> torch.Tensor:
    """``[..., 3, H, W]`` to its three channel means, checking the channel is flat."""
    flat = clip.movedim(-3, 0).reshape(3, -1)
    assert (flat.max(1).values - flat.min(1).values).max() < 0.05, "the clip is not one flat colour"
    return flat.mean(1)


def custom_model():
    model = build_model("stzsar-tiny", None, frozen_blocks=0, backend="torch")
    # Where open_clip records the preprocessing of pretrained weights (SigLIP, EVA, ... differ
    # from OpenAI's); model.image_mean/image_std read it from there.
    model.video.visual.image_mean, model.video.visual.image_std = MEAN, STD
    assert model.image_mean == MEAN and model.image_std == STD
    return model


def tiny_config(root: Path, out: Path, *extra: str):
    """The trainer tests' configuration, smaller: 2 frames, 2 videos a step, one epoch."""
    return train_config(root, out, "data.num_frames=2", "train.batch_size=2", "train.epochs=1", *extra)


def test_training_clips_use_the_models_mean_and_std(flat_videos, tmp_path):
    from stzsar.train.trainer import Trainer

    trainer = Trainer(tiny_config(flat_videos, tmp_path / "run"), model=custom_model(), save_checkpoints=False)
    rgb = decoded_rgb(flat_videos / "v0.mp4")
    clip = trainer.dataset[0]["video"]
    assert clip.shape == (2, 3, 32, 32)
    torch.testing.assert_close(channel_values(clip), expected(rgb, MEAN, STD), atol=0.02, rtol=0)
    # OpenAI's values would be far off: the check can tell them apart.
    assert (expected(rgb, CLIP_MEAN, CLIP_STD) - expected(rgb, MEAN, STD)).abs().min() > 0.2


def test_the_demo_clips_use_the_models_mean_and_std(flat_videos):
    from stzsar.data import ClipSpec, build_split
    from stzsar.demo.cached import CachedVideoDataset
    from stzsar.demo.runner import use_model_clips

    config = tiny_config(flat_videos, flat_videos / "unused")
    split = build_split("bike", flat_videos / "train.txt", flat_videos, labels=flat_videos / "labels.csv")
    train_set = CachedVideoDataset(split, ClipSpec(num_frames=2), training=True, seed=0)
    test_set = CachedVideoDataset(split, ClipSpec(num_frames=2), training=False)
    use_model_clips(custom_model(), config.data, train_set=train_set, test_sets=(test_set,))
    want = expected(decoded_rgb(flat_videos / "v1.mp4"), MEAN, STD)
    for data in (train_set, test_set):
        clip = data.load(1)
        assert clip.shape == (2, 3, 32, 32)
        torch.testing.assert_close(channel_values(clip), want, atol=0.02, rtol=0)
    assert test_set.spec.hflip == 0.0 and train_set.spec.hflip == 0.5


def test_a_checkpoint_keeps_a_non_default_mean_and_std(tmp_path):
    model = custom_model()
    path = save_checkpoint(tmp_path / "step_00000001.pt", model, step=1)
    assert read_checkpoint(path)["normalisation"] == {"image_mean": pytest.approx(list(MEAN)),
                                                      "image_std": pytest.approx(list(STD))}
    loaded, meta = load_model_from_checkpoint(path)
    assert loaded.image_mean == pytest.approx(MEAN) and loaded.image_std == pytest.approx(STD)
    assert meta["normalisation"]["image_mean"] == pytest.approx(list(MEAN))
    # What evaluation and predict feed it.
    from stzsar.eval.loading import clip_spec

    spec = clip_spec(loaded, 2)
    assert spec.mean == pytest.approx(MEAN) and spec.std == pytest.approx(STD)


def test_a_checkpoint_without_stored_normalisation_loads_as_before(tmp_path):
    """Checkpoints written before the normalisation was stored: the model as built (OpenAI's)."""
    path = save_checkpoint(tmp_path / "old.pt", custom_model(), step=1)
    payload = torch.load(path, weights_only=True)
    del payload["normalisation"]
    torch.save(payload, path)
    loaded, _ = load_model_from_checkpoint(path)
    assert loaded.image_mean == pytest.approx(CLIP_MEAN) and loaded.image_std == pytest.approx(CLIP_STD)


def test_training_then_resuming_keeps_the_normalisation(flat_videos, tmp_path):
    """A run trained with the model's mean and std writes them into its checkpoints; resuming it
    from the configuration alone (a model rebuilt with OpenAI's defaults) restores them, for the
    model and for its training clips."""
    from stzsar.train.trainer import Trainer, train

    config = tiny_config(flat_videos, tmp_path / "run", "train.max_steps=1")
    first = train(config, model=custom_model())
    assert first.checkpoint is not None
    loaded, _ = load_model_from_checkpoint(tmp_path / "run")
    assert loaded.image_mean == pytest.approx(MEAN) and loaded.image_std == pytest.approx(STD)

    resumed = Trainer(tiny_config(flat_videos, tmp_path / "run", "train.max_steps=2"), resume=tmp_path / "run",
                      save_checkpoints=False)
    assert resumed.model.image_mean == pytest.approx(MEAN)
    want = expected(decoded_rgb(flat_videos / "v2.mp4"), MEAN, STD)
    torch.testing.assert_close(channel_values(resumed.dataset[2]["video"]), want, atol=0.02, rtol=0)
