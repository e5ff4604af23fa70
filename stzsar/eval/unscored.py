"""An evaluation that could not score its videos fails, naming the count, the first paths and the
likely cause (``stzsar eval --allow-unscored``).

Accuracies are over the scored videos only, so a run that read few or none of them would report
numbers over the wrong set (or over nothing) and still look finished. By default every listed
video must be scored; ``--allow-unscored SHARE`` accepts up to that share of a split unscored.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import List, Optional, Tuple


def parse_share(text: str) -> float:
    """``--allow-unscored``: a share in [0, 1], written ``0.05`` or ``5%``."""
    value = text.strip()
    try:
        share = float(value[:-1]) / 100.0 if value.endswith("%") else float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share such as 0.05 or 5%, got {text!r}") from None
    if not 0.0 <= share <= 1.0:
        raise argparse.ArgumentTypeError(f"the share must lie between 0 and 1 (0% and 100%), got {text!r}")
    return share


@dataclass
class Unscored:
    """Videos of one split that were not (or cannot be) scored."""

    name: str  # the split, e.g. "split 1"
    total: int  # videos listed
    videos: List[Tuple[str, str]]  # (path, reason)

    @property
    def share(self) -> float:
        return len(self.videos) / self.total if self.total else 0.0


def unscored_message(unscored: Unscored, allowed: float, root: Optional[str], *, before: bool = False) -> Optional[str]:
    """The error when ``unscored`` exceeds the ``allowed`` share, else ``None``: the count, the
    first paths with their reasons and the likely cause (:mod:`stzsar.data.unreadable`, the
    message ``stzsar train`` gives too).

    ``before``: the videos were found missing before scoring (the run stops there).
    """
    from stzsar.data.unreadable import unreadable_message

    count = len(unscored.videos)
    if count == 0 or unscored.share <= allowed:
        return None
    what = "listed videos are missing" if before else "videos could not be scored"
    headline = (f"{unscored.name}: {count} of {unscored.total} {what} ({100 * unscored.share:.0f}%; "
                f"--allow-unscored allows {100 * allowed:g}%):")
    return unreadable_message(headline, unscored.videos, root, root_option="--root", list_option="--list",
                              format_option="--format")


def missing_videos(name: str, video_split) -> Unscored:
    """The videos of a :class:`stzsar.data.VideoSplit` that are not on disk, checked before scoring."""
    from stzsar.data.dataset import missing_reason

    videos = [(str(video_split.videos[i].path), missing_reason(video_split, i))
              for i in range(len(video_split)) if video_split.locate(i) is None]
    return Unscored(name, len(video_split), videos)


def skipped_videos(name: str, result) -> Unscored:
    """The videos an :class:`~stzsar.eval.meter.EvalResult` skipped."""
    return Unscored(name, result.num_scored + result.num_skipped, [(s.path, s.reason) for s in result.skipped])
