"""Real-world kinds of video files (tests/video_corpus.py), checked frame by frame against plain
PyAV decoding every frame in order; broken files refused with the right reason; short files used;
the same frames from DALI (CPU here; GPU where there is one) and in every run.

The reference (``reference_frames``) uses nothing of ``stzsar.data``: it is what PyAV gives when
asked for every frame of the file in order.
"""

import json
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from stzsar.data import ClipSpec, VideoSplit, build_loader
from stzsar.data.dataset import check_video, clip_chooser
from stzsar.data.decode_pyav import PyAVVideo
from stzsar.data.errors import ShortVideoError, VideoDecodeError
from stzsar.data.sampling import middle_indices
from stzsar.data.synthetic import read_frame_code

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from video_corpus import BY_NAME, CASES, DERIVED, reference_frames, write_corpus  # noqa: E402

VALID = [case.name for case in CASES]
BROKEN = [case.name for case in DERIVED if not case.valid]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def references(corpus):
    return {name: reference_frames(corpus[name]) for name in VALID}


def tolerant_reference(path):
    """Plain PyAV, packet by packet, passing over packets the decoder refuses (a file cut inside
    its last frame makes ``container.decode`` raise there)."""
    import av

    frames = []
    with av.open(str(path)) as container:
        for packet in container.demux(container.streams.video[0]):
            try:
                frames += [frame.to_ndarray(format="rgb24") for frame in packet.decode()]
            except av.error.InvalidDataError:
                continue
    return frames


def same(frames, reference, indices):
    return all(np.array_equal(frame, reference[i]) for frame, i in zip(frames, indices))


# -- every valid file, frame by frame ------------------------------------------------------------------
@pytest.mark.parametrize("name", VALID)
def test_every_frame_equals_plain_pyav_sequential_decoding(corpus, references, name):
    case, reference = BY_NAME[name], references[name]
    # The reference itself shows frames in presentation order (the codes count up).
    assert len(reference) == case.frames
    assert [read_frame_code(f) for f in reference] == [case.first_code + k for k in range(case.frames)]
    with PyAVVideo(corpus[name]) as video:
        assert video.num_frames == case.frames
        assert video.info.addressing == case.addressing, video.info.addressing_reason
        assert video.info.codec == case.codec
        frames, _ = video.read(list(range(video.num_frames)))
        assert not video.info.short and video.fallback_reason is None
    assert same(frames, reference, range(case.frames))


@pytest.mark.parametrize("name", VALID)
def test_frames_in_any_order_equal_the_reference(corpus, references, name):
    reference = references[name]
    rng = random.Random(name)
    for _ in range(4):
        indices = [rng.randrange(len(reference)) for _ in range(7)] + [len(reference) - 1, 0]
        with PyAVVideo(corpus[name]) as video:
            frames, _ = video.read(indices)
            assert video.fallback_reason is None, video.fallback_reason
        assert same(frames, reference, indices), indices


@pytest.mark.parametrize("name", VALID)
def test_test_and_training_clips_are_the_same_in_every_run(corpus, references, name):
    spec = ClipSpec(num_frames=8)
    reference = references[name]
    for training in (False, True):
        picks = []
        for _ in range(2):
            rng = random.Random("clip:3:0:7") if training else None
            with PyAVVideo(corpus[name]) as video:
                indices, frames, _ = video.read_clip(clip_chooser(spec, training, rng))
            assert same(frames, reference, indices)
            picks.append(indices)
        assert picks[0] == picks[1]
        if not training:
            assert picks[0] == middle_indices(len(reference), 8)


@pytest.mark.parametrize("name", [c.name for c in CASES if "seek" in c.tags or c.addressing == "timestamps"])
def test_timestamp_files_are_read_with_seeks(corpus, references, name):
    reference = references[name]
    count = len(reference)
    with PyAVVideo(corpus[name]) as video:
        frames, _ = video.read([count - 2, 1])
        keys = len(video.info.keyframe_pts)
        if keys > 1:  # a key frame before the last wanted frame: no need to decode from the start
            assert video.seeks >= 1
            assert video.decoded_frames < count, (video.decoded_frames, count)
    assert same(frames, reference, [count - 2, 1])


def test_sequential_files_decode_only_up_to_the_last_wanted_frame(corpus, references):
    with PyAVVideo(corpus["h264_bframes.avi"]) as video:
        assert video.info.addressing_reason == "AVI stores no presentation timestamps for B-frames"
        frames, _ = video.read([9, 3])
        # the decoder runs a few frames ahead of its output (B-frame reordering), not to the end
        assert video.decoded_frames <= 16 and video.seeks == 0
    assert same(frames, references["h264_bframes.avi"], [9, 3])


def test_a_seek_that_lands_wrong_falls_back_to_a_sequential_read(corpus, references):
    """A container whose seek lands on a later key frame than asked: the frames that come out are
    not the expected ones, so the read starts again from the beginning, counting frames."""
    reference = references["h264_bframes.mp4"]

    class LandsLate:  # the PyAV container is a C type: wrap it
        def __init__(self, inner, keys):
            self.inner, self.keys = inner, keys

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def seek(self, offset, **kwargs):
            later = [k for k in self.keys if k > offset]
            return self.inner.seek(later[0] if later else offset, **kwargs)

    with PyAVVideo(corpus["h264_bframes.mp4"]) as video:
        video._container = LandsLate(video._container, video.info.keyframe_pts)
        frames, _ = video.read([14, 27])
        assert video.fallback_reason.startswith("expected frame 12 after seeking, the decoder gave frame 24")
        assert video.info.addressing == "sequential"
        again, _ = video.read([30, 2])  # later reads stay sequential
    assert same(frames, reference, [14, 27]) and same(again, reference, [30, 2])


def test_timestamps_in_decoding_order_are_caught(corpus, references):
    """The reported failure: H.264 with B-frames in AVI, read by the packets' timestamps. With the
    AVI rule switched off the timestamp read finds the frames out of order and falls back."""
    reference = references["h264_bframes.avi"]
    with PyAVVideo(corpus["h264_bframes.avi"]) as video:
        video.info.addressing, video.info.addressing_reason = "timestamps", None
        video.info.pts = sorted(range(1, 41))
        video.info.keyframe_pts = [1, 13, 25, 37]
        frames, _ = video.read(list(range(40)))
        assert "the decoder gave" in video.fallback_reason
    assert same(frames, reference, range(40))


# -- short and broken files ------------------------------------------------------------------------------
def test_a_file_cut_inside_its_last_frames_is_decoded_short(corpus):
    path = corpus["cut_end.avi"]
    reference = tolerant_reference(path)
    assert 30 < len(reference) < 40
    with PyAVVideo(path) as video:
        assert video.num_frames in (len(reference), len(reference) + 1)  # packets present, one cut
        with pytest.raises(ShortVideoError) as caught:
            video.read(list(range(video.num_frames)))
        assert caught.value.available == video.num_frames == len(reference)
        assert video.info.short_reason() == f"decoded short ({len(reference)} of 40 frames)"
        frames, _ = video.read(list(range(video.num_frames)))
    assert same(frames, reference, range(len(reference)))
    # The sampler picks its frames among those that exist.
    with PyAVVideo(path) as video:
        indices, frames, _ = video.read_clip(lambda n: middle_indices(n, 8) + [n - 1])
    assert indices == middle_indices(len(reference), 8) + [len(reference) - 1]
    assert same(frames, reference, indices)


def test_a_webm_cut_short_of_its_declared_duration_is_decoded_short(corpus):
    path = corpus["cut_end.webm"]
    reference = reference_frames(path)
    with PyAVVideo(path) as video:
        assert video.num_frames == len(reference) == 37
        assert video.info.short_reason() == "decoded short (37 of 40 frames)"
        frames, _ = video.read(list(range(37)))
    assert same(frames, reference, range(37))


def test_a_short_video_is_used_and_reported_by_the_loader(corpus):
    root = corpus["cut_end.avi"].parent
    split = VideoSplit("s", root, ["a"], [(corpus["cut_end.avi"], 0), (corpus["vp9.webm"], 0)])
    loader = build_loader(split, ClipSpec(num_frames=4, size=32), batch_size=2)
    (batch,) = list(loader)
    assert batch["index"].tolist() == [0, 1] and not batch["skipped"]
    assert [s.index for s in batch["short"]] == [0]
    report = loader.report()
    assert report["skipped"] == 0 and report["short"] == 1
    assert report["short_videos"][0]["expected"] == 40
    assert check_video(split, 0).status == "short" and check_video(split, 0).usable


def test_predict_and_explain_load_a_short_video(corpus):
    """stzsar predict/explain read one video through load_video: a short one gives a whole clip,
    its frames those of plain PyAV at the middles of T segments of the frames that exist."""
    from stzsar.data.dataset import video_from_frames
    from stzsar.eval.loading import load_video

    path = corpus["cut_end.avi"]
    reference = tolerant_reference(path)
    spec = ClipSpec(num_frames=40, size=32, short_side=32)  # 40 frames: the clip needs the last ones
    clip, total = load_video(path, spec)
    assert total == len(reference) and clip.shape == (1, 40, 3, 32, 32)
    indices = middle_indices(len(reference), 40)
    frames = np.stack([reference[i] for i in indices])
    want = video_from_frames(torch.from_numpy(frames), 0, spec, training=False).view(clip.shape)
    assert torch.equal(clip, want)


@pytest.mark.parametrize("name", BROKEN)
def test_broken_files_are_refused_with_the_reason(corpus, name):
    with pytest.raises(VideoDecodeError) as caught:
        with PyAVVideo(corpus[name]) as video:
            video.read(list(range(video.num_frames)))
    assert caught.value.path == str(corpus[name])
    assert BY_NAME[name].reason in caught.value.reason, caught.value.reason


def test_data_inspect_decode_passes_every_valid_file_and_names_each_broken_one(corpus, tmp_path, capsys):
    from stzsar.cli.main import main

    root = corpus["vp9.webm"].parent
    (tmp_path / "labels.csv").write_text("id,name\n0,clip\n")
    valid = VALID + ["cut_end.avi", "cut_end.webm"]
    (tmp_path / "valid.txt").write_text("".join(f"{name} 0\n" for name in valid))
    args = ["data", "inspect", "--format", "bike", "--labels", str(tmp_path / "labels.csv"), "--root", str(root),
            "--decode", "--json"]
    assert main(args + ["--list", str(tmp_path / "valid.txt")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["unreadable"] == 0 and report["videos"] == len(valid)
    assert [item["path"].rsplit("/", 1)[1] for item in report["short_files"]] == ["cut_end.avi", "cut_end.webm"]
    (tmp_path / "broken.txt").write_text("".join(f"{name} 0\n" for name in BROKEN + ["vp9.webm"]))
    assert main(args + ["--list", str(tmp_path / "broken.txt")]) == 1
    report = json.loads(capsys.readouterr().out)
    reasons = {item["path"].rsplit("/", 1)[1]: item["reason"] for item in report["unreadable_files"]}
    assert sorted(reasons) == sorted(BROKEN)
    for name in BROKEN:
        assert BY_NAME[name].reason in reasons[name]


# -- DALI: the same frames -----------------------------------------------------------------------------------
def _dali_or_skip():
    from stzsar.data.decode_dali import dali_status

    ok, why = dali_status()
    if not ok:
        pytest.skip(f"DALI is not usable here: {why}")


DALI_CPU = [c.name for c in CASES if "dali-cpu" in c.tags and c.addressing == "timestamps"]
DALI_CPU_SHORT = ["cut_end.webm"]


@pytest.mark.parametrize("name", DALI_CPU + DALI_CPU_SHORT)
def test_dali_cpu_returns_the_reference_frames(corpus, references, name):
    _dali_or_skip()
    from stzsar.data.decode_dali import DaliDecoder

    reference = references[name] if name in references else reference_frames(corpus[name])
    count = len(reference)
    decoder = DaliDecoder("cpu", batch_size=1, num_threads=1)
    data = np.fromfile(corpus[name], np.uint8)
    for indices in (list(range(count)), [count - 1, 0, count // 2, count // 2, 5], middle_indices(count, 8)):
        (frames,) = decoder.decode([(data, indices)])
        frames = frames.numpy()
        assert [read_frame_code(f) for f in frames] == [read_frame_code(reference[i]) for i in indices]
        # Same decoded frames; the RGB conversions differ (see test_data_decode): luma within 1.5.
        luma = np.array([0.299, 0.587, 0.114])
        diff = np.abs(frames.astype(np.float64) @ luma - np.stack([reference[i] for i in indices]) @ luma)
        assert diff.mean() < 1.5, (name, diff.mean())


def test_dali_loader_gives_the_pyav_loaders_frames_and_routes_what_it_cannot_address(corpus):
    _dali_or_skip()
    root = corpus["vp9.webm"].parent
    names = DALI_CPU + ["repeated_ts_vp9.mkv", "h264_bframes.avi", "cut_end.avi", "cut_end.webm", "empty.mp4"]
    split = VideoSplit("corpus", root, ["a"], [(corpus[name], 0) for name in names])
    for training in (False, True):
        spec = ClipSpec(num_frames=4, size=32)
        pyav_loader = build_loader(split, spec, batch_size=4, training=training, seed=5, shuffle=False)
        dali_loader = build_loader(split, spec, batch_size=4, training=training, seed=5, shuffle=False,
                                   backend="dali", device="cpu", num_threads=1)
        pyav, dali = list(pyav_loader), list(dali_loader)
        assert [b["index"].tolist() for b in dali] == [b["index"].tolist() for b in pyav]
        for a, b in zip(pyav, dali):
            assert (a["video"] - b["video"]).abs().mean() < 0.05
        reasons = dali_loader.report()["fallback_reasons"]
        assert reasons == {
            "frames are addressed in decoding output order (repeated timestamps)": 1,
            "codec h264 is not decoded by DALI's CPU backend": 2,
            "decoded short: PyAV reads the frames that exist": 1,
        }, reasons
        short = [str(corpus["cut_end.avi"]), str(corpus["cut_end.webm"])]
        assert [s.path for s in dali_loader.short] == [s.path for s in pyav_loader.short] == short
        assert [s.index for s in dali_loader.skipped] == [len(names) - 1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the DALI GPU (NVDEC) path needs a CUDA device")
def test_dali_gpu_returns_the_reference_frames_for_every_file_it_is_given(corpus, references):
    _dali_or_skip()
    from stzsar.data.decode_dali import DaliDecoder, pyav_reason

    decoder = DaliDecoder("gpu", batch_size=1, num_threads=1)
    given = 0
    for name in VALID:
        with PyAVVideo(corpus[name]) as video:
            if pyav_reason(video.info, "gpu") is not None:
                continue
        reference = references[name]
        if reference[0].shape[0] < 128 or reference[0].shape[1] < 128:
            if BY_NAME[name].codec == "vp9":  # NVDEC's VP9 minimum size
                continue
        count = len(reference)
        for indices in (list(range(count)), [count - 1, 0, count // 2, 3]):
            try:
                (frames,) = decoder.decode([(np.fromfile(corpus[name], np.uint8), indices)])
            except Exception as error:  # unsupported by NVDEC (4:4:4 H.264): the loader falls back
                print(f"{name}: DALI GPU refuses it: {str(error).splitlines()[0][:200]}")
                break
            codes = [read_frame_code(f) for f in frames.cpu().numpy()]
            assert codes == [read_frame_code(reference[i]) for i in indices], name
            given += 1
    assert given > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the DALI GPU (NVDEC) path needs a CUDA device")
def test_dali_gpu_loader_gives_the_pyav_loaders_items_for_the_corpus(corpus):
    _dali_or_skip()
    root = corpus["vp9.webm"].parent
    names = VALID + ["cut_end.avi", "empty.mp4", "text.mp4"]
    split = VideoSplit("corpus", root, ["a"], [(corpus[name], 0) for name in names])
    spec = ClipSpec(num_frames=4, size=32)
    pyav = list(build_loader(split, spec, batch_size=4))
    loader = build_loader(split, spec, batch_size=4, backend="dali", device="cuda")
    dali = list(loader)
    assert [b["index"].tolist() for b in dali] == [b["index"].tolist() for b in pyav]
    for a, b in zip(pyav, dali):
        assert (a["video"] - b["video"].cpu()).abs().mean() < 0.05
    print("fallbacks:", loader.report()["fallback_reasons"])


# -- H.264 from encoders other than PyAV (where their command-line tools are installed) -----------------------
OTHER_ENCODERS = {
    # name: (tool, command line with {out})
    "ffmpeg_bframes.avi": ("ffmpeg", "ffmpeg -v error -f lavfi -i testsrc=size=96x64:rate=25 -frames:v 50 "
                                     "-c:v libx264 -bf 3 -g 12 -pix_fmt yuv420p -y {out}"),
    "ffmpeg_bframes.mp4": ("ffmpeg", "ffmpeg -v error -f lavfi -i testsrc=size=96x64:rate=30000/1001 -frames:v 50 "
                                     "-c:v libx264 -bf 3 -g 12 -pix_fmt yuv420p -y {out}"),
    "ffmpeg_xvid_like.avi": ("ffmpeg", "ffmpeg -v error -f lavfi -i testsrc=size=96x64:rate=25 -frames:v 50 "
                                       "-c:v mpeg4 -vtag XVID -bf 2 -g 12 -q:v 4 -y {out}"),
    "x264_cli.mkv": ("x264", "ffmpeg -v error -f lavfi -i testsrc=size=96x64:rate=25 -frames:v 50 -pix_fmt yuv420p "
                             "-f yuv4mpegpipe - | x264 --quiet --bframes 3 --keyint 12 -o {out} --demuxer y4m -"),
    "gst_x264_bframes.avi": ("gst-launch-1.0", "gst-launch-1.0 -q videotestsrc num-buffers=50 ! "
                                              "video/x-raw,width=96,height=64,framerate=25/1 ! x264enc bframes=3 "
                                              "key-int-max=12 ! avimux ! filesink location={out}"),
    "gst_x264_bframes.mp4": ("gst-launch-1.0", "gst-launch-1.0 -q -e videotestsrc num-buffers=50 ! "
                                              "video/x-raw,width=96,height=64,framerate=30000/1001 ! x264enc bframes=3 "
                                              "key-int-max=12 ! h264parse ! mp4mux ! filesink location={out}"),
    "gst_x264_bframes.mkv": ("gst-launch-1.0", "gst-launch-1.0 -q -e videotestsrc num-buffers=50 ! "
                                              "video/x-raw,width=96,height=64,framerate=25/1 ! x264enc bframes=3 "
                                              "key-int-max=12 ! h264parse ! matroskamux ! filesink location={out}"),
}


@pytest.mark.parametrize("name", sorted(OTHER_ENCODERS))
def test_h264_from_other_encoders_equals_plain_pyav(tmp_path, name):
    tool, command = OTHER_ENCODERS[name]
    needed = {"x264": ["ffmpeg", "x264"]}.get(tool, [tool])
    if any(shutil.which(t) is None for t in needed):
        pytest.skip(f"{' and '.join(needed)} not installed (apt-get install {' '.join(needed)})")
    out = tmp_path / name
    result = subprocess.run(command.format(out=out), shell=True, capture_output=True, text=True, timeout=120)
    if result.returncode != 0 or not out.exists():
        pytest.skip(f"{tool} could not write the file: {result.stderr[-300:]}")
    reference = reference_frames(out)
    assert len(reference) >= 45
    with PyAVVideo(out) as video:
        assert video.num_frames == len(reference)
        frames, _ = video.read(list(range(video.num_frames)))
        assert same(frames, reference, range(len(reference)))
    rng = random.Random(name)
    indices = [rng.randrange(len(reference)) for _ in range(10)]
    with PyAVVideo(out) as video:
        frames, _ = video.read(indices)
        assert video.fallback_reason is None, video.fallback_reason
    assert same(frames, reference, indices)
