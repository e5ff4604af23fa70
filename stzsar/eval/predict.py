"""Top-k classes of single video files (``stzsar predict``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch

from stzsar.eval.engine import autocast_dtype, score_batch
from stzsar.eval.loading import load_video
from stzsar.text import ClassBank


@dataclass
class Prediction:
    """One video's answer: the top classes with probabilities, or why it could not be read.

    ``video_frames`` is the length of the video file in frames (not the frames of a clip, which
    the clip spec gives).
    """

    video: str
    top: List[Tuple[str, float]] = field(default_factory=list)
    video_frames: Optional[int] = None
    views: int = 0
    error: Optional[str] = None

    def as_dict(self) -> dict:
        return {
            "video": self.video,
            "top": [{"class": name, "prob": prob} for name, prob in self.top],
            "video_frames": self.video_frames,
            "views": self.views,
            "error": self.error,
        }


def predict_videos(
    model,
    paths: Sequence[Union[str, Path]],
    bank: ClassBank,
    class_names: Sequence[str],
    spec,
    *,
    top_k: int = 5,
    device: Union[str, torch.device] = "cpu",
    precision: str = "auto",
    progress: bool = False,
) -> List[Prediction]:
    """Score each video (all test views of ``spec``, probabilities averaged) against the classes.

    A video that cannot be decoded gets a :class:`Prediction` with ``error`` set (the reason; not
    logged, so that the caller reports it once); the others are still scored.
    """
    from stzsar.data.errors import VideoDecodeError

    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    device = torch.device(device)
    amp = autocast_dtype(device, precision)
    model.eval().to(device)
    bank = bank.to(device)
    k = min(top_k, len(class_names))
    iterator = paths
    if progress and len(paths) > 1:
        from tqdm.auto import tqdm

        iterator = tqdm(paths, desc="predict", unit="video")
    answers = []
    for path in iterator:
        try:
            clip, total = load_video(path, spec)
        except VideoDecodeError as error:
            answers.append(Prediction(str(path), error=error.reason))
            continue
        probs = score_batch(model, clip.unsqueeze(0), bank, device=device, amp_dtype=amp)[0].mean(0)
        values, indices = probs.double().topk(k)
        top = [(class_names[i], float(v)) for v, i in zip(values.tolist(), indices.tolist())]
        answers.append(Prediction(str(path), top, video_frames=total, views=clip.shape[0]))
    return answers
