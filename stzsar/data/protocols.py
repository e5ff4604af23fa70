"""Evaluation protocols built on splits: the Kinetics-600 zero-shot splits and few-shot subsets.

Kinetics-600 zero-shot (ER-ZSAR, docs/method.md section 6): the test classes are the 220 classes that
Kinetics-600 adds to Kinetics-400; each of three test splits takes 160 of them. The classes of a
split come either

- from the published split files: BIKE's ``k160_labels_split{1,2,3}.csv`` or ER-ZSAR's
  ``kinetics620_zsl_test_class_idxs.json`` (indices into ``kinetics620_label_defn.json``, whose
  entries 400-619 are the 220 new classes) -- :func:`load_zero_shot_classes`; or
- drawn reproducibly from the two class lists -- :func:`draw_zero_shot_classes`: the new classes
  are those of Kinetics-600 absent from Kinetics-400 (matched by :func:`~stzsar.classes.canonical_name`),
  and split ``s`` draws 160 of them with ``random.Random(f"k600-zero-shot:{seed}:{s}")``, sorted
  by name. The published splits were drawn by ER-ZSAR's own random generator, so drawn splits are
  a documented alternative, not a reproduction; use the published files to compare with papers.

Few-shot (:func:`few_shot`): ``K`` usable videos per class drawn with a seed. Each class's videos
are sorted by path and shuffled with ``random.Random(f"few-shot:{seed}:{class}")``; the subset
takes the first ``K`` of them that pass the usability check of ``stzsar data inspect``
(:func:`stzsar.data.dataset.check_video`; by default decoding a test clip and the last frame).
The draw of a class depends only on the seed, that class's videos and which of them can be read,
and the ``K = 2`` subset is contained in the ``K = 4`` one, and so on. A class with fewer than
``K`` usable videos keeps those it has; the subset's ``meta["few_shot_draw"]`` names it and
how many it got, for reports.
"""

from __future__ import annotations

import json
import logging
import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from ..classes import ClassIndex, canonical_name, read_class_list
from .errors import SplitFormatError
from .splits import PathLike, VideoSplit, read_kinetics_csv, read_list

logger = logging.getLogger(__name__)

#: classes per Kinetics-600 zero-shot test split
K600_ZERO_SHOT_CLASSES = 160
#: classes that Kinetics-600 adds to Kinetics-400
K600_NEW_CLASSES = 220


def k600_new_classes(k400_classes: Sequence[str], k600_classes: Sequence[str]) -> List[str]:
    """The classes of Kinetics-600 that Kinetics-400 lacks, in Kinetics-600 order."""
    known = {canonical_name(name) for name in k400_classes}
    return [name for name in k600_classes if canonical_name(name) not in known]


def draw_zero_shot_classes(
    k400_classes: Union[PathLike, Sequence[str]],
    k600_classes: Union[PathLike, Sequence[str]],
    split: int,
    *,
    seed: int = 0,
    num_classes: int = K600_ZERO_SHOT_CLASSES,
) -> List[str]:
    """Draw the classes of zero-shot split ``split`` from the two class lists (see module doc).

    ``k600_classes`` may be the 600 Kinetics-600 classes, or any list that holds the Kinetics-400
    classes plus the new ones (ER-ZSAR's 620-class list).
    """
    k400 = read_class_list(k400_classes) if isinstance(k400_classes, (str, Path)) else list(k400_classes)
    k600 = read_class_list(k600_classes) if isinstance(k600_classes, (str, Path)) else list(k600_classes)
    new = k600_new_classes(k400, k600)
    if len(new) < num_classes:
        raise ValueError(
            f"only {len(new)} classes of the second list are missing from the first; "
            f"{num_classes} are needed (are these the Kinetics-400 and Kinetics-600 lists?)"
        )
    rng = random.Random(f"k600-zero-shot:{seed}:{split}")
    return sorted(rng.sample(new, num_classes))


def load_zero_shot_classes(
    split: int,
    *,
    class_list: Optional[PathLike] = None,
    label_defn: Optional[PathLike] = None,
    class_idxs: Optional[PathLike] = None,
) -> List[str]:
    """The classes of a published Kinetics-600 zero-shot split.

    Give either ``class_list`` (BIKE's ``k160_labels_split<N>.csv``, any class-list format) or
    ER-ZSAR's two files: ``label_defn`` (``kinetics620_label_defn.json``) and ``class_idxs``
    (``kinetics620_zsl_test_class_idxs.json``, three lists of indices).
    """
    if class_list is not None:
        return read_class_list(class_list)
    if label_defn is None or class_idxs is None:
        raise ValueError("give class_list, or both label_defn and class_idxs (ER-ZSAR files)")
    label_defn, class_idxs = Path(label_defn), Path(class_idxs)
    names = read_class_list(label_defn)
    try:
        splits = json.loads(class_idxs.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise SplitFormatError(f"{class_idxs}: invalid JSON ({error})") from None
    if not isinstance(splits, list) or not all(isinstance(s, list) for s in splits):
        raise SplitFormatError(f"{class_idxs}: expected a list of lists of class indices")
    if not 1 <= split <= len(splits):
        raise ValueError(f"{class_idxs}: split {split} requested, the file has {len(splits)}")
    chosen = []
    for position, value in enumerate(splits[split - 1]):
        if not isinstance(value, int) or not 0 <= value < len(names):
            raise SplitFormatError(
                f"{class_idxs}: split {split}, item {position}: {value!r} is not an index into the "
                f"{len(names)} classes of {label_defn.name}"
            )
        chosen.append(names[value])
    return chosen


def k600_zero_shot(
    split: int,
    root: PathLike,
    classes: Sequence[str],
    *,
    list_file: Optional[PathLike] = None,
    csv_file: Optional[PathLike] = None,
    csv_subset: Optional[str] = None,
) -> VideoSplit:
    """The test videos of a Kinetics-600 zero-shot split.

    Args:
        split: the split number (1, 2, 3), for names and reports.
        root: folder with the Kinetics-600 clips.
        classes: the split's classes (from :func:`load_zero_shot_classes` or
            :func:`draw_zero_shot_classes`); labels index this list.
        list_file: a BIKE list (``file.mp4 label``) whose labels index ``classes``
            (e.g. ``test_split1_exist.txt``), or
        csv_file: a Kinetics-600 annotation CSV; its rows of other classes are left out.
        csv_subset: keep only CSV rows with this ``split`` column value.
    """
    if (list_file is None) == (csv_file is None):
        raise ValueError("give exactly one of list_file (BIKE list) and csv_file (Kinetics-600 CSV)")
    classes = list(classes)
    if len(set(canonical_name(c) for c in classes)) != len(classes):
        raise ValueError("the zero-shot classes contain duplicates")
    if list_file is not None:
        result = read_list(list_file, classes, root, name=f"k600-zero-shot-{split}")
    else:
        result = read_kinetics_csv(csv_file, root, labels=classes, subset=csv_subset, restrict=True)
        result.name = f"k600-zero-shot-{split}"
    result.meta.update({"protocol": "k600-zero-shot", "split": split})
    empty = [c for c, n in zip(result.classes, result.counts()) if n == 0]
    if empty:
        raise SplitFormatError(f"{result.source}: no videos for zero-shot classes {empty[:5]}")
    return result


#: usability checks of :func:`few_shot`
FEW_SHOT_CHECKS = ("decode", "file", "none")


def _checker(check: Union[str, Callable], num_frames: int) -> Optional[Callable]:
    if callable(check):
        return check
    if check not in FEW_SHOT_CHECKS:
        raise ValueError(f"check must be one of {FEW_SHOT_CHECKS} or a function, got {check!r}")
    if check == "none":
        return None
    from .dataset import check_video

    decode = check == "decode"
    return lambda split, index: check_video(split, index, decode=decode, num_frames=num_frames)


def few_shot(
    split: VideoSplit,
    k: int,
    *,
    seed: int = 0,
    check: Union[str, Callable[[VideoSplit, int], Any]] = "decode",
    num_frames: int = 8,
    workers: Optional[int] = None,
) -> VideoSplit:
    """``k`` usable videos per class of ``split``, drawn reproducibly (see module doc).

    Args:
        check: which videos may be drawn: ``"decode"`` (default; as ``stzsar data inspect
            --decode``: the frames of a test clip of ``num_frames`` and the last frame decode),
            ``"file"`` (as ``stzsar data inspect``: the file exists and is not empty),
            ``"none"`` (every listed video), or a function ``(split, index) ->``
            :class:`~stzsar.data.dataset.VideoCheck`.
        workers: threads checking videos (default: the usable cores, at most 8).

    Returns:
        The subset. Its ``meta["few_shot_draw"]`` holds ``k``, ``seed``, ``check``,
        ``classes_below_k`` (``{class: videos drawn}`` for each class with fewer than ``k`` usable
        videos), ``unusable`` (each video passed over: path, status, reason), ``decoded_short``
        (drawn videos decoded short) and ``note`` (one line saying which classes got fewer).

    Raises:
        ValueError: ``k < 1``, or no usable video at all.
    """
    if k < 1:
        raise ValueError(f"few-shot K must be >= 1, got {k}")
    test = _checker(check, num_frames)
    check_name = check if isinstance(check, str) else getattr(check, "__name__", "custom")
    by_class: List[List[int]] = [[] for _ in split.classes]
    for index, (_, label) in enumerate(split.videos):
        by_class[label].append(index)
    orders: List[List[int]] = []
    for label, indices in enumerate(by_class):
        ordered = sorted(indices, key=lambda i: str(split.videos[i].path))
        rng = random.Random(f"few-shot:{seed}:{canonical_name(split.classes[label])}")
        orders.append(rng.sample(ordered, len(ordered)))
    drawn: List[List[int]] = [[] for _ in split.classes]
    unusable: List[Dict[str, Any]] = []
    short: List[Dict[str, Any]] = []
    if test is None:
        drawn = [order[:k] for order in orders]
    else:
        # Check in rounds, each class's candidates in its drawn order, until K pass or none is left:
        # the subset is the first K usable videos of each order, whatever the parallelism.
        position = [0] * len(orders)
        threads = workers or min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 4)
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            while True:
                batch = []
                for label, order in enumerate(orders):
                    need = k - len(drawn[label])
                    take = order[position[label]: position[label] + max(0, need)]
                    position[label] += len(take)
                    batch += [(label, index) for index in take]
                if not batch:
                    break
                results = list(pool.map(lambda item: test(split, item[1]), batch))
                for (label, index), result in zip(batch, results):
                    if result.usable:
                        drawn[label].append(index)
                        if result.status == "short":
                            short.append({"path": result.path, "reason": result.reason})
                    else:
                        unusable.append({"path": result.path, "status": result.status, "reason": result.reason})
    below = {split.classes[label]: len(indices) for label, indices in enumerate(drawn) if len(indices) < k}
    chosen = [index for indices in drawn for index in indices]
    if not chosen:
        raise ValueError(
            f"{split.name}: no usable video to draw a {k}-shot subset from ({len(split)} listed, "
            f"{len(unusable)} checked and unusable; check={check_name!r})"
        )
    note = None
    if below:
        shown = ", ".join(f"{name} ({count})" for name, count in list(below.items())[:10])
        more = f" and {len(below) - 10} more" if len(below) > 10 else ""
        note = (f"{len(below)} of {len(split.classes)} classes have fewer than K={k} usable videos "
                f"and train on what they have: {shown}{more}")
        logger.warning("%s: %s", split.name, note)
    draw = {"k": k, "seed": seed, "check": check_name, "videos": len(chosen), "classes_below_k": below,
            "unusable": unusable, "decoded_short": short, "note": note}
    return split.subset(chosen, name=f"{split.name}-{k}shot", few_shot_k=k, few_shot_seed=seed,
                        few_shot_draw=draw)


def match_classes(split: VideoSplit, classes: Sequence[str]) -> VideoSplit:
    """Relabel ``split`` onto another class list with the same names in another order or style."""
    index = ClassIndex(classes)
    mapping = []
    for name in split.classes:
        found = index.find(name)
        if found is None:
            raise KeyError(f"class {name!r} of {split.name} is not in the given class list")
        mapping.append(found)
    videos = [type(v)(v.path, mapping[v.label]) for v in split.videos]
    return VideoSplit(split.name, split.root, list(classes), videos, split.source, dict(split.meta))
