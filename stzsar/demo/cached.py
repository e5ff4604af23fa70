"""The demo's clips: every synthetic video decoded once and kept in memory.

:class:`CachedVideoDataset` is :class:`stzsar.data.VideoDataset` with a cache of decoded frames
(the synthetic videos are tiny, and the demo reads each one once per epoch for three trainings).
Frame sampling, cropping and normalisation are the data module's own (``sample_indices``,
``video_from_frames``), so clips are exactly what the uncached dataset would give.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import torch
from torch import Tensor

from stzsar.data import ClipSpec, PyAVVideo, VideoDataset, VideoDecodeError, VideoSplit, sample_indices, video_from_frames


class CachedVideoDataset(VideoDataset):
    """A :class:`VideoDataset` whose videos are decoded once (all frames) and kept in memory."""

    def __init__(self, split: VideoSplit, spec: ClipSpec = ClipSpec(), **kwargs):
        super().__init__(split, spec, **kwargs)
        self._frames: Dict[int, Tuple[np.ndarray, int]] = {}

    def _decoded(self, index: int) -> Tuple[np.ndarray, int]:
        if index not in self._frames:
            path = self.split.locate(index)
            if path is None:
                raise VideoDecodeError(self.split.videos[index].path, "file not found")
            with PyAVVideo(path, threads=self.threads) as video:
                frames, rotation = video.read(list(range(video.num_frames)))
            self._frames[index] = (np.ascontiguousarray(frames), rotation)
        return self._frames[index]

    def preload(self) -> List[str]:
        """Decode every video now; returns the errors of the bad ones (they are skipped later)."""
        errors = []
        for index in range(len(self)):
            try:
                self._decoded(index)
            except VideoDecodeError as error:
                errors.append(str(error))
        return errors

    def load_item(self, index: int, rng=None) -> Tuple[Tensor, None]:
        # VideoDataset.__getitem__ and .load both go through load_item: overriding it is what
        # keeps training and evaluation on the cache (all frames decoded, so never short).
        frames, rotation = self._decoded(index)
        indices = sample_indices(len(frames), self.spec, training=self.training, rng=rng)
        clip = video_from_frames(torch.from_numpy(frames[indices]), rotation, self.spec,
                                 training=self.training, rng=rng)
        return clip, None
