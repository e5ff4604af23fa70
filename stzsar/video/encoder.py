"""The CLIP image encoder applied to video frames (docs/method.md section 3).

``VideoEncoder(frames [B, T, 3, H, W]) -> (frames [B, T, D], patches [B, T, Np, D])``: the class
token and the patch tokens of every frame, both after ``ln_post`` and the visual projection.
open_clip returns the patch tokens unprojected (``output_tokens=True``); projecting them here with
the same matrix puts them in the joint space the word features live in.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from stzsar.video.temporal import TemporalTransformer


class VideoEncoder(nn.Module):
    """Wraps an open_clip ``VisionTransformer`` (not a copy: the module is shared).

    Args:
        visual: ``open_clip`` model's ``.visual`` (a ViT with a class token).
        frozen_blocks: number of lower transformer blocks kept frozen, with the patch embedding,
            class/positional embeddings and ``ln_pre``; ``None`` freezes the first half (paper:
            6 of 12 for ViT-B/16). ``ln_post`` and the projection stay trainable.
        temporal_layers: layers of the optional residual temporal transformer over ``v_t`` (0: none).
    """

    def __init__(self, visual: nn.Module, frozen_blocks: Optional[int] = None, temporal_layers: int = 0):
        super().__init__()
        for attribute in ("conv1", "class_embedding", "transformer", "ln_post", "proj"):
            if not hasattr(visual, attribute):
                raise TypeError(
                    f"VideoEncoder needs an open_clip VisionTransformer with a class token; "
                    f"{type(visual).__name__} has no {attribute!r}"
                )
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
            raise TypeError("VideoEncoder supports class-token ViTs only (no attention pooling)")
        self.visual = visual
        self.patch_size = _pair(visual.patch_size)[0] if hasattr(visual, "patch_size") else visual.conv1.kernel_size[0]
        self.num_blocks = len(visual.transformer.resblocks)
        self.frozen_blocks = self.num_blocks // 2 if frozen_blocks is None else int(frozen_blocks)
        if not 0 <= self.frozen_blocks <= self.num_blocks:
            raise ValueError(f"frozen_blocks must be in [0, {self.num_blocks}], got {frozen_blocks}")
        self.dim = visual.proj.shape[1]
        self.temporal = TemporalTransformer(self.dim, temporal_layers) if temporal_layers > 0 else None
        self.apply_freezing()

    def apply_freezing(self) -> None:
        """Freeze the stem and the lower ``frozen_blocks`` blocks; everything above learns."""
        visual = self.visual
        for param in visual.parameters():
            param.requires_grad = True
        if self.frozen_blocks > 0:
            frozen = [visual.conv1, visual.ln_pre] + list(visual.transformer.resblocks[: self.frozen_blocks])
            for module in frozen:
                for param in module.parameters():
                    param.requires_grad = False
            visual.class_embedding.requires_grad = False
            visual.positional_embedding.requires_grad = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)

    def num_patches(self, height: int, width: int) -> int:
        return (height // self.patch_size) * (width // self.patch_size)

    def forward(self, video: Tensor) -> Tuple[Tensor, Tensor]:
        if video.dim() != 5 or video.shape[2] != 3:
            raise ValueError(f"video must be [B, T, 3, H, W], got {tuple(video.shape)}")
        B, T = video.shape[:2]
        visual = self.visual
        x = visual._embeds(video.flatten(0, 1))
        x = visual.transformer(x)
        x = visual.ln_post(x)
        x = x @ visual.proj  # [B*T, 1 + Np, D]
        frames = x[:, 0].unflatten(0, (B, T))
        patches = x[:, 1:].unflatten(0, (B, T))
        if self.temporal is not None:
            frames = self.temporal(frames)
        return frames, patches


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)
