"""CPU decoding with PyAV (every codec FFmpeg reads), for DataLoader workers.

Frame ``k`` of a video is its ``k``-th frame in presentation order. The number of frames comes from
demuxing the packets (no decoding), not from container metadata: ``stream.frames`` is missing in
WebM/MKV and the rate-times-duration estimate is wrong for variable-frame-rate videos. Frames are
found again by their presentation timestamps, so variable frame rates cost nothing extra, and the
decoder seeks to the key frame before a wanted frame when that skips decoding work.

Rotation: the display-matrix rotation of the stream (phone videos) is read from the decoded frames
and returned with them; :func:`stzsar.data.transforms.orient` turns frames upright.

Every failure is a :class:`~stzsar.data.errors.VideoDecodeError` naming the file and the reason.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import VideoDecodeError

PathLike = Union[str, Path]


@dataclass
class VideoInfo:
    """What demuxing tells about a video stream (no frame decoded)."""

    num_frames: int
    width: int
    height: int
    codec: str
    time_base: Optional[Fraction]
    #: presentation timestamps, sorted; ``None`` when the container gives none (decode-order counting)
    pts: Optional[List[int]] = field(default=None, repr=False)
    #: presentation timestamps of the key frames, sorted
    keyframe_pts: List[int] = field(default_factory=list, repr=False)
    #: duration the header declares (seconds), when it declares one for this stream
    declared_duration: Optional[float] = None
    #: duration covered by the demuxed packets (seconds)
    duration: Optional[float] = None
    #: longest interval between consecutive frames (seconds)
    max_frame_interval: Optional[float] = None


def _reason(error: BaseException) -> str:
    """A short reason from an FFmpeg/OS error, without the file name FFmpeg appends."""
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}"


def check_file(path: PathLike) -> None:
    """Raise :class:`VideoDecodeError` for a missing, unreadable or empty file (no decoding)."""
    path = Path(path)
    if not path.exists():
        raise VideoDecodeError(path, "file not found")
    if not path.is_file():
        raise VideoDecodeError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise VideoDecodeError(path, "file not readable (permissions)")


class PyAVVideo:
    """One open video file: demuxed once on opening, then frames read by index.

    Use as a context manager::

        with PyAVVideo(path) as video:
            frames, rotation = video.read([0, 10, 20])   # uint8 [3, H, W, 3], degrees

    Args:
        path: the video file.
        threads: decoder threads (1 in DataLoader workers, where the workers are the parallelism;
            0 lets FFmpeg choose).
        truncation_tolerance: a stream whose packets end more than this fraction of its declared
            duration early (and more than two frames early) is reported as truncated.
    """

    def __init__(self, path: PathLike, *, threads: int = 1, truncation_tolerance: float = 0.1):
        import av

        self._av = av
        self.path = Path(path)
        self.threads = threads
        self.truncation_tolerance = truncation_tolerance
        check_file(self.path)
        self._container = None
        try:
            self._open()
            self.info = self._demux()
        except VideoDecodeError:
            self.close()
            raise
        except Exception as error:  # FFmpeg, OS and PyAV errors alike: this file is unusable
            self.close()
            raise VideoDecodeError(self.path, f"cannot read: {_reason(error)}") from error

    # -- opening and demuxing -------------------------------------------------------------------
    def _open(self) -> None:
        self.close()
        try:
            self._container = self._av.open(str(self.path), metadata_errors="ignore")
        except Exception as error:
            raise VideoDecodeError(self.path, f"not a readable video ({_reason(error)})") from error
        if not self._container.streams.video:
            raise VideoDecodeError(self.path, "no video stream")
        self._stream = self._container.streams.video[0]
        if self.threads != 1:
            self._stream.thread_type = "AUTO"
        self._stream.codec_context.thread_count = self.threads

    def _demux(self) -> VideoInfo:
        stream = self._stream
        pts: List[int] = []
        keyframes: List[int] = []
        durations: Dict[int, int] = {}
        have_pts = True
        count = 0
        for packet in self._container.demux(stream):
            if packet.size == 0:  # the flush packet at the end of the stream
                continue
            count += 1
            if packet.pts is None:
                have_pts = False
                continue
            pts.append(packet.pts)
            durations[packet.pts] = packet.duration or 0
            if packet.is_keyframe:
                keyframes.append(packet.pts)
        if count == 0:
            raise VideoDecodeError(self.path, "no video frames")
        ctx = stream.codec_context
        info = VideoInfo(
            num_frames=count,
            width=ctx.width,
            height=ctx.height,
            codec=ctx.name,
            time_base=stream.time_base,
        )
        if have_pts and len(set(pts)) == count:
            pts.sort()
            info.pts = pts
            info.keyframe_pts = sorted(keyframes) or [pts[0]]
            if stream.time_base is not None:
                span = pts[-1] + durations.get(pts[-1], 0) - pts[0]
                info.duration = float(span * stream.time_base)
                gaps = [b - a for a, b in zip(pts, pts[1:])] or [span]
                info.max_frame_interval = float(max(gaps) * stream.time_base)
        info.declared_duration = self._declared_duration()
        self._check_truncation(info)
        return info

    def _declared_duration(self) -> Optional[float]:
        stream = self._stream
        if stream.duration and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        # WebM/MKV declare only the container's duration; it is this stream's only when alone
        # (with audio it is the longest stream's, which may legitimately outlast the video).
        if len(self._container.streams) == 1 and self._container.duration:
            return self._container.duration / 1_000_000
        return None

    def _check_truncation(self, info: VideoInfo) -> None:
        declared, seen = info.declared_duration, info.duration
        if not declared or seen is None or info.num_frames < 2:
            return
        # Two of the longest frame intervals: a last frame without a duration, or a variable frame
        # rate, must not look like truncation.
        missing = declared - seen
        if missing > max(2 * (info.max_frame_interval or 0.0), self.truncation_tolerance * declared):
            raise VideoDecodeError(
                self.path,
                f"truncated: the header declares {declared:.2f} s but the frames end after {seen:.2f} s",
            )

    # -- decoding -----------------------------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        return self.info.num_frames

    def read(self, indices: Sequence[int]) -> Tuple[np.ndarray, int]:
        """Decode frames by index (any order, repeats allowed).

        Returns:
            ``uint8 [len(indices), H, W, 3]`` RGB frames as stored (not rotated), and the
            display-matrix rotation in degrees counter-clockwise (0 when none).
        """
        if not len(indices):
            raise ValueError("no frame indices to read")
        bad = [i for i in indices if not 0 <= i < self.num_frames]
        if bad:
            raise IndexError(f"{self.path}: frame indices {bad[:5]} outside [0, {self.num_frames})")
        wanted = sorted(set(int(i) for i in indices))
        try:
            decoded, rotation = None, 0
            if self.info.pts is not None:
                decoded, rotation = self._read_by_pts(wanted)
            if decoded is None:  # no usable timestamps: count frames in decoding order
                decoded, rotation = self._read_sequential(wanted)
        except VideoDecodeError:
            raise
        except Exception as error:
            raise VideoDecodeError(self.path, f"decoding failed: {_reason(error)}") from error
        return np.stack([decoded[i] for i in indices]), rotation

    def _to_rgb(self, frame) -> np.ndarray:
        return frame.to_ndarray(format="rgb24")

    def _read_by_pts(self, wanted: List[int]) -> Tuple[Optional[Dict[int, np.ndarray]], int]:
        """Decode by timestamp, seeking when a key frame lies between here and the next target.

        Returns ``(None, 0)`` when the file's timestamps cannot be trusted (the caller then counts
        frames in decoding order).
        """
        pts, keyframes = self.info.pts, self.info.keyframe_pts
        position = {value: index for index, value in enumerate(pts)}
        out: Dict[int, np.ndarray] = {}
        rotation = 0
        frames = None  # the current decoding iterator
        last = None  # pts of the last decoded frame
        for index in wanted:
            target = pts[index]
            key = keyframes[max(0, bisect.bisect_right(keyframes, target) - 1)]
            if frames is None or last is None or key > last:
                # Seeking flushes the decoder; decoding restarts at the key frame <= target.
                self._container.seek(key, stream=self._stream, backward=True, any_frame=False)
                frames = self._container.decode(self._stream)
                last = None
            found = False
            for frame in frames:
                if frame.pts is None or frame.pts not in position:
                    return None, 0
                if last is None and frame.pts > target:
                    return None, 0  # the seek overshot: this container cannot seek precisely
                last = frame.pts
                if frame.pts < target:
                    continue
                if frame.pts > target:  # the target frame never came out of the decoder
                    raise VideoDecodeError(self.path, f"frame {index} could not be decoded")
                out[index] = self._to_rgb(frame)
                rotation = rotation or int(frame.rotation or 0)
                found = True
                break
            if not found:
                raise VideoDecodeError(
                    self.path, f"frame {index} of {self.num_frames} could not be decoded (corrupt or truncated)"
                )
        return out, rotation

    def _read_sequential(self, wanted: List[int]) -> Tuple[Dict[int, np.ndarray], int]:
        """Decode from the start, counting frames in output order, until the last wanted one."""
        self._open()
        out: Dict[int, np.ndarray] = {}
        rotation = 0
        targets = set(wanted)
        last_wanted = wanted[-1]
        count = 0
        for frame in self._container.decode(self._stream):
            if count in targets:
                out[count] = self._to_rgb(frame)
                rotation = rotation or int(frame.rotation or 0)
            if count >= last_wanted:
                break
            count += 1
        missing = [i for i in wanted if i not in out]
        if missing:
            raise VideoDecodeError(
                self.path,
                f"only {count} of {self.num_frames} frames could be decoded (corrupt or truncated)",
            )
        return out, rotation

    def first_frame_rotation(self) -> int:
        """The display-matrix rotation, from the first decodable frame (decodes one frame)."""
        try:
            self._open()
            for frame in self._container.decode(self._stream):
                return int(frame.rotation or 0)
        except Exception as error:
            raise VideoDecodeError(self.path, f"decoding failed: {_reason(error)}") from error
        raise VideoDecodeError(self.path, "no decodable frame")

    # -- lifetime -----------------------------------------------------------------------------------
    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> "PyAVVideo":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


def probe_video(path: PathLike, *, rotation: bool = False) -> Tuple[VideoInfo, int]:
    """Demux a video (no decoding unless ``rotation``) and return its info and rotation (degrees)."""
    with PyAVVideo(path) as video:
        return video.info, (video.first_frame_rotation() if rotation else 0)


def read_frames(path: PathLike, indices: Sequence[int], *, threads: int = 1) -> Tuple[np.ndarray, int]:
    """Decode frames ``indices`` of a video: ``uint8 [len(indices), H, W, 3]`` and the rotation."""
    with PyAVVideo(path, threads=threads) as video:
        return video.read(indices)
