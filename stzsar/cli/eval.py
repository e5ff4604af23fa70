"""``stzsar eval``: the paper's evaluation protocols on a checkpoint (docs/method.md section 6).

Examples::

    # zero-shot UCF-101, three splits ({split} is replaced by 1, 2, 3)
    stzsar eval --protocol zero-shot --checkpoint run/checkpoints/step_00010000.pt \\
        --format bike --list lists/ucf101/val_rgb_split_{split}.txt \\
        --labels lists/ucf101/ucf_labels.csv --root /data/ucf101 --attributes ucf101_attributes.json

    # zero-shot Kinetics-600 (each split has its own 160 classes)
    stzsar eval --protocol zero-shot --checkpoint CKPT --dataset k600 --format bike \\
        --list lists/k600/test_split{split}_exist.txt --labels lists/k600/k160_labels_split{split}.csv \\
        --root /data/k600

    # supervised Kinetics-400 validation with 4 x 3 views
    stzsar eval --protocol supervised --checkpoint CKPT --format bike \\
        --list lists/k400/kinetics_video_val_se320.txt --labels lists/k400/kinetics_400_labels.csv --root /data/k400

    # few-shot UCF-101: fine-tune on K = 2, 4, 8, 16 videos per class of train split 1, test split 1
    stzsar eval --protocol few-shot --shots 2,4,8,16 --checkpoint CKPT --format bike \\
        --train-list lists/ucf101/train_rgb_split_1.txt --list lists/ucf101/val_rgb_split_1.txt \\
        --labels lists/ucf101/ucf_labels.csv --root /data/ucf101

    # several GPUs: every rank scores a shard; rank 0 writes the report
    torchrun --nproc_per_node 8 -m stzsar.cli eval ...

Options left out fall back to ``--config FILE`` / ``--set section.key=value`` (the ``data`` and
``eval`` sections of :mod:`stzsar.config`), then to the checkpoint's training configuration
(frames per clip), then to the protocol's defaults. The report (``report.json``, ``report.md``,
confusion matrices, per-video predictions) goes to ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

logger = logging.getLogger("stzsar.eval")


def _int_list(text: str) -> List[int]:
    try:
        values = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _views(text: str):
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"--views takes CLIPSxCROPS such as 4x3, got {text!r}")
    clips, crops = int(parts[0]), int(parts[1])
    if clips < 1 or crops not in (1, 3):
        raise argparse.ArgumentTypeError(f"--views: clips must be >= 1 and crops 1 or 3, got {text!r}")
    return clips, crops


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``eval``, ``predict`` and ``explain``."""
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="checkpoint written by stzsar train")
    parser.add_argument("--pretrained", metavar="TAG_OR_FILE",
                        help="CLIP weights for a checkpoint that stores only the trained weights, when the "
                             "reference it records cannot be reached here (e.g. a local ViT-B-16 file)")
    parser.add_argument("--attributes", metavar="FILE", help="attribute file ({class: [keywords]}); "
                        "default: class names alone")
    parser.add_argument("--num-frames", type=int, metavar="T", help="frames per clip (default: the "
                        "checkpoint's training value)")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1 ...")
    parser.add_argument("--precision", default=None, choices=("auto", "fp32", "bf16", "fp16"),
                        help="auto: bf16 autocast on CUDA, fp32 on the CPU")
    parser.add_argument("--cache-dir", metavar="DIR", help="class-bank cache (default: ~/.cache/stzsar/class_banks)")
    parser.add_argument("--no-cache", action="store_true", help="encode the classes without the disk cache")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="zero-shot, few-shot and supervised evaluation of a checkpoint",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--protocol", choices=("zero-shot", "few-shot", "supervised"),
                        help="default: eval.protocol of the config (zero-shot)")
    add_model_arguments(parser)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", help="ucf101, hmdb51, k600, k400 or another name (picks the paper's "
                      "number to compare with; default: guessed from the list path)")
    data.add_argument("--format", help="split format: bike (default), ucf101, hmdb51, kinetics")
    data.add_argument("--list", dest="list_path", metavar="PATH",
                      help="test list file, or the official split folder (ucf101, hmdb51); '{split}' is "
                           "replaced by the split number")
    data.add_argument("--labels", metavar="PATH", help="class list; '{split}' is replaced by the split number")
    data.add_argument("--root", help="folder holding the videos")
    data.add_argument("--splits", type=_int_list, help="split numbers (zero-shot default 1,2,3; others 1)")
    data.add_argument("--views", type=_views, metavar="CLIPSxCROPS",
                      help="test views per video (supervised default 4x3, others 1x1)")
    data.add_argument("--strict", action="store_true", help="stop on an unreadable video instead of skipping it")
    run = parser.add_argument_group("run")
    run.add_argument("--batch-size", type=int, help="videos per batch per rank (default: eval.batch_size)")
    run.add_argument("--workers", type=int, help="decoding workers per rank (default: data.num_workers)")
    run.add_argument("--class-chunk", type=int, default=0, help="classes per STI call (0: automatic)")
    run.add_argument("--out", help="report folder (default: runs/eval/<protocol>-<dataset>)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--config", metavar="YAML", help="configuration file (data and eval sections are read)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="configuration override, e.g. --set eval.batch_size=32 (repeatable)")
    few = parser.add_argument_group("few-shot")
    few.add_argument("--shots", type=_int_list, help="K values (default 2,4,8,16)")
    few.add_argument("--epochs", type=int, help="fine-tuning epochs per K (default 50)")
    few.add_argument("--seed", type=int, default=None, help="seed of the K-shot draw and of training")
    few.add_argument("--train-list", metavar="PATH", help="training list the K-shot subsets are drawn from")
    parser.set_defaults(func=run_eval)


# ------------------------------------------------------------------------------------------------


def guess_dataset(*paths: Optional[str]) -> str:
    text = " ".join(str(p).lower() for p in paths if p)
    for needle, name in (("hmdb", "hmdb51"), ("ucf", "ucf101"), ("k600", "k600"), ("k160", "k600"),
                         ("kinetics600", "k600"), ("kinetics-600", "k600"), ("k400", "k400"),
                         ("kinetics400", "k400"), ("kinetics-400", "k400")):
        if needle in text:
            return name
    return "custom"


def _fill(path: Optional[str], split: int) -> Optional[str]:
    return path.replace("{split}", str(split)) if path else path


def build_eval_split(fmt: str, list_path: str, labels: Optional[str], root: str, split: int, spec,
                     strict: bool, subset: Optional[str] = None, name: Optional[str] = None):
    """An :class:`~stzsar.eval.protocols.EvalSplit` over :class:`stzsar.data.VideoDataset`."""
    from stzsar.data import VideoDataset, build_split
    from stzsar.eval.protocols import EvalSplit

    list_file, label_file = _fill(list_path, split), _fill(labels, split)
    video_split = build_split(fmt, list_file, root, labels=label_file, split=split, subset=subset,
                              name=name or f"split {split}")
    dataset = VideoDataset(video_split, spec, training=False, strict=strict)
    return EvalSplit(
        name=name or f"split {split}",
        classes=list(video_split.classes),
        dataset=dataset,
        source=f"{list_file}" + (f" (classes: {label_file})" if label_file else ""),
        video_path=lambda index, s=video_split: str(s.videos[index].path),
    ), video_split


def _option(value, fallback):
    return value if value is not None else fallback


def run_eval(args: argparse.Namespace) -> int:
    from stzsar.config import ConfigError, load_config
    from stzsar.data.errors import VideoDecodeError
    from stzsar.model import PretrainedWeightsUnavailable
    from stzsar.train.checkpoint import CheckpointError
    from stzsar.eval.bank_cache import BankCache
    from stzsar.eval.distributed import init_distributed
    from stzsar.eval.engine import EvalSettings, resolve_device
    from stzsar.eval.loading import (check_attributes_cover, clip_spec, load_attributes_file,
                                     load_checkpoint_model, resolve_num_frames)
    from stzsar.eval import protocols
    from stzsar.eval.report import canonical_dataset, write_report

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("stzsar").setLevel(logging.INFO)  # ours at INFO; open_clip's chatter stays out
    try:
        config = load_config(args.config, args.set)
    except ConfigError as error:
        print(f"stzsar eval: {error}", file=sys.stderr)
        return 2
    cdata, ceval = config.data, config.eval
    protocol = args.protocol or ceval.protocol
    fmt = args.format or cdata.format
    list_path = args.list_path or cdata.val_list
    labels = args.labels or cdata.labels
    root = args.root or cdata.root
    attributes_file = args.attributes or cdata.attributes
    missing = [flag for flag, value in (("--list", list_path), ("--root", root)) if not value]
    if missing:
        print(f"stzsar eval: {' and '.join(missing)} required (or data.val_list / data.root in --config)",
              file=sys.stderr)
        return 2
    dataset_name = canonical_dataset(args.dataset) if args.dataset else guess_dataset(list_path, labels)
    if protocol == "zero-shot":
        splits = args.splits or ceval.splits
        if len(splits) > 1 and "{split}" not in f"{list_path}{labels or ''}" and fmt not in ("ucf101", "hmdb51"):
            print(f"stzsar eval: {len(splits)} splits asked for but --list {list_path} has no '{{split}}' "
                  f"placeholder; every split would read the same file (give --splits 1 or a pattern)",
                  file=sys.stderr)
            return 2
    else:
        splits = args.splits or [cdata.split]
        if len(splits) != 1:
            print(f"stzsar eval: the {protocol} protocol evaluates one split, got {splits}", file=sys.stderr)
            return 2
    if args.views:
        views = args.views
    elif protocol == "supervised":
        views = protocols.SUPERVISED_VIEWS
    else:
        views = (ceval.num_clips, ceval.num_crops)

    context = init_distributed()
    try:
        settings = EvalSettings(
            batch_size=_option(args.batch_size, ceval.batch_size),
            num_workers=_option(args.workers, cdata.num_workers),
            device=args.device or "auto",
            precision=args.precision or "auto",
            class_chunk=args.class_chunk,
            progress=not args.no_progress,
        )
        device = resolve_device(settings.device, context)
        model, meta = load_checkpoint_model(args.checkpoint, device=device, pretrained=args.pretrained)
        num_frames = resolve_num_frames(args.num_frames, meta)
        spec = clip_spec(model, num_frames, *views)
        attributes = load_attributes_file(attributes_file)
        cache = False if args.no_cache else BankCache(args.cache_dir)
        run_meta: Dict[str, Any] = {
            "model": model.config.name,
            "checkpoint": str(args.checkpoint),
            "attributes": str(attributes_file) if attributes_file else None,
            "num_frames": num_frames,
            "image_size": model.image_size,
            "views": f"{views[0]} clips x {views[1]} crops",
            "precision": settings.precision,
            "device": str(device),
            "world_size": context.world_size,
            "template": model.config.template,
        }
        eval_splits, video_splits = [], []
        for number in splits:
            subset = "test" if fmt in ("ucf101", "hmdb51") else cdata.val_subset
            eval_split, video_split = build_eval_split(fmt, list_path, labels, root, number, spec, args.strict,
                                                       subset=subset, name="val" if protocol == "supervised" else None)
            check_attributes_cover(eval_split.classes, attributes, eval_split.name)
            eval_splits.append(eval_split)
            video_splits.append(video_split)
        if protocol == "zero-shot":
            run = protocols.zero_shot(model, eval_splits, dataset=dataset_name, attributes=attributes,
                                      cache=cache, settings=settings, context=context, meta=run_meta)
        elif protocol == "supervised":
            run = protocols.supervised(model, eval_splits[0], dataset=dataset_name, attributes=attributes,
                                       cache=cache, settings=settings, context=context, meta=run_meta)
        else:
            train_list = args.train_list or cdata.train_list
            if not train_list:
                print("stzsar eval: the few-shot protocol needs --train-list (or data.train_list)", file=sys.stderr)
                return 2
            from stzsar.data import build_split

            number = splits[0]
            train_subset = "train" if fmt in ("ucf101", "hmdb51") else cdata.train_subset
            train_split = build_split(fmt, _fill(train_list, number), root, labels=_fill(labels, number),
                                      split=number, subset=train_subset)
            seed = _option(args.seed, config.train.seed)
            epochs = _option(args.epochs, ceval.fewshot_epochs)
            shots = args.shots or ceval.shots
            out_dir = Path(args.out or f"runs/eval/few-shot-{dataset_name}")
            config.data.num_frames = num_frames
            finetune = protocols.trainer_finetune(config, args.checkpoint, train_split, epochs=epochs, seed=seed,
                                                  attributes=attributes, pretrained=args.pretrained)
            run_meta.update(shots=list(shots), epochs=epochs, seed=seed, train_list=_fill(train_list, number))
            run = protocols.few_shot(shots, finetune, eval_splits[0], output_dir=out_dir / "finetune",
                                     dataset=dataset_name, attributes=attributes, cache=cache, settings=settings,
                                     context=context, meta=run_meta)
        if context.is_main:
            out = Path(args.out or f"runs/eval/{protocol}-{dataset_name}")
            written = write_report(run, out)
            print((out / "report.md").read_text().split("\n## ")[0].rstrip())
            print(f"\nreport: {written['markdown']} and {written['json']}")
        # Skipped videos do not fail the command: the report counts and lists them.
        return 0
    except VideoDecodeError as error:  # only with --strict: otherwise bad videos are skipped
        print(f"stzsar eval: {error.path}: {error.reason} (--strict stops at the first unreadable video)",
              file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError, KeyError, CheckpointError, PretrainedWeightsUnavailable) as error:
        # Bad inputs (missing files, malformed lists, unknown classes, unusable checkpoints) are
        # reported in one line; their messages name the file and the line or class.
        print(f"stzsar eval: {error.args[0] if isinstance(error, KeyError) else error}", file=sys.stderr)
        return 2
    finally:
        context.close()
