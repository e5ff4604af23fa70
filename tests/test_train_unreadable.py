"""A training run that cannot read its videos fails, saying how many, which and why; a step
without data changes nothing (no optimizer or schedule step, no checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stzsar.config import load_config
from stzsar.train.checkpoint import CheckpointManager, read_checkpoint
from train_videos import write_training_set


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """12 H.264 videos of 4 classes in ``videos/``, a BIKE list naming them, the same list with 2
    files that do not exist (``list_missing.txt``), and a class list."""
    root = tmp_path_factory.mktemp("corpus")
    lines = write_training_set(root, videos="videos", list_name="list.txt")
    (root / "list_missing.txt").write_text("\n".join(lines + ["gone_a.mp4 0", "gone_b.mp4 1"]) + "\n")
    return root


def settings(root: Path, videos_root: Path, out: Path, list_name: str = "list.txt", *extra: str):
    return [
        "model.name=stzsar-tiny", "model.pretrained=null", "model.frozen_blocks=0", "model.backend=torch",
        f"data.root={videos_root}", f"data.train_list={root / list_name}", f"data.labels={root / 'labels.csv'}",
        "data.num_frames=4", "data.size=32", "data.short_side=36", "data.num_workers=0",
        "train.batch_size=4", "train.epochs=2", "train.progress=false", "train.tensorboard=false",
        "train.log_every=1", "train.checkpoint_every=1", f"train.output_dir={out}", "optim.lr=1e-3",
        *extra,
    ]


def _loss_lines(run: Path):
    path = run / "metrics.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [line for line in lines if "loss" in line]


def test_a_wrong_root_makes_stzsar_train_fail_with_the_cause(videos, tmp_path, capsys):
    from stzsar.cli.main import main

    run = tmp_path / "run"
    # The list's parent instead of its videos/ folder: every file is "not found".
    args = ["train"] + [a for s in settings(videos, videos, run) for a in ("--set", s)]
    code = main(args)
    err = capsys.readouterr().err
    assert code != 0, err
    assert "no video of micro-batch 0 (epoch 0) could be read" in err, err
    assert "4 of the 12 training videos are unreadable" in err, err
    # The first paths, each with its reason, then the likely cause naming the root.
    assert err.count(": file not found") >= 4, err
    assert f"{videos}/v" in err, err
    assert f"likely cause: these files are not under data.root {videos}" in err, err
    # Nothing was trained or saved.
    assert "trained" not in capsys.readouterr().out
    assert _loss_lines(run) == []
    assert CheckpointManager(run / "checkpoints").list() == []


def test_a_root_that_does_not_exist_is_named_as_the_cause(videos, tmp_path, capsys):
    from stzsar.cli.main import main

    missing = tmp_path / "no_such_folder"
    code = main(["train"] + [a for s in settings(videos, missing, tmp_path / "run") for a in ("--set", s)])
    err = capsys.readouterr().err
    assert code != 0
    assert f"likely cause: data.root {missing} is not a folder" in err, err


def test_more_than_the_allowed_share_unreadable_stops_before_the_step_that_needs_them(videos, tmp_path):
    from stzsar.train.trainer import UnreadableDataError, train

    run = tmp_path / "strict"
    with pytest.raises(UnreadableDataError) as caught:
        train(load_config(None, settings(videos, videos / "videos", run, "list_missing.txt")))
    error = caught.value
    # 14 listed, 2 missing (14% > the default 1%); the first micro-batch that holds one stops the run.
    assert error.total == 14 and len(error.videos) == 1
    assert "1 of the 14 training videos could not be read (7.1%; data.max_unreadable allows 1.0%: raise" in str(error)
    assert "gone_" in str(error) and "file not found" in str(error)
    # Steps before it trained and were saved; the failing one left nothing behind.
    done = _loss_lines(run)
    assert [line["step"] for line in done] == list(range(1, error.step + 1))
    saved = CheckpointManager(run / "checkpoints").list()
    assert [step for step, _ in saved][-1:] == ([error.step] if error.step else [])
    for _, path in saved:
        payload = read_checkpoint(path)
        assert payload["scheduler"]["last_epoch"] == payload["step"]

    # Allowing the share, the same data trains to the end and lists both skipped videos.
    allowed = train(load_config(None, settings(videos, videos / "videos", tmp_path / "lenient",
                                               "list_missing.txt", "data.max_unreadable=0.2")))
    assert allowed.step == 2 * (14 // 4)
    assert sorted(Path(s.path).name for s in allowed.skipped) == ["gone_a.mp4", "gone_b.mp4"]


def test_a_step_without_data_advances_neither_the_schedule_nor_the_optimizer(videos, tmp_path, monkeypatch):
    """Under torchrun a micro-batch is dropped when some rank read none of its videos; a step whose
    every micro-batch was dropped is not a step. Simulated on one process by a second rank that
    reports no video for the first micro-batch."""
    from stzsar.train import trainer as trainer_module

    real = trainer_module.gather_sizes
    calls = []

    def other_rank_empty_first(local_size, device):
        calls.append(local_size)
        sizes = real(local_size, device)
        return torch.cat([sizes, sizes.new_zeros(1)]) if len(calls) == 1 else sizes

    monkeypatch.setattr(trainer_module, "gather_sizes", other_rank_empty_first)
    config = load_config(None, settings(videos, videos / "videos", tmp_path / "run", "list.txt",
                                        "train.epochs=1", "train.checkpoint_every=0"))
    trainer = trainer_module.Trainer(config)
    result = trainer.fit()
    # 3 steps per epoch; the first micro-batch taught nothing, so the run takes one from epoch 1.
    assert result.step == 3 and result.epoch == 1 and len(calls) == 4
    assert trainer.scheduler.last_epoch == 3
    steps = {int(state["step"]) for state in trainer.optimizer.state.values()}
    assert steps == {3}, steps  # AdamW stepped once per counted step, never on the empty one
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e.get("event") == "step without data"] == [0]
    checkpoints = CheckpointManager(tmp_path / "run" / "checkpoints").list()
    assert [step for step, _ in checkpoints] == [2, 3]  # the end of epoch 0 (after step 2), the end
