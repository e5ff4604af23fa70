"""A small training set on disk for the trainer tests: H.264 clips of the demo's actions (written
with PyAV), a BIKE list and an ``id,name`` class list."""

from __future__ import annotations

import random
from pathlib import Path
from typing import List

from stzsar.demo.actions import encode_video, render_video

CLASSES = [("red", "moving right"), ("blue", "moving right"), ("red", "spinning"), ("blue", "spinning")]


def write_training_set(folder: Path, count: int = 12, videos: str = ".", list_name: str = "train.txt") -> List[str]:
    """``count`` 8-frame 36 px videos (``v00.mp4``...; class ``n % 4``) in ``folder / videos``, the
    list ``folder/list_name`` naming them and ``folder/labels.csv``. Returns the list's lines."""
    lines = []
    for n in range(count):
        colour, motion = CLASSES[n % len(CLASSES)]
        encode_video(folder / videos / f"v{n:02d}.mp4", render_video(colour, motion, 8, 36, random.Random(n)))
        lines.append(f"v{n:02d}.mp4 {n % len(CLASSES)}")
    (folder / list_name).write_text("\n".join(lines) + "\n")
    (folder / "labels.csv").write_text("id,name\n" + "".join(f"{i},{c} {m}\n" for i, (c, m) in enumerate(CLASSES)))
    return lines
