"""The data order of a run: seeded, shardable over ranks, and resumable mid-epoch.

- Epoch ``e`` visits the dataset in the permutation drawn from ``(seed, e)``.
- The permutation is cut into *global* micro-batches of ``G = world_size * per_rank`` videos
  (the incomplete tail is dropped, so every rank has equal batches, which the in-batch loss
  needs); rank ``r`` takes the ``r``-th slice of ``per_rank`` videos of each global micro-batch.
  A run on 2 ranks x 4 videos therefore sees exactly the global batches of a run on 1 rank x 8.
- Resuming skips the micro-batches an epoch already consumed (:meth:`EpochSampler.set_epoch`).
- Each video's random choices (frame positions, crop, flip) come from generators reseeded from
  ``(seed, epoch, index)`` just before it is loaded (:class:`SeededDataset`), so they do not
  depend on which worker loads it, how many workers there are, or where the run was resumed.
"""

from __future__ import annotations

import random
import signal
from typing import Any, Iterator, List

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (SplitMix64-style mixing; Python's hash() is salted)."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state ^= (int(value) + 0x9E3779B97F4A7C15 + (state << 6) + (state >> 2)) & 0xFFFFFFFFFFFFFFFF
        state = (state * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        state ^= state >> 31
    return state & 0x7FFFFFFFFFFFFFFF


class EpochSampler(Sampler[int]):
    """Indices for one rank: seeded permutation per epoch, equal global micro-batches, skip on resume.

    Args:
        size: videos in the dataset.
        per_rank: videos per rank per micro-batch.
        seed: the run's seed.
        rank, world_size: this rank and the number of ranks.
        shuffle: permute (training) or keep the dataset order.
    """

    def __init__(self, size: int, per_rank: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True):
        if per_rank < 1:
            raise ValueError(f"per_rank must be >= 1, got {per_rank}")
        global_batch = per_rank * world_size
        if size < global_batch:
            raise ValueError(
                f"the dataset has {size} videos, fewer than one global batch of {global_batch} "
                f"({world_size} rank(s) x {per_rank}); lower train.batch_size"
            )
        self.size = size
        self.per_rank = per_rank
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.epoch = 0
        self.skip = 0

    @property
    def batches_per_epoch(self) -> int:
        """Micro-batches per epoch (the same on every rank)."""
        return self.size // (self.per_rank * self.world_size)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Select the epoch's permutation and skip its first ``skip_batches`` micro-batches."""
        if not 0 <= skip_batches <= self.batches_per_epoch:
            raise ValueError(f"skip_batches must be in [0, {self.batches_per_epoch}], got {skip_batches}")
        self.epoch = epoch
        self.skip = skip_batches

    def epoch_order(self, epoch: int) -> List[int]:
        """The whole permutation of ``epoch`` (all ranks)."""
        if not self.shuffle:
            return list(range(self.size))
        generator = torch.Generator().manual_seed(_mix(self.seed, epoch))
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        order = self.epoch_order(self.epoch)
        global_batch = self.per_rank * self.world_size
        for batch in range(self.skip, self.batches_per_epoch):
            start = batch * global_batch + self.rank * self.per_rank
            yield from order[start : start + self.per_rank]

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.skip) * self.per_rank


class SeededDataset(Dataset):
    """Wraps a dataset so each item's randomness depends only on ``(seed, epoch, index)``.

    Before ``dataset[index]`` it reseeds Python's ``random``, NumPy's global generator and
    torch's CPU generator. In the main process (``num_workers=0``) the previous states are
    restored afterwards, so loading data never shifts the training step's own random stream.
    Set the epoch with :meth:`set_epoch` before creating the epoch's DataLoader iterator
    (workers receive a copy of the dataset when the iterator starts).
    """

    def __init__(self, dataset: Dataset, seed: int = 0):
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        # Expose the wrapped dataset's attributes (classes, skipped records, ...).
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int):
        seed = _mix(self.seed, self.epoch, index)
        in_main = get_worker_info() is None
        if in_main:
            saved = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        random.seed(seed)
        np.random.seed(seed % (2**32))
        # The CPU generator only: torch.manual_seed would also queue CUDA seeding (and record a
        # stack trace for it on every call), which data loading does not need.
        torch.default_generator.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            if in_main:
                random.setstate(saved[0])
                np.random.set_state(saved[1])
                torch.set_rng_state(saved[2])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _worker_init(worker_id: int) -> None:  # pragma: no cover - runs in worker processes
    # Keep intra-op threads at 1 per worker: workers x threads must not oversubscribe the CPU.
    torch.set_num_threads(1)
    # A terminal's Ctrl-C reaches every process of the group: the main process decides when to
    # stop (after the step in flight, which needs its workers) and shuts the workers down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
