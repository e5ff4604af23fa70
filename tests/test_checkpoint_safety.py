"""Checkpoints are read with torch.load(weights_only=True): a shared file cannot run code.

The malicious file below is a checkpoint of the right layout whose pickle, when loaded with the
unrestricted unpickler, calls a function that writes a marker file. The test checks that every
entry point that opens checkpoints refuses it with a clear error and that the marker never
appears; a file of the current layout round-trips, RNG states included, and so does a file of the
first layout (NumPy's RNG state stored as an array).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from stzsar.model import build_model
from stzsar.train.checkpoint import (
    FORMAT,
    VERSION,
    CheckpointError,
    capture_rng_state,
    load_model_from_checkpoint,
    read_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


class _RunsCode:
    """Unpickling this calls ``Path.touch(marker)``: what any code-running payload would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _malicious_checkpoint(tmp_path: Path) -> tuple:
    marker = tmp_path / "code-ran"
    path = tmp_path / "shared.pt"
    torch.save({"format": FORMAT, "version": VERSION, "model": {}, "extra": {"x": _RunsCode(marker)}}, path)
    return path, marker


def test_the_payload_would_run_code(tmp_path):
    """Control: the unrestricted unpickler does run it (so the refusal below is meaningful)."""
    path, marker = _malicious_checkpoint(tmp_path)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    path, marker = _malicious_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"refused.*pathlib.*could run code"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="refused"):
        load_model_from_checkpoint(path)
    assert not marker.exists()


def test_current_checkpoint_round_trips_with_rng_states(tmp_path):
    model = build_model("stzsar-tiny", None)
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    np.random.standard_normal()  # leaves a cached Gaussian in NumPy's state
    path = save_checkpoint(tmp_path / "ok.pt", model, step=2, extra={"note": "x"})
    expected = (random.random(), np.random.standard_normal(), torch.rand(1).item())
    payload = read_checkpoint(path)
    assert payload["step"] == 2 and payload["extra"] == {"note": "x"}
    restore_rng_state(payload["rng"][0])
    assert (random.random(), np.random.standard_normal(), torch.rand(1).item()) == expected
    loaded, _ = load_model_from_checkpoint(path)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_checkpoint_of_the_first_layout_still_loads(tmp_path):
    """NumPy's state as a tuple holding an array, as the first checkpoints stored it."""
    model = build_model("stzsar-tiny", None)
    path = save_checkpoint(tmp_path / "new.pt", model)
    payload = torch.load(path, weights_only=True)
    np.random.seed(11)
    payload["rng"][0]["numpy"] = np.random.get_state()
    payload["versions"]["torch"] = torch.__version__  # a TorchVersion, as the first layout stored
    expected = np.random.random()
    torch.save(payload, tmp_path / "old.pt")
    np.random.seed(0)
    restore_rng_state(read_checkpoint(tmp_path / "old.pt")["rng"][0])
    assert np.random.random() == expected
    assert capture_rng_state()["numpy"]["kind"] == "MT19937"
