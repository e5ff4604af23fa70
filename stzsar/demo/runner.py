"""``stzsar demo``: the whole method end to end on a synthetic zero-shot benchmark, on any machine.

1. Generate the dataset (:mod:`stzsar.demo.actions`): coloured balls and bars moving, growing,
   spinning, orbiting, blinking; 24 (colour, motion) classes with invented names, 18 seen and
   6 unseen, as H.264 files with BIKE-style lists.
2. Extract each class's attributes from its description with the offline extractor
   (:func:`stzsar.attributes.extract_attributes`, YAKE by default: deterministic, no network).
3. Train a tiny CLIP-shaped model from scratch on the seen classes with the real trainer
   (:func:`stzsar.train.train`), and two ablations: without attributes (class names alone) and
   without the STI module (mean-pooled frames).
4. Evaluate each on held-out videos of the seen classes and zero-shot on the unseen classes with
   the evaluation engine (:func:`stzsar.eval.engine.evaluate`), next to chance.
5. Write ``report.json``, ``report.md`` and confusion-matrix plots to the output folder.

Everything is seeded; on CPU the report is the same for a seed (one intra-op thread by default,
see ``DemoSettings.threads``).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Union

import torch

from stzsar.config import Config, apply_overrides, config_from_dict, load_config, validate_config

logger = logging.getLogger("stzsar.demo")

PathLike = Union[str, Path]

#: The demo's training configuration (``configs/demo.yaml`` holds the same values).
DEMO_CONFIG: Dict[str, Dict[str, Any]] = {
    "model": {"name": "stzsar-tiny", "pretrained": None, "frozen_blocks": 0},
    "data": {"format": "bike", "num_frames": 8, "size": 32, "short_side": 36, "hflip": 0.0,
             "num_workers": 0, "num_attributes": 8},
    "optim": {"lr": 2e-3, "weight_decay": 0.05, "warmup_epochs": 1.0},
    "train": {"epochs": 20, "batch_size": 32, "checkpoint_every": 0, "keep_last": 2, "log_every": 5,
              "output_dir": "runs/demo/train"},
    "eval": {"batch_size": 32},
}

#: The three models the demo trains: (key, label, attributes?, STI?).
VARIANTS = (
    ("full", "STI + attributes", True, True),
    ("no_attributes", "STI, class names only", False, True),
    ("no_sti", "mean pooling (no STI) + attributes", True, False),
)

_MARKER = "stzsar-demo"


@dataclass
class DemoSettings:
    """What the demo generates and how it runs (the training itself is in the :class:`Config`).

    Attributes:
        seed: seeds the dataset, the class split, the initialisation and the data order.
        train_per_class: training videos per seen class.
        test_per_class: held-out videos per seen class and test videos per unseen class.
        video_frames: frames per generated video (clips sample ``data.num_frames`` of them).
        frame_size: side of the generated frames (clips are cropped to ``data.size``).
        extractor: offline attribute extractor (``yake``, ``rake`` or ``keybert``).
        ablations: also train the two ablation models.
        threads: torch intra-op threads while the demo runs (``None``: leave as is). One thread
            is the default: the tiny model's operations are too small to gain from more, and on a
            busy machine extra threads cost much more than they give.
        progress: show progress bars.
    """

    seed: int = 0
    train_per_class: int = 16
    test_per_class: int = 10
    video_frames: int = 16
    frame_size: int = 36
    extractor: str = "yake"
    ablations: bool = True
    threads: Optional[int] = 1
    progress: bool = True


def demo_config(overrides: Iterable[str] = (), config_path: Optional[PathLike] = None) -> Config:
    """The demo's :class:`Config`: :data:`DEMO_CONFIG`, or ``config_path``, then ``overrides``."""
    if config_path is not None:
        config = load_config(config_path)
    else:
        config = config_from_dict(DEMO_CONFIG, source="stzsar.demo.DEMO_CONFIG")
    config = apply_overrides(config, overrides)
    validate_config(config)
    return config


def _prepare_out(out: Path) -> None:
    """Create ``out``; reuse it only if empty or a previous demo's output (whose parts are replaced)."""
    if out.exists() and any(out.iterdir()):
        marker = out / "report.json"
        previous = False
        if marker.is_file():
            try:
                previous = json.loads(marker.read_text()).get("kind") == _MARKER
            except (ValueError, AttributeError):
                previous = False
        if not previous and not (out / ".stzsar-demo").is_file():
            raise FileExistsError(
                f"{out} exists and is not the output of an earlier stzsar demo; choose an empty or new --out"
            )
        for part in ("data", "train", "ablations"):
            shutil.rmtree(out / part, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / ".stzsar-demo").write_text("written by stzsar demo; the demo may replace this folder's content\n")


def _chance(num_classes: int) -> float:
    return 100.0 / num_classes


def _ci95(accuracy: float, count: int) -> float:
    """Half-width of the normal-approximation 95% interval of an accuracy (percent) over ``count``
    videos: how far another draw of test videos could move it."""
    if count <= 0:
        return float("nan")
    p = accuracy / 100.0
    return 100.0 * 1.96 * math.sqrt(max(p * (1 - p), 0.0) / count)


def _markdown(report: Dict[str, Any]) -> str:
    rows = [
        "| model | attributes | seen top-1 (%) | chance | unseen zero-shot top-1 (%) | chance |",
        "|---|---|---|---|---|---|",
    ]
    for key, label, attributes, _ in VARIANTS:
        entry = report["variants"].get(key)
        if entry is None:
            continue
        rows.append(
            f"| {label} | {'yes' if attributes else 'no'} | {entry['seen_accuracy']:.1f} ± {entry['seen_ci95']:.1f} | "
            f"{report['chance_seen']:.1f} | {entry['unseen_accuracy']:.1f} ± {entry['unseen_ci95']:.1f} | "
            f"{report['chance_unseen']:.1f} |"
        )
    counts = report["num_videos"]
    lines = [
        "# stzsar demo: synthetic zero-shot action recognition",
        "",
        f"{report['num_seen_classes']} seen classes ({counts['train']} training videos, "
        f"{counts['seen_test']} held-out), {report['num_unseen_classes']} unseen classes "
        f"({counts['unseen_test']} videos); model `{report['model']}` trained from scratch, "
        f"seed {report['seed']}.",
        "",
        *rows,
        "",
        "± : half-width of the 95% interval over the test videos (binomial, normal approximation).",
        "",
        f"Checkpoint: `{report['checkpoint']}`  ",
        f"Unseen classes: `{report['unseen_classes']}`, attributes: `{report['attributes']}`  ",
        f"Example video: `{report['example_video']}` (class {report['example_video_class']})",
        "",
        "Try:",
        "",
        f"    {report['commands']['predict']}",
        f"    {report['commands']['explain']}",
        "",
    ]
    return "\n".join(lines)


def run_demo(
    out: PathLike = "runs/demo",
    settings: Optional[DemoSettings] = None,
    config: Optional[Config] = None,
) -> Dict[str, Any]:
    """Run the demo into ``out``; returns the report (also written as ``out/report.json``)."""
    from stzsar.attributes import extract_attributes, make_offline_extractor
    from stzsar.data import ClipSpec, build_split
    from stzsar.demo.actions import generate_dataset
    from stzsar.demo.baseline import MeanPoolHead
    from stzsar.demo.cached import CachedVideoDataset
    from stzsar.eval.engine import EvalSettings, evaluate
    from stzsar.eval.report import plot_confusion
    from stzsar.model import build_model_from_config
    from stzsar.train.sampling import seed_everything
    from stzsar.train.trainer import train

    settings = settings or DemoSettings()
    config = copy.deepcopy(config) if config is not None else demo_config()
    out = Path(out)
    _prepare_out(out)
    previous_threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    timings: Dict[str, float] = {}
    started = time.perf_counter()
    try:
        # 1. Data.
        tic = time.perf_counter()
        dataset = generate_dataset(
            out / "data", train_per_class=settings.train_per_class, test_per_class=settings.test_per_class,
            num_frames=settings.video_frames, size=settings.frame_size, seed=settings.seed,
            progress=settings.progress,
        )
        (out / "data" / "seen_classes.txt").write_text("\n".join(dataset.seen) + "\n")
        (out / "data" / "unseen_classes.txt").write_text("\n".join(dataset.unseen) + "\n")
        (out / "data" / "all_classes.txt").write_text("\n".join(c.name for c in dataset.classes) + "\n")
        timings["generate_videos"] = time.perf_counter() - tic

        # 2. Attributes from the descriptions (offline extractor, cached next to the data).
        tic = time.perf_counter()
        descriptions = {c.name: c.description for c in dataset.classes}
        extracted = extract_attributes(
            [c.name for c in dataset.classes], descriptions,
            extractor=make_offline_extractor(settings.extractor), num=config.data.num_attributes,
            cache=out / "data" / "attributes_cache.json", progress=settings.progress,
            source=str(dataset.descriptions),
        )
        attributes_path = extracted.save(out / "data" / "attributes.json")
        attributes = extracted.attributes
        timings["extract_attributes"] = time.perf_counter() - tic

        # 3. Clips (decoded once, shared by every model).
        tic = time.perf_counter()
        config.data.root = str(dataset.root)
        config.data.train_list = str(dataset.train_list)
        config.data.labels = str(dataset.seen_labels)
        config.data.attributes = str(attributes_path)
        config.data.shots = None
        config.train.seed = settings.seed
        config.train.progress = config.train.progress and settings.progress
        train_spec = ClipSpec(num_frames=config.data.num_frames, size=config.data.size or 32,
                              short_side=config.data.short_side, hflip=config.data.hflip)
        test_spec = ClipSpec(num_frames=config.data.num_frames, size=config.data.size or 32,
                             short_side=config.data.short_side)

        def clips(list_file: Path, labels: Path, training: bool) -> CachedVideoDataset:
            split = build_split("bike", list_file, dataset.root, labels=labels)
            data = CachedVideoDataset(split, train_spec if training else test_spec, training=training,
                                      seed=settings.seed if training else None)
            errors = data.preload()
            for error in errors:
                logger.warning("unreadable video (skipped): %s", error)
            return data

        train_set = clips(dataset.train_list, dataset.seen_labels, True)
        seen_test = clips(dataset.seen_test_list, dataset.seen_labels, False)
        unseen_test = clips(dataset.unseen_test_list, dataset.unseen_labels, False)
        timings["decode_videos"] = time.perf_counter() - tic

        eval_settings = EvalSettings(batch_size=config.eval.batch_size, num_workers=0,
                                     device=config.train.device, precision=config.train.precision,
                                     progress=settings.progress)
        variants: Dict[str, Dict[str, Any]] = {}
        checkpoint = None
        plots: Dict[str, str] = {}
        for key, label, use_attributes, use_sti in VARIANTS:
            if key != "full" and not settings.ablations:
                continue
            tic = time.perf_counter()
            run_config = copy.deepcopy(config)
            run_config.train.output_dir = str(out / "train" if key == "full" else out / "ablations" / key)
            if not use_attributes:
                run_config.data.attributes = None
            seed_everything(settings.seed)
            model = build_model_from_config(run_config.model_config())
            if not use_sti:
                model.sti = MeanPoolHead(model.dim, normalize=run_config.model.normalize)
            run_attributes = attributes if use_attributes else None
            if settings.progress:
                print(f"[demo] training: {label}", flush=True)
            result = train(run_config, train_set, model=model, attributes=run_attributes,
                           class_names=dataset.seen, save_checkpoints=key == "full")
            trained = result.model
            with torch.no_grad():
                seen_bank = trained.encode_classes(dataset.seen, run_attributes)
                unseen_bank = trained.encode_classes(dataset.unseen, run_attributes)
            seen = evaluate(trained, seen_test, seen_bank, dataset.seen, settings=eval_settings,
                            description=f"seen ({key})")
            unseen = evaluate(trained, unseen_test, unseen_bank, dataset.unseen, settings=eval_settings,
                              description=f"unseen ({key})")
            variants[key] = {
                "label": label,
                "attributes": use_attributes,
                "sti": use_sti,
                "seen_accuracy": seen.top1,
                "unseen_accuracy": unseen.top1,
                "seen_ci95": _ci95(seen.top1, seen.num_scored),
                "unseen_ci95": _ci95(unseen.top1, unseen.num_scored),
                "seen_videos_scored": seen.num_scored,
                "unseen_videos_scored": unseen.num_scored,
                "videos_skipped": seen.num_skipped + unseen.num_skipped,
                "final_loss": result.history[-1]["loss"] if result.history else None,
                "steps": result.step,
                "run_dir": str(result.run_dir),
                "seconds": round(time.perf_counter() - tic, 1),
            }
            if key == "full":
                checkpoint = result.checkpoint
                plots["seen"] = str(plot_confusion(seen, out / "confusion_seen.png",
                                                   title=f"seen classes, held-out videos: top-1 {seen.top1:.1f}%"))
                plots["unseen"] = str(plot_confusion(unseen, out / "confusion_unseen.png",
                                                     title=f"unseen classes (zero-shot): top-1 {unseen.top1:.1f}%"))
            timings[f"train_and_eval_{key}"] = time.perf_counter() - tic
    finally:
        torch.set_num_threads(previous_threads)
    timings["total"] = time.perf_counter() - started

    full = variants["full"]
    example = dataset.example_video
    example_class = next(c.name for c in dataset.classes if c.name == example.parent.name)
    unseen_list = out / "data" / "unseen_classes.txt"
    report: Dict[str, Any] = {
        "kind": _MARKER,
        "units": "percent",
        "seed": settings.seed,
        "seen_accuracy": full["seen_accuracy"],
        "unseen_accuracy": full["unseen_accuracy"],
        "chance_seen": _chance(len(dataset.seen)),
        "chance_unseen": _chance(len(dataset.unseen)),
        "ablations": {
            key: {k: v for k, v in entry.items() if k in ("label", "attributes", "sti", "seen_accuracy",
                                                          "unseen_accuracy")}
            for key, entry in variants.items() if key != "full"
        },
        "variants": variants,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "unseen_classes": str(unseen_list),
        "seen_classes": str(out / "data" / "seen_classes.txt"),
        "all_classes": str(out / "data" / "all_classes.txt"),
        "attributes": str(attributes_path),
        "descriptions": str(dataset.descriptions),
        "classes": [asdict(c) for c in dataset.classes],
        "example_video": str(example),
        "example_video_class": example_class,
        "plots": plots,
        "config": str(out / "train" / "config.yaml"),
        "model": config.model.name,
        "num_seen_classes": len(dataset.seen),
        "num_unseen_classes": len(dataset.unseen),
        "num_videos": dataset.counts,
        "attribute_extractor": extracted.header.get("extractor"),
        "settings": asdict(settings),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "commands": {
            "predict": f"stzsar predict {example} --classes {unseen_list} --attributes {attributes_path} "
                       f"--checkpoint {checkpoint}",
            "explain": f"stzsar explain {example} --classes {unseen_list} --attributes {attributes_path} "
                       f"--checkpoint {checkpoint} --out {out / 'explain.png'}",
        },
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(_markdown(report))
    return report


def format_table(report: Dict[str, Any]) -> str:
    """The accuracy table of a report, for the terminal."""
    return _markdown(report)
