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

    # the BIKE/Text4Vis protocol too: 10 random halves of the classes, from the same scoring pass
    stzsar eval --protocol zero-shot ... --class-subsets 10

    # every report again from the stored logits (no model, no videos)
    stzsar eval report runs/eval/zero-shot-ucf101 --class-subsets 10

Every listed video must be scored: a missing file stops the run before scoring, an unreadable one
fails it after the report is written (exit status 1, with the count, the first paths and the
likely cause); ``--allow-unscored 0.05`` accepts up to 5% of each split unscored.

The per-view logits of every video go to a results store under ``--out`` as the run goes; the
same command run again with the same ``--out`` resumes an interrupted run (``--fresh`` starts
over).

Options left out fall back to ``--config FILE`` / ``--set section.key=value`` (the ``data`` and
``eval`` sections of :mod:`stzsar.config`), then to the checkpoint's training configuration
(frames per clip), then to the protocol's defaults. Few-shot fine-tuning takes its settings from
the checkpoint's training configuration, then ``--config``/``--set`` (``optim.lr``,
``train.batch_size``, ``data.hflip``...), then ``--epochs``, ``--seed``, ``--workers``; they are
printed and recorded in the report. The report (``report.json``, ``report.md``,
confusion matrices, per-video predictions) goes to ``--out``.

``--compile auto|true|false`` takes the switch of ``train.compile``: ``auto`` (the default)
compiles (``torch.compile``) the video encoder and the STI head on CUDA devices and runs eagerly on the
CPU (docs/benchmarks.md, "Compiled train step", says when compiling pays off). Few-shot
fine-tuning follows ``train.compile`` of its configuration (``--set train.compile=false``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from stzsar.eval.unscored import parse_share

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


def add_model_arguments(parser: argparse.ArgumentParser, checkpoint_required: bool = True) -> None:
    """Options shared by ``eval``, ``predict`` and ``explain``."""
    parser.add_argument("--checkpoint", required=checkpoint_required, metavar="CKPT",
                        help="checkpoint written by stzsar train: a file, or a run folder (its latest checkpoint)")
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
    parser.add_argument("action", nargs="?", metavar="report",
                        help="'report DIR': rebuild every report of DIR from its results store "
                             "(no model, no videos); with --class-subsets, --out")
    parser.add_argument("report_dir", nargs="?", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--protocol", choices=("zero-shot", "few-shot", "supervised"),
                        help="default: eval.protocol of the config (zero-shot)")
    add_model_arguments(parser, checkpoint_required=False)
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
    data.add_argument("--allow-unscored", type=parse_share, default=0.0, metavar="SHARE",
                      help="share of a split's videos that may be missing or unreadable (skipped, listed in the "
                           "report) without failing the run, e.g. 0.05 or 5%% (default 0: every video must be "
                           "scored)")
    run = parser.add_argument_group("run")
    run.add_argument("--batch-size", type=int, help="videos per batch per rank (default: eval.batch_size)")
    run.add_argument("--workers", type=int, help="decoding workers per rank (default: data.num_workers)")
    run.add_argument("--class-chunk", type=int, default=0, help="classes per STI call (0: automatic)")
    run.add_argument("--out", help="report folder, with the results store in <out>/store (default: "
                     "runs/eval/<protocol>-<dataset>); the same --out resumes an interrupted run")
    run.add_argument("--fresh", action="store_true", help="delete the results store of --out and start over")
    run.add_argument("--flush-every", type=int, default=4, metavar="N",
                     help="batches between two writes of the results store (default 4)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--compile", choices=("auto", "true", "false"), default="auto",
                     help="torch.compile the video encoder and the STI head (auto, the default: on for "
                          "CUDA devices, off on the CPU; as train.compile)")
    run.add_argument("--config", metavar="YAML", help="configuration file or built-in name, e.g. fewshot_ucf101 (data and eval sections are read)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="configuration override, e.g. --set eval.batch_size=32 (repeatable)")
    subsets = parser.add_argument_group("class subsets (BIKE/Text4Vis protocol)")
    subsets.add_argument("--class-subsets", type=int, metavar="N",
                         help="also report N random class subsets: mean ± std over the draws, from the same logits")
    subsets.add_argument("--subset-fraction", type=float, default=0.5, metavar="F",
                         help="fraction of the classes per draw (default 0.5)")
    subsets.add_argument("--subset-seed", type=int, default=0, help="seed of the draws (default 0)")
    few = parser.add_argument_group("few-shot")
    few.add_argument("--shots", type=_int_list, help="K values (default 2,4,8,16)")
    few.add_argument("--epochs", type=int, help="fine-tuning epochs per K (default: eval.fewshot_epochs, 50)")
    few.add_argument("--seed", type=int, default=None, help="seed of the K-shot draw and of training "
                     "(default: train.seed of the checkpoint's configuration)")
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
    from stzsar.eval.store import json_digest

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
        videos_digest=json_digest([[str(v.path), int(v.label)] for v in video_split.videos]),
    ), video_split


def _option(value, fallback):
    return value if value is not None else fallback


def run_eval(args: argparse.Namespace) -> int:
    from stzsar.config import ConfigError, load_config
    from stzsar.data.errors import VideoDecodeError
    from stzsar.model import PretrainedWeightsUnavailable
    from stzsar.train.checkpoint import CheckpointError, locate_checkpoint
    from stzsar.eval.bank_cache import BankCache
    from stzsar.eval.distributed import init_distributed
    from stzsar.eval.engine import EvalSettings, autocast_dtype, resolved_precision
    from stzsar.eval.loading import (check_attributes_cover, clip_spec, load_attributes_file,
                                     load_checkpoint_model, resolve_num_frames)
    from stzsar.eval import protocols
    from stzsar.eval.report import canonical_dataset, write_report
    from stzsar.eval.rebuild import add_class_subsets, save_run_file, store_root
    from stzsar.eval.store import clear_store, file_digest
    from stzsar.eval.unscored import missing_videos, skipped_videos, unscored_message

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("stzsar").setLevel(logging.INFO)  # ours at INFO; open_clip's chatter stays out
    if args.action is not None:
        return run_report(args)
    if not args.checkpoint:
        print("stzsar eval: --checkpoint is required (or 'stzsar eval report DIR' to rebuild reports)",
              file=sys.stderr)
        return 2
    if args.flush_every < 1 or (args.class_subsets is not None and args.class_subsets < 1):
        print("stzsar eval: --flush-every and --class-subsets must be >= 1", file=sys.stderr)
        return 2
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
    notes: List[str] = []
    if protocol == "zero-shot":
        splits = args.splits or ceval.splits
        one_list = "{split}" not in f"{list_path}{labels or ''}" and fmt not in ("ucf101", "hmdb51")
        if len(splits) > 1 and one_list and args.splits:
            print(f"stzsar eval: {len(splits)} splits asked for but --list {list_path} has no '{{split}}' "
                  f"placeholder; every split would read the same file (give --splits 1 or a pattern)",
                  file=sys.stderr)
            return 2
        if len(splits) > 1 and one_list:
            # One list of the user's own: one split is what they mean, not the protocol's default three.
            splits = splits[:1]
            notes.append(f"one list without a '{{split}}' placeholder ({list_path}): evaluated as one split, "
                         "so there is no mean ± std over splits")
            logger.info("%s has no '{split}' placeholder: evaluating it as one split", list_path)
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

    # The device first, as training does: a bad or conflicting one fails before any process group.
    from stzsar.devices import resolve_device as device_for_rank
    from stzsar.train.distributed import launched_world_size, local_rank

    try:
        device = device_for_rank(args.device or "auto", local_rank(), launched_world_size() > 1, setting="--device")
    except (ValueError, RuntimeError) as error:
        print(f"stzsar eval: {error}", file=sys.stderr)
        return 2
    context = init_distributed("nccl" if device.type == "cuda" else "gloo")
    try:
        settings = EvalSettings(
            batch_size=_option(args.batch_size, ceval.batch_size),
            num_workers=_option(args.workers, cdata.num_workers),
            device=args.device or "auto",
            precision=args.precision or "auto",
            class_chunk=args.class_chunk,
            progress=not args.no_progress,
            flush_every=args.flush_every,
            compile=args.compile,
        )
        args.checkpoint = str(locate_checkpoint(args.checkpoint))  # a run folder: the file read, hashed, reported
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
            # What "auto" resolved to here: the report says what the numbers were computed in.
            "precision": resolved_precision(autocast_dtype(device, settings.precision)),
            "device": str(device),
            "world_size": context.world_size,
            "template": model.config.template,
        }
        if notes:
            run_meta["notes"] = notes
        if args.allow_unscored:
            run_meta["allow_unscored"] = args.allow_unscored
        # What the stored logits depend on besides the split (classes, attributes, videos) and the
        # precision (added by the engine): a resumed run must match it.
        identity = {"model": model.config.name, "checkpoint": f"sha256:{file_digest(args.checkpoint)}",
                    "pretrained": args.pretrained, "num_frames": num_frames, "views": list(views),
                    "image_size": model.image_size, "template": model.config.template}
        out = Path(args.out or f"runs/eval/{protocol}-{dataset_name}")
        store_dir = store_root(out)
        if args.fresh and context.is_main:
            clear_store(store_dir)
        eval_splits, video_splits = [], []
        for number in splits:
            subset = "test" if fmt in ("ucf101", "hmdb51") else cdata.val_subset
            eval_split, video_split = build_eval_split(fmt, list_path, labels, root, number, spec, args.strict,
                                                       subset=subset, name="val" if protocol == "supervised" else None)
            # One attribute file serves every split (k600-added covers the three Kinetics-600 lists):
            # entries for other splits' classes are expected, near misses are still flagged.
            check_attributes_cover(eval_split.classes, attributes, eval_split.name, unknown_entries=False)
            eval_splits.append(eval_split)
            video_splits.append(video_split)
        # Missing files fail the run before any scoring (a wrong root would otherwise go through
        # the whole list, one warning per video, to a report over nothing).
        problems = [unscored_message(missing_videos(s.name, v), args.allow_unscored, root, before=True)
                    for s, v in zip(eval_splits, video_splits)]
        if any(problems):
            if context.is_main:
                print("stzsar eval: " + "\n".join(p for p in problems if p), file=sys.stderr)
            return 1
        stored = dict(store_dir=store_dir, identity=identity)
        topk = list(ceval.topk)
        if protocol != "few-shot" and context.is_main:
            save_run_file(out, protocol, dataset_name, [s.name for s in eval_splits], run_meta, topk)
        if protocol == "zero-shot":
            run = protocols.zero_shot(model, eval_splits, dataset=dataset_name, attributes=attributes,
                                      cache=cache, settings=settings, context=context, meta=run_meta, **stored)
        elif protocol == "supervised":
            run = protocols.supervised(model, eval_splits[0], dataset=dataset_name, attributes=attributes,
                                       cache=cache, settings=settings, context=context, meta=run_meta, **stored)
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
            from stzsar.eval.fewshot import SOURCE, finetune_config, shown_settings

            ft_config = finetune_config(meta, args.config, args.set, epochs=args.epochs, seed=args.seed,
                                        num_workers=args.workers, num_frames=num_frames, device=args.device,
                                        precision=args.precision)
            shots = args.shots or ceval.shots
            shown = shown_settings(ft_config)
            if context.is_main:
                print(f"few-shot fine-tuning settings ({SOURCE}):\n  "
                      + "\n  ".join(f"{k} = {v}" for k, v in shown.items()), flush=True)
            finetune = protocols.trainer_finetune(ft_config, args.checkpoint, train_split, attributes=attributes,
                                                  pretrained=args.pretrained)
            run_meta.update(shots=list(shots), epochs=ft_config.train.epochs, seed=ft_config.train.seed,
                            train_list=_fill(train_list, number),
                            finetune={"source": SOURCE, "settings": shown, "per_k": finetune.notes})
            if context.is_main:
                save_run_file(out, protocol, dataset_name, [f"K={k}" for k in shots], run_meta, topk)
            run = protocols.few_shot(shots, finetune, eval_splits[0], output_dir=out / "finetune",
                                     dataset=dataset_name, attributes=attributes, cache=cache, settings=settings,
                                     context=context, meta=run_meta, **stored)
        if context.is_main:
            save_run_file(out, protocol, dataset_name, list(run.results), run.meta, topk)
            if args.class_subsets:
                add_class_subsets(run, out, args.class_subsets, args.subset_fraction, args.subset_seed)
            written = write_report(run, out)
            print((out / "report.md").read_text().split("\n## ")[0].rstrip())
            print(f"\nreport: {written['markdown']} and {written['json']}")
        # Skipped videos are counted and listed in the report; beyond the allowed share they fail the run.
        problems = [unscored_message(skipped_videos(name, result), args.allow_unscored, root)
                    for name, result in run.results.items()]
        if any(problems):
            if context.is_main:
                print("stzsar eval: " + "\n".join(p for p in problems if p)
                      + f"\nThe report ({out / 'report.md'}) lists every skipped video; --allow-unscored SHARE "
                      "accepts a share of them, --fresh retries them after a fix.", file=sys.stderr)
            return 1
        return 0
    except VideoDecodeError as error:  # only with --strict: otherwise bad videos are skipped
        print(f"stzsar eval: {error.path}: {error.reason} (--strict stops at the first unreadable video)",
              file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError, KeyError, CheckpointError, PretrainedWeightsUnavailable,
            ConfigError) as error:
        # Bad inputs (missing files, malformed lists, unknown classes, unusable checkpoints) are
        # reported in one line; their messages name the file and the line or class.
        print(f"stzsar eval: {error.args[0] if isinstance(error, KeyError) else error}", file=sys.stderr)
        return 2
    finally:
        context.close()


def run_report(args: argparse.Namespace) -> int:
    """``stzsar eval report DIR``: every report of DIR again, from its results store."""
    from stzsar.eval.rebuild import add_class_subsets, load_run
    from stzsar.eval.report import write_report

    if args.action != "report" or not args.report_dir:
        print(f"stzsar eval: unknown action {args.action!r}; 'stzsar eval report DIR' rebuilds the reports "
              "of DIR", file=sys.stderr)
        return 2
    source = Path(args.report_dir)
    try:
        run = load_run(source)
        if args.class_subsets:
            add_class_subsets(run, source, args.class_subsets, args.subset_fraction, args.subset_seed)
        out = Path(args.out) if args.out else source
        written = write_report(run, out)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"stzsar eval report: {error}", file=sys.stderr)
        return 2
    print((out / "report.md").read_text().split("\n## ")[0].rstrip())
    print(f"\nreport: {written['markdown']} and {written['json']}")
    return 0
