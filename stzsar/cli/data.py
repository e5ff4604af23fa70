"""``stzsar data``: look at a dataset split before training or evaluating on it.

``stzsar data inspect --format bike --list val_rgb_split_1.txt --labels ucf_labels.csv --root DIR``
prints the classes, the videos, the videos per class, then every missing or unreadable file. It
checks that each file exists and is not empty; ``--decode`` also decodes the frames a test clip
takes from each file and its last frame, so that a video whose last frames are missing is listed
as decoded short (usable: its clips come from the frames it has). ``--few-shot K`` inspects the
K-shot subset, drawn from the videos that pass the same check. ``--json`` prints one JSON object
instead (for scripts). The exit status is 0 when every video is usable, 1 when some are not (or a
class of the K-shot subset has fewer than K usable videos), 2 when the split itself cannot be read.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Dict, List

from tqdm import tqdm

EXIT_OK, EXIT_BAD_VIDEOS, EXIT_BAD_SPLIT = 0, 1, 2


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="inspect dataset splits and their videos")
    commands = parser.add_subparsers(dest="data_command", metavar="ACTION")
    inspect = commands.add_parser(
        "inspect",
        help="count classes and videos of a split, list missing or unreadable files",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from stzsar.data.splits import FORMATS

    inspect.add_argument("--format", required=True, choices=FORMATS, help="split file format")
    inspect.add_argument(
        "--list", required=True, nargs="+", metavar="PATH",
        help="list file(s) (bike, kinetics CSV), or the official split folder (ucf101, hmdb51)",
    )
    inspect.add_argument("--labels", help="class list (id,name CSV, classInd.txt, one name a line, JSON)")
    inspect.add_argument("--root", required=True, help="folder holding the videos")
    inspect.add_argument("--split", type=int, default=1, help="official split number (ucf101, hmdb51)")
    inspect.add_argument(
        "--subset", default=None,
        help="train or test (ucf101, hmdb51; default test); a 'split' column value (kinetics)",
    )
    inspect.add_argument("--few-shot", type=int, metavar="K", help="inspect the K-shot subset instead")
    inspect.add_argument("--seed", type=int, default=0, help="seed of the few-shot draw")
    inspect.add_argument("--decode", action="store_true", help="decode a test clip of every video")
    inspect.add_argument("--frames", type=int, default=8, help="frames per clip with --decode")
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.set_defaults(func=run_inspect)
    parser.set_defaults(func=lambda args: (parser.print_help(), EXIT_BAD_SPLIT)[1])


def _checker(decode: bool, frames: int):
    """``check(split, index) -> VideoCheck``, remembering each file's result (a few-shot draw and
    the inspection of its subset then decode each file once)."""
    from stzsar.data.dataset import check_video

    seen: Dict[str, Any] = {}

    def check(split, index):
        key = str(split.videos[index].path)
        if key not in seen:
            seen[key] = check_video(split, index, decode=decode, num_frames=frames)
        result = seen[key]
        return result if result.index == index else dataclasses.replace(result, index=index)

    return check


def _check_videos(split, check, decode: bool, quiet: bool) -> Dict[str, List[Dict[str, Any]]]:
    missing, unreadable, short = [], [], []
    bar = tqdm(range(len(split)), desc="decoding" if decode else "checking", unit="video",
               disable=quiet or None, file=sys.stderr)
    for index in bar:
        result = check(split, index)
        if result.status == "missing":
            missing.append({"path": result.path, "reason": result.reason})
        elif result.status == "unreadable":
            unreadable.append({"path": result.path, "reason": result.reason})
        elif result.status == "short":
            short.append({"path": result.path, "frames": result.frames, "expected": result.expected,
                          "reason": result.reason})
    return {"missing": missing, "unreadable": unreadable, "short": short}


def run_inspect(args: argparse.Namespace) -> int:
    from stzsar.classes import ClassListError
    from stzsar.data.errors import SplitFormatError
    from stzsar.data.protocols import few_shot
    from stzsar.data.splits import build_split

    check = _checker(args.decode, args.frames)
    try:
        split = build_split(
            args.format, args.list, args.root, labels=args.labels, split=args.split, subset=args.subset
        )
        if args.few_shot:
            split = few_shot(split, args.few_shot, seed=args.seed, check=check)
    except (SplitFormatError, ClassListError, FileNotFoundError, ValueError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"stzsar data inspect: error: {message}", file=sys.stderr)
        return EXIT_BAD_SPLIT
    if not os.path.isdir(args.root) and not args.json:
        print(f"warning: root {args.root} is not a folder", file=sys.stderr)
    counts = split.counts()
    checked = _check_videos(split, check, args.decode, quiet=False)
    draw = split.meta.get("few_shot_draw") if args.few_shot else None
    below = (draw or {}).get("classes_below_k") or {}
    ok = not checked["missing"] and not checked["unreadable"] and not below
    result: Dict[str, Any] = {
        "split": split.name,
        "source": split.source,
        "root": str(split.root),
        "classes": len(split.classes),
        "videos": len(split),
        "videos_per_class": dict(zip(split.classes, counts)),
        "found": len(split) - len(checked["missing"]),
        "missing": len(checked["missing"]),
        "unreadable": len(checked["unreadable"]),
        "short": len(checked["short"]),
        "decoded": bool(args.decode),
        "ok": ok,
        "missing_files": [m["path"] for m in checked["missing"]],
        "unreadable_files": checked["unreadable"],
        "short_files": checked["short"],
    }
    if draw is not None:
        result["few_shot"] = draw
    if args.json:
        print(json.dumps(result))
    else:
        _print_text(split, counts, result)
    return EXIT_OK if ok else EXIT_BAD_VIDEOS


def _per_class_line(classes: List[str], counts: List[int]) -> str:
    """``all 101 classes have 2 videos``, or the smallest and largest classes and the mean."""
    low, high = min(counts), max(counts)
    if len(counts) == 1:
        return f"videos per class: {low} (one class)"
    if low == high:
        return f"videos per class: all {len(counts)} classes have {low} video{'s' * (low != 1)}"

    def named(value: int) -> str:
        names = [name for name, count in zip(classes, counts) if count == value]
        extra = f" and {len(names) - 1} more" if len(names) > 1 else ""
        return f"{value} ({names[0]}{extra})"

    return f"videos per class: min {named(low)}, max {named(high)}, mean {sum(counts) / len(counts):.1f}"


def _print_text(split, counts: List[int], result: Dict[str, Any]) -> None:
    print(f"split:   {split.name}  ({split.source})")
    print(f"root:    {split.root}")
    print(f"classes: {result['classes']}")
    print(f"videos:  {result['videos']}")
    if counts:
        print(_per_class_line(split.classes, counts))
        width = max(len(name) for name in split.classes)
        for label, (name, count) in enumerate(zip(split.classes, counts)):
            print(f"  {label:4d}  {name:<{width}}  {count}")
    draw = result.get("few_shot")
    if draw is not None:
        print(f"few-shot: K={draw['k']}, seed {draw['seed']}, drawn from videos that pass the "
              f"{'decoding' if draw['check'] == 'decode' else 'file'} check; {len(draw['unusable'])} passed over")
        for item in draw["unusable"]:
            print(f"  passed over: {item['path']}: {item['reason']}")
        if draw.get("note"):
            print(f"  {draw['note']}")
    print(f"found:   {result['found']} of {result['videos']}")
    print(f"missing: {result['missing']}")
    for path in result["missing_files"]:
        print(f"  missing: {path}")
    # One word with and without --decode: the reason says what was wrong (empty file, no video
    # stream, ...), and the same cause reads the same either way.
    print(f"unreadable: {result['unreadable']}")
    for item in result["unreadable_files"]:
        print(f"  unreadable: {item['path']}: {item['reason']}")
    if result["decoded"]:
        print(f"decoded short: {result['short']}")
        for item in result["short_files"]:
            print(f"  decoded short: {item['path']}: {item['frames']} of {item['expected']} frames "
                  "(usable: its clips come from the frames it has)")
    if result["ok"]:
        print("ok")
    elif result["missing"] or result["unreadable"]:
        print("NOT OK: some videos cannot be used (they would be skipped)")
    else:
        print(f"NOT OK: some classes have fewer than K={draw['k']} usable videos")
