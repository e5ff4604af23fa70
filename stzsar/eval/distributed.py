"""Sharded evaluation under ``torchrun``: each rank scores its own videos, the meters are gathered.

Sharding is by video, without padding: rank ``r`` of ``W`` takes dataset indices ``r, r + W,
r + 2W, ...``. ``DistributedSampler`` instead pads the index list to a multiple of ``W`` by
repeating videos, which would count a few videos twice in the accuracy; here shards may differ in
size by one, and :func:`gather_meter` checks after gathering that every dataset index was scored or
skipped exactly once, on exactly one rank.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.distributed as dist

from stzsar.eval.meter import MultiViewMeter

logger = logging.getLogger(__name__)


@dataclass
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` (1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    #: True when :func:`init_distributed` created the process group (so it should destroy it)
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def init_distributed(backend: Optional[str] = None) -> DistContext:
    """Join the process group ``torchrun`` describes in the environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``); a plain ``python`` run is world size 1.

    ``backend`` defaults to NCCL when CUDA is available, gloo otherwise.
    """
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)  # all_gather_object uses the current device with NCCL
    dist.init_process_group(backend=backend)
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=True)


def shard_indices(num_items: int, rank: int, world_size: int) -> List[int]:
    """Dataset indices of rank ``rank``: ``rank, rank + W, ...`` (no padding, no repeats)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    if num_items < 0:
        raise ValueError(f"num_items must be >= 0, got {num_items}")
    return list(range(rank, num_items, world_size))


def _coverage_error(per_rank: List[dict], expected: Optional[int]) -> Optional[str]:
    owner = {}
    for rank, state in enumerate(per_rank):
        seen = set(state["indices"].tolist()) | {s["index"] for s in state["skipped"] if s["index"] >= 0}
        for index in seen:
            if index in owner:
                return f"video {index} was evaluated on rank {owner[index]} and on rank {rank}"
            owner[index] = rank
    if expected is not None:
        missing = sorted(set(range(expected)) - set(owner))
        extra = sorted(set(owner) - set(range(expected)))
        if missing:
            return f"{len(missing)} of {expected} videos were neither scored nor skipped (first: {missing[:8]})"
        if extra:
            return f"indices {extra[:8]} lie outside the dataset of {expected} videos"
    return None


def gather_meter(meter: MultiViewMeter, context: Optional[DistContext] = None,
                 expected: Optional[int] = None) -> MultiViewMeter:
    """All ranks' collected views in one meter (returned on every rank).

    Args:
        meter: this rank's meter.
        context: the process group description (world size 1: ``meter`` is only checked).
        expected: the dataset size; when given, every index ``0..expected-1`` must have been scored
            or skipped on exactly one rank, else ``RuntimeError`` says which were not.
    """
    context = context or DistContext()
    state = meter.state_dict()
    if context.distributed:
        per_rank: List[Optional[dict]] = [None] * context.world_size
        # Pickled CPU tensors: the state is small (C floats per video) next to the evaluation.
        dist.all_gather_object(per_rank, state)
    else:
        per_rank = [state]
    problem = _coverage_error(per_rank, expected)
    if problem:
        raise RuntimeError(f"distributed evaluation lost or repeated videos: {problem}")
    if not context.distributed:
        return meter
    merged = MultiViewMeter(meter.class_names, topk=meter.topk)
    for rank_state in per_rank:
        merged.load_state(rank_state)
    return merged
