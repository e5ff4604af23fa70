"""Frame geometry and normalisation shared by the PyAV and DALI paths.

Decoded frames arrive as ``uint8 [F, H, W, 3]`` tensors (RGB, on any device). :func:`make_views`
turns them into normalised float views:

1. the short side is resized to ``ClipSpec.resize_to(training)`` (bilinear with antialiasing, the
   long side scaled by the same factor and rounded to the nearest pixel);
2. a square ``size x size`` window is cropped: a random one when training (the same window for all
   frames of a clip), else the centre, or with 3 crops both ends and the centre of the long side;
3. pixels are scaled to ``[0, 1]`` and normalised with the CLIP mean and std.

All geometry is plain integer arithmetic in :func:`resized_shape`, :func:`crop_windows` and
:func:`random_crop_window`, so any decoder that hands over the same frames gets the same views.
"""

from __future__ import annotations

import random as _random
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .sampling import RandomLike
from .spec import ClipSpec


def resized_shape(height: int, width: int, short_side: int) -> Tuple[int, int]:
    """``(height, width)`` after scaling the short side to ``short_side`` (long side rounded half up)."""
    if height < 1 or width < 1:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    short = min(height, width)

    def scale(side: int) -> int:
        return short_side if side == short else (2 * side * short_side + short) // (2 * short)

    return scale(height), scale(width)


def crop_windows(height: int, width: int, size: int, num_crops: int = 1) -> List[Tuple[int, int]]:
    """Top-left corners ``(top, left)`` of the test crops of a ``height x width`` frame.

    One crop: the centre. Three crops: both ends and the centre of the long side, centred on the
    short side (order: start, centre, end).
    """
    if size > height or size > width:
        raise ValueError(f"crop {size}x{size} does not fit in a {height}x{width} frame")
    centre = ((height - size) // 2, (width - size) // 2)
    if num_crops == 1:
        return [centre]
    if num_crops != 3:
        raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
    if width >= height:
        return [(centre[0], 0), centre, (centre[0], width - size)]
    return [(0, centre[1]), centre, (height - size, centre[1])]


def random_crop_window(height: int, width: int, size: int, rng: Optional[RandomLike] = None) -> Tuple[int, int]:
    """A uniformly random top-left corner of a ``size x size`` crop (training)."""
    if size > height or size > width:
        raise ValueError(f"crop {size}x{size} does not fit in a {height}x{width} frame")
    rng = rng if rng is not None else _random
    return rng.randrange(0, height - size + 1), rng.randrange(0, width - size + 1)


def orient(frames: torch.Tensor, rotation: int) -> torch.Tensor:
    """Rotate ``[F, H, W, C]`` frames upright from their display-matrix rotation.

    ``rotation`` is the angle (degrees, a multiple of 90) by which the stored frames must turn
    counter-clockwise to display correctly, as FFmpeg's display matrix and
    :attr:`av.VideoFrame.rotation` give it (phone videos shot upright read -90 or 90).
    """
    if rotation % 90 != 0:
        raise ValueError(f"only rotations by multiples of 90 degrees are supported, got {rotation}")
    turns = (rotation // 90) % 4
    if turns == 0:
        return frames
    # torch.rot90 over (H, W) turns counter-clockwise for positive k, as the display matrix does.
    return torch.rot90(frames, turns, dims=(1, 2)).contiguous()


def normalize(frames: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x / 255 - mean) / std`` per channel for float frames ``[..., 3, H, W]`` in ``[0, 255]``."""
    mean_t = torch.tensor(mean, dtype=frames.dtype, device=frames.device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=frames.dtype, device=frames.device).view(3, 1, 1)
    return (frames / 255.0 - mean_t) / std_t


def make_views(
    frames: torch.Tensor,
    spec: ClipSpec,
    *,
    training: bool,
    num_clips: int = 1,
    rng: Optional[RandomLike] = None,
) -> torch.Tensor:
    """Turn decoded frames into normalised views ``float32 [V, T, 3, size, size]``.

    Args:
        frames: ``uint8 [num_clips * T, H, W, 3]``, upright RGB, clip after clip.
        spec: the clip settings.
        training: one random crop (and an optional flip) instead of the test crops.
        num_clips: how many temporal clips ``frames`` holds.
        rng: source of the random crop and flip (``random.Random``-like).

    Views are ordered ``v = clip * num_crops + crop``.
    """
    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [F, H, W, 3], got {tuple(frames.shape)}")
    count, height, width = frames.shape[:3]
    if count != num_clips * spec.num_frames:
        raise ValueError(f"expected {num_clips} x {spec.num_frames} frames, got {count}")
    out_h, out_w = resized_shape(height, width, spec.resize_to(training))
    x = frames.permute(0, 3, 1, 2).float()
    if (out_h, out_w) != (height, width):
        # Antialiasing matters when shrinking (e.g. 1080p to 224): plain bilinear would alias.
        x = F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=True)
        x = x.clamp_(0.0, 255.0)  # the antialiasing kernel can overshoot slightly
    size = spec.size
    x = x.view(num_clips, spec.num_frames, 3, out_h, out_w)
    if training:
        rng = rng if rng is not None else _random
        top, left = random_crop_window(out_h, out_w, size, rng)
        views = x[:, :, :, top : top + size, left : left + size]
        if spec.hflip > 0 and rng.random() < spec.hflip:
            views = views.flip(-1)
    else:
        windows = crop_windows(out_h, out_w, size, spec.num_crops)
        views = torch.stack(
            [x[:, :, :, top : top + size, left : left + size] for top, left in windows], dim=1
        ).flatten(0, 1)
    return normalize(views.contiguous(), spec.mean, spec.std)
