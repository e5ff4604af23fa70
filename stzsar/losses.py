"""The training objective of docs/method.md section 5: a symmetric multi-positive cross-entropy.

For B videos and the B class prompts of their labels, every (video, prompt) pair with equal labels
is a positive. For each video: a softmax over the prompts, its log-probabilities averaged over the
positive prompts. For each prompt: a softmax over the videos, averaged over the positive videos.
The loss is the mean of the two directions, each averaged over its rows.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def _multi_positive_ce(logits: Tensor, positives: Tensor) -> Tensor:
    """Mean over rows of ``-mean_{j in P_i} log softmax(logits_i)_j``."""
    log_prob = logits.float().log_softmax(dim=1)
    count = positives.sum(dim=1)
    if bool((count == 0).any()):
        raise ValueError("every row needs at least one positive (a prompt of its own label)")
    return -((log_prob * positives).sum(dim=1) / count).mean()


def multi_positive_contrastive_loss(
    logits: Tensor, video_labels: Tensor, text_labels: Optional[Tensor] = None
) -> Tensor:
    """Symmetric multi-positive cross-entropy of docs/method.md section 5.

    Args:
        logits: ``[Bv, Bt]`` scaled similarities between videos (rows) and prompts (columns).
        video_labels: ``[Bv]`` class of each video.
        text_labels: ``[Bt]`` class of each prompt; defaults to ``video_labels`` (the prompts of
            the batch's own labels, as in training).
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be [Bv, Bt], got {tuple(logits.shape)}")
    if text_labels is None:
        text_labels = video_labels
    if video_labels.shape != (logits.shape[0],) or text_labels.shape != (logits.shape[1],):
        raise ValueError(
            f"labels {tuple(video_labels.shape)} / {tuple(text_labels.shape)} do not match logits "
            f"{tuple(logits.shape)}"
        )
    positives = (video_labels.view(-1, 1) == text_labels.view(1, -1)).float()
    video_to_text = _multi_positive_ce(logits, positives)
    text_to_video = _multi_positive_ce(logits.t(), positives.t())
    return 0.5 * (video_to_text + text_to_video)
