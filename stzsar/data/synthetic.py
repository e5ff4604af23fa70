"""Small synthetic videos with a frame index that survives compression, for tests and benchmarks.

Each frame carries its own index as a binary code in a strip across the top (``CODE_BITS`` black or
white blocks, most significant bit first), above a coloured background with a moving square. The
blocks are large and saturated, so the code reads back exactly after lossy H.264/VP9/MJPEG
encoding; :func:`read_frame_code` recovers it from a decoded RGB frame. A test can then check which
frames a decoder returned without trusting the decoder's own bookkeeping.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np

PathLike = Union[str, Path]

#: Number of blocks in the index code (frames 0 .. 2**CODE_BITS - 1 are distinguishable).
CODE_BITS = 8

#: Codec name -> (FFmpeg encoder, pixel format, file suffix).
CODECS = {
    "h264": ("libx264", "yuv420p", ".mp4"),
    "vp9": ("libvpx-vp9", "yuv420p", ".webm"),
    "mjpeg": ("mjpeg", "yuvj420p", ".avi"),
}


def code_strip_height(height: int) -> int:
    """Rows at the top of a frame that hold the index code."""
    return max(8, height // 4)


def make_frame(index: int, height: int, width: int) -> np.ndarray:
    """The RGB frame ``index`` of a synthetic video, ``uint8 [height, width, 3]``."""
    if width < CODE_BITS * 4 or height < 24:
        raise ValueError(f"synthetic frames need at least {CODE_BITS * 4}x24 pixels, got {width}x{height}")
    frame = np.empty((height, width, 3), np.uint8)
    # Background: a smooth gradient whose hue drifts with time, so frames differ everywhere.
    ys = np.linspace(0, 1, height)[:, None]
    xs = np.linspace(0, 1, width)[None, :]
    frame[..., 0] = (40 + 80 * xs + 3 * index) % 200
    frame[..., 1] = 60 + 100 * ys
    frame[..., 2] = 120 - 60 * xs * ys
    # A moving square below the strip (the "action").
    strip = code_strip_height(height)
    side = max(4, min(height - strip, width) // 3)
    x0 = (index * 3) % max(1, width - side)
    y0 = strip + (index * 2) % max(1, height - strip - side)
    frame[y0 : y0 + side, x0 : x0 + side] = (250, 220, 30)
    # The index code: CODE_BITS blocks, white for 1, black for 0, most significant bit first.
    block = width // CODE_BITS
    code = index % (1 << CODE_BITS)
    for bit in range(CODE_BITS):
        on = (code >> (CODE_BITS - 1 - bit)) & 1
        frame[:strip, bit * block : (bit + 1) * block] = 255 if on else 0
    return frame


def read_frame_code(frame: np.ndarray) -> int:
    """The index coded in a decoded synthetic frame (``uint8 [H, W, 3]``, RGB, upright)."""
    height, width = frame.shape[:2]
    strip = code_strip_height(height)
    block = width // CODE_BITS
    code = 0
    for bit in range(CODE_BITS):
        # The block's inner part only: codecs smear the block edges.
        inner = frame[1 : strip - 1, bit * block + 1 : (bit + 1) * block - 1]
        code = (code << 1) | int(float(inner.mean()) > 127.5)
    return code


def write_video(
    path: PathLike,
    num_frames: int,
    width: int = 64,
    height: int = 48,
    *,
    codec: str = "h264",
    fps: int = 25,
    frame_durations_ms: Optional[Sequence[int]] = None,
    rotation: Optional[int] = None,
    gop: Optional[int] = None,
) -> List[np.ndarray]:
    """Write a synthetic video with PyAV and return the RGB frames that went in.

    Args:
        path: output file (its suffix picks the container).
        num_frames: frames to write.
        width, height: frame size. H.264 with 4:2:0 chroma needs even sizes; VP9 takes odd ones.
        codec: ``"h264"``, ``"vp9"`` or ``"mjpeg"``.
        fps: nominal frame rate (constant frame rate).
        frame_durations_ms: makes a variable-frame-rate video: frame ``i`` lasts
            ``frame_durations_ms[i % len(...)]`` milliseconds (millisecond timestamps).
        rotation: display-matrix rotation written to the container, in degrees counter-clockwise
            (as :attr:`av.VideoFrame.rotation` reads it back); the stored pixels stay unrotated.
        gop: key-frame interval (small values exercise seeking).
    """
    import av

    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; expected one of {sorted(CODECS)}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    encoder, pix_fmt, _ = CODECS[codec]
    frames = [make_frame(i, height, width) for i in range(num_frames)]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        options = {}
        if codec == "h264":
            options.update({"preset": "ultrafast", "crf": "18"})
        elif codec == "vp9":
            options.update({"deadline": "realtime", "cpu-used": "8", "crf": "20", "b": "0"})
        if gop is not None:
            stream.codec_context.gop_size = gop
            if codec == "h264":
                options["x264-params"] = f"keyint={gop}:min-keyint={gop}:scenecut=0"
        stream.options = options
        if rotation is not None:
            stream.set_display_rotation(rotation)
        if frame_durations_ms is not None:
            # Millisecond time base on both the stream and the encoder, so irregular pts survive.
            stream.time_base = Fraction(1, 1000)
            stream.codec_context.time_base = Fraction(1, 1000)
        pts = 0
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if frame_durations_ms is not None:
                frame.pts, frame.time_base = pts, Fraction(1, 1000)
                pts += int(frame_durations_ms[index % len(frame_durations_ms)])
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return frames
