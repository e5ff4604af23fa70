"""``stzsar predict``: the top-k classes of video files, with probabilities.

Example::

    stzsar predict clip1.mp4 clip2.webm --classes classes.txt --attributes attributes.json \\
        --checkpoint run/checkpoints/step_00010000.pt --top-k 5 [--json] [--views 4x3]

Any class list works (one name a line, ``id,name`` CSV, ``classInd.txt``, JSON): the classes need
not be those the model was trained on. Unreadable videos are reported with the reason and make
the exit status 1; the others are still scored.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Dict

from stzsar.cli.eval import _views, add_model_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict", help="top-k classes of video files", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("videos", nargs="+", metavar="VIDEO", help="video files")
    parser.add_argument("--classes", required=True, metavar="FILE", help="class list to choose from")
    add_model_arguments(parser)
    parser.add_argument("--top-k", type=int, default=5, help="classes listed per video (default 5)")
    parser.add_argument("--views", type=_views, default=(1, 1), metavar="CLIPSxCROPS",
                        help="test views averaged per video (default 1x1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run_predict)


def prepare(args: argparse.Namespace, views=(1, 1)) -> Dict[str, Any]:
    """Model, classes, attributes, class bank and clip settings from the shared options."""
    from stzsar.eval.bank_cache import BankCache, class_bank
    from stzsar.eval.engine import resolve_device
    from stzsar.eval.loading import (check_attributes_cover, clip_spec, load_attributes_file, load_checkpoint_model,
                                     load_classes, resolve_num_frames)

    device = resolve_device(args.device or "auto")
    model, meta = load_checkpoint_model(args.checkpoint, device=device, pretrained=args.pretrained)
    class_names = load_classes(args.classes)
    attributes = load_attributes_file(args.attributes)
    check_attributes_cover(class_names, attributes, str(args.attributes))
    bank = class_bank(model, class_names, attributes, False if args.no_cache else BankCache(args.cache_dir))
    spec = clip_spec(model, resolve_num_frames(args.num_frames, meta), *views)
    return {"model": model, "meta": meta, "classes": class_names, "attributes": attributes, "bank": bank,
            "spec": spec, "device": device}


def run_predict(args: argparse.Namespace) -> int:
    from stzsar.classes import ClassListError
    from stzsar.eval.predict import predict_videos
    from stzsar.model import PretrainedWeightsUnavailable
    from stzsar.train.checkpoint import CheckpointError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.top_k < 1:
        print(f"stzsar predict: --top-k must be >= 1, got {args.top_k}", file=sys.stderr)
        return 2
    try:
        setup = prepare(args, args.views)
    except (FileNotFoundError, ClassListError, ValueError, CheckpointError, PretrainedWeightsUnavailable) as error:
        print(f"stzsar predict: {error}", file=sys.stderr)
        return 2
    answers = predict_videos(setup["model"], args.videos, setup["bank"], setup["classes"], setup["spec"],
                             top_k=args.top_k, device=setup["device"], precision=args.precision or "auto",
                             progress=not args.json)
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "classes": str(args.classes),
                          "attributes": args.attributes, "clip_frames": setup["spec"].num_frames,
                          "predictions": [a.as_dict() for a in answers]}, indent=2))
    else:
        for answer in answers:
            print(answer.video)
            if answer.error:
                print(f"  cannot be read: {answer.error}")
                continue
            for rank, (name, prob) in enumerate(answer.top, start=1):
                print(f"  {rank}. {name:<40s} {100 * prob:6.2f}%")
    return 1 if any(a.error for a in answers) else 0
