"""Optional temporal transformer over the frame embeddings (BIKE's default, the paper's baseline)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TemporalTransformer(nn.Module):
    """``v + Transformer(v + pos)`` over time; the residual keeps CLIP's features at the start."""

    def __init__(self, dim: int, layers: int = 6, max_frames: int = 64, heads: int = 0):
        super().__init__()
        heads = heads or max(1, dim // 64)
        self.max_frames = max_frames
        self.position = nn.Parameter(torch.zeros(max_frames, dim))
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=4 * dim, dropout=0.0, activation="gelu",
            batch_first=True, norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        # Zero the output projections so the block starts as the identity on v.
        for block in self.encoder.layers:
            nn.init.zeros_(block.linear2.weight)
            nn.init.zeros_(block.linear2.bias)
            nn.init.zeros_(block.self_attn.out_proj.weight)
            nn.init.zeros_(block.self_attn.out_proj.bias)

    def forward(self, frames: Tensor) -> Tensor:
        T = frames.shape[1]
        if T > self.max_frames:
            raise ValueError(f"{T} frames exceed the temporal transformer's {self.max_frames}")
        return frames + self.encoder(frames + self.position[:T].to(frames.dtype))
