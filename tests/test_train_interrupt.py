"""Ctrl-C from a terminal (SIGINT to the whole process group, DataLoader workers included): the
run stops after the step in flight with a checkpoint, exit 130 and the resume command, the notice
printed once; a second Ctrl-C while a checkpoint is being written ends the run at once, also with
exit 130 and no traceback, every checkpoint on disk whole."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stzsar.train.checkpoint import CheckpointManager, read_checkpoint
from train_videos import write_training_set

# Runs `stzsar train` with torch.save slowed down once `slow` exists: after writing a checkpoint's
# bytes to its temporary file it says so (`writing`) and waits, so that a signal lands mid-write.
HARNESS = '''
import os, sys, time
import torch
slow, writing = sys.argv[1], sys.argv[2]
real_save = torch.save
def slow_save(obj, handle, *args, **kwargs):
    real_save(obj, handle, *args, **kwargs)
    if os.path.exists(slow) and not os.path.exists(writing):
        open(writing, "w").close()
        time.sleep(120)
torch.save = slow_save
from stzsar.cli.main import main
sys.exit(main(sys.argv[3:]))
'''

NOTICE = "Ctrl-C: stopping after the current step"


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    write_training_set(root)
    return root


def _wait_for(condition, proc, seconds, what):
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        if condition():
            return
        time.sleep(0.1)
    assert proc.poll() is None and condition(), f"{what}: {proc.communicate(timeout=60)}"


def _interrupt_training(videos: Path, tmp_path: Path, second: bool):
    """Start `stzsar train` with 2 DataLoader workers, Ctrl-C it once a checkpoint exists, and with
    ``second`` Ctrl-C it again while the next checkpoint is being written. Returns (exit status,
    stderr, run folder)."""
    run = tmp_path / "run"
    settings = [
        "model.name=stzsar-tiny", "model.pretrained=null", "model.frozen_blocks=0", "model.backend=torch",
        f"data.root={videos}", f"data.train_list={videos / 'train.txt'}", f"data.labels={videos / 'labels.csv'}",
        "data.num_frames=4", "data.size=32", "data.short_side=36", "data.num_workers=2",
        "train.batch_size=4", "train.epochs=200", "train.progress=false", "train.tensorboard=false",
        "train.log_every=1", "train.checkpoint_every=1", f"train.output_dir={run}",
    ]
    harness = tmp_path / "harness.py"
    harness.write_text(HARNESS)
    slow, writing = tmp_path / "slow", tmp_path / "writing"
    command = [sys.executable, str(harness), str(slow), str(writing), "train"]
    command += [a for s in settings for a in ("--set", s)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        _wait_for(lambda: CheckpointManager(run / "checkpoints").list(), proc, 240, "no checkpoint written")
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the trainer and its workers
        if second:
            slow.touch()  # the next checkpoint write (the one the first Ctrl-C asks for, at the latest) waits
            _wait_for(writing.exists, proc, 120, "no checkpoint write began")
            os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, err, run


def _checkpoints_are_whole(run: Path):
    folder = run / "checkpoints"
    assert not list(folder.glob(".*.tmp*")), list(folder.iterdir())  # no write left half done
    saved = CheckpointManager(folder).list()
    assert saved
    for step, path in saved:
        assert read_checkpoint(path)["step"] == step
    return saved


def test_ctrl_c_stops_with_a_checkpoint_and_the_resume_command_announced_once(videos, tmp_path):
    code, err, run = _interrupt_training(videos, tmp_path, second=False)
    assert code == 130, err
    assert "Traceback" not in err, err
    assert err.count(NOTICE) == 1, err  # not once per worker
    assert f"continue with: stzsar train --resume {run}" in err, err
    saved = _checkpoints_are_whole(run)
    assert f"checkpoint: {saved[-1][1]}" in err, err


def test_second_ctrl_c_during_a_checkpoint_write_exits_130_without_a_traceback(videos, tmp_path):
    code, err, run = _interrupt_training(videos, tmp_path, second=True)
    assert code == 130, err
    assert "Traceback" not in err, err
    assert err.count(NOTICE) == 1, err
    assert "stopped at once (Ctrl-C)" in err, err
    _checkpoints_are_whole(run)
    latest = CheckpointManager(run / "checkpoints").latest()
    assert f"last complete checkpoint: {latest}" in err, err
    assert f"continue with: stzsar train --resume {run}" in err, err
