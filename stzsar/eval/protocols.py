"""The evaluation protocols of docs/method.md section 6: zero-shot, few-shot and supervised.

- :func:`zero_shot`: one evaluation per test split (each with its own class list: the 160
  Kinetics-600 classes differ between splits), top-1/top-5 per split and mean +- std over splits.
- :func:`supervised`: one split (Kinetics-400 validation) with ``num_clips x num_crops`` views per
  video (4 x 3 by default), the view probabilities averaged per video.
- :func:`few_shot`: for each K, fine-tune a checkpoint on K training videos per class (a seeded
  subset, through the trainer), then evaluate the test split (split 1 in the paper).

Each returns a :class:`ProtocolRun` that :func:`stzsar.eval.report.write_report` turns into JSON,
Markdown and plots.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from torch.utils.data import Dataset

from stzsar.eval.bank_cache import BankCache, class_bank
from stzsar.eval.distributed import DistContext
from stzsar.eval.engine import EvalSettings, evaluate
from stzsar.eval.meter import EvalResult, SplitSummary, summarize_splits
from stzsar.eval.store import SplitStore, clear_store, json_digest

logger = logging.getLogger(__name__)

PROTOCOLS = ("zero-shot", "few-shot", "supervised")

#: Views per test video in the supervised protocol (docs/method.md section 5: 4 temporal clips x 3 crops).
SUPERVISED_VIEWS = (4, 3)

#: Few-shot K values of the paper (docs/method.md section 5); the epochs are eval.fewshot_epochs.
FEW_SHOT_K = (2, 4, 8, 16)


@dataclass
class EvalSplit:
    """One thing to evaluate: a name for reports, its class list (label order) and its videos.

    Attributes:
        name: e.g. ``"split 1"``.
        classes: class names; labels of ``dataset`` index this list.
        dataset: items ``{"video", "label", "index"}`` (or skip records), e.g. a
            :class:`stzsar.data.dataset.VideoDataset`.
        source: where the split came from (list file), for reports.
        video_path: maps a dataset index to its file, for per-video outputs (optional).
        videos_digest: a digest of the listed videos and labels; part of the results store's
            identity, so that a store is not resumed over another list (optional).
    """

    name: str
    classes: List[str]
    dataset: Dataset
    source: str = ""
    video_path: Optional[Callable[[int], str]] = None
    videos_digest: Optional[str] = None


@dataclass
class ProtocolRun:
    """What a protocol measured, ready for :func:`stzsar.eval.report.write_report`.

    Attributes:
        protocol: ``zero-shot``, ``few-shot`` or ``supervised``.
        dataset: ``ucf101``, ``hmdb51``, ``k600``, ``k400`` or another name (no paper number then).
        results: one :class:`EvalResult` per split (zero-shot), per K (few-shot) or one (supervised).
        summary: mean +- std over the zero-shot splits.
        meta: facts for the report (model, checkpoint, class lists, attribute file, views, ...).
        video_paths: per result name, a function from dataset index to file path.
        subsets: per result name, the random class-subset protocol
            (:class:`~stzsar.eval.subsets.SubsetResult`), when asked for.
    """

    protocol: str
    dataset: str
    results: Dict[str, EvalResult]
    summary: Optional[SplitSummary] = None
    meta: Dict[str, Any] = field(default_factory=dict)
    video_paths: Dict[str, Callable[[int], str]] = field(default_factory=dict, repr=False)
    subsets: Dict[str, Any] = field(default_factory=dict)


def _bank_cache(cache: Union[BankCache, str, Path, None, bool]) -> Union[BankCache, bool]:
    if cache is False or isinstance(cache, BankCache):
        return cache
    return BankCache(cache)


def _run_info(meta: Optional[Dict[str, Any]], splits: Sequence[EvalSplit]) -> Dict[str, Any]:
    """The run's metadata: the caller's ``meta``, plus where each split came from and its classes."""
    info = dict(meta or {})
    info.setdefault("splits", {s.name: {"source": s.source, "num_classes": len(s.classes),
                                        "classes": list(s.classes)} for s in splits})
    return info


def store_slug(name: str) -> str:
    """The store folder of a result name (``split 1`` -> ``split_1``, ``K=2`` -> ``K2``)."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace("=", "")).strip("_") or "split"


def split_store(store_dir: Union[str, Path], name: str, split: EvalSplit,
                attributes: Optional[Dict[str, List[str]]], identity: Optional[Dict[str, Any]]) -> SplitStore:
    """The results store of ``split`` under ``store_dir``, identified by ``identity`` (the run's
    checkpoint, frames, views...) plus the split's classes, their attributes and its videos."""
    from stzsar.classes import canonical_name

    wanted = {canonical_name(c) for c in split.classes}
    used = {canonical_name(k): list(v) for k, v in (attributes or {}).items() if canonical_name(k) in wanted}
    full = {**(identity or {}), "split": name, "classes": list(split.classes), "num_classes": len(split.classes),
            "attributes": json_digest(used) if used else None, "num_videos": len(split.dataset),
            "videos": split.videos_digest}
    return SplitStore(Path(store_dir) / store_slug(name), full, video_path=split.video_path)


def evaluate_split(
    model,
    split: EvalSplit,
    *,
    attributes: Optional[Dict[str, List[str]]] = None,
    cache: Union[BankCache, str, Path, None, bool] = None,
    settings: Optional[EvalSettings] = None,
    context: Optional[DistContext] = None,
    store: Optional[SplitStore] = None,
) -> EvalResult:
    """Encode the split's classes (cached), then score its videos against all of them."""
    settings = settings or EvalSettings()
    if len(split.dataset) == 0:
        raise ValueError(f"{split.name}: no videos to evaluate ({split.source or 'empty dataset'})")
    bank = class_bank(model, split.classes, attributes, _bank_cache(cache))
    return evaluate(model, split.dataset, bank, split.classes, settings=settings, context=context,
                    description=split.name, store=store)


def zero_shot(
    model,
    splits: Sequence[EvalSplit],
    *,
    dataset: str = "custom",
    attributes: Optional[Dict[str, List[str]]] = None,
    cache: Union[BankCache, str, Path, None, bool] = None,
    settings: Optional[EvalSettings] = None,
    context: Optional[DistContext] = None,
    meta: Optional[Dict[str, Any]] = None,
    store_dir: Union[str, Path, None] = None,
    identity: Optional[Dict[str, Any]] = None,
) -> ProtocolRun:
    """Evaluate each split with its own classes; mean +- std of top-1/top-5 over the splits.

    ``store_dir``: write (and resume from) a results store per split there (:func:`split_store`,
    with ``identity``).
    """
    if not splits:
        raise ValueError("zero-shot evaluation needs at least one split")
    names = [s.name for s in splits]
    if len(set(names)) != len(names):
        raise ValueError(f"split names must differ, got {names}")
    cache = _bank_cache(cache)
    results = {s.name: evaluate_split(model, s, attributes=attributes, cache=cache, settings=settings,
                                      context=context,
                                      store=split_store(store_dir, s.name, s, attributes, identity)
                                      if store_dir is not None else None) for s in splits}
    info = _run_info(meta, splits)
    return ProtocolRun("zero-shot", dataset, results, summarize_splits(results), info,
                       {s.name: s.video_path for s in splits if s.video_path})


def supervised(
    model,
    split: EvalSplit,
    *,
    dataset: str = "k400",
    attributes: Optional[Dict[str, List[str]]] = None,
    cache: Union[BankCache, str, Path, None, bool] = None,
    settings: Optional[EvalSettings] = None,
    context: Optional[DistContext] = None,
    meta: Optional[Dict[str, Any]] = None,
    store_dir: Union[str, Path, None] = None,
    identity: Optional[Dict[str, Any]] = None,
) -> ProtocolRun:
    """One split, the views of its dataset (``num_clips x num_crops``) averaged per video
    (``store_dir``, ``identity``: as for :func:`zero_shot`)."""
    store = split_store(store_dir, split.name, split, attributes, identity) if store_dir is not None else None
    result = evaluate_split(model, split, attributes=attributes, cache=cache, settings=settings, context=context,
                            store=store)
    info = _run_info(meta, [split])
    return ProtocolRun("supervised", dataset, {split.name: result}, None, info,
                       {split.name: split.video_path} if split.video_path else {})


#: ``finetune(k, output_dir) -> (model, checkpoint path or None)``: trains on the K-shot subset and
#: returns the fine-tuned model (and where it was saved).
Finetune = Callable[[int, Path], Tuple[Any, Optional[Path]]]


def few_shot(
    shots: Sequence[int],
    finetune: Finetune,
    test_split: EvalSplit,
    *,
    output_dir: Union[str, Path],
    dataset: str = "custom",
    attributes: Optional[Dict[str, List[str]]] = None,
    cache: Union[BankCache, str, Path, None, bool] = None,
    settings: Optional[EvalSettings] = None,
    context: Optional[DistContext] = None,
    meta: Optional[Dict[str, Any]] = None,
    store_dir: Union[str, Path, None] = None,
    identity: Optional[Dict[str, Any]] = None,
) -> ProtocolRun:
    """For each K: ``finetune(K, output_dir/K<K>)``, then evaluate ``test_split`` with that model.

    With ``store_dir``, each K's logits go to a store of their own; the model is fine-tuned again
    on every run, so these stores start afresh (their identity includes the fine-tuned checkpoint).

    :func:`trainer_finetune` makes ``finetune`` from a training configuration, a checkpoint and the
    training split, through :func:`stzsar.train.trainer.train`.
    """
    if not shots or min(shots) < 1:
        raise ValueError(f"few-shot K values must be positive, got {list(shots)}")
    cache = _bank_cache(cache)
    results: Dict[str, EvalResult] = {}
    checkpoints: Dict[str, Optional[str]] = {}
    for k in shots:
        run_dir = Path(output_dir) / f"K{k}"
        logger.info("few-shot K=%d: fine-tuning into %s", k, run_dir)
        model, checkpoint = finetune(int(k), run_dir)
        name = f"K={k}"
        store = None
        if store_dir is not None:
            tuned = {"finetuned_checkpoint": _digest_or_none(checkpoint)}
            store = split_store(store_dir, name, test_split, attributes, {**(identity or {}), **tuned})
            if context is None or context.is_main:
                clear_store(store.directory)
        results[name] = evaluate_split(model, test_split, attributes=attributes, cache=cache,
                                       settings=settings, context=context, store=store)
        checkpoints[name] = str(checkpoint) if checkpoint else None
    info = _run_info(meta, [test_split])
    info["few_shot_checkpoints"] = checkpoints
    paths = {name: test_split.video_path for name in results} if test_split.video_path else {}
    return ProtocolRun("few-shot", dataset, results, None, info, paths)


def _digest_or_none(path: Optional[Path]) -> Optional[str]:
    from stzsar.eval.store import file_digest

    return file_digest(path) if path and Path(path).is_file() else None


def trainer_finetune(
    config,
    checkpoint: Union[str, Path],
    train_split,
    *,
    attributes: Optional[Dict[str, List[str]]] = None,
    pretrained: Optional[str] = None,
) -> Finetune:
    """A ``finetune`` for :func:`few_shot` that runs :func:`stzsar.train.trainer.train`.

    ``config`` is the resolved fine-tuning configuration (:func:`stzsar.eval.fewshot.finetune_config`:
    the checkpoint's training configuration, then ``--config``/``--set``, then the eval options);
    it is used as given, but for its own ``train.output_dir`` per K and, for a K-shot set smaller
    than one global batch, a smaller batch (logged, and noted in ``finetune.notes``).

    For each K, the model is reloaded from ``checkpoint`` (every K starts from the same weights) and
    ``train_split`` (a :class:`stzsar.data.VideoSplit`) is cut to K videos per class with
    :func:`stzsar.data.protocols.few_shot` (seeded by ``train.seed``, reproducible).
    """
    import os

    from stzsar.data.protocols import few_shot as few_shot_subset
    from stzsar.eval.fewshot import fitted_batch_size
    from stzsar.eval.loading import load_checkpoint_model
    from stzsar.train.trainer import train

    notes: Dict[str, Dict[str, Any]] = {}

    def run(k: int, output_dir: Path):
        run_config = copy.deepcopy(config)
        run_config.data.shots = None  # the subset is cut here, once, from the given split
        run_config.train.output_dir = str(output_dir)
        subset = few_shot_subset(train_split, k, seed=run_config.train.seed)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        asked = run_config.train.batch_size
        run_config.train.batch_size = fitted_batch_size(len(subset), asked, world, run_config.optim.grad_accum)
        note = {"videos": len(subset), "batch_size": run_config.train.batch_size,
                "subset_meta": {key: value for key, value in subset.meta.items()
                                if isinstance(value, (str, int, float, bool, list, dict, type(None)))}}
        if run_config.train.batch_size != asked:
            note["note"] = (f"{len(subset)} training videos, fewer than train.batch_size={asked}: "
                            f"trained with batches of {run_config.train.batch_size}")
            logger.warning("few-shot K=%d: %s", k, note["note"])
        drawn = (subset.meta.get("few_shot_draw") or {}).get("note")  # classes with fewer than K usable videos
        if drawn:
            note["note"] = "; ".join(filter(None, [note.get("note"), drawn]))
        notes[f"K={k}"] = note
        model, _ = load_checkpoint_model(checkpoint, device="cpu", pretrained=pretrained)
        outcome = train(run_config, dataset=subset, model=model, attributes=attributes,
                        class_names=list(train_split.classes))
        return outcome.model, outcome.checkpoint

    run.notes = notes  # type: ignore[attr-defined]
    return run
