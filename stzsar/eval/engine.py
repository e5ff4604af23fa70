"""The evaluation loop shared by every protocol: each video encoded once, scored against all classes.

For a batch of ``B`` videos with ``V`` views each, the image encoder runs once on the ``B*V`` clips;
the frame and patch features are then scored against the whole class bank (in chunks of classes
when the bank is large). Adding classes therefore costs only the STI step and the similarity,
never another pass of the ViT. Per-view logits become probabilities (softmax over all classes),
which :class:`~stzsar.eval.meter.MultiViewMeter` averages per video.

Batches are the dictionaries of :mod:`stzsar.data.dataset`::

    {"video": [B, T, 3, S, S] or [B, V, T, 3, S, S], "label": [B], "index": [B],
     "skipped": [records with .index, .path, .reason]}

Any map-style dataset whose items are ``{"video", "label", "index"}`` dictionaries, or skip records
for bad videos, can be evaluated (tests use generated tensors instead of decoded files).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional, Sequence, Union

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from stzsar import devices
from stzsar.eval.distributed import DistContext, gather_meter, shard_indices
from stzsar.eval.meter import EvalResult, MultiViewMeter, view_probs
from stzsar.eval.store import SplitStore, result_from_records
from stzsar.text import ClassBank

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

#: Bound on ``B*V * classes * T * Nw`` per chunk of classes: the STI's temporal step holds a few
#: tensors of that size (about 0.5 GB each in fp32 at this bound).
_CHUNK_ELEMENTS = 1 << 27


@dataclass
class EvalSettings:
    """How an evaluation runs (not what it measures).

    Attributes:
        batch_size: videos per batch per rank (each with all its views).
        num_workers: DataLoader decoding workers per rank.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``...
        precision: ``auto`` (bf16 autocast on CUDA when supported, else fp32), ``fp32``, ``bf16``
            or ``fp16``.
        class_chunk: classes scored per STI call (0: chosen from the batch and bank sizes).
        progress: show a progress bar (videos/s and ETA) on the main rank.
        prefetch: batches each decoding worker prepares ahead (decoding overlaps the model).
        flush_every: batches between two writes of the results store (when there is one).
        cpu_threads: torch intra-op threads of the model on the CPU while the loop runs (0: the
            usable cores less the decoding workers, at least 1; see :func:`model_cpu_threads`).
        compile: ``torch.compile`` the video encoder and the STI head in place before the loop,
            as ``train.compile`` does: ``auto`` (on for CUDA devices, off on the CPU), ``True``
            or ``False`` (``stzsar eval --compile``).
    """

    batch_size: int = 16
    num_workers: int = 4
    device: str = "auto"
    precision: str = "auto"
    class_chunk: int = 0
    progress: bool = True
    prefetch: int = 4
    flush_every: int = 4
    cpu_threads: int = 0
    compile: Union[bool, str] = "auto"

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.class_chunk < 0:
            raise ValueError(f"class_chunk must be >= 0, got {self.class_chunk}")
        if self.prefetch < 1 or self.flush_every < 1:
            raise ValueError(f"prefetch and flush_every must be >= 1, got {self.prefetch}, {self.flush_every}")
        if self.cpu_threads < 0:
            raise ValueError(f"cpu_threads must be >= 0, got {self.cpu_threads}")
        if not (isinstance(self.compile, bool) or str(self.compile).lower() in ("auto", "true", "false")):
            raise ValueError(f"compile must be auto, true or false, got {self.compile!r}")


def resolve_device(name: str = "auto", context: Optional[DistContext] = None) -> torch.device:
    """The device ``name`` (``EvalSettings.device``, ``--device``) means for this rank, by the rule
    training uses too (:func:`stzsar.devices.resolve_device`): ``auto`` and ``cuda`` are the GPU
    of the rank's local rank, and under ``torchrun`` a ``cuda:N`` naming another GPU is refused."""
    context = context or DistContext()
    return devices.resolve_device(name, context.local_rank, context.distributed)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def model_cpu_threads(device: torch.device, num_workers: int, requested: int = 0) -> Optional[int]:
    """Intra-op threads for the model in the main process, or ``None`` to leave torch's setting.

    On the CPU the decoding workers (one thread each) and the model share the cores. Torch's
    default of one OpenMP thread per core then oversubscribes them, and OpenMP threads spin at
    every barrier while a worker holds their core: on 2 cores with 2 workers the ViT used several
    times the CPU time per video that one thread uses (docs/evaluation.md, Throughput). The model
    gets the cores the workers leave, at least one. With no workers (decoding in the loop, one
    step after the other) or on CUDA, torch's setting stays.
    """
    if requested:
        return requested
    if device.type != "cpu" or num_workers == 0:
        return None
    return max(1, usable_cores() - num_workers)


@contextlib.contextmanager
def intra_op_threads(threads: Optional[int]):
    """``torch.set_num_threads(threads)`` for the block (nothing for ``None``), restored after."""
    if threads is None or threads == torch.get_num_threads():
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def autocast_dtype(device: torch.device, precision: str) -> Optional[torch.dtype]:
    """The autocast dtype for ``precision`` on ``device`` (``None``: full fp32)."""
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 autocast is for CUDA devices; use bf16 or fp32 on the CPU")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def slice_bank(bank: ClassBank, start: int, stop: int) -> ClassBank:
    """Classes ``start:stop`` of a bank (views, no copy)."""
    prompts = bank.prompts[start:stop] if bank.prompts else []
    return ClassBank(bank.class_emb[start:stop], bank.words[start:stop], bank.word_mask[start:stop], prompts)


def auto_class_chunk(num_clips: int, num_frames: int, bank: ClassBank) -> int:
    """Classes per STI call so that ``num_clips * chunk * T * Nw`` stays under a fixed bound."""
    per_class = max(1, num_clips * num_frames * bank.words.shape[1])
    return max(1, min(len(bank), _CHUNK_ELEMENTS // per_class))


def class_logits(model, frames: Tensor, patches: Tensor, bank: ClassBank, class_chunk: int = 0) -> Tensor:
    """``[N, C]`` logits of already-encoded clips against every class of ``bank``, chunk by chunk."""
    C = len(bank)
    chunk = class_chunk or auto_class_chunk(frames.shape[0], frames.shape[1], bank)
    if chunk >= C:
        return model.logits_from_features(frames, patches, bank)
    parts = [model.logits_from_features(frames, patches, slice_bank(bank, s, min(C, s + chunk)))
             for s in range(0, C, chunk)]
    return torch.cat(parts, dim=1)


@torch.no_grad()
def batch_logits(
    model,
    video: Tensor,
    bank: ClassBank,
    *,
    device: torch.device,
    amp_dtype: Optional[torch.dtype] = None,
    class_chunk: int = 0,
) -> Tensor:
    """Float32 class logits ``[B, V, C]`` of a batch ``[B, T, 3, H, W]`` or ``[B, V, T, 3, H, W]``."""
    if video.dim() == 5:
        video = video.unsqueeze(1)
    if video.dim() != 6:
        raise ValueError(f"video batch must be [B, T, 3, H, W] or [B, V, T, 3, H, W], got {tuple(video.shape)}")
    B, V = video.shape[:2]
    clips = video.flatten(0, 1).to(device, non_blocking=True)
    with _autocast(device, amp_dtype):
        # The ViT runs once per clip; only the STI and the similarity see the classes.
        frames, patches = model.encode_video(clips)
        logits = class_logits(model, frames, patches, bank, class_chunk)
    return logits.float().view(B, V, -1)


def score_batch(model, video: Tensor, bank: ClassBank, *, device: torch.device,
                amp_dtype: Optional[torch.dtype] = None, class_chunk: int = 0) -> Tensor:
    """Class probabilities ``[B, V, C]`` of a batch (softmax over all classes of each view)."""
    return view_probs(batch_logits(model, video, bank, device=device, amp_dtype=amp_dtype,
                                   class_chunk=class_chunk))


def _is_skip(item: Any) -> bool:
    return not isinstance(item, dict) and all(hasattr(item, a) for a in ("index", "path", "reason"))


def collate_eval(items: Sequence[Any]) -> Dict[str, Any]:
    """Stack the good items, list the skipped ones (their ``index``, ``path``, ``reason``)."""
    good = [item for item in items if not _is_skip(item)]
    skipped = [item for item in items if _is_skip(item)]
    for item in good:
        if not isinstance(item, dict) or not {"video", "label", "index"} <= set(item):
            raise TypeError(
                "evaluation items must be {'video', 'label', 'index'} dicts or skip records "
                f"(index, path, reason); got {type(item).__name__}"
            )
    return {
        "video": torch.stack([torch.as_tensor(item["video"]) for item in good]) if good else torch.empty(0),
        "label": torch.tensor([int(item["label"]) for item in good], dtype=torch.long),
        "index": torch.tensor([int(item["index"]) for item in good], dtype=torch.long),
        "paths": [item.get("path") for item in good],
        "skipped": skipped,
    }


class IndexedShard(Dataset):
    """Items ``indices`` of ``dataset``; items keep their index in the whole dataset."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]):
        self.dataset = dataset
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        index = self.indices[position]
        item = self.dataset[index]
        if isinstance(item, dict) and int(item.get("index", index)) != index:
            raise ValueError(f"dataset item {index} reports index {item['index']}")
        return item


def _progress(total: int, description: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    # unit "video": tqdm then shows videos/s and the ETA from the measured rate.
    return tqdm(total=total, desc=description, unit="video", dynamic_ncols=True, smoothing=0.1)


def score_batches(
    model,
    batches: Iterable[Dict[str, Any]],
    bank: ClassBank,
    meter: Optional[MultiViewMeter],
    *,
    device: torch.device,
    amp_dtype: Optional[torch.dtype] = None,
    class_chunk: int = 0,
    progress=None,
    log_name: str = "evaluation",
    store: Optional[SplitStore] = None,
) -> None:
    """Score every batch into ``meter`` and/or ``store``; skipped videos are logged once and
    recorded there. The store is flushed every ``store.flush_every`` batches and when the loop
    ends, also by an exception (Ctrl-C): only the batch being scored is lost."""
    skipped = 0
    try:
        for batch in batches:
            for item in batch.get("skipped", ()):
                logger.warning("%s: video %d skipped (%s): %s", log_name, item.index, item.path, item.reason)
                for sink in (meter, store):
                    if sink is not None:
                        sink.skip(item.index, item.path, item.reason)
            skipped += len(batch.get("skipped", ()))
            count = int(batch["label"].numel())
            if count:
                logits = batch_logits(model, batch["video"], bank, device=device, amp_dtype=amp_dtype,
                                      class_chunk=class_chunk)
                paths = batch.get("paths")
                paths = paths if paths and all(p is not None for p in paths) else None
                if meter is not None:
                    meter.update(view_probs(logits), batch["label"], batch["index"], paths=paths)
                if store is not None:
                    store.add(logits, batch["label"], batch["index"], paths)
            if store is not None:
                store.batch_done()
            if progress is not None:
                progress.update(count + len(batch.get("skipped", ())))
                progress.set_postfix(skipped=skipped, refresh=False)
    finally:
        if store is not None:
            store.flush()


def evaluate(
    model,
    dataset: Dataset,
    bank: ClassBank,
    class_names: Sequence[str],
    *,
    settings: Optional[EvalSettings] = None,
    context: Optional[DistContext] = None,
    description: str = "eval",
    topk: Sequence[int] = (1, 5),
    store: Optional[SplitStore] = None,
) -> EvalResult:
    """Score ``dataset`` (sharded over the ranks of ``context``) and return the gathered result.

    Every rank returns the same :class:`EvalResult`; each video is scored or skipped on exactly
    one rank (checked).

    With a ``store`` (:class:`~stzsar.eval.store.SplitStore`), the per-view logits are written as
    the run goes; videos an earlier run of the same configuration stored are not decoded again
    (their count is the result's ``resumed_videos``), and the result is computed from the store,
    which every rank must see (a shared file system under several nodes).
    """
    settings = settings or EvalSettings()
    context = context or DistContext()
    if len(bank) != len(class_names):
        raise ValueError(f"the class bank has {len(bank)} classes, the class list {len(class_names)}")
    device = resolve_device(settings.device, context)
    amp_dtype = autocast_dtype(device, settings.precision)
    model.eval()
    model.to(device)
    from stzsar.train.trainer import compile_model, resolve_compile

    if resolve_compile(settings.compile, device):
        compile_model(model)  # in place, once: later splits reuse the compiled model
    bank = bank.to(device)
    done: set = set()
    if store is not None:
        store.identity["precision"] = resolved_precision(amp_dtype)  # "auto" means different things per machine
        store.identity.setdefault("num_videos", len(dataset))
        store.flush_every = settings.flush_every
        done = store.open(context)
        if done and context.is_main:
            logger.info("%s: %d of %d videos read back from %s", description, len(done), len(dataset),
                        store.directory)
    remaining = [i for i in range(len(dataset)) if i not in done]
    # Shard positions of the remaining list, so that any number of ranks resumes any store.
    indices = [remaining[p] for p in shard_indices(len(remaining), context.rank, context.world_size)]
    workers = settings.num_workers
    loader = DataLoader(
        IndexedShard(dataset, indices),
        batch_size=settings.batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_eval,
        pin_memory=device.type == "cuda",
        prefetch_factor=settings.prefetch if workers else None,
    )
    meter = MultiViewMeter(class_names, topk=topk) if store is None else None
    bar = _progress(len(indices), description, settings.progress and context.is_main)
    # The model's threads leave the workers their cores (the loader's workers start in the block).
    threads = model_cpu_threads(device, workers, settings.cpu_threads)
    try:
        with intra_op_threads(threads):
            score_batches(model, loader, bank, meter, device=device, amp_dtype=amp_dtype,
                          class_chunk=settings.class_chunk, progress=bar, log_name=description, store=store)
    finally:
        if bar is not None:
            bar.close()
    if store is None:
        merged = gather_meter(meter, context, expected=len(dataset))
        return merged.compute()
    if context.distributed:
        import torch.distributed as dist

        dist.barrier()  # every rank's last part is written
    if context.is_main:
        store.remove_temporary_files()
    return result_from_records(store.read(), class_names, topk, expected=len(dataset), resumed_videos=len(done))


def resolved_precision(amp_dtype: Optional[torch.dtype]) -> str:
    """``fp32``, ``bf16`` or ``fp16``: the arithmetic actually used."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]
