"""Resuming or loading a checkpoint of another model size names both models, not a list of
parameter names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from stzsar.model import build_model
from stzsar.train.checkpoint import CheckpointError, load_weights, read_checkpoint, save_checkpoint
from stzsar.train.optim import build_optimizer, build_scheduler


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory) -> Path:
    """A resumable stzsar-small checkpoint (model, optimizer, scheduler), as a run writes it."""
    folder = tmp_path_factory.mktemp("small")
    model = build_model("stzsar-small", None, frozen_blocks=0, backend="torch")
    optimizer = build_optimizer(model, 1e-3, 0.05, (0.9, 0.999), 1e-8)
    scheduler = build_scheduler(optimizer, 10, 0, 0.0, 0.0)
    return save_checkpoint(folder / "step_00000001.pt", model, optimizer, scheduler, step=1,
                           extra={"global_micro_batch": 2})


@pytest.fixture
def tiny_run(tmp_path) -> Path:
    """A stzsar-tiny training configuration over a list whose videos are never read (the
    resume check comes first)."""
    (tmp_path / "list.txt").write_text("a.mp4 0\nb.mp4 1\n")
    (tmp_path / "labels.csv").write_text("id,name\n0,red spinning\n1,blue spinning\n")
    config = {
        "model": {"name": "stzsar-tiny", "pretrained": None, "frozen_blocks": 0, "backend": "torch"},
        "data": {"root": str(tmp_path), "train_list": str(tmp_path / "list.txt"),
                 "labels": str(tmp_path / "labels.csv"), "num_frames": 2, "size": 32, "num_workers": 0},
        "train": {"batch_size": 2, "epochs": 1, "progress": False, "tensorboard": False,
                  "output_dir": str(tmp_path / "run")},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_resuming_another_model_size_names_both(small_checkpoint, tiny_run, capsys):
    from stzsar.cli.main import main

    assert read_checkpoint(small_checkpoint)["model_config"]["name"] == "stzsar-small"
    code = main(["train", "--config", str(tiny_run), "--resume", str(small_checkpoint)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "model.name=stzsar-small in the checkpoint, stzsar-tiny here" in err, err
    assert "--set model.name=stzsar-small" in err, err
    assert "unexpected [" not in err  # the parameter lists are not the message


def test_loading_weights_into_another_model_size_names_both(small_checkpoint):
    tiny = build_model("stzsar-tiny", None, frozen_blocks=0, backend="torch")
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    with pytest.raises(CheckpointError) as caught:
        load_weights(tiny, read_checkpoint(small_checkpoint), source=str(small_checkpoint))
    message = str(caught.value)
    assert "another model (model.name=stzsar-small in the checkpoint, stzsar-tiny here)" in message
    assert "weights do not fit" in message
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())  # nothing was loaded
