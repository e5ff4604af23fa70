"""AdamW without decay on norms, biases and embeddings, and a cosine schedule after a warm-up."""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Tuple

import torch
from torch import nn

# Parameter names that are embeddings (positions, class token, tokens): no weight decay, as for
# CLIP's own training, even when they are 2-D.
_NO_DECAY_NAMES = ("positional_embedding", "class_embedding", "token_embedding", "temporal.position")


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """Norm weights and biases (1-D) and embeddings get no weight decay."""
    return param.ndim < 2 or name.endswith(".bias") or any(key in name for key in _NO_DECAY_NAMES)


def param_groups(model: nn.Module, weight_decay: float) -> List[Dict]:
    """Two AdamW groups over the trainable parameters: with and without weight decay."""
    decay, no_decay = [], []
    decay_names, no_decay_names = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if is_no_decay(name, param):
            no_decay.append(param)
            no_decay_names.append(name)
        else:
            decay.append(param)
            decay_names.append(name)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters")
    return [
        {"params": decay, "weight_decay": weight_decay, "names": decay_names},
        {"params": no_decay, "weight_decay": 0.0, "names": no_decay_names},
    ]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float,
                    betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW over the trainable parameters (norms, biases and embeddings without decay)."""
    groups = param_groups(model, weight_decay)
    for group in groups:
        group.pop("names")
    groups = [g for g in groups if g["params"]]
    # foreach is faster, but the plain loop keeps CPU runs bit-reproducible across resume.
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)


def cosine_with_warmup(step: int, total_steps: int, warmup_steps: int,
                       warmup_start: float = 0.0, min_ratio: float = 0.0) -> float:
    """Learning-rate factor at optimizer step ``step`` (0-based).

    Linear from ``warmup_start`` to 1 over ``warmup_steps``, then a half cosine from 1 down to
    ``min_ratio`` at ``total_steps``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_start + (1.0 - warmup_start) * (step / warmup_steps)
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                    warmup_start: float = 0.0, min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepped once per optimizer step (its state dict is just the step count)."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warmup_steps = min(int(warmup_steps), total_steps)

    def factor(step: int) -> float:
        return cosine_with_warmup(step, total_steps, warmup_steps, warmup_start, min_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def clip_gradients(parameters: Iterable[torch.nn.Parameter], max_norm) -> torch.Tensor:
    """Clip the global L2 norm to ``max_norm`` (no clipping when falsy); returns the norm before."""
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return torch.tensor(0.0)
    if max_norm:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.detach().float()) for p in params]))
