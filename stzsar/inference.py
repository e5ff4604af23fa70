"""Videos as the input of ``model(video, bank)``, from Python.

:func:`video_input` turns a video file, or frames already in memory, into the tensor the model
takes, with the model's own clip settings (its image size and normalisation) and the frame
sampling and test crops of ``stzsar eval`` and ``stzsar predict`` (the same code)::

    import stzsar

    model = stzsar.build_model("stzsar-tiny", pretrained=None).eval()
    bank = model.encode_classes(["archery", "juggling balls"])
    video = stzsar.video_input("clip.mp4", model, num_frames=8)   # [1, 8, 3, 32, 32]
    probs = model(video, bank).softmax(-1)                         # [1, 2]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch

from stzsar.eval.loading import FALLBACK_NUM_FRAMES, clip_spec, load_video

VideoSource = Union[str, Path, np.ndarray, torch.Tensor, Sequence[Any]]


def video_input(
    source: VideoSource,
    model,
    num_frames: int = FALLBACK_NUM_FRAMES,
    *,
    num_clips: int = 1,
    num_crops: int = 1,
) -> torch.Tensor:
    """One video as the model's input: ``float32 [V, T, 3, S, S]``.

    ``T = num_frames`` frames are taken, the middle frame of ``T`` equal segments of the video (as
    ``stzsar eval``/``predict`` take them), their short side resized to ``S`` (the model's
    :attr:`~stzsar.model.STZSARModel.image_size`) and the centre ``S x S`` cropped, then scaled to
    [0, 1] and normalised with the model's ``image_mean`` / ``image_std``.

    Args:
        source: a video file (decoded with PyAV, rotation metadata applied), or its frames in
            memory: a ``uint8 [N, H, W, 3]`` RGB array or tensor, or a list of ``N`` PIL images
            (or ``uint8 [H, W, 3]`` arrays) of one size. ``N`` may differ from ``num_frames``.
        model: the :class:`~stzsar.model.STZSARModel` the input is for.
        num_frames: frames per clip; use the count the model was trained with (a checkpoint's
            ``meta["config"]["data"]["num_frames"]``).
        num_clips, num_crops: test views (temporal positions inside each segment; 1 centre or 3
            crops along the long side). ``V = num_clips * num_crops``; the default is one view.

    Returns:
        ``[V, T, 3, S, S]``: a batch of ``V`` views of the one video, so ``model(video, bank)``
        takes it as it is (with several views, average the views' probabilities); several videos
        make a batch with ``torch.cat``.

    Raises:
        stzsar.data.errors.VideoDecodeError: a file that cannot be read (its path and the reason).
        ValueError, TypeError: frames in memory of another layout or type.
    """
    from stzsar.data.dataset import sample_indices, video_from_frames

    spec = clip_spec(model, num_frames, num_clips, num_crops)
    if isinstance(source, (str, os.PathLike)):
        clip, _ = load_video(source, spec)
        return clip
    frames = _frames_tensor(source)
    # Sample exactly as a decoded file is sampled, then the same resize, crops and normalisation.
    indices = sample_indices(frames.shape[0], spec, training=False)
    clip = video_from_frames(frames[indices], 0, spec, training=False)
    return clip.reshape((spec.num_views,) + tuple(clip.shape[-4:]))


def _frames_tensor(source: Any) -> torch.Tensor:
    """Frames in memory as ``uint8 [N, H, W, 3]``, or an error that says what is accepted."""
    accepted = ("a video file path, a uint8 [N, H, W, 3] RGB array or tensor, or a list of PIL images "
                "(or uint8 [H, W, 3] arrays)")
    if isinstance(source, (list, tuple)):
        if not source:
            raise ValueError("no frames given: the list is empty")
        arrays = [_image_array(image, i, accepted) for i, image in enumerate(source)]
        sizes = {a.shape for a in arrays}
        if len(sizes) > 1:
            raise ValueError(f"the frames differ in size: {sorted(sizes)}; give frames of one size")
        frames = torch.from_numpy(np.stack(arrays))
    elif isinstance(source, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(source))
    elif isinstance(source, torch.Tensor):
        frames = source.detach().cpu()
    else:
        raise TypeError(f"video_input takes {accepted}; got {type(source).__name__}")
    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames in memory must be [N, H, W, 3] (RGB, channels last), got {list(frames.shape)}")
    if frames.dtype != torch.uint8:
        raise TypeError(f"frames in memory must be uint8 pixels (0-255), got {frames.dtype}; a float "
                        f"video already normalised is the model's input itself (see model.forward)")
    if frames.shape[0] == 0:
        raise ValueError("no frames given: the array holds 0 frames")
    return frames


def _image_array(image: Any, index: int, accepted: str) -> np.ndarray:
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image, in any mode
        return np.asarray(image.convert("RGB"))
    if isinstance(image, (np.ndarray, torch.Tensor)):
        array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else image
        if array.ndim == 3 and array.shape[-1] == 3 and array.dtype == np.uint8:
            return array
        raise ValueError(f"frame {index}: expected a uint8 [H, W, 3] array, got {array.dtype} {list(array.shape)}")
    raise TypeError(f"frame {index}: video_input takes {accepted}; got a list holding {type(image).__name__}")
