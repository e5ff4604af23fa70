"""Multi-view test meter: per-view class probabilities averaged per video, then accuracies.

A video is scored from one or more views (``num_clips x num_crops`` when testing, docs/method.md section 6).
The meter sums the per-view class probabilities of each video (keyed by the video's index in the
dataset, so views may arrive in any batch and on any rank) and, at the end, averages them and
computes top-1/top-5, per-class accuracy and the confusion matrix. Videos the loader could not
decode are recorded with their path and reason, so a report always says how many videos the
accuracy is over and which ones were left out.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor


@dataclass
class SkippedVideo:
    """A video left out of the scores: its dataset index (``-1`` when unknown), path and why."""

    index: int
    path: str
    reason: str


@dataclass
class EvalResult:
    """Scores of one evaluation (one split). Accuracies are in percent.

    Attributes:
        class_names: the class list, in class-index order.
        num_scored: videos with at least one scored view (the accuracy denominator).
        skipped: videos left out, with path and reason.
        top1, top5: percent of scored videos whose label is the first / among the first
            ``topk[1]`` classes (``min(5, C)`` classes for fewer than 5).
        mean_class_accuracy: mean of the per-class accuracies over classes with videos.
        per_class_accuracy: percent correct per class (``nan`` for classes without videos).
        per_class_count: scored videos per class.
        confusion: ``[C, C]`` counts, rows the true class, columns the predicted (top-1) class.
        views_per_video: ``(min, max)`` views averaged per scored video.
        video_indices, labels, predictions, top_probs: per scored video, sorted by index:
            dataset index, label, the ``k`` best classes and their averaged probabilities.
        paths: dataset index -> video path, where the loader gave paths.
        resumed_videos: videos (scored or skipped) read back from an earlier, interrupted run.
    """

    class_names: List[str]
    num_scored: int
    skipped: List[SkippedVideo]
    top1: float
    top5: float
    topk: tuple
    mean_class_accuracy: float
    per_class_accuracy: np.ndarray
    per_class_count: np.ndarray
    confusion: np.ndarray
    views_per_video: tuple
    video_indices: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    predictions: np.ndarray = field(repr=False)
    top_probs: np.ndarray = field(repr=False)
    paths: Dict[int, str] = field(default_factory=dict, repr=False)
    resumed_videos: int = 0

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def summary(self) -> dict:
        """The scalar part, JSON-ready."""
        return {
            "top1": self.top1,
            "top5": self.top5,
            "topk": list(self.topk),
            "mean_class_accuracy": self.mean_class_accuracy,
            "num_classes": len(self.class_names),
            "videos_scored": self.num_scored,
            "videos_skipped": self.num_skipped,
            "views_per_video": list(self.views_per_video),
            "resumed_videos": self.resumed_videos,
        }


def view_probs(logits: Tensor) -> Tensor:
    """Per-view class probabilities: the softmax over all classes of float32 logits.

    One function for the live loop and for logits read back from the results store, so that both
    give the same bits.
    """
    return logits.float().softmax(dim=-1)


class MultiViewMeter:
    """Collects per-view class probabilities and averages them per video.

    Args:
        class_names: the class list (its length is ``C``).
        topk: the two ``k`` reported (``(1, 5)``); clipped to ``C``.

    ``update(probs, labels, indices)`` takes ``probs [B, C]`` (one view per row) or ``[B, V, C]``
    (``V`` views of each of ``B`` videos), the labels ``[B]`` and the videos' dataset indices
    ``[B]``. Rows for the same index are summed, whichever batch or rank they come from.
    """

    def __init__(self, class_names: Sequence[str], topk: Sequence[int] = (1, 5)):
        self.class_names = list(class_names)
        if not self.class_names:
            raise ValueError("MultiViewMeter needs at least one class")
        self.num_classes = len(self.class_names)
        if len(topk) != 2 or min(topk) < 1:
            raise ValueError(f"topk must be two positive integers, got {topk}")
        self.topk = tuple(min(int(k), self.num_classes) for k in topk)
        self._indices: List[Tensor] = []
        self._probs: List[Tensor] = []
        self._labels: List[Tensor] = []
        self._views: List[Tensor] = []
        self.skipped: List[SkippedVideo] = []
        self.paths: Dict[int, str] = {}

    # -- collecting --------------------------------------------------------------------------------
    def update(
        self,
        probs: Tensor,
        labels: Tensor,
        indices: Tensor,
        paths: Optional[Sequence[str]] = None,
    ) -> None:
        probs = probs.detach()
        if probs.dim() == 2:
            probs = probs.unsqueeze(1)
        if probs.dim() != 3 or probs.shape[-1] != self.num_classes:
            raise ValueError(
                f"probs must be [B, C] or [B, V, C] with C = {self.num_classes}, got {tuple(probs.shape)}"
            )
        labels = torch.as_tensor(labels).detach().reshape(-1).to("cpu", torch.long)
        indices = torch.as_tensor(indices).detach().reshape(-1).to("cpu", torch.long)
        if labels.numel() != probs.shape[0] or indices.numel() != probs.shape[0]:
            raise ValueError(
                f"{probs.shape[0]} videos of probabilities but {labels.numel()} labels and "
                f"{indices.numel()} indices"
            )
        bad = (labels < 0) | (labels >= self.num_classes)
        if bool(bad.any()):
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}); video {int(indices[bad][0])} has label "
                f"{int(labels[bad][0])} (is the class list the one the dataset was built with?)"
            )
        if not bool(torch.isfinite(probs).all()):
            raise FloatingPointError(
                f"non-finite class probabilities for videos {indices.tolist()[:8]} (NaN/inf logits)"
            )
        # Float64 sums: averaging thousands of views in float32 would lose the last digits.
        self._probs.append(probs.to("cpu", torch.float64).sum(dim=1))
        self._views.append(torch.full((probs.shape[0],), probs.shape[1], dtype=torch.long))
        self._labels.append(labels)
        self._indices.append(indices)
        if paths is not None:
            for index, path in zip(indices.tolist(), paths):
                self.paths[int(index)] = str(path)

    def skip(self, index: int, path: str, reason: str) -> None:
        """Record a video that could not be scored (it counts in ``skipped``, not in the accuracy)."""
        self.skipped.append(SkippedVideo(int(index), str(path), str(reason)))

    # -- merging (distributed evaluation) ------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything collected, as CPU tensors and plain lists (picklable, for gathering ranks)."""
        empty_long = torch.empty(0, dtype=torch.long)
        return {
            "indices": torch.cat(self._indices) if self._indices else empty_long,
            "probs": torch.cat(self._probs) if self._probs else torch.empty(0, self.num_classes, dtype=torch.float64),
            "labels": torch.cat(self._labels) if self._labels else empty_long,
            "views": torch.cat(self._views) if self._views else empty_long,
            "skipped": [asdict(s) for s in self.skipped],
            "paths": dict(self.paths),
            "class_names": list(self.class_names),
        }

    def load_state(self, state: dict) -> None:
        """Add the collected state of another meter (e.g. another rank's)."""
        if list(state["class_names"]) != self.class_names:
            raise ValueError("cannot merge meters built over different class lists")
        if state["indices"].numel():
            self._indices.append(state["indices"])
            self._probs.append(state["probs"])
            self._labels.append(state["labels"])
            self._views.append(state["views"])
        self.skipped.extend(SkippedVideo(**s) for s in state["skipped"])
        self.paths.update(state["paths"])

    def seen_indices(self) -> set:
        """Dataset indices scored or skipped so far."""
        seen = set(torch.cat(self._indices).tolist()) if self._indices else set()
        return seen | {s.index for s in self.skipped}

    # -- results -----------------------------------------------------------------------------------
    def compute(self) -> EvalResult:
        """Average the views of each video and score it."""
        C = self.num_classes
        if self._indices:
            indices = torch.cat(self._indices)
            probs_sum = torch.cat(self._probs)
            labels = torch.cat(self._labels)
            views = torch.cat(self._views)
        else:
            indices = torch.empty(0, dtype=torch.long)
            probs_sum = torch.empty(0, C, dtype=torch.float64)
            labels = torch.empty(0, dtype=torch.long)
            views = torch.empty(0, dtype=torch.long)
        unique, inverse = torch.unique(indices, sorted=True, return_inverse=True)
        n = unique.numel()
        video_probs = torch.zeros(n, C, dtype=torch.float64).index_add_(0, inverse, probs_sum)
        video_views = torch.zeros(n, dtype=torch.long).index_add_(0, inverse, views)
        video_labels = torch.full((n,), -1, dtype=torch.long).scatter_(0, inverse, labels)
        # Every row of a video must carry the same label; a mismatch means two datasets were mixed.
        if n and not torch.equal(video_labels[inverse], labels):
            row = int((video_labels[inverse] != labels).nonzero()[0])
            raise ValueError(
                f"video {int(indices[row])} was scored with two different labels "
                f"({int(video_labels[inverse][row])} and {int(labels[row])})"
            )
        scored = set(unique.tolist())
        both = sorted(scored & {s.index for s in self.skipped if s.index >= 0})
        if both:
            raise ValueError(f"videos {both[:8]} are both scored and skipped")
        if n:
            video_probs /= video_views.unsqueeze(1).to(torch.float64)

        k_small, k_big = self.topk
        k_keep = max(k_big, min(5, C))
        top_probs, top_classes = video_probs.topk(k_keep, dim=1)  # [0, k] when nothing was scored
        hit = top_classes == video_labels.unsqueeze(1)
        top_small = _percent(int(hit[:, :k_small].any(1).sum()), n)
        top_big = _percent(int(hit[:, :k_big].any(1).sum()), n)

        pred = top_classes[:, 0].numpy() if n else np.empty(0, dtype=np.int64)
        y = video_labels.numpy()
        confusion = np.zeros((C, C), dtype=np.int64)
        np.add.at(confusion, (y, pred), 1)
        count = confusion.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_class = np.where(count > 0, 100.0 * np.diag(confusion) / np.maximum(count, 1), np.nan)
        present = count > 0
        mean_class = float(per_class[present].mean()) if present.any() else float("nan")
        view_range = (int(video_views.min()), int(video_views.max())) if n else (0, 0)
        return EvalResult(
            class_names=list(self.class_names),
            num_scored=n,
            skipped=sorted(self.skipped, key=lambda s: (s.index, s.path)),
            top1=top_small,
            top5=top_big,
            topk=(k_small, k_big),
            mean_class_accuracy=mean_class,
            per_class_accuracy=per_class,
            per_class_count=count,
            confusion=confusion,
            views_per_video=view_range,
            video_indices=unique.numpy(),
            labels=y,
            predictions=top_classes.numpy(),
            top_probs=top_probs.numpy(),
            paths=dict(self.paths),
        )


def _percent(hits: int, total: int) -> float:
    return 100.0 * hits / total if total else float("nan")


@dataclass
class SplitSummary:
    """Mean and standard deviation over splits (population std, ``ddof=0``, as numpy's default)."""

    names: List[str]
    top1: List[float]
    top5: List[float]
    top1_mean: float
    top1_std: float
    top5_mean: float
    top5_std: float
    videos_scored: int
    videos_skipped: int

    def as_dict(self) -> dict:
        return asdict(self)


def summarize_splits(results: Dict[str, EvalResult]) -> SplitSummary:
    """``mean +- std`` of top-1 and top-5 over the given splits (their names are the keys)."""
    if not results:
        raise ValueError("no split results to summarize")
    names = list(results)
    top1 = [results[n].top1 for n in names]
    top5 = [results[n].top5 for n in names]

    def mean_std(values: List[float]):
        mean = sum(values) / len(values)
        return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))

    m1, s1 = mean_std(top1)
    m5, s5 = mean_std(top5)
    return SplitSummary(
        names=names, top1=top1, top5=top5, top1_mean=m1, top1_std=s1, top5_mean=m5, top5_std=s5,
        videos_scored=sum(results[n].num_scored for n in names),
        videos_skipped=sum(results[n].num_skipped for n in names),
    )
