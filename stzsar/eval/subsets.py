"""The random class-subset protocol (BIKE, Text4Vis), computed from stored logits.

Part of the zero-shot literature reports top-1 on a random fraction of the test classes (half, in
BIKE and Text4Vis), averaged over several draws, instead of on the full class list of each split
(X-CLIP, ViFi-CLIP, FROSTER and the paper, docs/method.md section 6). The two figures are not
comparable; reports print them in separate, labelled tables.

For each of ``num_draws`` draws (one ``numpy.random.default_rng(seed)`` generator, drawn in
order), ``floor(fraction * C)`` classes are chosen without replacement. The test videos whose
label is among them are scored with predictions restricted to the subset: each view's softmax over
the subset's logits, averaged over the video's views, then top-1/top-k within the subset. The
logit of a (video, class) pair does not depend on the other classes, so no video is scored again.
The confusion matrix is summed over the draws (in the full class list's indices), which gives
every class's accuracy over the draws that contained it and the most confused pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence

import numpy as np
import torch

from stzsar.eval.meter import view_probs
from stzsar.eval.store import StoredRecords


@dataclass
class SubsetDraw:
    """One draw: the class indices it kept and the accuracies on their videos (percent)."""

    classes: List[int]
    videos: int
    top1: float
    top5: float


@dataclass
class SubsetResult:
    """Mean +- population std (``ddof=0``) over the draws, and the per-class view of them."""

    num_draws: int
    fraction: float
    seed: int
    classes_per_draw: int
    topk: tuple
    draws: List[SubsetDraw]
    top1_mean: float
    top1_std: float
    top5_mean: float
    top5_std: float
    per_class_accuracy: np.ndarray
    per_class_count: np.ndarray
    confusion: np.ndarray


def draw_class_subsets(num_classes: int, num_draws: int, fraction: float = 0.5, seed: int = 0) -> List[np.ndarray]:
    """``num_draws`` sorted class-index arrays of ``floor(fraction * num_classes)`` classes each."""
    if num_draws < 1:
        raise ValueError(f"the number of class subsets must be >= 1, got {num_draws}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"the subset fraction must be in (0, 1], got {fraction}")
    size = max(1, int(math.floor(fraction * num_classes)))
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(num_classes, size=size, replace=False)) for _ in range(num_draws)]


def _mean_std(values: Sequence[float]) -> tuple:
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def class_subsets(records: StoredRecords, num_draws: int, fraction: float = 0.5, seed: int = 0,
                  topk: Sequence[int] = (1, 5)) -> SubsetResult:
    """The class-subset protocol on the stored logits of one split (see the module doc)."""
    C = records.num_classes
    subsets = draw_class_subsets(C, num_draws, fraction, seed)
    logits = torch.from_numpy(records.logits)
    rows_video = torch.from_numpy(records.view_video())
    labels = torch.from_numpy(records.labels)
    confusion = np.zeros((C, C), dtype=np.int64)
    draws: List[SubsetDraw] = []
    k_small, k_big = (min(int(k), len(subsets[0])) for k in topk)
    for subset in subsets:
        keep = torch.from_numpy(np.isin(records.labels, subset))
        video_rows = keep.nonzero().flatten()
        n = int(video_rows.numel())
        if n == 0:
            draws.append(SubsetDraw(subset.tolist(), 0, float("nan"), float("nan")))
            continue
        row_mask = keep[rows_video]
        columns = torch.from_numpy(subset)
        # The same per-view softmax as the full-class protocol, over the subset's columns only.
        probs = view_probs(logits[row_mask][:, columns]).double()
        position = torch.cumsum(keep.long(), 0)[rows_video[row_mask]] - 1  # video's row among kept ones
        summed = torch.zeros(n, len(subset), dtype=torch.float64).index_add_(0, position, probs)
        mean = summed / torch.from_numpy(records.view_counts)[video_rows].unsqueeze(1).double()
        top = columns[mean.topk(k_big, dim=1).indices]  # back to full-list class indices
        truth = labels[video_rows]
        hit = top == truth.unsqueeze(1)
        draws.append(SubsetDraw(subset.tolist(), n, 100.0 * float(hit[:, :k_small].any(1).float().mean()),
                                100.0 * float(hit[:, :k_big].any(1).float().mean())))
        np.add.at(confusion, (truth.numpy(), top[:, 0].numpy()), 1)
    scored = [d for d in draws if d.videos]
    if not scored:
        raise ValueError("no draw of classes has any scored video")
    top1_mean, top1_std = _mean_std([d.top1 for d in scored])
    top5_mean, top5_std = _mean_std([d.top5 for d in scored])
    count = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(count > 0, 100.0 * np.diag(confusion) / np.maximum(count, 1), np.nan)
    return SubsetResult(num_draws, float(fraction), int(seed), len(subsets[0]), (k_small, k_big), draws,
                        top1_mean, top1_std, top5_mean, top5_std, per_class, count, confusion)
