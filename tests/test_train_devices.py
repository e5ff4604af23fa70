"""Device choice under torchrun, without a GPU: collectives on the backend's device (NCCL takes CUDA
tensors only), DALI's GPU from LOCAL_RANK, and a clear error for a conflicting explicit device.

CUDA and the process group are replaced by recording fakes; what is checked is which device each
piece asks for, against the device that rank's LOCAL_RANK names."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from stzsar.train import distributed as dist_utils
from stzsar.train.trainer import resolve_device


@pytest.fixture
def fake_nccl_rank(monkeypatch):
    """Rank 1 of 2 on node-local GPU 1, as torchrun describes it; init_distributed runs against
    fakes that record the backend and the device it binds."""
    seen = {"current": 0}
    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "29999"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: seen.__setitem__("current", int(index)))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: seen["current"])
    monkeypatch.setattr(dist, "is_initialized", lambda: "backend" in seen)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: seen.__setitem__("backend", backend))
    monkeypatch.setattr(dist, "get_backend", lambda *a, **k: seen["backend"])
    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: 2)
    monkeypatch.setattr(dist, "get_rank", lambda *a, **k: 1)
    return seen


def test_collectives_are_built_on_the_gpu_of_the_local_rank_under_nccl(fake_nccl_rank, monkeypatch):
    info = dist_utils.init_distributed("cuda")
    assert fake_nccl_rank["backend"] == "nccl" and info.local_rank == 1
    assert dist_utils.collective_device() == torch.device("cuda", 1)

    # The helpers' own tensors: record the device each asks for (a CPU-only build cannot make a
    # CUDA tensor, so the fake hands back a CPU one) and what the collective receives.
    real_tensor = torch.tensor
    asked, reduced = [], []

    def recording_tensor(data, *args, device=None, **kwargs):
        asked.append(torch.device(device) if device is not None else None)
        return real_tensor(data, *args, **kwargs)

    monkeypatch.setattr(torch, "tensor", recording_tensor)
    monkeypatch.setattr(dist, "all_reduce", lambda tensor, *a, **k: reduced.append(tensor.clone()))
    assert dist_utils.all_reduce_mean(3.0) == pytest.approx(1.5)  # the fake sums nothing: 3 / 2
    assert dist_utils.any_rank(True) is True
    assert asked == [torch.device("cuda", 1), torch.device("cuda", 1)]
    assert len(reduced) == 2


def test_collectives_stay_on_the_cpu_under_gloo(fake_nccl_rank):
    info = dist_utils.init_distributed("cpu")
    assert fake_nccl_rank["backend"] == "gloo" and info.world_size == 2
    assert dist_utils.collective_device() == torch.device("cpu")


def test_an_explicit_device_that_conflicts_with_the_local_rank_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError) as caught:
        resolve_device("cuda:0", local_rank=1, distributed=True)
    message = str(caught.value)
    assert "train.device=cuda:0" in message and "LOCAL_RANK=1" in message and "cuda:1" in message
    assert resolve_device("cuda", local_rank=1, distributed=True) == torch.device("cuda", 1)
    assert resolve_device("auto", local_rank=1, distributed=True) == torch.device("cuda", 1)
    assert resolve_device("cuda:1", local_rank=1, distributed=True) == torch.device("cuda", 1)
    assert resolve_device("cuda:0", local_rank=1, distributed=False) == torch.device("cuda", 0)


def test_the_trainer_refuses_the_conflict_before_the_process_group_starts(fake_nccl_rank):
    from stzsar.config import load_config
    from stzsar.train.trainer import Trainer

    with pytest.raises(ValueError, match="conflicts with torchrun"):
        Trainer(load_config(None, ["train.device=cuda:0"]))
    assert "backend" not in fake_nccl_rank  # no group was joined


@pytest.mark.parametrize("local_rank, visible, current, expected", [
    ("2", 4, 0, 2),  # torchrun: the rank's own GPU, set_device or not
    (None, 4, 3, 3),  # no launcher: the current device
    ("2", 1, 0, 0),  # one visible GPU per rank (CUDA_VISIBLE_DEVICES): the current device
])
def test_dali_takes_its_gpu_from_the_local_rank(monkeypatch, local_rank, visible, current, expected):
    from stzsar.data import decode_dali

    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
    assert decode_dali.default_device_id() == expected
    # The decoder itself (its pipeline is built on first use, so no DALI is needed to construct it).
    monkeypatch.setattr(decode_dali, "dali_status", lambda: (True, "test"))
    assert decode_dali.DaliDecoder("gpu").device_id == expected
    assert decode_dali.DaliDecoder("gpu", device_id=1).device_id == 1
