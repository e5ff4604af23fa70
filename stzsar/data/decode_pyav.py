"""CPU decoding with PyAV (every codec FFmpeg reads), for DataLoader workers.

Frame ``k`` of a video is the ``k``-th frame that the decoder outputs when the file is decoded from
its start: its ``k``-th frame in presentation order, whatever the container says about
timestamps. Plain sequential decoding with PyAV is the reference; everything here returns the
frames it returns.

Opening a file demuxes it once (no decoding): the packets give the number of frames (container
metadata does not: ``stream.frames`` is missing in WebM/MKV, rate times duration is wrong for
variable frame rates), their timestamps, the key frames, and the packets an edit list marks as not
presented. From them the file gets one of two ways of addressing frames
(:attr:`VideoInfo.addressing`):

- ``"timestamps"``: every presented packet has a timestamp and no two are equal, so frame ``k``
  is the one with the ``k``-th smallest timestamp. A read seeks to the key frame before a wanted
  frame when that skips decoding, and checks what comes out: the first frame at or after the key
  frame must be the one expected there, and the frames after it must follow one by one. Any
  other outcome (a seek that lands elsewhere, a timestamp that is not in the index, frames out of
  order, the end of the file before a wanted frame) abandons the timestamps for this file and
  reads it again sequentially.
- ``"sequential"``: the timestamps cannot address frames: AVI stores none for B-frames (FFmpeg
  numbers its packets in decoding order, so H.264 with B-frames comes out with timestamps
  1, 3, 2, 5, 4, ...), a raw stream has none, or some repeat. Frames are counted as the decoder
  outputs them, from the start of the file up to the last wanted frame.

A video whose frames end before the packets (or the header) said, within the truncation
tolerance, is *decoded short*: :meth:`PyAVVideo.read` raises :class:`ShortVideoError` with the
number of frames that exist, :meth:`PyAVVideo.read_clip` samples again among those, and
:attr:`VideoInfo.short` says so. Beyond the tolerance the file is refused as truncated.

Rotation: the display-matrix rotation of the stream (phone videos) is read from the decoded frames
and returned with them; :func:`stzsar.data.transforms.orient` turns frames upright.

Every failure is a :class:`~stzsar.data.errors.VideoDecodeError` naming the file and the reason.
"""

from __future__ import annotations

import bisect
import os
import struct
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import ShortVideoError, VideoDecodeError

PathLike = Union[str, Path]

#: the two ways a file's frames are addressed (see the module doc)
ADDRESSING = ("timestamps", "sequential")

#: codecs whose frames may be stored out of presentation order (B-frames)
REORDERING_CODECS = frozenset({"h264", "hevc", "mpeg4", "mpeg2video", "mpeg1video", "vc1", "wmv3"})


@dataclass
class VideoInfo:
    """What demuxing tells about a video stream (no frame decoded), updated by decoding."""

    #: frames that can be read, in presentation order (lowered when decoding finds fewer)
    num_frames: int
    width: int
    height: int
    codec: str
    time_base: Optional[Fraction]
    #: FFmpeg's name of the container format (``"avi"``, ``"mov,mp4,m4a,3gp,3g2,mj2"``, ...)
    container: str = ""
    #: ``"timestamps"`` or ``"sequential"`` (see the module doc)
    addressing: str = "timestamps"
    #: why the frames are read sequentially (``None`` with timestamp addressing)
    addressing_reason: Optional[str] = None
    #: presentation timestamps of the presented frames, sorted (timestamp addressing only)
    pts: Optional[List[int]] = field(default=None, repr=False)
    #: timestamps of the key frames (presented or not: an edit list may start after one), sorted
    keyframe_pts: List[int] = field(default_factory=list, repr=False)
    #: video packets demuxed, including those an edit list marks as not presented
    packets: int = 0
    #: packets an edit list marks as not presented (the decoder drops their frames)
    discarded: int = 0
    #: frames the file should hold (the header's count, or the packets when decoding found fewer)
    expected_frames: Optional[int] = None
    #: duration the header declares (seconds), when it declares one for this stream
    declared_duration: Optional[float] = None
    #: duration covered by the demuxed packets (seconds)
    duration: Optional[float] = None
    #: longest interval between consecutive frames (seconds)
    max_frame_interval: Optional[float] = None
    #: median interval between consecutive frames (seconds)
    frame_interval: Optional[float] = None

    @property
    def short(self) -> bool:
        """Whether fewer frames can be read than the file should hold (decoded short)."""
        return self.expected_frames is not None and self.num_frames < self.expected_frames

    def short_reason(self) -> Optional[str]:
        """``"decoded short (28 of 30 frames)"``, or ``None`` when the video is whole."""
        if not self.short:
            return None
        return f"decoded short ({self.num_frames} of {self.expected_frames} frames)"


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


def _cut_short(path: Path) -> Optional[str]:
    """Why a file that FFmpeg cannot open looks cut short (AVI, MP4/MOV), if it does."""
    return _riff_cut_short(path) or _mp4_cut_short(path)


def _riff_cut_short(path: Path) -> Optional[str]:
    """An AVI (RIFF) file shorter than its RIFF header says."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(12)
    except OSError:
        return None
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"AVI ":
        return None
    declared = struct.unpack("<I", head[4:8])[0] + 8
    if declared > size:
        return f"truncated: the AVI header declares {declared} bytes, the file has {size}"
    return None


def _mp4_cut_short(path: Path) -> Optional[str]:
    """Why an ISO media file (MP4/MOV) that FFmpeg cannot open is cut short, if it is.

    Walks the top-level boxes: a box that runs past the end of the file, with no ``moov`` box
    (the index) before it, is a file cut while it was written or copied.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(12)
            if len(head) < 8 or head[4:8] != b"ftyp":
                return None
            offset, boxes = 0, []
            while offset + 8 <= size and len(boxes) < 1000:
                handle.seek(offset)
                header = handle.read(16)
                length, kind = struct.unpack(">I4s", header[:8])
                if length == 1 and len(header) >= 16:
                    length = struct.unpack(">Q", header[8:16])[0]
                elif length == 0:
                    length = size - offset
                if length < 8:
                    return None
                boxes.append(kind)
                if offset + length > size:
                    if b"moov" in boxes:
                        return None
                    name = kind.decode("latin-1")
                    return (f"truncated: the file ends inside its '{name}' box, before the 'moov' index "
                            f"({size} of {offset + length} bytes)")
                offset += length
            if b"moov" not in boxes:
                return "incomplete MP4: no 'moov' index (the writer did not finish the file)"
    except (OSError, struct.error):
        return None
    return None


class PyAVVideo:
    """One open video file: demuxed once on opening, then frames read by index.

    Use as a context manager::

        with PyAVVideo(path) as video:
            frames, rotation = video.read([0, 10, 20])   # uint8 [3, H, W, 3], degrees

    Args:
        path: the video file.
        threads: decoder threads (1 in DataLoader workers, where the workers are the parallelism;
            0 lets FFmpeg choose).
        truncation_tolerance: a stream whose frames end more than this fraction of what its
            header declares early (and more than two frames early) is refused as truncated; less
            is decoded short.
        seek: seek to key frames when timestamps allow it (``False``: always decode from the start,
            the reference this class is tested against).
    """

    def __init__(self, path: PathLike, *, threads: int = 1, truncation_tolerance: float = 0.1,
                 seek: bool = True):
        import av

        self._av = av
        self.path = Path(path)
        self.threads = threads
        self.truncation_tolerance = truncation_tolerance
        self.allow_seek = seek
        #: frames the decoder output, over every read of this object (a cost measure)
        self.decoded_frames = 0
        #: seeks made, over every read
        self.seeks = 0
        #: why a timestamp read was abandoned for a sequential one (``None`` if never)
        self.fallback_reason: Optional[str] = None
        #: packets the decoder refused (corrupt data), over every read
        self.decode_errors = 0
        self._last_error: Optional[BaseException] = None
        self._rotation: Optional[int] = None
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
            cut = _cut_short(self.path)
            raise VideoDecodeError(self.path, cut or f"not a readable video ({_reason(error)})") from error
        if not self._container.streams.video:
            raise VideoDecodeError(self.path, "no video stream")
        self._stream = self._container.streams.video[0]
        if self.threads != 1:
            self._stream.thread_type = "AUTO"
        self._stream.codec_context.thread_count = self.threads

    def _demux(self) -> VideoInfo:
        stream = self._stream
        presented: List[Optional[int]] = []  # timestamps of presented packets, decoding order
        keyframes: List[int] = []
        durations: Dict[int, int] = {}
        packets = discarded = 0
        for packet in self._container.demux(stream):
            if packet.size == 0:  # the flush packet at the end of the stream
                continue
            packets += 1
            if packet.is_keyframe and packet.pts is not None:
                keyframes.append(packet.pts)
            if packet.is_discard:  # before the start of an edit list: decoded, never shown
                discarded += 1
                continue
            presented.append(packet.pts)
            if packet.pts is not None:
                durations[packet.pts] = packet.duration or 0
        count = len(presented)
        if count == 0:
            raise VideoDecodeError(self.path, "no video frames")
        ctx = stream.codec_context
        info = VideoInfo(
            num_frames=count,
            width=ctx.width,
            height=ctx.height,
            codec=ctx.name,
            time_base=stream.time_base,
            container=self._container.format.name,
            packets=packets,
            discarded=discarded,
        )
        info.addressing_reason = self._sequential_reason(presented)
        timestamps = [p for p in presented if p is not None]
        if timestamps:
            ordered = sorted(timestamps)
            info.keyframe_pts = sorted(set(keyframes)) or [ordered[0]]
            if stream.time_base is not None:
                span = ordered[-1] + durations.get(ordered[-1], 0) - ordered[0]
                info.duration = float(span * stream.time_base)
                gaps = sorted(b - a for a, b in zip(ordered, ordered[1:]) if b > a) or [span]
                info.max_frame_interval = float(gaps[-1] * stream.time_base)
                info.frame_interval = float(gaps[len(gaps) // 2] * stream.time_base)
        if info.addressing_reason is None:
            info.addressing = "timestamps"
            info.pts = sorted(timestamps)
        else:
            info.addressing = "sequential"
        if not self.allow_seek:
            info.addressing, info.pts = "sequential", None
            info.addressing_reason = info.addressing_reason or "seeking disabled"
        info.declared_duration = self._declared_duration()
        declared_frames = int(stream.frames or 0) - discarded
        self._check_truncation(info, declared_frames if declared_frames > 0 else None)
        return info

    def _sequential_reason(self, presented: Sequence[Optional[int]]) -> Optional[str]:
        """Why the timestamps of these packets cannot address frames (``None``: they can)."""
        if any(p is None for p in presented):
            return "packets without timestamps"
        if len(set(presented)) != len(presented):
            return "repeated timestamps"
        ctx = self._stream.codec_context
        in_decode_order = all(a < b for a, b in zip(presented, presented[1:]))
        if ("avi" in self._container.format.name.split(",") and ctx.name in REORDERING_CODECS
                and bool(ctx.has_b_frames) and in_decode_order):
            # FFmpeg numbers AVI packets in decoding order; with B-frames that is not the order
            # in which frames are shown (packet timestamps 1, 2, 3 come out as 1, 3, 2).
            return "AVI stores no presentation timestamps for B-frames"
        return None

    def _declared_duration(self) -> Optional[float]:
        stream = self._stream
        if stream.duration and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        # WebM/MKV declare only the container's duration; it is this stream's only when alone
        # (with audio it is the longest stream's, which may legitimately outlast the video).
        container = self._container
        if len(container.streams) == 1 and container.duration:
            duration = container.duration
            if "matroska" in container.format.name.split(","):
                # A Matroska duration is where the segment ends, counted from timestamp 0, not
                # from the first frame (which need not be at 0).
                duration -= container.start_time or 0
            return max(0.0, duration / 1_000_000)
        return None

    def _check_truncation(self, info: VideoInfo, declared_frames: Optional[int]) -> None:
        """Refuse a file that ends well before its header says; mark one a little short."""
        tolerance = self.truncation_tolerance
        if declared_frames is not None and declared_frames > info.num_frames:
            missing = declared_frames - info.num_frames
            if missing > max(2, tolerance * declared_frames):
                raise VideoDecodeError(
                    self.path,
                    f"truncated: the header declares {declared_frames} frames, the file holds {info.num_frames}",
                )
            info.expected_frames = declared_frames
            return
        declared, seen = info.declared_duration, info.duration
        if not declared or seen is None or info.num_frames < 2:
            return
        # Two of the longest frame intervals: a last frame without a duration, or a variable frame
        # rate, must not look like truncation.
        missing = declared - seen
        if missing > max(2 * (info.max_frame_interval or 0.0), tolerance * declared):
            raise VideoDecodeError(
                self.path,
                f"truncated: the header declares {declared:.2f} s but the frames end after {seen:.2f} s",
            )
        step = info.frame_interval
        if step and missing > 1.5 * step:  # a few frames short of the declared duration
            info.expected_frames = info.num_frames + int(round(missing / step))

    # -- decoding -----------------------------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        return self.info.num_frames

    @property
    def addressing(self) -> str:
        """How the last read addressed frames (``"sequential"`` after a failed timestamp read)."""
        return self.info.addressing

    def read(self, indices: Sequence[int]) -> Tuple[np.ndarray, int]:
        """Decode frames by index (any order, repeats allowed).

        Returns:
            ``uint8 [len(indices), H, W, 3]`` RGB frames as stored (not rotated), and the
            display-matrix rotation in degrees counter-clockwise (0 when none).

        Raises:
            IndexError: an index outside ``[0, num_frames)``.
            ShortVideoError: the file holds fewer frames than :attr:`num_frames` and some index is
                past its last one (:attr:`num_frames` is lowered to what exists).
            VideoDecodeError: no frame can be decoded.
        """
        if not len(indices):
            raise ValueError("no frame indices to read")
        bad = [i for i in indices if not 0 <= i < self.num_frames]
        if bad:
            raise IndexError(f"{self.path}: frame indices {bad[:5]} outside [0, {self.num_frames})")
        wanted = sorted(set(int(i) for i in indices))
        try:
            decoded = None
            if self.info.addressing == "timestamps":
                decoded = self._read_by_timestamps(wanted)
            if decoded is None:
                decoded = self._read_sequential(wanted)
        except VideoDecodeError:
            raise
        except Exception as error:
            raise VideoDecodeError(self.path, f"decoding failed: {_reason(error)}") from error
        return np.stack([decoded[i] for i in indices]), self._rotation or 0

    def read_clip(self, choose: Callable[[int], Sequence[int]]) -> Tuple[List[int], np.ndarray, int]:
        """Decode the frames ``choose(num_frames)`` picks; when the video turns out shorter,
        ``choose`` is asked again with the number of frames that exist.

        Returns ``(indices, frames, rotation)``. ``choose`` should give the same answer for the
        same count (reset its random source), so that a clip does not depend on how the length
        was found.
        """
        indices = list(choose(self.num_frames))
        try:
            frames, rotation = self.read(indices)
        except ShortVideoError:
            indices = list(choose(self.num_frames))  # num_frames now counts the frames that exist
            frames, rotation = self.read(indices)
        return indices, frames, rotation

    def _to_rgb(self, frame) -> np.ndarray:
        if self._rotation is None:
            self._rotation = int(frame.rotation or 0)
        return frame.to_ndarray(format="rgb24")

    def _frames(self) -> Iterator:
        """Decoded frames from the current position; packets the decoder refuses are counted and
        skipped, so that one corrupt packet does not end the file."""
        errors = self._av.error.FFmpegError
        for packet in self._container.demux(self._stream):
            try:
                frames = packet.decode()
            except errors as error:
                self.decode_errors += 1
                self._last_error = error
                continue
            for frame in frames:
                self.decoded_frames += 1
                yield frame

    def _abandon(self, why: str) -> None:
        """Stop addressing this file by timestamps: reads from now on are sequential."""
        self.fallback_reason = why
        self.info.addressing = "sequential"
        self.info.addressing_reason = f"timestamp read abandoned: {why}"
        self.info.pts = None

    def _read_by_timestamps(self, wanted: List[int]) -> Optional[Dict[int, np.ndarray]]:
        """Decode by timestamp, seeking when a key frame lies between here and the next target.

        Returns ``None`` (after :meth:`_abandon`) when what the decoder outputs is not what the
        index expects; the caller then reads sequentially.
        """
        pts, keyframes = self.info.pts, self.info.keyframe_pts
        position = {value: index for index, value in enumerate(pts)}
        out: Dict[int, np.ndarray] = {}
        targets = set(wanted)
        frames: Optional[Iterator] = None
        last = -1  # position of the last frame taken from the decoder
        for target in wanted:
            k = bisect.bisect_right(keyframes, pts[target]) - 1
            key = keyframes[k] if k >= 0 else None
            if frames is None or (key is not None and last >= 0 and key > pts[last]):
                # Seeking flushes the decoder; decoding restarts at the key frame <= target.
                if key is None or key <= min(pts[0], keyframes[0]):
                    self._open()  # the first key frame: from the start of the file
                else:
                    self._container.seek(key, stream=self._stream, backward=True, any_frame=False)
                    self.seeks += 1
                frames = self._frames()
                # The first frame at or after the key frame must be this one (earlier frames are
                # leading pictures of an open GOP, which need the previous GOP: not taken).
                floor = key if key is not None else pts[0]
                expected, started = bisect.bisect_left(pts, floor), False
            while last < target:
                frame = next(frames, None)
                if frame is None:
                    self._abandon(f"the decoder stopped before frame {target} of {self.num_frames}")
                    return None
                stamp = frame.pts
                if stamp is None:
                    self._abandon("a decoded frame has no timestamp")
                    return None
                if not started:
                    if stamp < floor:
                        continue
                    started = True
                if position.get(stamp) != expected:
                    got = position.get(stamp)
                    self._abandon(
                        f"expected frame {expected} after seeking, the decoder gave "
                        + (f"frame {got}" if got is not None else f"timestamp {stamp}, not in the index")
                    )
                    return None
                last = expected
                expected += 1
                if last in targets:
                    out[last] = self._to_rgb(frame)
        return out

    def _read_sequential(self, wanted: List[int]) -> Dict[int, np.ndarray]:
        """Decode from the start, counting frames in output order, until the last wanted one."""
        self._open()
        out: Dict[int, np.ndarray] = {}
        targets = set(wanted)
        last_wanted = wanted[-1]
        count = 0
        for frame in self._frames():
            if count in targets:
                out[count] = self._to_rgb(frame)
            count += 1
            if count > last_wanted:
                break
        if len(out) < len(targets):  # the frames ended early: count is what exists
            self._found_short(count)
        return out

    def _found_short(self, available: int) -> None:
        info = self.info
        if available == 0:
            why = f" ({_reason(self._last_error)})" if self._last_error is not None else ""
            raise VideoDecodeError(self.path, f"no frame could be decoded{why}")
        expected = max(info.expected_frames or 0, info.num_frames)
        missing = expected - available
        if missing > max(2, self.truncation_tolerance * expected):
            raise VideoDecodeError(
                self.path,
                f"only {available} of {expected} frames could be decoded (corrupt or truncated)",
            )
        info.expected_frames = expected
        info.num_frames = available
        raise ShortVideoError(self.path, available, expected)

    def first_frame_rotation(self) -> int:
        """The display-matrix rotation, from the first decodable frame (decodes one frame)."""
        if self._rotation is not None:
            return self._rotation
        try:
            self._open()
            for frame in self._frames():
                self._rotation = int(frame.rotation or 0)
                return self._rotation
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
