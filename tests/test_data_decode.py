"""Decoding: PyAV frames by index (H.264, VP9, MJPEG, VFR, rotation, short clips, bad files) and
DALI (CPU, VP9) against PyAV.

The synthetic videos carry each frame's index as a binary code (stzsar.data.synthetic), so a test
knows which frame a decoder returned without trusting the decoder's bookkeeping.
"""

import numpy as np
import pytest
import torch

from stzsar.data.decode_pyav import PyAVVideo, probe_video, read_frames
from stzsar.data.errors import VideoDecodeError
from stzsar.data.sampling import middle_indices
from stzsar.data.synthetic import read_frame_code, write_video
from stzsar.data.transforms import orient

CASES = {
    # name: (codec, frames, width, height, extra options)
    "h264.mp4": ("h264", 30, 64, 48, {}),
    "h264_66x50.mp4": ("h264", 24, 66, 50, {}),  # not a multiple of 16 (H.264 4:2:0 needs even sizes)
    "vp9_odd.webm": ("vp9", 30, 63, 47, {}),  # odd sizes
    "mjpeg.avi": ("mjpeg", 20, 64, 48, {}),
    "gop5.mp4": ("h264", 40, 64, 48, {"gop": 5}),  # key frames every 5: seeking
    "gop5.webm": ("vp9", 40, 64, 48, {"gop": 5}),
    "vfr.mp4": ("h264", 30, 64, 48, {"frame_durations_ms": [40, 10, 80, 33]}),
    "vfr.webm": ("vp9", 30, 64, 48, {"frame_durations_ms": [40, 10, 80, 33]}),
    "one.mp4": ("h264", 1, 64, 48, {}),
    "three.webm": ("vp9", 3, 64, 48, {}),
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    made = {}
    for name, (codec, count, width, height, options) in CASES.items():
        frames = write_video(folder / name, count, width, height, codec=codec, **options)
        made[name] = (folder / name, frames)
    return made


@pytest.mark.parametrize("name", sorted(CASES))
def test_frames_come_back_by_index(videos, name):
    path, written = videos[name]
    count = len(written)
    with PyAVVideo(path) as video:
        assert video.num_frames == count
        indices = [count - 1, 0, count // 2, count // 2, min(3, count - 1), count - 1]
        frames, rotation = video.read(indices)
    assert rotation == 0
    assert frames.shape == (len(indices), written[0].shape[0], written[0].shape[1], 3) and frames.dtype == np.uint8
    assert [read_frame_code(f) for f in frames] == indices
    # Lossy codecs change pixels a little, never a frame for another.
    error = np.abs(frames.astype(np.float64) - np.stack([written[i] for i in indices])).mean()
    assert error < 8, error


def test_every_frame_of_a_variable_frame_rate_video(videos):
    path, written = videos["vfr.mp4"]
    info, _ = probe_video(path)
    # The count is exact although the nominal rate times the duration is not.
    assert info.num_frames == len(written) == 30
    frames, _ = read_frames(path, list(range(30)))
    assert [read_frame_code(f) for f in frames] == list(range(30))


def test_sampled_test_clips_of_short_videos_repeat_frames(videos):
    for name, expected in (("one.mp4", [0] * 8), ("three.webm", [0, 0, 0, 1, 1, 2, 2, 2])):
        path, _ = videos[name]
        with PyAVVideo(path) as video:
            indices = middle_indices(video.num_frames, 8)
            frames, _ = video.read(indices)
        assert [read_frame_code(f) for f in frames] == expected


def test_seeking_decodes_less_than_everything(videos):
    path, _ = videos["gop5.mp4"]
    with PyAVVideo(path) as video:
        frames, _ = video.read([37, 21])
        assert video.info.addressing == "timestamps" and video.seeks == 2
        decoded = video.decoded_frames
    assert [read_frame_code(f) for f in frames] == [37, 21]
    # Key frame 20 to frame 21, then key frame 35 to frame 37: about 5 frames, not 38
    # (the decoder may run a few frames ahead of its output).
    assert decoded <= 10, decoded


def test_rotation_metadata_is_read_and_applied(tmp_path):
    path = tmp_path / "portrait.mp4"
    written = write_video(path, 6, 64, 48, codec="h264", rotation=-90)
    frames, rotation = read_frames(path, [0, 5])
    assert rotation == -90
    upright = orient(torch.from_numpy(frames), rotation).numpy()
    assert upright.shape == (2, 64, 48, 3)  # displayed as portrait
    # -90 degrees counter-clockwise = a quarter turn clockwise (numpy's rot90 with k=-1).
    expected = np.rot90(np.stack([written[0], written[5]]), -1, axes=(1, 2))
    assert np.abs(upright.astype(np.float64) - expected).mean() < 8


# -- bad files --------------------------------------------------------------------------------------------
def test_missing_empty_and_text_files_are_refused(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 20)
    cases = {
        tmp_path / "missing.mp4": "file not found",
        tmp_path / "empty.mp4": r"empty file \(0 bytes\)",
        tmp_path / "text.mp4": "not a readable video",
        tmp_path: "not a regular file",
    }
    for path, reason in cases.items():
        with pytest.raises(VideoDecodeError, match=reason) as caught:
            PyAVVideo(path)
        assert caught.value.path == str(path)


@pytest.mark.parametrize("name,keep", [("h264.mp4", 0.6), ("vp9_odd.webm", 0.5), ("mjpeg.avi", 0.5)])
def test_truncated_files_are_refused(videos, tmp_path, name, keep):
    path, _ = videos[name]
    data = path.read_bytes()
    truncated = tmp_path / f"truncated_{name}"
    truncated.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(VideoDecodeError) as caught:
        with PyAVVideo(truncated) as video:  # an MP4 without its index fails here already
            video.read(list(range(video.num_frames)))
    assert caught.value.path == str(truncated)
    assert any(word in caught.value.reason for word in ("truncated", "not a readable video", "decoding failed"))


def test_an_audio_only_file_has_no_video_stream(tmp_path):
    import av

    path = tmp_path / "audio.mka"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(VideoDecodeError, match="no video stream"):
        PyAVVideo(path)


def test_out_of_range_indices_are_an_error(videos):
    path, _ = videos["three.webm"]
    with PyAVVideo(path) as video, pytest.raises(IndexError, match=r"\[3\] outside \[0, 3\)"):
        video.read([0, 3])


def test_decode_error_survives_pickling():
    import pickle

    error = pickle.loads(pickle.dumps(VideoDecodeError("/a/b.mp4", "empty file (0 bytes)")))
    assert (error.path, error.reason, str(error)) == ("/a/b.mp4", "empty file (0 bytes)", "/a/b.mp4: empty file (0 bytes)")


# -- DALI ---------------------------------------------------------------------------------------------------
def _dali_or_skip():
    from stzsar.data.decode_dali import dali_status

    ok, why = dali_status()
    if not ok:
        pytest.skip(f"DALI is not usable here: {why}")


@pytest.mark.parametrize("name", ["vp9_odd.webm", "gop5.webm", "vfr.webm", "three.webm"])
def test_dali_cpu_frames_equal_pyav_frames(videos, name):
    _dali_or_skip()
    from stzsar.data.decode_dali import DaliDecoder

    path, written = videos[name]
    count = len(written)
    indices = [count - 1, 0, count // 2, count // 2] if count > 1 else [0, 0]
    reference, _ = read_frames(path, indices)
    (dali,) = DaliDecoder("cpu", batch_size=2, num_threads=1).decode([(np.fromfile(path, np.uint8), indices)])
    dali = dali.numpy()
    assert dali.shape == reference.shape
    assert [read_frame_code(f) for f in dali] == indices
    # Both decode the same VP9 bitstream (VP9 decoding is exact), so they agree on the YUV planes;
    # they differ only in the YUV -> RGB conversion (FFmpeg's swscale in PyAV, DALI's own kernel):
    # (1) rounding: DALI comes out about one grey level brighter on average (measured: +1.0);
    # (2) chroma upsampling: different filters, which differ at sharp colour edges (the code
    #     blocks here) by up to ~90 in single RGB values.
    # Luma recomputed from RGB (BT.601 weights) cancels the chroma terms, so it isolates (1):
    # it must agree to 1.5 grey levels on average. RGB as a whole to 3 (edges included). A wrong
    # frame is caught by the index codes above.
    luma = np.array([0.299, 0.587, 0.114])
    luma_diff = np.abs(dali.astype(np.float64) @ luma - reference.astype(np.float64) @ luma)
    assert luma_diff.mean() < 1.5, luma_diff.mean()
    assert np.percentile(luma_diff, 99) < 4, np.percentile(luma_diff, 99)
    rgb_diff = np.abs(dali.astype(np.float64) - reference.astype(np.float64))
    assert rgb_diff.mean() < 3.0, rgb_diff.mean()


def test_dali_decoder_rejects_indices_past_the_end(videos):
    _dali_or_skip()
    from stzsar.data.decode_dali import DaliDecoder

    path, _ = videos["three.webm"]
    decoder = DaliDecoder("cpu", batch_size=1, num_threads=1)
    with pytest.raises(Exception):
        decoder.decode([(np.fromfile(path, np.uint8), [0, 7])])
    # The decoder rebuilds its pipeline after an error.
    (frames,) = decoder.decode([(np.fromfile(path, np.uint8), [2, 0])])
    assert [read_frame_code(f) for f in frames.numpy()] == [2, 0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the DALI GPU (NVDEC) path needs a CUDA device")
def test_dali_gpu_frames_equal_pyav_frames(tmp_path):
    _dali_or_skip()
    from stzsar.data.decode_dali import DaliDecoder

    decoder = DaliDecoder("gpu", batch_size=2, num_threads=1)
    # NVDEC has minimum frame sizes (VP9: 128 x 128), hence larger videos than elsewhere.
    for name, codec in (("gpu.mp4", "h264"), ("gpu.webm", "vp9")):
        written = write_video(tmp_path / name, 24, 160, 128, codec=codec, gop=6)
        indices = [23, 0, 5, 5, 13]
        reference, _ = read_frames(tmp_path / name, indices)
        (frames,) = decoder.decode([(np.fromfile(tmp_path / name, np.uint8), indices)])
        assert frames.is_cuda and frames.dtype == torch.uint8
        frames = frames.cpu().numpy()
        assert frames.shape == reference.shape
        assert [read_frame_code(f) for f in frames] == indices
        # Same tolerances as on the CPU, for the same reasons (only the RGB conversion differs).
        luma = np.array([0.299, 0.587, 0.114])
        luma_diff = np.abs(frames.astype(np.float64) @ luma - reference.astype(np.float64) @ luma)
        assert luma_diff.mean() < 1.5, (name, luma_diff.mean())
        assert np.abs(frames.astype(np.float64) - reference).mean() < 3.0, name
