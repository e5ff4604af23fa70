"""``stzsar demo``: the whole method end to end on a synthetic zero-shot benchmark, on any machine.

1. Generate the dataset (:mod:`stzsar.demo.actions`): small coloured balls and bars moving,
   growing, spinning, orbiting, blinking among distractor shapes, for a few frames of each video;
   24 (colour, motion) classes with invented names, 18 seen and 6 unseen, as H.264 files with
   BIKE-style lists.
2. Extract each class's attributes from its description with the offline extractor
   (:func:`stzsar.attributes.extract_attributes`, YAKE by default: deterministic, no network).
3. Train a tiny CLIP-shaped model from scratch on the seen classes with the real trainer
   (:func:`stzsar.train.train`), and the ablations (:data:`VARIANTS`): the paper's Table 4 rows
   (no interaction = mean pooling, spatial only, temporal only; all with attributes), class
   names only, and with ``ablations="full"`` the Table 5 sweep of ``Na`` (:data:`SWEEP_VARIANTS`).
4. Evaluate each on held-out videos of the seen classes and zero-shot on the unseen classes with
   the evaluation engine (:func:`stzsar.eval.engine.evaluate`), with 95% intervals, and measure
   what the STI does on the unseen videos (:mod:`stzsar.demo.diagnostics`).
5. Write ``report.json``, ``report.md`` and confusion-matrix plots to the output folder.

:func:`run_seeds` runs several seeds and reports mean +- std over them. Everything is seeded; on
CPU the report is the same for a seed (one intra-op thread by default, see
``DemoSettings.threads``).
"""

from __future__ import annotations

import copy
import dataclasses
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

#: The demo's training configuration (the built-in config ``demo``, stzsar/configs/demo.yaml, holds the same values).
DEMO_CONFIG: Dict[str, Dict[str, Any]] = {
    "model": {"name": "stzsar-tiny", "pretrained": None, "frozen_blocks": 0},
    "data": {"format": "bike", "num_frames": 8, "size": 32, "short_side": 36, "hflip": 0.0,
             "num_workers": 0, "num_attributes": 8},
    "optim": {"lr": 2e-3, "weight_decay": 0.05, "warmup_epochs": 1.0},
    "train": {"epochs": 40, "batch_size": 32, "checkpoint_every": 0, "keep_last": 2, "log_every": 5,
              "output_dir": "runs/demo/train"},
    "eval": {"batch_size": 32},
}

@dataclass(frozen=True)
class Variant:
    """One model the demo trains: which STI steps it has and how many attributes per class
    (``None``: the configured ``data.num_attributes``; 0: the class name alone)."""

    key: str
    label: str
    spatial: bool = True
    temporal: bool = True
    num_attributes: Optional[int] = None

    @property
    def attributes(self) -> bool:
        return self.num_attributes != 0

    @property
    def sti(self) -> bool:
        return self.spatial and self.temporal


#: The full model, the paper's Table 4 rows (all with attributes) and the class-names-only model.
VARIANTS = (
    Variant("full", "STI + attributes"),
    Variant("no_interaction", "no interaction (mean pooling) + attributes", spatial=False, temporal=False),
    Variant("spatial_only", "spatial interaction only + attributes", temporal=False),
    Variant("temporal_only", "temporal interaction only + attributes", spatial=False),
    Variant("no_attributes", "STI, class names only", num_attributes=0),
)

#: With ``ablations="full"`` also the rest of the paper's Table 5 sweep (Na = 0 and 8 are above).
SWEEP_VARIANTS = tuple(Variant(f"na_{n}", f"STI + {n} attributes", num_attributes=n) for n in (2, 4, 16))

#: ``DemoSettings.ablations`` choices.
ABLATIONS = ("none", "table4", "full")

_MARKER = "stzsar-demo"


@dataclass
class DemoSettings:
    """What the demo generates and how it runs (the training itself is in the :class:`Config`).

    Attributes:
        seed: seeds the dataset, the class split, the initialisation and the data order.
        train_per_class: training videos per seen class.
        test_per_class: held-out videos per seen class.
        unseen_per_class: test videos per unseen class (64 x 6 = 384 videos: the 95% interval of
            the unseen top-1 is then at most +-5 points).
        video_frames: frames per generated video (clips sample ``data.num_frames`` of them).
        frame_size: side of the generated frames (clips are cropped to ``data.size``).
        extractor: offline attribute extractor (``yake``, ``rake`` or ``keybert``).
        ablations: ``"table4"`` (default) also trains the paper's Table 4 rows and the class-
            names-only model; ``"full"`` adds the Na sweep (2, 4, 16); ``"none"``: the full model only.
        threads: torch intra-op threads while the demo runs (``None``: leave as is). One thread
            is the default: the tiny model's operations are too small to gain from more, and on a
            busy machine extra threads cost much more than they give.
        progress: show progress bars.
    """

    seed: int = 0
    train_per_class: int = 16
    test_per_class: int = 16
    unseen_per_class: int = 64
    video_frames: int = 16
    frame_size: int = 36
    extractor: str = "yake"
    ablations: str = "table4"
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
    def twin_note(entry):
        twin = entry.get("same_as")
        return f" (the prompts of {report['variants'][twin]['label']}: its result, not trained again)" if twin else ""

    rows = [
        "| model | spatial | temporal | attributes (Na) | seen top-1 (%) | unseen zero-shot top-1 (%) |",
        "|---|---|---|---|---|---|",
    ]
    for entry in report["variants"].values():
        yes = {True: "yes", False: "no"}
        rows.append(
            f"| {entry['label']}{twin_note(entry)} | {yes[entry['spatial']]} | {yes[entry['temporal']]} | "
            f"{entry['num_attributes'] if entry['attributes'] else 'no (class name)'} | "
            f"{entry['seen_accuracy']:.1f} ± {entry['seen_ci95']:.1f} | "
            f"{entry['unseen_accuracy']:.1f} ± {entry['unseen_ci95']:.1f} |"
        )
    counts = report["num_videos"]
    lines = [
        "# stzsar demo: synthetic zero-shot action recognition",
        "",
        f"{report['num_seen_classes']} seen classes ({counts['train']} training videos, "
        f"{counts['seen_test']} held-out), {report['num_unseen_classes']} unseen classes "
        f"({counts['unseen_test']} videos); model `{report['model']}` trained from scratch, "
        f"seed {report['seed']}. Chance: {report['chance_seen']:.1f} (seen), "
        f"{report['chance_unseen']:.1f} (unseen).",
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


def _variants(ablations: str):
    if ablations not in ABLATIONS:
        raise ValueError(f"ablations must be one of {', '.join(ABLATIONS)}; got {ablations!r}")
    if ablations == "none":
        return VARIANTS[:1]
    return VARIANTS + (SWEEP_VARIANTS if ablations == "full" else ())


def _explain_example(model, dataset, unseen_test, unseen_bank) -> Dict[str, Any]:
    """:func:`stzsar.demo.diagnostics.explain_example` on the report's example video."""
    from stzsar.data.sampling import middle_indices
    from stzsar.demo.actions import COLOURS
    from stzsar.demo.diagnostics import explain_example

    index = next(i for i in range(len(unseen_test))
                 if Path(unseen_test.split.locate(i)).resolve() == Path(dataset.example_video).resolve())
    cls = next(c for c in dataset.classes if c.name == Path(dataset.example_video).parent.name)
    window = json.loads(dataset.windows.read_text())[Path(dataset.example_video).relative_to(dataset.root).as_posix()]
    sampled = middle_indices(len(unseen_test._decoded(index)[0]), unseen_test.spec.num_frames)
    return explain_example(model, unseen_test.load(index), unseen_bank, dataset.unseen,
                           unseen_test.split.videos[index].label, COLOURS[cls.colour], window, sampled)


def use_model_clips(model, data, train_set, test_sets) -> None:
    """Give the demo's cached clips ``model``'s input size and normalisation under the data
    settings ``data`` (``stzsar.train.trainer.data_clip_spec``, as training and evaluation use).
    The decoded frames stay shared; only how clips are cut from them changes."""
    from stzsar.train.trainer import data_clip_spec

    train_set.spec = data_clip_spec(model, data, training=True)
    for test_set in test_sets:
        test_set.spec = data_clip_spec(model, data, training=False)


def run_demo(
    out: PathLike = "runs/demo",
    settings: Optional[DemoSettings] = None,
    config: Optional[Config] = None,
) -> Dict[str, Any]:
    """Run the demo into ``out``; returns the report (also written as ``out/report.json``)."""
    from stzsar.attributes import extract_attributes, make_offline_extractor
    from stzsar.data import ClipSpec, build_split
    from stzsar.demo.actions import generate_dataset
    from stzsar.demo.actions import COLOURS
    from stzsar.demo.diagnostics import epoch_losses, sti_statistics
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
            unseen_per_class=settings.unseen_per_class,
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
        def clips(list_file: Path, labels: Path, training: bool) -> CachedVideoDataset:
            split = build_split("bike", list_file, dataset.root, labels=labels)
            # Frames only: each model sets the clips' size and normalisation below (use_model_clips).
            data = CachedVideoDataset(split, ClipSpec(num_frames=config.data.num_frames), training=training,
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
        signatures: Dict[str, Any] = {}
        checkpoint = None
        plots: Dict[str, str] = {}
        for variant in _variants(settings.ablations):
            key = variant.key
            tic = time.perf_counter()
            run_config = copy.deepcopy(config)
            run_config.train.output_dir = str(out / "train" if key == "full" else out / "ablations" / key)
            run_config.model.spatial_interaction = variant.spatial
            run_config.model.temporal_interaction = variant.temporal
            num_attributes = config.data.num_attributes if variant.num_attributes is None else variant.num_attributes
            if variant.attributes:
                run_config.data.num_attributes = num_attributes
                run_attributes = {name: words[:num_attributes] for name, words in attributes.items()}
            else:
                run_config.data.attributes = None
                run_attributes = None
            # A variant whose model and prompts equal an earlier one's (Na = 16 where no class has
            # more than 8 attributes) would train the same model again, step for step: reuse it.
            signature = (variant.spatial, variant.temporal,
                         None if run_attributes is None else tuple(sorted((k, tuple(v)) for k, v in run_attributes.items())))
            twin = next((k for k, sig in signatures.items() if sig == signature), None)
            signatures[key] = signature
            if twin is not None:
                variants[key] = {k: v for k, v in variants[twin].items() if k != "example"}
                variants[key].update(label=variant.label, sti=variant.sti, num_attributes=num_attributes,
                                     same_as=twin, seconds=0.0)
                timings[f"train_and_eval_{key}"] = 0.0
                continue
            seed_everything(settings.seed)
            model = build_model_from_config(run_config.model_config())
            use_model_clips(model, run_config.data, train_set=train_set, test_sets=(seen_test, unseen_test))
            if settings.progress:
                print(f"[demo] training: {variant.label}", flush=True)
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
                "label": variant.label,
                "attributes": variant.attributes,
                "sti": variant.sti,
                "spatial": variant.spatial,
                "temporal": variant.temporal,
                "num_attributes": num_attributes if variant.attributes else 0,
                "seen_accuracy": seen.top1,
                "unseen_accuracy": unseen.top1,
                "seen_ci95": _ci95(seen.top1, seen.num_scored),
                "unseen_ci95": _ci95(unseen.top1, unseen.num_scored),
                "seen_videos_scored": seen.num_scored,
                "unseen_videos_scored": unseen.num_scored,
                "videos_skipped": seen.num_skipped + unseen.num_skipped,
                "final_loss": result.history[-1]["loss"] if result.history else None,
                "epoch_losses": epoch_losses(result.history, result.step // max(1, result.epoch)),
                "steps": result.step,
                "run_dir": str(result.run_dir),
                "diagnostics": sti_statistics(trained, unseen_test, unseen_bank, dataset.windows,
                                              [COLOURS[c.colour] for c in dataset.classes if c.unseen],
                                              config.eval.batch_size),
                "seconds": round(time.perf_counter() - tic, 1),
            }
            if key == "full" and variant.spatial:
                variants[key]["example"] = _explain_example(trained, dataset, unseen_test, unseen_bank)
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
            key: {k: v for k, v in entry.items() if k in ("label", "attributes", "sti", "spatial", "temporal",
                                                          "num_attributes", "seen_accuracy", "unseen_accuracy",
                                                          "unseen_ci95")}
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


def _mean_std(values) -> Dict[str, float]:
    values = [float(v) for v in values]
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "values": values}


def run_seeds(out: PathLike, seeds: Iterable[int], settings: Optional[DemoSettings] = None,
              config: Optional[Config] = None) -> Dict[str, Any]:
    """:func:`run_demo` once a seed into ``out/seed_<n>``, then ``out/summary.json`` and
    ``out/summary.md``: each model's seen and unseen top-1 as mean +- std over the seeds
    (sample standard deviation)."""
    out = Path(out)
    seeds = list(seeds)
    if not seeds:
        raise ValueError("no seeds given")
    _prepare_out(out)
    settings = settings or DemoSettings()
    started = time.perf_counter()
    reports = {}
    for seed in seeds:
        reports[seed] = run_demo(out / f"seed_{seed}", dataclasses.replace(settings, seed=seed), config)
    models: Dict[str, Dict[str, Any]] = {}
    for key, entry in reports[seeds[0]]["variants"].items():
        models[key] = {
            "label": entry["label"],
            "seen_accuracy": _mean_std(reports[s]["variants"][key]["seen_accuracy"] for s in seeds),
            "unseen_accuracy": _mean_std(reports[s]["variants"][key]["unseen_accuracy"] for s in seeds),
        }
    summary = {
        "kind": _MARKER,
        "seeds": seeds,
        "models": models,
        "chance_unseen": reports[seeds[0]]["chance_unseen"],
        "reports": {str(s): str(out / f"seed_{s}" / "report.json") for s in seeds},
        "seconds": time.perf_counter() - started,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(format_summary(summary) + "\n")
    return summary


def format_summary(summary: Dict[str, Any]) -> str:
    """The mean +- std table of :func:`run_seeds`, with each seed's unseen top-1."""
    seeds = summary["seeds"]
    rows = [
        "| model | seen top-1 (%) | unseen top-1 (%) | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|---|---|" + "---|" * len(seeds),
    ]
    for entry in summary["models"].values():
        seen, unseen = entry["seen_accuracy"], entry["unseen_accuracy"]
        rows.append(f"| {entry['label']} | {seen['mean']:.1f} ± {seen['std']:.1f} | "
                    f"{unseen['mean']:.1f} ± {unseen['std']:.1f} | "
                    + " | ".join(f"{v:.1f}" for v in unseen["values"]) + " |")
    return "\n".join([f"stzsar demo over seeds {', '.join(map(str, seeds))}: mean ± std (sample) over "
                      f"the seeds; chance (unseen) {summary['chance_unseen']:.1f}", "", *rows])
