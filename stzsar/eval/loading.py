"""Inputs of ``stzsar eval``, ``predict`` and ``explain``: checkpoints, class lists, attribute files
and single videos turned into model input."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from stzsar.classes import canonical_name, read_class_list

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

#: Frames per clip when neither the command line nor the checkpoint's configuration says.
FALLBACK_NUM_FRAMES = 8


def load_attributes_file(path: Optional[PathLike]) -> Optional[Dict[str, List[str]]]:
    """``{class: [keywords]}`` from an attribute file (``None`` for no file).

    Uses :func:`stzsar.attributes.load_attributes` (the format ``stzsar attributes`` writes) when
    the package provides it; otherwise reads a JSON object mapping class names to keyword lists,
    optionally nested under an ``"attributes"`` key next to a header.
    """
    if path is None:
        return None
    from stzsar.resources import resolve_attributes

    path = resolve_attributes(path)  # a built-in name (ucf101, k600-split1, ...) works too
    if not path.is_file():
        raise FileNotFoundError(f"attribute file not found: {path}")
    try:
        from stzsar.attributes import load_attributes
    except ImportError:
        load_attributes = None
    if load_attributes is not None:
        return {str(k): list(v) for k, v in load_attributes(path).items()}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if isinstance(data, dict) and isinstance(data.get("attributes"), dict):
        data = data["attributes"]
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object mapping class names to keyword lists")
    attributes = {}
    for name, words in data.items():
        if isinstance(words, list) and all(isinstance(w, str) for w in words):
            attributes[name] = list(words)
        elif not name.startswith("_"):  # header entries ("_meta") are allowed, anything else is a mistake
            raise ValueError(f"{path}: the entry for {name!r} is not a list of keywords")
    return attributes


def check_attributes_cover(
    class_names: List[str], attributes: Optional[Dict[str, List[str]]], source: str, *, unknown_entries: bool = True
) -> List[str]:
    """Classes of the list without attributes in ``attributes`` (logged: they use the name alone).

    Entries of the file that match no class of the list are logged as well, each with the class it
    most likely meant when that class has no entry of its own (``grwo blue`` for ``grow blue``).
    ``unknown_entries=False`` logs only those near misses: for a file that covers several class
    lists at once (the zero-shot splits of Kinetics-600), entries for the other lists are expected.
    """
    if attributes is None:
        return []
    import difflib

    known = {canonical_name(k) for k in attributes}
    wanted = {canonical_name(c): c for c in class_names}
    missing = [c for c in class_names if canonical_name(c) not in known]
    unknown = [k for k in attributes if canonical_name(k) not in wanted]
    without = {canonical_name(c): c for c in missing}
    meant: Dict[str, str] = {}
    for key in unknown:
        close = difflib.get_close_matches(canonical_name(key), list(without), n=1, cutoff=0.75)
        if close:
            meant[key] = without[close[0]]
    if missing:
        logger.warning("%s: no attributes for %d of %d classes (they use the class name alone): %s",
                       source, len(missing), len(class_names), missing[:10])
    for key, name in meant.items():
        logger.warning("%s: the attribute entry %r matches no class of the list; did you mean %r?", source, key, name)
    others = [k for k in unknown if k not in meant]
    if others and unknown_entries:
        logger.warning("%s: %d attribute %s no class of the list: %s", source, len(others),
                       "entry matches" if len(others) == 1 else "entries match", others[:10])
    return missing


def load_classes(path: PathLike) -> List[str]:
    """A class list in any format :func:`stzsar.classes.read_class_list` reads."""
    return read_class_list(path)


def load_checkpoint_model(checkpoint: PathLike, device: Union[str, torch.device] = "cpu",
                          pretrained: Optional[str] = None):
    """``(model, meta)`` from an ``stzsar train`` checkpoint (``pretrained``: where the CLIP weights
    of a trainable-only checkpoint come from when the stored reference is out of reach)."""
    from stzsar.train.checkpoint import load_model_from_checkpoint

    if pretrained is None:
        return load_model_from_checkpoint(checkpoint, device=device)
    return load_model_from_checkpoint(checkpoint, device=device, pretrained=pretrained)


def checkpoint_num_frames(meta: Dict[str, Any]) -> Optional[int]:
    """Frames per clip the checkpoint was trained with (its saved configuration), if recorded."""
    config = meta.get("config") or {}
    data = config.get("data") if isinstance(config, dict) else None
    value = data.get("num_frames") if isinstance(data, dict) else None
    return int(value) if value else None


def resolve_num_frames(requested: Optional[int], meta: Dict[str, Any]) -> int:
    """``requested``, else the checkpoint's training value, else :data:`FALLBACK_NUM_FRAMES` (logged)."""
    if requested:
        return int(requested)
    stored = checkpoint_num_frames(meta)
    if stored:
        return stored
    logger.warning("the checkpoint records no frame count; using %d frames per clip (set --num-frames)",
                   FALLBACK_NUM_FRAMES)
    return FALLBACK_NUM_FRAMES


def clip_spec(model, num_frames: int, num_clips: int = 1, num_crops: int = 1):
    """The test-time :class:`stzsar.data.spec.ClipSpec` for ``model`` (its input size and normalisation)."""
    from stzsar.data.spec import CLIP_MEAN, CLIP_STD, ClipSpec

    return ClipSpec(num_frames=num_frames, size=model.image_size, num_clips=num_clips, num_crops=num_crops,
                    mean=tuple(getattr(model, "image_mean", CLIP_MEAN)), std=tuple(getattr(model, "image_std", CLIP_STD)))


def load_video(path: PathLike, spec) -> Tuple[torch.Tensor, int]:
    """One video as model input ``[V, T, 3, S, S]`` (test views of ``spec``) and its frame count.

    Raises :class:`stzsar.data.errors.VideoDecodeError` (path and reason) for a bad file.
    """
    from stzsar.data.dataset import sample_indices, video_from_frames
    from stzsar.data.decode_pyav import PyAVVideo

    with PyAVVideo(path) as video:
        # read_clip samples again over the frames that exist when a few trailing ones are missing.
        _, frames, rotation = video.read_clip(lambda count: sample_indices(count, spec, training=False))
        total = video.num_frames
    clip = video_from_frames(torch.from_numpy(frames), rotation, spec, training=False)
    shape = clip.shape
    clip = clip.view((spec.num_views,) + tuple(shape[-4:]))
    return clip, total


def denormalize(video: torch.Tensor, mean, std) -> torch.Tensor:
    """Model input ``[..., 3, H, W]`` back to ``uint8 [..., H, W, 3]`` pixels, for display."""
    mean_t = torch.tensor(mean, dtype=video.dtype).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=video.dtype).view(3, 1, 1)
    pixels = ((video.detach().cpu() * std_t + mean_t) * 255.0).round().clamp(0, 255).to(torch.uint8)
    return pixels.movedim(-3, -1)
