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
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
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


# --------------------------------------------------------------------------------------------
# One rule for training and evaluation (stzsar.devices)


def test_evaluation_takes_the_same_device_as_training(fake_nccl_rank):
    from stzsar.eval.distributed import DistContext
    from stzsar.eval.engine import resolve_device as eval_device

    rank1 = DistContext(rank=1, world_size=2, local_rank=1)
    for name in ("auto", "cuda", "cuda:1"):
        assert eval_device(name, rank1) == resolve_device(name, local_rank=1, distributed=True) \
            == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="conflicts with torchrun") as caught:
        eval_device("cuda:0", rank1)
    assert "LOCAL_RANK=1" in str(caught.value) and "cuda:1" in str(caught.value)
    assert eval_device("cpu", rank1) == torch.device("cpu")
    # No launcher: any visible GPU may be named, and auto is the first.
    assert eval_device("cuda:1") == torch.device("cuda", 1)
    assert eval_device("auto") == torch.device("cuda", 0)


def test_one_visible_gpu_per_rank_means_the_current_device(fake_nccl_rank, monkeypatch):
    """A launcher that gives each rank one GPU through CUDA_VISIBLE_DEVICES: LOCAL_RANK=1 sees one
    device, its own, as cuda:0 (eval's old rule, local_rank % count, agreed; training asked for
    cuda:1, which does not exist there)."""
    from stzsar.data import decode_dali
    from stzsar.eval.distributed import DistContext
    from stzsar.eval.engine import resolve_device as eval_device

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto", local_rank=1, distributed=True) == torch.device("cuda", 0)
    assert resolve_device("cuda", local_rank=1, distributed=True) == torch.device("cuda", 0)
    assert eval_device("auto", DistContext(1, 2, 1)) == torch.device("cuda", 0)
    assert decode_dali.default_device_id() == 0
    with pytest.raises(ValueError, match="runs on cuda:0"):
        resolve_device("cuda:1", local_rank=1, distributed=True)
    dist_utils.init_distributed("cuda")
    assert fake_nccl_rank["current"] == 0  # set_device(1) would fail with one visible GPU


def test_stzsar_eval_refuses_a_conflicting_device_before_the_process_group_starts(fake_nccl_rank, capsys,
                                                                                   tmp_path):
    from stzsar.cli.main import main

    code = main(["eval", "--protocol", "zero-shot", "--checkpoint", str(tmp_path / "ckpt.pt"),
                 "--list", str(tmp_path / "list.txt"), "--root", str(tmp_path), "--device", "cuda:0",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "--device=cuda:0 conflicts with torchrun" in err and "LOCAL_RANK=1" in err
    assert "backend" not in fake_nccl_rank  # no group was joined


def test_stzsar_eval_joins_gloo_for_a_cpu_device_on_a_gpu_machine(fake_nccl_rank, tmp_path, monkeypatch):
    """--device cpu under torchrun: the model on the CPU, so gloo (as training chooses), not NCCL."""
    from stzsar.cli.main import main

    joined = []
    monkeypatch.setattr(dist, "destroy_process_group", lambda *a, **k: joined.append(fake_nccl_rank.pop("backend")))
    main(["eval", "--protocol", "zero-shot", "--checkpoint", str(tmp_path / "missing.pt"),
          "--list", str(tmp_path / "list.txt"), "--root", str(tmp_path), "--device", "cpu",
          "--out", str(tmp_path / "out")])
    assert joined == ["gloo"]


def test_the_evaluation_gather_runs_on_the_ranks_gpu_under_nccl(fake_nccl_rank, monkeypatch):
    """NCCL's object collectives put their tensors on the current GPU: gather_meter makes it the
    rank's own for the collective, whatever the caller left current, and restores the caller's."""
    from stzsar.eval.distributed import gather_meter, init_distributed
    from stzsar.eval.meter import MultiViewMeter

    context = init_distributed("nccl")
    assert fake_nccl_rank["backend"] == "nccl" and fake_nccl_rank["current"] == 1
    torch.cuda.set_device(0)  # e.g. code run between init and the gather
    during = []

    def fake_all_gather_object(out, value):
        during.append(torch.cuda.current_device())
        out[0], out[1] = _meter_state([0]), value

    monkeypatch.setattr(dist, "all_gather_object", fake_all_gather_object)
    meter = MultiViewMeter(["a", "b"])
    meter.update(torch.tensor([[0.2, 0.8]]), torch.tensor([1]), torch.tensor([1]))
    merged = gather_meter(meter, context, expected=2)
    assert during == [1]
    assert fake_nccl_rank["current"] == 0
    assert merged.state_dict()["indices"].tolist() == [0, 1]


def test_a_group_started_elsewhere_gets_the_ranks_gpu(fake_nccl_rank):
    """eval's init_distributed reusing an NCCL group someone else started (without set_device)."""
    from stzsar.eval.distributed import init_distributed

    fake_nccl_rank["backend"] = "nccl"  # the group exists; the current device is still 0
    init_distributed()
    assert fake_nccl_rank["current"] == 1


def _meter_state(indices):
    from stzsar.eval.meter import MultiViewMeter

    meter = MultiViewMeter(["a", "b"])
    meter.update(torch.full((len(indices), 2), 0.5), torch.zeros(len(indices), dtype=torch.long),
                 torch.tensor(indices))
    return meter.state_dict()
