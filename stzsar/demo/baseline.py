"""The ablation without STI: mean-pooled frame embeddings compared with the class embedding."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class MeanPoolHead(nn.Module):
    """``cos(z_c, mean_t v_t)``: the no-STI baseline with the STI module's ``similarity`` signature."""

    def __init__(self, dim: int, normalize: bool = True):
        super().__init__()
        self.dim = dim
        self.normalize = normalize

    def similarity(self, frames: Tensor, patches: Tensor, words: Tensor, word_mask: Tensor,
                   class_emb: Tensor) -> Tensor:
        if self.normalize:
            frames = F.normalize(frames, dim=-1)
        video = frames.mean(dim=1)
        return F.normalize(video, dim=-1) @ F.normalize(class_emb, dim=-1).t()
