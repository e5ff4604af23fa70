"""A corpus of real-world kinds of video files, written with PyAV, for the decoding tests.

Each valid file carries its frame index in a code strip (:mod:`stzsar.data.synthetic`), so a test
can check which frame a decoder returned. The reference for "frame k" is :func:`reference_frames`:
plain PyAV decoding every frame in order, independent of ``stzsar.data``.

Valid files cover what datasets hold: H.264 with B-frames in AVI (no presentation timestamps) and
MP4, H.264 at an odd size and 29.97 fps, MPEG-4 Part 2 with B-frames in AVI (as XviD/DivX), MJPEG
AVI, VP9 WebM, variable frame rates, a first frame whose timestamp is not 0, an MP4 edit list that
hides the first frames, repeated and missing timestamps, a last GOP of one frame, and an AVI whose
last frames were cut off (decoded short). Broken files: truncated MP4, AVI and WebM, a zero-byte
file and a text file named ``.mp4``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from stzsar.data.synthetic import make_frame


@dataclass
class Case:
    """One corpus file: how to write it and what reading it must give."""

    name: str
    write: Callable[[Path], None]
    #: frames plain sequential PyAV decoding gives (``None`` for broken files)
    frames: Optional[int] = None
    #: code of frame 0 (an edit list hides the first frames)
    first_code: int = 0
    #: "timestamps" or "sequential" (how stzsar addresses it)
    addressing: Optional[str] = None
    #: decoded short: (frames that exist, frames expected)
    short: Optional[tuple] = None
    #: for broken files: a piece of the reason stzsar gives
    reason: Optional[str] = None
    #: codec name as FFmpeg reports it
    codec: str = ""
    tags: List[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return self.reason is None


def encode(path: Path, count: int, width: int = 64, height: int = 48, *, encoder: str = "libx264",
           pix_fmt: str = "yuv420p", rate=25, options: Optional[Dict[str, str]] = None,
           pts_ms: Optional[List[int]] = None, format: Optional[str] = None, bit_rate: Optional[int] = None,
           gop: Optional[int] = None, max_b_frames: Optional[int] = None) -> None:
    """Write ``count`` synthetic frames with one PyAV encoder (``pts_ms``: millisecond timestamps)."""
    import av

    with av.open(str(path), "w", format=format) as container:
        stream = container.add_stream(encoder, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if bit_rate:
            stream.bit_rate = bit_rate
        if gop is not None:
            stream.codec_context.gop_size = gop
        if max_b_frames is not None:
            stream.codec_context.max_b_frames = max_b_frames
        stream.options = dict(options or {})
        if pts_ms is not None:
            stream.time_base = Fraction(1, 1000)
            stream.codec_context.time_base = Fraction(1, 1000)
        for index in range(count):
            frame = av.VideoFrame.from_ndarray(make_frame(index, height, width), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[index], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def remux(source: Path, target: Path, change: Callable) -> None:
    """Copy the video packets of ``source`` into ``target`` (its suffix picks the container),
    after ``change(n, packet)`` edits the ``n``-th one."""
    import av

    with av.open(str(source)) as src, av.open(str(target), "w") as out:
        stream = src.streams.video[0]
        copy = out.add_stream_from_template(stream)
        for number, packet in enumerate(p for p in src.demux(stream) if p.size):
            change(number, packet)
            packet.stream = copy
            out.mux(packet)


def x264(keyint: int = 12, bframes: int = 3) -> Dict[str, str]:
    """libx264 settings with B-frames (as its default preset), key frames every ``keyint``."""
    return {"preset": "medium", "crf": "20",
            "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes={bframes}"}


def cut(source_case: str, keep: float) -> Callable[[Path], None]:
    """A writer that copies the corpus file ``source_case`` keeping the first ``keep`` of its bytes."""

    def write(path: Path) -> None:
        data = (path.parent / source_case).read_bytes()
        path.write_bytes(data[: int(len(data) * keep)] if keep < 1 else data[: len(data) + int(keep)])

    return write


def drop_tail(source_case: str, drop: int) -> Callable[[Path], None]:
    """A writer that copies ``source_case`` less its last ``drop`` bytes (the end of an AVI)."""

    def write(path: Path) -> None:
        data = (path.parent / source_case).read_bytes()
        path.write_bytes(data[:-drop])

    return write


def _repeated(path: Path, encoder: str) -> None:
    source = path.with_name(path.stem + "_src.mkv")
    encode(source, 30, encoder=encoder, options={"preset": "ultrafast"} if encoder == "libx264" else
           {"deadline": "realtime", "cpu-used": "8"}, gop=10)

    def change(number, packet):  # two frames per timestamp
        packet.pts = packet.dts = (number // 2) * 40

    remux(source, path, change)
    source.unlink()


CASES: List[Case] = [
    Case("h264_bframes.avi", lambda p: encode(p, 40, options=x264()), 40, addressing="sequential",
         codec="h264", tags=["bframes", "avi"]),
    Case("h264_bframes.mp4", lambda p: encode(p, 40, options=x264()), 40, addressing="timestamps",
         codec="h264", tags=["bframes", "seek"]),
    Case("h264_97x55_29.97.mp4", lambda p: encode(p, 45, 97, 55, pix_fmt="yuv444p", rate=Fraction(30000, 1001),
                                                 options=x264(keyint=15)), 45, addressing="timestamps",
         codec="h264", tags=["odd"]),
    Case("h264_97x55_29.97.avi", lambda p: encode(p, 45, 97, 55, pix_fmt="yuv444p", rate=Fraction(30000, 1001),
                                                 options=x264(keyint=15)), 45, addressing="sequential",
         codec="h264", tags=["odd", "avi"]),
    Case("mpeg4_bframes.avi", lambda p: encode(p, 40, encoder="mpeg4", bit_rate=400_000, gop=12, max_b_frames=2),
         40, addressing="timestamps", codec="mpeg4", tags=["bframes", "avi"]),
    Case("mjpeg.avi", lambda p: encode(p, 20, encoder="mjpeg", pix_fmt="yuvj420p"), 20, addressing="timestamps",
         codec="mjpeg", tags=["dali-cpu"]),
    Case("vp9.webm", lambda p: encode(p, 40, 63, 47, encoder="libvpx-vp9", gop=10,
                                      options={"deadline": "realtime", "cpu-used": "8", "crf": "20", "b": "0"}),
         40, addressing="timestamps", codec="vp9", tags=["dali-cpu", "seek", "odd"]),
    Case("vfr.mp4", lambda p: encode(p, 40, options=x264(keyint=10),
                                     pts_ms=[sum([40, 10, 80, 33][i % 4] for i in range(n)) for n in range(40)]),
         40, addressing="timestamps", codec="h264", tags=["vfr", "bframes"]),
    Case("vfr.webm", lambda p: encode(p, 40, encoder="libvpx-vp9", gop=10,
                                      options={"deadline": "realtime", "cpu-used": "8"},
                                      pts_ms=[sum([40, 10, 80, 33][i % 4] for i in range(n)) for n in range(40)]),
         40, addressing="timestamps", codec="vp9", tags=["vfr", "dali-cpu"]),
    Case("start_1s.mp4", lambda p: encode(p, 30, options=x264(keyint=10), pts_ms=[1000 + 40 * i for i in range(30)]),
         30, addressing="timestamps", codec="h264", tags=["start", "bframes"]),
    Case("start_1s.webm", lambda p: encode(p, 30, encoder="libvpx-vp9", gop=10,
                                           options={"deadline": "realtime", "cpu-used": "8"},
                                           pts_ms=[1000 + 40 * i for i in range(30)]),
         30, addressing="timestamps", codec="vp9", tags=["start", "dali-cpu"]),
    # Timestamps from -120 ms: the MP4 muxer writes an edit list that starts at 0, and the three
    # frames before it are decoded (they are needed) but not shown.
    Case("edit_list.mp4", lambda p: encode(p, 40, options=x264(keyint=10), pts_ms=[40 * (i - 3) for i in range(40)]),
         37, first_code=3, addressing="timestamps", codec="h264", tags=["edit", "bframes"]),
    Case("edit_list_vp9.mp4", lambda p: encode(p, 40, encoder="libvpx-vp9", gop=10,
                                               options={"deadline": "realtime", "cpu-used": "8"},
                                               pts_ms=[40 * (i - 3) for i in range(40)]),
         37, first_code=3, addressing="timestamps", codec="vp9", tags=["edit", "dali-cpu"]),
    Case("repeated_ts.mkv", lambda p: _repeated(p, "libx264"), 30, addressing="sequential", codec="h264",
         tags=["repeated"]),
    Case("repeated_ts_vp9.mkv", lambda p: _repeated(p, "libvpx-vp9"), 30, addressing="sequential", codec="vp9",
         tags=["repeated", "dali-cpu"]),
    Case("no_timestamps.h264", lambda p: encode(p, 30, options=x264(), format="h264"), 30, addressing="sequential",
         codec="h264", tags=["missing"]),
    # 37 frames, a key frame every 12: the last GOP is one frame.
    Case("last_gop_1.avi", lambda p: encode(p, 37, options=x264()), 37, addressing="sequential", codec="h264",
         tags=["bframes", "avi"]),
    Case("last_gop_1.mp4", lambda p: encode(p, 37, options=x264()), 37, addressing="timestamps", codec="h264",
         tags=["bframes"]),
]

# Files made from others (written after them, in the same folder).
DERIVED: List[Case] = [
    # The end of an AVI (its index and the last frame's data) cut off: decoded short.
    Case("cut_end.avi", drop_tail("h264_bframes.avi", 1200), addressing="sequential", codec="h264",
         tags=["short"]),
    # A WebM whose last three frames were cut off (its header still declares their duration).
    Case("cut_end.webm", drop_tail("vp9.webm", 800), addressing="timestamps", codec="vp9", tags=["short", "dali-cpu"]),
    Case("truncated.mp4", cut("h264_bframes.mp4", 0.6), reason="truncated: the file ends inside its 'mdat' box"),
    Case("truncated.avi", cut("h264_bframes.avi", 0.8), reason="truncated: the header declares 40 frames"),
    Case("truncated_header.avi", cut("h264_bframes.avi", 0.3), reason="truncated: the AVI header declares"),
    Case("truncated.webm", cut("vp9.webm", 0.5), reason="truncated: the header declares"),
    Case("empty.mp4", lambda p: p.write_bytes(b""), reason="empty file (0 bytes)"),
    Case("text.mp4", lambda p: p.write_text("this is not a video\n" * 20), reason="not a readable video"),
]

ALL = CASES + DERIVED
BY_NAME = {case.name: case for case in ALL}


def write_corpus(folder: Path) -> Dict[str, Path]:
    """Write every corpus file into ``folder``; returns name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    for case in ALL:
        path = folder / case.name
        case.write(path)
        made[case.name] = path
    return made


def reference_frames(path: Path) -> List[np.ndarray]:
    """Every frame of ``path`` in order, decoded with plain PyAV (the reference)."""
    import av

    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
