"""``stzsar demo``: train and test zero-shot recognition on a synthetic dataset it makes itself.

Generates small coloured balls and bars (moving, growing, spinning, orbiting, blinking among
distractor shapes, for a few frames of each video) as real video files, extracts attributes
from the class descriptions offline, trains a tiny CLIP-shaped model from scratch on the seen
classes, and the paper's ablations: without the spatial and/or the temporal interaction
(Table 4), with class names only, and with ``--ablations full`` the Na sweep (Table 5). Reports
accuracy on held-out videos of the seen classes and zero-shot accuracy on unseen classes, with
95% intervals. The same numbers for the same --seed.

    stzsar demo --out runs/demo
    stzsar demo --out runs/demo --seeds 0,1,2      # one run a seed, then mean +- std

Output: ``report.json`` and ``report.md`` (the table), confusion matrices, the checkpoint, the
class lists, the attribute file and the videos, ready for ``stzsar predict`` / ``explain``.
With ``--seeds``, one such folder a seed (``seed_<n>/``) and ``summary.json`` / ``summary.md``.
"""

from __future__ import annotations

import argparse
import logging
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="end-to-end synthetic zero-shot benchmark (minutes on a CPU)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the split and the training")
    parser.add_argument("--seeds", metavar="LIST",
                        help="comma-separated seeds (e.g. 0,1,2): one run each, then mean +- std over them")
    parser.add_argument("--train-per-class", type=int, default=16, metavar="N",
                        help="training videos per seen class (default 16)")
    parser.add_argument("--test-per-class", type=int, default=16, metavar="N",
                        help="held-out test videos per seen class (default 16)")
    parser.add_argument("--unseen-per-class", type=int, default=64, metavar="N",
                        help="test videos per unseen class (default 64: 384 videos, 95%% interval <= +-5 points)")
    parser.add_argument("--extractor", default="yake", choices=("yake", "rake", "keybert"),
                        help="offline attribute extractor (default yake)")
    parser.add_argument("--ablations", choices=("none", "table4", "full"), default="table4",
                        help="table4 (default): also the paper's Table 4 rows and class names only; "
                             "full: also the Na sweep 2, 4, 16; none: the full model only")
    parser.add_argument("--no-ablations", action="store_const", const="none", dest="ablations",
                        help="same as --ablations none")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the tiny model gains nothing from more)")
    parser.add_argument("--config", metavar="YAML",
                        help="training configuration file or built-in name (default: the built-in demo values, as in --config demo)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a training setting, e.g. --set train.epochs=5 (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from stzsar.config import ConfigError
    from stzsar.demo.runner import DemoSettings, demo_config, format_summary, format_table, run_demo, run_seeds

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name, value in (("--train-per-class", args.train_per_class), ("--test-per-class", args.test_per_class),
                        ("--unseen-per-class", args.unseen_per_class), ("--threads", args.threads)):
        if value < 1:
            print(f"stzsar demo: {name} must be >= 1, got {value}", file=sys.stderr)
            return 2
    try:
        config = demo_config(args.set, args.config)
    except ConfigError as error:
        print(f"stzsar demo: {error}", file=sys.stderr)
        return 2
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()] if args.seeds else None
    except ValueError:
        print(f"stzsar demo: --seeds must be comma-separated integers, got {args.seeds!r}", file=sys.stderr)
        return 2
    settings = DemoSettings(seed=args.seed, train_per_class=args.train_per_class,
                            test_per_class=args.test_per_class, unseen_per_class=args.unseen_per_class,
                            extractor=args.extractor, ablations=args.ablations, threads=args.threads,
                            progress=not args.no_progress)
    try:
        if seeds:
            summary = run_seeds(args.out, seeds, settings, config)
            print(format_summary(summary))
            print(f"summary: {args.out}/summary.json ({summary['seconds']:.0f} s)")
            return 0
        report = run_demo(args.out, settings, config)
    except FileExistsError as error:
        print(f"stzsar demo: {error}", file=sys.stderr)
        return 2
    print(format_table(report))
    print(f"report: {args.out}/report.json ({report['timings_s']['total']:.0f} s)")
    return 0
