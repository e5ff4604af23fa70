"""Which frames a clip takes (docs/method.md section 3): ``T`` uniform segments, one frame each.

A video of ``N`` frames is cut into ``T`` equal segments; segment ``i`` covers frame positions
``[i*N/T, (i+1)*N/T)``. Frame ``k`` occupies ``[k, k+1)``.

- Testing takes the frame under the middle of each segment: ``floor((i + 1/2) * N / T)``.
- With ``num_clips`` temporal views, clip ``j`` takes the frame at ``(j + 1/2) / num_clips`` of each
  segment: ``floor((i + (j + 1/2) / num_clips) * N / T)``. One clip is the middle.
- Training draws uniformly among the frames that start inside the segment
  (``ceil(i*N/T) <= k < ceil((i+1)*N/T)``). These sets partition the video when ``N >= T``, so the
  ``T`` frames are distinct and every frame can be drawn.
- A video shorter than ``T`` frames repeats frames: a segment in which no frame starts takes the
  frame that covers it (training), and the middles of neighbouring segments fall on the same frame
  (testing). ``N = 1`` gives ``T`` copies of frame 0.

Everything is integer arithmetic, so both decoding paths (PyAV, DALI) get the same indices.
"""

from __future__ import annotations

import random as _random
from typing import List, Optional, Protocol


class RandomLike(Protocol):
    """What the samplers need from a random source (``random.Random`` and the ``random`` module fit)."""

    def randrange(self, start: int, stop: int) -> int: ...  # pragma: no cover

    def random(self) -> float: ...  # pragma: no cover


def _check(num_frames: int, num_segments: int) -> None:
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame to sample from, got num_frames={num_frames}")
    if num_segments < 1:
        raise ValueError(f"num_segments must be >= 1, got {num_segments}")


def middle_indices(num_frames: int, num_segments: int, clip: int = 0, num_clips: int = 1) -> List[int]:
    """Frame indices of temporal view ``clip`` of ``num_clips`` (testing; deterministic)."""
    _check(num_frames, num_segments)
    if not 0 <= clip < num_clips:
        raise ValueError(f"clip must be in [0, {num_clips}), got {clip}")
    # floor((i + (clip + 1/2) / num_clips) * N / T), with a common denominator 2 * T * num_clips.
    denominator = 2 * num_segments * num_clips
    return [
        ((2 * (i * num_clips + clip) + 1) * num_frames) // denominator for i in range(num_segments)
    ]


def random_indices(num_frames: int, num_segments: int, rng: Optional[RandomLike] = None) -> List[int]:
    """Frame indices of one random training clip.

    ``rng`` is anything with ``randrange`` (``random.Random``); by default the module-level
    ``random``, which PyTorch's DataLoader seeds differently in each worker.
    """
    _check(num_frames, num_segments)
    rng = rng if rng is not None else _random
    indices = []
    for i in range(num_segments):
        start = -((-i * num_frames) // num_segments)  # ceil(i * N / T)
        stop = -((-(i + 1) * num_frames) // num_segments)  # ceil((i + 1) * N / T)
        if stop > start:
            indices.append(rng.randrange(start, stop))
        else:  # no frame starts in this segment: the frame that covers it
            indices.append((i * num_frames) // num_segments)
    return indices


def clip_indices(
    num_frames: int,
    num_segments: int,
    *,
    training: bool,
    num_clips: int = 1,
    rng: Optional[RandomLike] = None,
) -> List[List[int]]:
    """Frame indices of every temporal clip of a video: one random clip when training, else
    ``num_clips`` deterministic ones (outer list: clips, inner: ``num_segments`` frame indices)."""
    if training:
        if num_clips != 1:
            raise ValueError("training samples one clip per video (num_clips must be 1)")
        return [random_indices(num_frames, num_segments, rng)]
    return [middle_indices(num_frames, num_segments, j, num_clips) for j in range(num_clips)]
