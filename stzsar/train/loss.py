"""The in-batch loss of docs/method.md section 5 over the global batch of every rank.

Each rank holds ``b_r`` videos (ranks may differ when bad videos were skipped). The prompts of a
global batch are the prompts of all its labels; the text bank is frozen, so every rank selects
them from its own copy of the bank after gathering the labels (no text features travel). Each
rank scores its local videos against all global prompts (``[b_r, B]``), the rows are gathered
with gradient into the full ``[B, B]`` matrix, and every rank evaluates the same loss on it.

Gradient bookkeeping: the gather's backward sums, for rank ``r``'s block, the gradients sent by
the ``W`` identical losses, i.e. ``W * dL/dblock_r``; DDP then averages parameter gradients over
ranks, which gives exactly ``dL/dtheta`` of the single-device loss over the global batch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from stzsar.losses import multi_positive_contrastive_loss
from stzsar.ops.dispatch import mark_word_mask_checked
from stzsar.text import ClassBank
from stzsar.train.distributed import all_gather_no_grad, all_gather_with_grad


@dataclass
class BatchLoss:
    """The loss of one micro-batch and what it was computed over."""

    loss: Tensor  # scalar, identical on every rank
    logits: Tensor  # [B, B] over the global batch
    labels: Tensor  # [B] global labels
    indices: Tensor  # [B] dataset indices of the global batch (-1 where unknown)
    sizes: Tensor  # [W] videos per rank


def gather_sizes(local_size: int, device: torch.device) -> Tensor:
    """Videos per rank, ``[W]``."""
    return all_gather_no_grad(torch.tensor([local_size], dtype=torch.long, device=device))


def _pad_rows(tensor: Tensor, rows: int, value: float = 0.0) -> Tensor:
    missing = rows - tensor.shape[0]
    if missing == 0:
        return tensor
    pad = [0, 0] * (tensor.dim() - 1) + [0, missing]
    return F.pad(tensor, pad, value=value)


def in_batch_loss(
    forward: Callable[[Tensor, ClassBank], Tensor],
    video: Tensor,
    labels: Tensor,
    bank: ClassBank,
    indices: Optional[Tensor] = None,
    sizes: Optional[Tensor] = None,
    autocast: Optional[ContextManager] = None,
) -> BatchLoss:
    """The symmetric multi-positive loss of the global batch (see the module docstring).

    Args:
        forward: ``forward(video, prompts) -> logits [b, len(prompts)]`` (the model, DDP-wrapped
            when distributed).
        video: this rank's ``[b, T, 3, H, W]`` clips; labels: ``[b]`` their classes.
        bank: the class bank of every training class (frozen text features).
        indices: ``[b]`` dataset indices (reported by the NaN guard).
        sizes: ``[W]`` videos per rank when already known (:func:`gather_sizes`).
        autocast: context manager around the model's forward (bf16 autocast on GPU).
    """
    device = labels.device
    if sizes is None:
        sizes = gather_sizes(labels.shape[0], device)
    max_size = int(sizes.max())
    if indices is None:
        indices = torch.full_like(labels, -1)
    padded_labels = _pad_rows(labels.view(-1, 1), max_size, value=-1).view(-1)
    padded_indices = _pad_rows(indices.to(device).view(-1, 1), max_size, value=-1).view(-1)
    global_rows = torch.arange(max_size, device=device).view(1, -1) < sizes.view(-1, 1)
    valid = global_rows.flatten()
    global_labels = all_gather_no_grad(padded_labels)[valid]
    global_indices = all_gather_no_grad(padded_indices)[valid]
    prompts = bank.select(global_labels)
    # The bank's mask is checked once; its selected rows are not read again (a host sync a step).
    mark_word_mask_checked(prompts.word_mask, rows_of=bank.word_mask)
    with (autocast or contextlib.nullcontext()):
        logits = forward(video, prompts)
    if logits.shape != (labels.shape[0], global_labels.shape[0]):
        raise RuntimeError(
            f"the model returned logits {tuple(logits.shape)} for {labels.shape[0]} videos and "
            f"{global_labels.shape[0]} prompts"
        )
    full = all_gather_with_grad(_pad_rows(logits.float(), max_size))[valid]
    loss = multi_positive_contrastive_loss(full, global_labels)
    return BatchLoss(loss, full, global_labels, global_indices, sizes)
