"""What a clip looks like: frames, size, views and normalisation, shared by every decoding path."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

#: Mean and standard deviation of the OpenAI CLIP image preprocessing (RGB, on [0, 1] pixels).
CLIP_MEAN: Tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: Tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipSpec:
    """How videos become tensors.

    Attributes:
        num_frames: ``T``, frames per clip, one per equal temporal segment (docs/method.md section 3).
        size: side of the square crop fed to the image encoder (224 for ViT-B/16).
        short_side: the short side of a frame is resized to this before cropping. ``None``: ``size``
            when testing (the crop then spans the whole short side, as CLIP's own preprocessing),
            ``round(size * 8 / 7)`` (256 for 224) when training, leaving room for random crops.
        num_clips: temporal views when testing (different positions inside each segment).
        num_crops: spatial views when testing: 1 (centre) or 3 (both ends and the centre of the
            long side).
        hflip: probability of a horizontal flip of the whole clip when training.
        mean, std: per-channel normalisation (CLIP's by default).
    """

    num_frames: int = 8
    size: int = 224
    short_side: Optional[int] = None
    num_clips: int = 1
    num_crops: int = 1
    hflip: float = 0.0
    mean: Tuple[float, float, float] = field(default=CLIP_MEAN)
    std: Tuple[float, float, float] = field(default=CLIP_STD)

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ValueError(f"ClipSpec.num_frames must be >= 1, got {self.num_frames}")
        if self.size < 1:
            raise ValueError(f"ClipSpec.size must be >= 1, got {self.size}")
        if self.short_side is not None and self.short_side < self.size:
            raise ValueError(
                f"ClipSpec.short_side ({self.short_side}) must be >= size ({self.size}): "
                "a crop cannot be larger than the resized frame"
            )
        if self.num_clips < 1:
            raise ValueError(f"ClipSpec.num_clips must be >= 1, got {self.num_clips}")
        if self.num_crops not in (1, 3):
            raise ValueError(f"ClipSpec.num_crops must be 1 or 3, got {self.num_crops}")
        if not 0.0 <= self.hflip <= 1.0:
            raise ValueError(f"ClipSpec.hflip is a probability, got {self.hflip}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("ClipSpec.mean and std need three values each, std > 0")

    @property
    def num_views(self) -> int:
        """Views per video when testing: ``num_clips * num_crops`` (view ``v = clip * num_crops + crop``)."""
        return self.num_clips * self.num_crops

    def resize_to(self, training: bool) -> int:
        """The short side that frames are resized to."""
        if self.short_side is not None:
            return self.short_side
        return (self.size * 8 + 3) // 7 if training else self.size

    def output_shape(self, training: bool) -> Tuple[int, ...]:
        """Shape of one video's tensor: ``[T, 3, S, S]``, or ``[V, T, 3, S, S]`` with several views."""
        clip = (self.num_frames, 3, self.size, self.size)
        if training or self.num_views == 1:
            return clip
        return (self.num_views,) + clip

    def check_training(self) -> None:
        """Training takes one random clip a video; multi-view settings there are a mistake."""
        if self.num_views != 1:
            raise ValueError(
                f"multi-view clips (num_clips={self.num_clips}, num_crops={self.num_crops}) are for "
                "testing; training samples one random clip per video"
            )
