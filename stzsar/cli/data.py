"""``stzsar data``: look at a dataset split before training or evaluating on it.

``stzsar data inspect --format bike --list val_rgb_split_1.txt --labels ucf_labels.csv --root DIR``
prints the classes, the videos, the videos per class, then every missing or unreadable file. It
checks that each file exists and is not empty; ``--decode`` also decodes the frames a test clip
takes from each file. ``--json`` prints one JSON object instead (for scripts). The exit status is
0 when every video is usable, 1 when some are not, 2 when the split itself cannot be read.
"""

from __future__ import annotations

import argparse
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


def _check_videos(split, decode: bool, frames: int, quiet: bool) -> Dict[str, List[Dict[str, str]]]:
    from stzsar.data.dataset import missing_reason
    from stzsar.data.decode_pyav import PyAVVideo, check_file
    from stzsar.data.errors import VideoDecodeError
    from stzsar.data.sampling import middle_indices

    missing, unreadable = [], []
    bar = tqdm(range(len(split)), desc="decoding" if decode else "checking", unit="video",
               disable=quiet or None, file=sys.stderr)
    for index in bar:
        path = split.locate(index)
        if path is None:
            missing.append({"path": str(split.videos[index].path), "reason": missing_reason(split, index)})
            continue
        try:
            if decode:
                with PyAVVideo(path) as video:
                    video.read(middle_indices(video.num_frames, frames))
            else:
                check_file(path)
        except VideoDecodeError as error:
            unreadable.append({"path": error.path, "reason": error.reason})
    return {"missing": missing, "unreadable": unreadable}


def run_inspect(args: argparse.Namespace) -> int:
    from stzsar.classes import ClassListError
    from stzsar.data.errors import SplitFormatError
    from stzsar.data.protocols import few_shot
    from stzsar.data.splits import build_split

    try:
        split = build_split(
            args.format, args.list, args.root, labels=args.labels, split=args.split, subset=args.subset
        )
        if args.few_shot:
            split = few_shot(split, args.few_shot, seed=args.seed)
    except (SplitFormatError, ClassListError, FileNotFoundError, ValueError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"stzsar data inspect: error: {message}", file=sys.stderr)
        return EXIT_BAD_SPLIT
    if not os.path.isdir(args.root) and not args.json:
        print(f"warning: root {args.root} is not a folder", file=sys.stderr)
    counts = split.counts()
    checked = _check_videos(split, args.decode, args.frames, quiet=False)
    ok = not checked["missing"] and not checked["unreadable"]
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
        "decoded": bool(args.decode),
        "ok": ok,
        "missing_files": [m["path"] for m in checked["missing"]],
        "unreadable_files": checked["unreadable"],
    }
    if args.json:
        print(json.dumps(result))
    else:
        _print_text(split, counts, result)
    return EXIT_OK if ok else EXIT_BAD_VIDEOS


def _print_text(split, counts: List[int], result: Dict[str, Any]) -> None:
    print(f"split:   {split.name}  ({split.source})")
    print(f"root:    {split.root}")
    print(f"classes: {result['classes']}")
    print(f"videos:  {result['videos']}")
    if counts:
        low, high = min(counts), max(counts)
        print(
            f"videos per class: min {low} ({split.classes[counts.index(low)]}), "
            f"max {high} ({split.classes[counts.index(high)]}), mean {sum(counts) / len(counts):.1f}"
        )
        width = max(len(name) for name in split.classes)
        for label, (name, count) in enumerate(zip(split.classes, counts)):
            print(f"  {label:4d}  {name:<{width}}  {count}")
    print(f"found:   {result['found']} of {result['videos']}")
    print(f"missing: {result['missing']}")
    for path in result["missing_files"]:
        print(f"  missing: {path}")
    what = "undecodable" if result["decoded"] else "unreadable"
    print(f"{what}: {result['unreadable']}")
    for item in result["unreadable_files"]:
        print(f"  {what}: {item['path']}: {item['reason']}")
    print("ok" if result["ok"] else "NOT OK: some videos cannot be used (they would be skipped)")
