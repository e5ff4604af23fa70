"""The results store: per-view logits of every scored video, written as the evaluation runs.

One folder per evaluated split (``<out>/store/<split>/``) holds

- ``manifest.json``: what the logits depend on (checkpoint, class list, attributes, frames, views,
  precision, the list of videos): a run that differs in any of these is refused
  (:class:`StoreMismatch` says what differs);
- ``part-<attempt>-<rank>-<sequence>.npz``: the videos one rank scored (dataset index, label,
  path, the logits of each view over the whole class list) and skipped (index, path, reason)
  since its previous flush. A part is written to a temporary name and renamed into place, so a
  kill at any moment leaves complete parts only; the loader ignores the temporary files.

A rerun reads the parts, skips the videos they hold (scored or skipped) and shards the rest over
however many ranks it has. The logits of a (video, class) pair do not depend on the other classes
(docs/method.md section 6), so every protocol (full class list, random class subsets) is computed
from the same store without scoring the videos again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from stzsar.eval.meter import SkippedVideo

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
STORE_FORMAT = 1
MANIFEST = "manifest.json"
_PART = re.compile(r"^part-(\d{4,})-(\d{4,})-(\d{6,})\.npz$")


class StoreMismatch(ValueError):
    """The store was written by a run with another configuration."""


@dataclass
class StoredRecords:
    """Everything a store holds, one row per scored video sorted by dataset index.

    Attributes:
        indices, labels: ``[n]`` dataset index and label of each scored video.
        view_counts: ``[n]`` views of each video; its views are consecutive rows of ``logits``.
        logits: ``[sum(view_counts), C]`` float32 logits over the whole class list.
        paths: dataset index -> video path (where known).
        skipped: the videos that could not be scored.
    """

    indices: np.ndarray
    labels: np.ndarray
    view_counts: np.ndarray
    logits: np.ndarray
    paths: Dict[int, str] = field(default_factory=dict)
    skipped: List[SkippedVideo] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return int(self.logits.shape[1])

    def done(self) -> set:
        """Dataset indices scored or skipped."""
        return set(self.indices.tolist()) | {s.index for s in self.skipped}

    def view_video(self) -> np.ndarray:
        """``[sum(view_counts)]``: the row of ``indices`` each logit row belongs to."""
        return np.repeat(np.arange(len(self.indices)), self.view_counts)


def file_digest(path: PathLike, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes (the checkpoint's identity in the manifest)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def json_digest(value: Any) -> str:
    """SHA-256 of a JSON-serialisable value (keys sorted)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."


def describe_differences(stored: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
    """One line per identity entry that differs between a stored manifest and this run."""
    lines = []
    for key in sorted(set(stored) | set(current)):
        old, new = stored.get(key), current.get(key)
        if old == new:
            continue
        if isinstance(old, list) and isinstance(new, list):
            first = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
            where = (f"first difference at position {first}: {_short(old[first]) if first < len(old) else '-'} "
                     f"stored, {_short(new[first]) if first < len(new) else '-'} now")
            lines.append(f"{key}: {len(old)} entries stored, {len(new)} now; {where}")
        else:
            lines.append(f"{key}: {_short(old)} stored, {_short(new)} now")
    return lines


def _atomic_write(path: Path, write: Callable[[Any], None], binary: bool = True) -> None:
    """``write(stream)`` into a temporary file next to ``path``, synced, then renamed onto it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb" if binary else "w") as stream:
        write(stream)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(tmp, path)


def _read_part(path: Path) -> Dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


class SplitStore:
    """The store of one split (see the module doc).

    Args:
        directory: the split's store folder (created).
        identity: what the logits depend on; compared with the manifest of an existing store.
        flush_every: batches between two writes (a kill loses at most that many batches).
        video_path: dataset index -> path, for videos whose batch carries no path.
    """

    def __init__(self, directory: PathLike, identity: Dict[str, Any], flush_every: int = 4,
                 video_path: Optional[Callable[[int], str]] = None):
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        self.directory = Path(directory)
        self.identity = json.loads(json.dumps(identity, default=str))  # plain JSON values, as stored
        self.flush_every = flush_every
        self.video_path = video_path
        self.rank = 0
        self.attempt = 0
        self._sequence = 0
        self._batches_since_flush = 0
        self._pending: List[Tuple[np.ndarray, np.ndarray, np.ndarray, List[str]]] = []
        self._pending_skips: List[SkippedVideo] = []

    # -- opening -----------------------------------------------------------------------------------
    def part_files(self) -> List[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.iterdir() if _PART.match(p.name))

    def _check_manifest(self) -> None:
        path = self.directory / MANIFEST
        current = {"format": STORE_FORMAT, **self.identity}
        if path.is_file():
            try:
                stored = json.loads(path.read_text())
            except json.JSONDecodeError as error:
                raise StoreMismatch(f"{path}: unreadable manifest ({error}); delete {self.directory} "
                                    "to start afresh") from None
            differences = describe_differences(stored, current)
            if differences:
                raise StoreMismatch(
                    f"{self.directory} holds results of another configuration:\n  - "
                    + "\n  - ".join(differences)
                    + f"\nUse another --out, or pass --fresh (deletes {self.directory}) to start afresh."
                )
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            _atomic_write(path, lambda s: s.write(json.dumps(current, indent=1, default=str) + "\n"), binary=False)

    def open(self, context=None) -> set:
        """Check or write the manifest and return the indices earlier runs already did.

        Collective under ``torchrun``: rank 0 decides (manifest, earlier parts, this attempt's
        number) and broadcasts, so that every rank shards the same remaining videos.
        """
        rank = getattr(context, "rank", 0)
        distributed = bool(getattr(context, "distributed", False))
        decision: Dict[str, Any] = {}
        if rank == 0:
            try:
                self._check_manifest()
                parts = self.part_files()
                attempts = [int(_PART.match(p.name).group(1)) for p in parts]
                decision = {"done": sorted(self.read().done()) if parts else [],
                            "attempt": max(attempts, default=-1) + 1, "error": None}
            except StoreMismatch as error:
                decision = {"error": str(error)}
        if distributed:
            import torch.distributed as dist

            box = [decision]
            dist.broadcast_object_list(box, src=0)
            decision = box[0]
        if decision["error"]:
            raise StoreMismatch(decision["error"])
        self.rank = rank
        self.attempt = decision["attempt"]
        self._sequence = 0
        return set(decision["done"])

    # -- writing -----------------------------------------------------------------------------------
    def add(self, logits: torch.Tensor, labels, indices, paths: Optional[Sequence[Optional[str]]] = None) -> None:
        """Per-view logits ``[B, V, C]`` of ``B`` videos (kept until the next :meth:`flush`)."""
        logits = logits.detach().to("cpu", torch.float32)
        if logits.dim() == 2:
            logits = logits.unsqueeze(1)
        indices_np = torch.as_tensor(indices).reshape(-1).cpu().numpy().astype(np.int64)
        labels_np = torch.as_tensor(labels).reshape(-1).cpu().numpy().astype(np.int64)
        names = [p if p is not None else (self.video_path(int(i)) if self.video_path else "")
                 for p, i in zip(paths or [None] * len(indices_np), indices_np)]
        self._pending.append((indices_np, labels_np, logits.numpy(), [str(n) for n in names]))

    def skip(self, index: int, path: str, reason: str) -> None:
        self._pending_skips.append(SkippedVideo(int(index), str(path), str(reason)))

    def batch_done(self) -> None:
        """Count a batch; flush every ``flush_every`` batches."""
        self._batches_since_flush += 1
        if self._batches_since_flush >= self.flush_every:
            self.flush()

    def flush(self) -> Optional[Path]:
        """Write what was added since the last flush as one part (nothing to write: no file)."""
        self._batches_since_flush = 0
        if not self._pending and not self._pending_skips:
            return None
        views = [block[2].shape[1] for block in self._pending]
        num_classes = self._pending[0][2].shape[2] if self._pending else 0
        arrays = {
            "indices": np.concatenate([b[0] for b in self._pending]) if self._pending else np.empty(0, np.int64),
            "labels": np.concatenate([b[1] for b in self._pending]) if self._pending else np.empty(0, np.int64),
            "view_counts": (np.concatenate([np.full(len(b[0]), v, np.int64) for b, v in zip(self._pending, views)])
                            if self._pending else np.empty(0, np.int64)),
            "logits": (np.concatenate([b[2].reshape(-1, b[2].shape[2]) for b in self._pending])
                       if self._pending else np.empty((0, num_classes), np.float32)),
            "paths": np.array([p for b in self._pending for p in b[3]], dtype=str),
            "skip_indices": np.array([s.index for s in self._pending_skips], dtype=np.int64),
            "skip_paths": np.array([s.path for s in self._pending_skips], dtype=str),
            "skip_reasons": np.array([s.reason for s in self._pending_skips], dtype=str),
        }
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"part-{self.attempt:04d}-{self.rank:04d}-{self._sequence:06d}.npz"
        _atomic_write(path, lambda stream: np.savez(stream, **arrays))
        self._sequence += 1
        self._pending.clear()
        self._pending_skips.clear()
        return path

    # -- reading -----------------------------------------------------------------------------------
    def read(self) -> StoredRecords:
        """All parts, one row per video sorted by index (a video found twice is kept once)."""
        return read_records(self.directory)

    def remove_temporary_files(self) -> None:
        """Temporary files of writes a kill interrupted (call when no rank is writing)."""
        for path in self.directory.glob(".part-*.tmp"):
            path.unlink(missing_ok=True)


def read_manifest(directory: PathLike) -> Dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no results store here ({MANIFEST} missing)")
    return json.loads(path.read_text())


def read_records(directory: PathLike) -> StoredRecords:
    """The records of a split's store folder (see :class:`StoredRecords`)."""
    directory = Path(directory)
    parts = sorted(p for p in directory.iterdir() if _PART.match(p.name)) if directory.is_dir() else []
    blocks = []
    skipped: Dict[int, SkippedVideo] = {}
    for path in parts:
        try:
            data = _read_part(path)
        except (OSError, ValueError) as error:  # only a file damaged after it was written
            raise ValueError(f"{path}: unreadable part of the results store ({error})") from None
        offsets = np.concatenate([[0], np.cumsum(data["view_counts"])])
        for row, index in enumerate(data["indices"].tolist()):
            blocks.append((index, int(data["labels"][row]), data["logits"][offsets[row]:offsets[row + 1]],
                           str(data["paths"][row]) if len(data["paths"]) else ""))
        for index, where, reason in zip(data["skip_indices"].tolist(), data["skip_paths"].tolist(),
                                        data["skip_reasons"].tolist()):
            skipped.setdefault(int(index), SkippedVideo(int(index), where, reason))
    first: Dict[int, tuple] = {}
    for block in blocks:  # parts in name order: the earliest attempt's copy wins
        if block[0] in first:
            logger.warning("%s: video %d stored twice; the first copy is kept", directory, block[0])
            continue
        first[block[0]] = block
    ordered = [first[i] for i in sorted(first)]
    num_classes = ordered[0][2].shape[1] if ordered else int(read_manifest(directory).get("num_classes", 0))
    return StoredRecords(
        indices=np.array([b[0] for b in ordered], dtype=np.int64),
        labels=np.array([b[1] for b in ordered], dtype=np.int64),
        view_counts=np.array([b[2].shape[0] for b in ordered], dtype=np.int64),
        logits=(np.concatenate([b[2] for b in ordered]) if ordered
                else np.empty((0, num_classes), np.float32)),
        paths={b[0]: b[3] for b in ordered if b[3]},
        skipped=sorted((s for i, s in skipped.items() if i not in first), key=lambda s: (s.index, s.path)),
    )


def clear_store(directory: PathLike) -> None:
    """Delete a store folder (``--fresh``)."""
    directory = Path(directory)
    if directory.exists():
        shutil.rmtree(directory)


def result_from_records(records: StoredRecords, class_names: Sequence[str], topk: Sequence[int] = (1, 5),
                        expected: Optional[int] = None, resumed_videos: int = 0):
    """The full-class :class:`~stzsar.eval.meter.EvalResult` of stored records.

    ``expected``: the split's video count; every index below it must be scored or skipped exactly
    once, else ``RuntimeError`` (an unfinished run: rerun the same command to complete it).
    """
    from dataclasses import asdict, replace

    from stzsar.eval.distributed import _coverage_error
    from stzsar.eval.meter import MultiViewMeter, view_probs

    if records.logits.shape[0] and records.num_classes != len(class_names):
        raise ValueError(f"the store holds logits over {records.num_classes} classes, the class list has "
                         f"{len(class_names)}")
    problem = _coverage_error([{"indices": torch.from_numpy(records.indices),
                                "skipped": [asdict(s) for s in records.skipped]}], expected)
    if problem:
        raise RuntimeError(f"the results store is incomplete or inconsistent: {problem} (rerun the same "
                           "command to finish the run)")
    meter = MultiViewMeter(class_names, topk=topk)
    if len(records.indices):
        rows = records.view_video()
        # One row per view: the meter sums the rows of a video and counts its views.
        meter.update(view_probs(torch.from_numpy(records.logits)), torch.from_numpy(records.labels[rows]),
                     torch.from_numpy(records.indices[rows]))
    meter.paths.update(records.paths)
    for s in records.skipped:
        meter.skip(s.index, s.path, s.reason)
    return replace(meter.compute(), resumed_videos=int(resumed_videos))
