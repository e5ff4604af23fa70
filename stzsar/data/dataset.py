"""Torch datasets and loaders of video clips, with an explicit bad-file policy.

:class:`VideoDataset` yields ``{"video", "label", "index", "short"}`` for a good video. For a bad
one (missing, empty, truncated, undecodable) it yields a :class:`SkippedVideo` with the path and
the reason, or raises :class:`~stzsar.data.errors.VideoDecodeError` with ``strict=True``. A video
whose last frames are missing is not bad: its clip is sampled from the frames that exist, and the
item says so (``"short"``: a :class:`ShortVideo`). :class:`VideoCollate` drops skipped items from
a batch but lists them under ``"skipped"`` (and short ones under ``"short"``), and
:class:`VideoLoader` records each skipped or short video, logs it once (path and reason) and
counts it, so an evaluation can say how many videos it scored and how many it skipped. Nothing is
dropped silently. :func:`build_loader` makes the loader for either decoding path (PyAV in
DataLoader workers, or DALI). :func:`check_video` is the usability check that ``stzsar data
inspect`` and the few-shot draw share.

Batches::

    {"video": float32 [B, T, 3, S, S]  (or [B, V, T, 3, S, S] with several test views),
     "label": int64 [B], "index": int64 [B] (position in the split),
     "skipped": [SkippedVideo, ...]  (videos of this batch that were left out),
     "short": [ShortVideo, ...]  (videos of this batch decoded short, kept)}
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import DataLoader, Dataset

from .decode_pyav import PyAVVideo, check_file
from .errors import VideoDecodeError
from .sampling import clip_indices, middle_indices
from .spec import ClipSpec
from .splits import VideoSplit
from .transforms import make_views, orient

logger = logging.getLogger(__name__)

BACKENDS = ("pyav", "dali", "auto")


@dataclass(frozen=True)
class SkippedVideo:
    """A video left out of a batch: its index in the split, its path and why."""

    index: int
    path: str
    reason: str


@dataclass(frozen=True)
class ShortVideo:
    """A video decoded short: kept, its clip sampled from the ``frames`` of ``expected`` that exist."""

    index: int
    path: str
    frames: int
    expected: int

    @property
    def reason(self) -> str:
        return f"decoded short ({self.frames} of {self.expected} frames)"


@dataclass(frozen=True)
class VideoCheck:
    """What :func:`check_video` found about one video of a split.

    ``status`` is ``"ok"``, ``"short"`` (usable: decoded short), ``"missing"`` or ``"unreadable"``.
    """

    index: int
    path: str
    status: str
    reason: Optional[str] = None
    frames: Optional[int] = None
    expected: Optional[int] = None
    addressing: Optional[str] = None

    @property
    def usable(self) -> bool:
        return self.status in ("ok", "short")


def check_video(split: VideoSplit, index: int, *, decode: bool = True, num_frames: int = 8) -> VideoCheck:
    """Whether video ``index`` of ``split`` can be used, and why not.

    Without ``decode``: the file exists, is a regular file and is not empty. With ``decode``: the
    file is demuxed and the frames of a test clip of ``num_frames`` frames are decoded, plus its
    last frame, so that a video whose last frames are missing is found (status ``"short"``,
    usable) and one that cannot give its frames is ``"unreadable"`` with the reason.
    """
    path = split.locate(index)
    if path is None:
        return VideoCheck(index, str(split.videos[index].path), "missing", missing_reason(split, index))
    try:
        if not decode:
            check_file(path)
            return VideoCheck(index, str(path), "ok")
        with PyAVVideo(path) as video:
            video.read_clip(lambda n: middle_indices(n, num_frames) + [n - 1])
            info = video.info
    except VideoDecodeError as error:
        return VideoCheck(index, str(path), "unreadable", error.reason)
    status = "short" if info.short else "ok"
    return VideoCheck(index, str(path), status, info.short_reason(), info.num_frames,
                      info.expected_frames if info.short else info.num_frames, info.addressing)


def missing_reason(split: VideoSplit, index: int) -> str:
    """Why :meth:`VideoSplit.locate` found nothing, naming how many places it looked."""
    tried = split.candidates(index)
    return "file not found" if len(tried) == 1 else f"file not found (tried {len(tried)} names and folders)"


def video_from_frames(
    frames: torch.Tensor,
    rotation: int,
    spec: ClipSpec,
    *,
    training: bool,
    rng: Optional[random.Random] = None,
) -> torch.Tensor:
    """Decoded frames (``uint8 [num_clips*T, H, W, 3]``, any device) to the video tensor of one item.

    Shared by every decoding path, so that they differ only in the decoder.
    """
    num_clips = 1 if training else spec.num_clips
    views = make_views(orient(frames, rotation), spec, training=training, num_clips=num_clips, rng=rng)
    return views.view(spec.output_shape(training))


def sample_indices(
    num_frames: int, spec: ClipSpec, *, training: bool, rng: Optional[random.Random] = None
) -> List[int]:
    """All frame indices one item decodes (clip after clip)."""
    clips = clip_indices(
        num_frames, spec.num_frames, training=training, num_clips=1 if training else spec.num_clips, rng=rng
    )
    return [i for clip in clips for i in clip]


def clip_chooser(spec: ClipSpec, training: bool, rng: Optional[random.Random]):
    """``choose(num_frames) -> indices`` for :meth:`PyAVVideo.read_clip`: the same indices for the
    same count whenever it is asked (the random source is reset to where it was), so a video
    found short gets the clip it would have had with its true length known."""
    state = rng.getstate() if rng is not None else None

    def choose(num_frames: int) -> List[int]:
        if state is not None:
            rng.setstate(state)
        return sample_indices(num_frames, spec, training=training, rng=rng)

    return choose


def item_rng(training: bool, seed: Optional[int], epoch: int, index: int) -> Optional[random.Random]:
    """The random source of one training item.

    Seeded: a function of ``(seed, epoch, index)`` alone, so that a run repeats its frame choices
    and crops whatever the number of workers. Unseeded: drawn from torch's generator (which
    DataLoader seeds differently in each worker).
    """
    if not training:
        return None
    if seed is not None:
        return random.Random(f"clip:{seed}:{epoch}:{index}")
    return random.Random(int(torch.randint(0, 2**62, (1,)).item()))


class VideoDataset(Dataset):
    """Clips of the videos of a split, decoded with PyAV.

    Args:
        split: the videos and classes.
        spec: frames, size, views and normalisation.
        training: one random clip and crop per video; else deterministic test views.
        strict: raise :class:`VideoDecodeError` on a bad video instead of returning a
            :class:`SkippedVideo`.
        threads: decoder threads per video (keep 1 with several DataLoader workers).
        seed: makes the random clips and crops a function of ``(seed, epoch, index)``; the
            loaders advance :attr:`epoch` at each pass.
    """

    def __init__(
        self,
        split: VideoSplit,
        spec: ClipSpec = ClipSpec(),
        *,
        training: bool = False,
        strict: bool = False,
        threads: int = 1,
        seed: Optional[int] = None,
    ):
        if training:
            spec.check_training()
        self.split = split
        self.spec = spec
        self.training = training
        self.strict = strict
        self.threads = threads
        self.seed = seed
        self.epoch = 0

    @property
    def classes(self) -> List[str]:
        return self.split.classes

    def __len__(self) -> int:
        return len(self.split)

    def output_shape(self) -> Tuple[int, ...]:
        return self.spec.output_shape(self.training)

    def load(self, index: int, rng: Optional[random.Random] = None) -> torch.Tensor:
        """The video tensor of item ``index``; raises :class:`VideoDecodeError` for a bad file."""
        return self.load_item(index, rng)[0]

    def load_item(self, index: int, rng: Optional[random.Random] = None) -> Tuple[torch.Tensor, Optional[ShortVideo]]:
        """The video tensor of item ``index`` and, when it was decoded short, a :class:`ShortVideo`."""
        path = self.split.locate(index)
        if path is None:
            raise VideoDecodeError(self.split.videos[index].path, missing_reason(self.split, index))
        with PyAVVideo(path, threads=self.threads) as video:
            _, frames, rotation = video.read_clip(clip_chooser(self.spec, self.training, rng))
            info = video.info
        short = ShortVideo(index, str(path), info.num_frames, info.expected_frames) if info.short else None
        tensor = video_from_frames(torch.from_numpy(frames), rotation, self.spec, training=self.training, rng=rng)
        return tensor, short

    def __getitem__(self, index: int) -> Union[Dict[str, Any], SkippedVideo]:
        try:
            video, short = self.load_item(index, item_rng(self.training, self.seed, self.epoch, index))
        except VideoDecodeError as error:
            if self.strict:
                raise
            return SkippedVideo(index, error.path, error.reason)
        return {"video": video, "label": self.split.videos[index].label, "index": index, "short": short}


class VideoCollate:
    """Stack good items; list skipped ones under ``"skipped"`` (an all-skipped batch has B = 0)."""

    def __init__(self, output_shape: Sequence[int]):
        self.output_shape = tuple(output_shape)

    def __call__(self, items: Sequence[Union[Dict[str, Any], SkippedVideo]]) -> Dict[str, Any]:
        good = [item for item in items if not isinstance(item, SkippedVideo)]
        skipped = [item for item in items if isinstance(item, SkippedVideo)]
        if good:
            video = torch.stack([item["video"] for item in good])
        else:
            video = torch.empty((0,) + self.output_shape)
        return {
            "video": video,
            "label": torch.tensor([item["label"] for item in good], dtype=torch.long),
            "index": torch.tensor([item["index"] for item in good], dtype=torch.long),
            "skipped": skipped,
            "short": [item["short"] for item in good if item.get("short") is not None],
        }


class SkipRecorder:
    """Remembers skipped and short videos across passes, logs each one once, counts them per pass."""

    def __init__(self, name: str):
        self.name = name
        #: every video skipped so far, by index (first reason kept)
        self.skipped: Dict[int, SkippedVideo] = {}
        #: every video decoded short so far, by index
        self.short: Dict[int, ShortVideo] = {}
        self.pass_loaded = 0
        self.pass_skipped = 0
        self.pass_short = 0

    def start_pass(self) -> None:
        self.pass_loaded = 0
        self.pass_skipped = 0
        self.pass_short = 0

    def record(self, batch: Dict[str, Any]) -> None:
        self.pass_loaded += int(batch["label"].numel())
        for item in batch.get("short", ()):
            self.pass_short += 1
            if item.index not in self.short:
                self.short[item.index] = item
                logger.info("%s: video %d (%s) %s; its clip is sampled from those frames",
                            self.name, item.index, item.path, item.reason)
        for item in batch["skipped"]:
            self.pass_skipped += 1
            if item.index not in self.skipped:
                self.skipped[item.index] = item
                logger.warning(
                    "%s: skipping video %d (%s): %s [%d skipped so far]",
                    self.name, item.index, item.path, item.reason, len(self.skipped),
                )


class SkipAccounting:
    """What a loader reports about skipped videos; needs ``self.dataset`` and ``self._recorder``
    (a :class:`SkipRecorder`). Shared by the PyAV and the DALI loaders."""

    @property
    def skipped(self) -> List[SkippedVideo]:
        """Every video skipped so far, in index order."""
        return [self._recorder.skipped[i] for i in sorted(self._recorder.skipped)]

    @property
    def num_skipped(self) -> int:
        return len(self._recorder.skipped)

    @property
    def short(self) -> List[ShortVideo]:
        """Every video decoded short so far (kept, sampled from the frames it has), in index order."""
        return [self._recorder.short[i] for i in sorted(self._recorder.short)]

    def report(self) -> Dict[str, Any]:
        """Counts of the last pass, every skipped video and every video decoded short."""
        return {
            "videos": len(self.dataset),
            "loaded": self._recorder.pass_loaded,
            "skipped": self._recorder.pass_skipped,
            "skipped_videos": [
                {"index": s.index, "path": s.path, "reason": s.reason} for s in self.skipped
            ],
            "short": self._recorder.pass_short,
            "short_videos": [
                {"index": s.index, "path": s.path, "frames": s.frames, "expected": s.expected} for s in self.short
            ],
        }


class VideoLoader(SkipAccounting):
    """Iterates batches of a :class:`VideoDataset` through a DataLoader and accounts for skips.

    Batches in which every video was skipped are recorded and not yielded. After (or during) a
    pass: :attr:`num_skipped`, :attr:`skipped` and :meth:`report`.
    """

    def __init__(self, dataset: VideoDataset, dataloader: DataLoader):
        self.dataset = dataset
        self.dataloader = dataloader
        self.backend = "pyav"
        self._recorder = SkipRecorder(dataset.split.name)
        self._passes = 0

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        self._recorder.start_pass()
        # Workers get a copy of the dataset when the pass starts, with this epoch in it.
        self.dataset.epoch = self._passes
        self._passes += 1
        iterator = iter(self.dataloader)
        try:
            for batch in iterator:
                self._recorder.record(batch)
                if batch["label"].numel():
                    yield batch
        finally:
            # Stop the workers now when a pass ends early (an error, a break): left to the garbage
            # collector, a failed pass's iterator waits out a 5 s join timeout per worker.
            shutdown = getattr(iterator, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

    def __len__(self) -> int:
        """Batches in a pass (an upper bound: all-skipped batches are not yielded)."""
        return len(self.dataloader)



def build_loader(
    split_or_dataset: Union[VideoSplit, VideoDataset],
    spec: ClipSpec = ClipSpec(),
    *,
    training: bool = False,
    batch_size: int = 8,
    num_workers: int = 0,
    backend: str = "pyav",
    device: Union[str, torch.device, None] = None,
    strict: bool = False,
    shuffle: Optional[bool] = None,
    drop_last: bool = False,
    seed: Optional[int] = None,
    pin_memory: Optional[bool] = None,
    **dali_options: Any,
):
    """A loader of ``{"video", "label", "index", "skipped"}`` batches from a split.

    Args:
        split_or_dataset: a :class:`VideoSplit` (a :class:`VideoDataset` is made with ``spec``,
            ``training``, ``strict`` and ``seed``) or a ready dataset.
        backend: ``"pyav"`` (CPU decoding in ``num_workers`` DataLoader workers; tensors stay on
            the CPU, pinned when CUDA is available), ``"dali"`` (see
            :class:`stzsar.data.decode_dali.DaliVideoLoader`; tensors come out on ``device``,
            default the GPU) or ``"auto"`` (DALI on the GPU when CUDA and DALI are both usable
            and ``device`` is a CUDA device or unset, else PyAV).
        device: where DALI puts its tensors (``"cuda"``, ``"cuda:1"``, ``"gpu"``, ``"cpu"``).
        shuffle: default: ``training``.
        seed: seeds the order and the random clips and crops (the same with any worker count).
        dali_options: passed to the DALI loader (``num_threads``, ``device_id``); with
            ``backend="auto"`` they are ignored when PyAV is chosen.
    """
    if isinstance(split_or_dataset, VideoDataset):
        dataset = split_or_dataset
    else:
        dataset = VideoDataset(split_or_dataset, spec, training=training, strict=strict, seed=seed)
    shuffle = dataset.training if shuffle is None else shuffle
    backend_requested = backend
    if backend == "auto":
        backend = "pyav"
        if torch.cuda.is_available() and (device is None or str(device).startswith(("cuda", "gpu"))):
            from .decode_dali import dali_status

            if dali_status()[0]:
                backend = "dali"
    if backend == "dali":
        from .decode_dali import DaliVideoLoader

        return DaliVideoLoader(
            dataset, batch_size=batch_size, device=str(device) if device is not None else "gpu", shuffle=shuffle,
            drop_last=drop_last, seed=seed, **dali_options,
        )
    if backend != "pyav":
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if dali_options and backend_requested != "auto":  # with "auto" they apply only if DALI is chosen
        raise TypeError(f"options {sorted(dali_options)} apply to the DALI backend only")
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    dataloader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=VideoCollate(dataset.output_shape()),
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=drop_last,
        generator=generator,
        persistent_workers=False,
    )
    return VideoLoader(dataset, dataloader)
