"""Distributed helpers: process-group setup from ``torchrun``'s environment, and gathers.

Nothing here initialises a process group unless ``torchrun`` (or another launcher) set
``WORLD_SIZE`` > 1, so the same training command runs on one device without any launcher.
NCCL is used when the device is a GPU, gloo otherwise.

The in-batch loss needs the logits of every (video, prompt) pair of the *global* batch. Each rank
computes its local videos against the global prompts (the text bank is frozen, so prompts cost
nothing to share: only the labels travel), then :func:`all_gather_with_grad` assembles the full
``[B_global, B_global]`` matrix. Its backward sums the gradient that every rank's (identical)
loss sends to each block, which DDP's gradient averaging then divides by the world size: the
parameters get exactly the gradient of the single-device loss over the global batch.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, List, Optional

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK`` of the launcher; 0 without one)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def launched_world_size() -> int:
    """Processes in the run: the process group's size if one exists, else ``WORLD_SIZE``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return env_world_size()


def init_distributed(device_type: str = "cpu", timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group ``torchrun`` describes (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``).

    Returns a single-process :class:`DistInfo` when the environment has no ``WORLD_SIZE`` > 1,
    and reuses a group someone else initialised. The backend is NCCL for ``device_type ==
    "cuda"``, gloo otherwise.
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank())
    world_size = env_world_size()
    if world_size <= 1:
        return DistInfo()
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise RuntimeError(
                f"WORLD_SIZE={world_size} but {name} is not set; launch with torchrun "
                f"(e.g. torchrun --nproc_per_node 2 -m stzsar.cli train ...)"
            )
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed; run on one device")
    backend = "nccl" if device_type == "cuda" else "gloo"
    rank = int(os.environ["RANK"])
    local = local_rank()
    if device_type == "cuda":
        from stzsar.devices import rank_gpu

        torch.cuda.set_device(rank_gpu(local))
    dist.init_process_group(backend, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank, world_size, local, initialized_here=True)


def cleanup(info: DistInfo) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def collective_device() -> torch.device:
    """Where tensors of a collective must live: the current CUDA device under NCCL (which refuses
    CPU tensors; ``init_distributed`` made it ``cuda:LOCAL_RANK``), the CPU otherwise (gloo)."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if is_distributed():
        dist.barrier()


class _GatherRows(torch.autograd.Function):
    """``all_gather`` along dim 0 whose backward sums every rank's gradient of this rank's block.

    Built on ``all_gather`` and ``all_reduce``, which every backend has and no torch release
    deprecates (``torch.distributed.nn.functional.all_gather`` and ``all_gather_into_tensor``
    print FutureWarnings). The backward all-reduces the whole gradient and keeps this rank's
    rows: ``W`` times the traffic of a reduce-scatter, on tensors of ``[B, B]`` logits.
    """

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        ctx.rows, ctx.rank = tensor.shape[0], dist.get_rank()
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()  # all_reduce works in place
        dist.all_reduce(grad)
        return grad.narrow(0, ctx.rank * ctx.rows, ctx.rows)


def all_gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, differentiably.

    Every rank must pass the same shape. The backward sums the incoming gradients of all ranks
    for this rank's block.
    """
    if not is_distributed():
        return tensor
    return _GatherRows.apply(tensor)


def all_gather_no_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` from every rank along dim 0 (no gradient; same shape everywhere)."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def all_gather_object(value: Any) -> List[Any]:
    """Every rank's ``value`` (picklable), in rank order."""
    if not is_distributed():
        return [value]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def broadcast_object(value: Any, src: int = 0) -> Any:
    """``value`` from rank ``src`` on every rank."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(value: float, device: Optional[torch.device] = None) -> float:
    """The mean of a Python number over ranks (``device``: default :func:`collective_device`)."""
    if not is_distributed():
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=device or collective_device())
    dist.all_reduce(tensor)
    return float(tensor.item()) / dist.get_world_size()


def any_rank(flag: bool, device: Optional[torch.device] = None) -> bool:
    """True on every rank when ``flag`` is true on at least one (``device``: default
    :func:`collective_device`)."""
    if not is_distributed():
        return bool(flag)
    tensor = torch.tensor([1.0 if flag else 0.0], device=device or collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)
