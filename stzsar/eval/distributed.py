"""Sharded evaluation under ``torchrun``: each rank scores its own videos, the meters are gathered.

Sharding is by video, without padding: rank ``r`` of ``W`` takes dataset indices ``r, r + W,
r + 2W, ...``. ``DistributedSampler`` instead pads the index list to a multiple of ``W`` by
repeating videos, which would count a few videos twice in the accuracy; here shards may differ in
size by one, and :func:`gather_meter` checks after gathering that every dataset index was scored or
skipped exactly once, on exactly one rank.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator, List, Optional

import torch
import torch.distributed as dist

from stzsar.devices import rank_gpu
from stzsar.eval.meter import MultiViewMeter
from stzsar.train.distributed import DistInfo, cleanup
from stzsar.train.distributed import init_distributed as _init_process_group

logger = logging.getLogger(__name__)


class DistContext(DistInfo):
    """Where this process stands (the trainer's :class:`~stzsar.train.distributed.DistInfo`)."""

    def close(self) -> None:
        """Destroy the process group if :func:`init_distributed` created it."""
        cleanup(self)
        self.initialized_here = False


def init_distributed(backend: Optional[str] = None) -> DistContext:
    """Join the process group ``torchrun`` describes; a plain ``python`` run is world size 1.

    ``backend`` defaults to NCCL when CUDA is available, gloo otherwise.
    """
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    info = _init_process_group("cuda" if backend == "nccl" else "cpu")
    context = DistContext(info.rank, info.world_size, info.local_rank, info.initialized_here)
    if context.distributed and dist.get_backend() == "nccl":
        # Also for a group someone else started: NCCL's object collectives (the store's broadcast,
        # gather_meter) run on the current GPU, which must be this rank's own.
        torch.cuda.set_device(rank_gpu(context.local_rank))
    return context


@contextlib.contextmanager
def rank_device(context: DistInfo) -> Iterator[None]:
    """Under NCCL, this rank's GPU as the current device for the block (restored after): the
    object collectives place their tensors on the current GPU, and a rank whose current device is
    another GPU would hang the collective or share a GPU with another rank. Gloo: nothing."""
    if not (context.distributed and dist.get_backend() == "nccl"):
        yield
        return
    previous, own = torch.cuda.current_device(), rank_gpu(context.local_rank)
    if previous == own:
        yield
        return
    torch.cuda.set_device(own)
    try:
        yield
    finally:
        torch.cuda.set_device(previous)


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
        with rank_device(context):
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
