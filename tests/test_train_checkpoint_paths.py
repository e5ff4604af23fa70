"""One rule for where a checkpoint is, wherever one is read: a file, or a folder's latest checkpoint
(a run folder or its checkpoints/ folder); a missing one is named exactly as given."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from stzsar.cli.main import main
from stzsar.demo.actions import encode_video, render_video
from stzsar.model import build_model
from stzsar.train.checkpoint import (
    CheckpointError,
    CheckpointManager,
    load_model_from_checkpoint,
    locate_checkpoint,
    read_checkpoint,
)

CLASSES = ["red spinning", "blue spinning", "red moving right"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run folder as stzsar train leaves it: checkpoints of steps 1 and 2, ``latest`` naming 2."""
    folder = tmp_path_factory.mktemp("paths") / "run"
    torch.manual_seed(0)
    model = build_model("stzsar-tiny", None, backend="torch")
    manager = CheckpointManager(folder / "checkpoints")
    for step in (1, 2):
        manager.save(step, model=model, config={"data": {"num_frames": 2}})
    return folder


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    lines = []
    for n, name in enumerate(CLASSES):
        colour, motion = name.split(" ", 1)
        encode_video(root / "videos" / f"v{n}.mp4", render_video(colour, motion, 6, 36, random.Random(n)))
        lines.append(f"v{n}.mp4 {n}")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    (root / "labels.csv").write_text("id,name\n" + "".join(f"{i},{c}\n" for i, c in enumerate(CLASSES)))
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root


def test_a_file_or_a_folder_names_one_checkpoint(run, tmp_path):
    step_2 = run / "checkpoints" / "step_00000002.pt"
    assert locate_checkpoint(step_2) == step_2
    assert locate_checkpoint(run / "checkpoints" / "step_00000001.pt").name == "step_00000001.pt"
    for given in (run, f"{run}/", run / "checkpoints", f"{run / 'checkpoints'}/"):
        assert locate_checkpoint(given) == step_2, given
    # Without the pointer the highest step counts.
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "step_00000007.pt").write_bytes(step_2.read_bytes())
    (bare / "step_00000010.pt").write_bytes(step_2.read_bytes())
    assert locate_checkpoint(bare).name == "step_00000010.pt"


def test_missing_checkpoints_are_named_as_given(run, tmp_path):
    with pytest.raises(CheckpointError) as caught:
        locate_checkpoint("runs/no_such_run/")
    assert str(caught.value) == "checkpoint not found: runs/no_such_run/"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=f"no checkpoint in the folder {empty}/: "):
        locate_checkpoint(f"{empty}/")


def test_python_loaders_take_a_run_folder(run):
    assert read_checkpoint(run)["step"] == 2
    model, meta = load_model_from_checkpoint(f"{run}/")
    assert meta["step"] == 2 and meta["path"] == str(run / "checkpoints" / "step_00000002.pt")


def test_every_command_reads_a_run_folder_and_names_a_missing_one_as_given(run, clips, tmp_path, capsys):
    video = str(clips / "videos" / "v0.mp4")
    common = ["--classes", str(clips / "classes.txt"), "--num-frames", "2", "--device", "cpu"]
    eval_args = ["eval", "--protocol", "zero-shot", "--list", str(clips / "list.txt"), "--labels",
                 str(clips / "labels.csv"), "--root", str(clips / "videos"), "--splits", "1",
                 "--num-frames", "2", "--workers", "0", "--device", "cpu", "--no-progress", "--no-cache"]

    assert main(["predict", video, *common, "--checkpoint", f"{run}/", "--json"]) == 0
    capsys.readouterr()
    out = tmp_path / "eval"
    assert main(eval_args + ["--checkpoint", f"{run}/", "--out", str(out)]) == 0
    capsys.readouterr()
    # The report names the file that was read.
    assert str(run / "checkpoints" / "step_00000002.pt") in (out / "report.json").read_text()

    missing = f"{tmp_path}/no_such_run/"
    commands = {
        "predict": ["predict", video, *common, "--checkpoint", missing],
        "explain": ["explain", video, *common, "--checkpoint", missing, "--out", str(tmp_path / "x.png")],
        "eval": eval_args + ["--checkpoint", missing, "--out", str(tmp_path / "eval2")],
        "train": ["train", "--resume", missing],
    }
    for name, args in commands.items():
        assert main(args) != 0, name
        err = capsys.readouterr().err
        assert f"checkpoint not found: {missing}" in err, (name, err)
