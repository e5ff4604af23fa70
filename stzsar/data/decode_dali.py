"""DALI decoding: a thin layer over the shared sampling and geometry.

DALI (``pip install nvidia-dali-cuda130``) decodes only. Everything else is the code the PyAV path
uses: the frame count and rotation come from :class:`~stzsar.data.decode_pyav.PyAVVideo`
(demuxing, plus one decoded frame for the rotation), the indices from
:func:`~stzsar.data.dataset.sample_indices`, and resize, crops and normalisation from
:func:`~stzsar.data.dataset.video_from_frames`, run as torch ops on the frames where DALI left
them -- on the GPU with ``device="gpu"`` (NVDEC decoding, no host round trip).

- ``device="gpu"``: the ``mixed`` decoder (NVDEC): H.264, HEVC, VP8, VP9, AV1, MPEG-4, MJPEG.
- ``device="cpu"``: DALI's CPU decoder (libavcodec) reads VP8, VP9 and MJPEG only.

Frame ``k`` must be the same frame as PyAV's frame ``k``. DALI numbers frames by sorting the
packets' timestamps, so it is given only files that PyAV addresses by timestamps too
(:attr:`~stzsar.data.decode_pyav.VideoInfo.addressing`); a file whose timestamps cannot address
frames (AVI with B-frames, repeated or missing timestamps) is decoded by PyAV. So is a file the
probe finds short of the frames its header declares, a file with an edit list on the GPU (DALI's
CPU decoder is tested to agree with PyAV on those; its GPU decoder is not yet), a codec the chosen
backend does not decode, and a file DALI fails on (PyAV then reads it, and finds, for instance,
that it is decoded short). Each such video is counted in
:attr:`DaliVideoLoader.fallbacks`, by reason in :attr:`DaliVideoLoader.fallback_reasons`, so a
mixed dataset loses nothing. Bad files follow the same policy as
:class:`~stzsar.data.dataset.VideoLoader`: skipped, logged once, counted; or raised with
``strict=True``.
"""

from __future__ import annotations

import logging
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .dataset import (
    ShortVideo,
    SkipAccounting,
    SkippedVideo,
    SkipRecorder,
    VideoDataset,
    clip_chooser,
    item_rng,
    missing_reason,
    video_from_frames,
)
from .decode_pyav import PyAVVideo, VideoInfo
from .errors import VideoDecodeError

logger = logging.getLogger(__name__)

#: codecs (FFmpeg names) that each DALI backend decodes
DALI_CODECS = {
    "cpu": frozenset({"vp8", "vp9", "mjpeg"}),
    "gpu": frozenset({"h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mjpeg"}),
}


def pyav_reason(info: VideoInfo, device: str) -> Optional[str]:
    """Why a video must be decoded by PyAV rather than DALI on ``device`` (``None``: DALI may)."""
    if info.codec not in DALI_CODECS[device]:
        return f"codec {info.codec} is not decoded by DALI's {device.upper()} backend"
    if info.addressing != "timestamps":
        return f"frames are addressed in decoding output order ({info.addressing_reason})"
    if info.short:
        return "decoded short: PyAV reads the frames that exist"
    if info.discarded and device == "gpu":
        return "edit list (frames decoded but not shown): DALI's GPU decoder is not verified on it"
    return None


def dali_status() -> Tuple[bool, str]:
    """``(True, version)`` when DALI imports, else ``(False, why)``."""
    try:
        import nvidia.dali as dali
    except Exception as error:  # ImportError, or a broken install raising anything
        return False, f"nvidia.dali does not import: {type(error).__name__}: {error}"
    return True, str(dali.__version__)


def default_device_id() -> int:
    """The GPU of this process: ``LOCAL_RANK`` under ``torchrun`` (each rank its own GPU, whether
    or not the caller ran ``torch.cuda.set_device``), else the current device. A ``LOCAL_RANK``
    past the visible devices (a launcher that gives each rank one GPU through
    ``CUDA_VISIBLE_DEVICES``) also means the current device."""
    from stzsar.devices import rank_gpu

    local = os.environ.get("LOCAL_RANK")
    if local is not None and local.strip().isdigit():
        return rank_gpu(int(local))
    return torch.cuda.current_device()


class DaliDecoder:
    """Decodes chosen frames of encoded videos with a DALI pipeline.

    Args:
        device: ``"gpu"`` (NVDEC, frames land in CUDA memory) or ``"cpu"``.
        batch_size: most videos per call.
        num_threads: DALI CPU threads.
        device_id: CUDA device (default: :func:`default_device_id`; ignored on CPU).
    """

    def __init__(self, device: str = "gpu", *, batch_size: int = 8, num_threads: int = 2,
                 device_id: Optional[int] = None):
        ok, why = dali_status()
        if not ok:
            raise RuntimeError(why)
        if device not in DALI_CODECS:
            raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
        if device == "gpu" and not torch.cuda.is_available():
            raise RuntimeError("DALI device='gpu' needs CUDA, which torch does not see")
        self.device = device
        self.batch_size = batch_size
        self.num_threads = num_threads
        self.device_id = (default_device_id() if device_id is None else device_id) if device == "gpu" else None
        self._pipe = None

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types

        @pipeline_def(batch_size=self.batch_size, num_threads=self.num_threads, device_id=self.device_id,
                      prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
        def pipeline():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
            # pad_mode="none": an index past the end is an error, never a silently padded black frame.
            return fn.decoders.video(encoded, frames=frames, pad_mode="none",
                                     device="mixed" if self.device == "gpu" else "cpu")

        pipe = pipeline()
        pipe.build()
        return pipe

    def decode(self, items: Sequence[Tuple[np.ndarray, Sequence[int]]]) -> List[torch.Tensor]:
        """Decode ``[(encoded bytes as uint8 array, frame indices), ...]``.

        Returns one ``uint8 [len(indices), H, W, 3]`` tensor per item, on the GPU (current stream)
        or the CPU. Raises on any failure, after which the pipeline is rebuilt on the next call.
        """
        from nvidia.dali.plugin.pytorch import feed_ndarray

        if not 0 < len(items) <= self.batch_size:
            raise ValueError(f"1 to {self.batch_size} videos per call, got {len(items)}")
        if self._pipe is None:
            self._pipe = self._build()
        try:
            self._pipe.feed_input("encoded", [np.asarray(data, dtype=np.uint8) for data, _ in items])
            self._pipe.feed_input("frames", [np.asarray(idx, dtype=np.int32) for _, idx in items])
            (output,) = self._pipe.run()
        except Exception:
            self._pipe = None  # a DALI pipeline is unusable after an error
            raise
        tensors = []
        for i in range(len(items)):
            sample = output[i]
            if self.device == "gpu":
                target = torch.empty(sample.shape(), dtype=torch.uint8, device=f"cuda:{self.device_id}")
                feed_ndarray(sample, target, cuda_stream=torch.cuda.current_stream(self.device_id))
            else:
                target = torch.from_numpy(np.array(sample))
            tensors.append(target)
        return tensors


@dataclass
class _Prepared:
    """One video ready for decoding: its bytes, the frames to decode and how to orient them."""

    index: int
    path: Path
    data: Optional[np.ndarray]
    frames: List[int]
    rotation: int
    info: VideoInfo
    rng: Optional[random.Random]
    #: draws the clip again for a given frame count (a PyAV read that finds the video short)
    choose: Any
    #: why PyAV decodes this video (``None``: DALI does)
    pyav: Optional[str] = None


def _dali_reason(error: BaseException) -> str:
    """The informative line of a DALI error (the one after "encountered:"), shortened."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    for position, line in enumerate(lines[:-1]):
        if line.startswith("encountered"):
            return lines[position + 1][:300]
    return lines[0][:300]


class DaliVideoLoader(SkipAccounting):
    """Batches of a :class:`VideoDataset` decoded with DALI; same batches and skip accounting as
    :class:`~stzsar.data.dataset.VideoLoader`, with tensors on ``device``.

    Args:
        dataset: the dataset (its split, spec, training flag, strictness and seed are used).
        batch_size: videos per batch.
        device: ``"gpu"`` (or ``"cuda"``, ``"cuda:N"``) or ``"cpu"``.
        shuffle, drop_last, seed: as for a DataLoader.
        num_threads: host threads that read and probe files, and DALI's CPU threads.
    """

    def __init__(self, dataset: VideoDataset, *, batch_size: int = 8, device: Union[str, torch.device] = "gpu",
                 shuffle: bool = False, drop_last: bool = False, seed: Optional[int] = None,
                 num_threads: int = 2, device_id: Optional[int] = None):
        device = str(device)
        if device.startswith("cuda"):
            device_id = int(device.split(":")[1]) if ":" in device else device_id
            device = "gpu"
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.backend = f"dali-{device}"
        self.decoder = DaliDecoder(device, batch_size=batch_size, num_threads=num_threads, device_id=device_id)
        self.num_threads = num_threads
        #: videos decoded by PyAV instead of DALI (see the module doc), and why
        self.fallbacks = 0
        self.fallback_reasons: Dict[str, int] = {}
        self._recorder = SkipRecorder(dataset.split.name)
        self._passes = 0

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def report(self) -> Dict[str, Any]:
        return {**super().report(), "fallbacks": self.fallbacks, "fallback_reasons": dict(self.fallback_reasons)}

    # -- one pass ---------------------------------------------------------------------------------------
    def _order(self) -> List[int]:
        order = list(range(len(self.dataset)))
        if self.shuffle:
            seed = None if self.seed is None else f"order:{self.seed}:{self._passes}"
            random.Random(seed).shuffle(order)
        return order

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        self._recorder.start_pass()
        epoch = self._passes
        order = self._order()
        self._passes += 1
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        with ThreadPoolExecutor(max_workers=max(1, self.num_threads)) as pool:
            for indices in batches:
                batch = self._load_batch(indices, epoch, pool)
                self._recorder.record(batch)
                if batch["label"].numel():
                    yield batch

    def _prepare(self, index: int, epoch: int) -> "_Prepared":
        """Host side of one video: count frames, choose indices, read the bytes (or fail)."""
        ds = self.dataset
        rng = item_rng(ds.training, ds.seed, epoch, index)
        path = ds.split.locate(index)
        if path is None:
            raise VideoDecodeError(ds.split.videos[index].path, missing_reason(ds.split, index))
        with PyAVVideo(path) as video:
            info = video.info
            rotation = video.first_frame_rotation()
        choose = clip_chooser(ds.spec, ds.training, rng)
        frames = choose(info.num_frames)
        why = pyav_reason(info, self.decoder.device)
        data = np.fromfile(path, dtype=np.uint8) if why is None else None
        return _Prepared(index, path, data, frames, rotation, info, rng, choose, why)

    def _pyav(self, item: "_Prepared", why: str) -> Tuple[torch.Tensor, Optional[ShortVideo]]:
        """Decode ``item`` with PyAV (counted as a fallback), as :class:`VideoDataset` would."""
        with PyAVVideo(item.path) as video:
            indices, array, rotation = video.read_clip(item.choose)
            info = video.info
        item.frames, item.rotation = indices, rotation
        self.fallbacks += 1
        self.fallback_reasons[why] = self.fallback_reasons.get(why, 0) + 1
        short = ShortVideo(item.index, str(item.path), info.num_frames, info.expected_frames) if info.short else None
        return torch.from_numpy(array).to(self._torch_device()), short

    def _load_batch(self, indices: Sequence[int], epoch: int, pool: ThreadPoolExecutor) -> Dict[str, Any]:
        ds = self.dataset
        skipped: List[SkippedVideo] = []
        shorts: Dict[int, ShortVideo] = {}
        ready: List[_Prepared] = []
        futures = [(index, pool.submit(self._prepare, index, epoch)) for index in indices]
        for index, future in futures:
            try:
                ready.append(future.result())
            except VideoDecodeError as error:
                self._fail(index, error, skipped)
        decoded: Dict[int, torch.Tensor] = {}
        retry: List[Tuple[_Prepared, str]] = [(item, item.pyav) for item in ready if item.pyav is not None]
        for_dali = [item for item in ready if item.pyav is None]
        if for_dali:
            try:
                outputs = self.decoder.decode([(item.data, item.frames) for item in for_dali])
                decoded.update({item.index: out for item, out in zip(for_dali, outputs)})
            except Exception:
                # One bad file fails DALI's whole batch: decode one by one to find it.
                for item in for_dali:
                    try:
                        decoded[item.index] = self.decoder.decode([(item.data, item.frames)])[0]
                    except Exception as error:
                        retry.append((item, f"DALI failed on the file ({_dali_reason(error)})"))
        for item in for_dali:
            out = decoded.get(item.index)
            if out is not None and out.shape[0] != len(item.frames):
                del decoded[item.index]
                retry.append((item, f"DALI returned fewer frames than asked: {out.shape[0]} of {len(item.frames)}"))
        for item, why in retry:
            try:
                key = item.pyav or why.split(" (")[0].split(":")[0]
                decoded[item.index], short = self._pyav(item, key)
                if short is not None:
                    shorts[item.index] = short
            except VideoDecodeError as error:
                if item.pyav is None:  # DALI failed first: say so too
                    error = VideoDecodeError(error.path, f"{error.reason}; {why}")
                self._fail(item.index, error, skipped)
        videos, labels, kept = [], [], []
        for item in ready:
            if item.index not in decoded:
                continue
            if item.index not in shorts and item.info.short:  # found short by the probe
                shorts[item.index] = ShortVideo(item.index, str(item.path), item.info.num_frames,
                                                item.info.expected_frames)
            videos.append(video_from_frames(decoded[item.index], item.rotation, ds.spec, training=ds.training,
                                            rng=item.rng))
            labels.append(ds.split.videos[item.index].label)
            kept.append(item.index)
        device = self._torch_device()
        video = torch.stack(videos) if videos else torch.empty((0,) + ds.output_shape(), device=device)
        return {
            "video": video,
            "label": torch.tensor(labels, dtype=torch.long, device=device),
            "index": torch.tensor(kept, dtype=torch.long, device=device),
            "skipped": skipped,
            "short": [shorts[i] for i in kept if i in shorts],
        }

    def _torch_device(self) -> torch.device:
        if self.decoder.device == "gpu":
            return torch.device("cuda", self.decoder.device_id)
        return torch.device("cpu")

    def _fail(self, index: int, error: VideoDecodeError, skipped: List[SkippedVideo]) -> None:
        if self.dataset.strict:
            raise error
        skipped.append(SkippedVideo(index, error.path, error.reason))
