"""Datasets and loaders: shapes, which frames end up in the tensors, and the bad-input policy
(skip + record + log once + count; strict raises), on the PyAV and the DALI (CPU) paths."""

import logging

import numpy as np
import pytest
import torch

from stzsar.data import ClipSpec, VideoDataset, VideoDecodeError, VideoSplit, build_loader
from stzsar.data.dataset import SkippedVideo, VideoCollate
from stzsar.data.sampling import middle_indices
from stzsar.data.spec import CLIP_MEAN, CLIP_STD
from stzsar.data.synthetic import read_frame_code, write_video

W, H = 64, 48


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    """A split of good and bad videos: index -> (relative path, label)."""
    root = tmp_path_factory.mktemp("dataset")
    for folder in ("run", "jump"):
        (root / folder).mkdir()
    write_video(root / "run" / "a.mp4", 30, W, H, codec="h264")
    write_video(root / "run" / "b.webm", 17, W, H, codec="vp9")
    write_video(root / "jump" / "c.webm", 3, W, H, codec="vp9")
    write_video(root / "jump" / "d.avi", 12, W, H, codec="mjpeg")
    (root / "jump" / "empty.mp4").write_bytes(b"")
    (root / "jump" / "text.mp4").write_text("not a video")
    data = (root / "run" / "a.mp4").read_bytes()
    (root / "run" / "truncated.mp4").write_bytes(data[: len(data) // 2])
    return root


GOOD = [("run/a", 0), ("run/b.webm", 0), ("jump/c", 1), ("jump/d.avi", 1)]
BAD = [("jump/empty.mp4", 1), ("jump/text.mp4", 1), ("run/truncated.mp4", 0), ("run/missing", 0)]


def make_split(root, entries):
    return VideoSplit("toy", root, ["run", "jump"], [(root / rel, label) for rel, label in entries])


def pixels(views):
    """Undo the CLIP normalisation: float [.., 3, H, W] -> uint8 [.., H, W, 3]."""
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    x = ((views.cpu().float() * std + mean) * 255.0).round().clamp(0, 255).to(torch.uint8)
    return x.movedim(-3, -1).numpy()


def test_test_clips_hold_the_sampled_frames(dataset_root):
    split = make_split(dataset_root, GOOD)
    # short_side = frame height and size = 48: no resize, a centre crop 48 x 48 of 64 x 48,
    # which keeps all of the index code's blocks but the outer 8 pixels.
    spec = ClipSpec(num_frames=8, size=H, short_side=H)
    dataset = VideoDataset(split, spec)
    for index, count in enumerate((30, 17, 3, 12)):
        item = dataset[index]
        assert item["video"].shape == (8, 3, H, H) and item["video"].dtype == torch.float32
        assert item["label"] == GOOD[index][1] and item["index"] == index
        frames = pixels(item["video"])
        # Put the crop back into a full-width frame to read the code.
        full = np.zeros((8, H, W, 3), np.uint8)
        full[:, :, 8:56] = frames
        codes = [read_frame_code(f) & 0b0111_1110 for f in full]  # outer two bits are cropped off
        assert codes == [i & 0b0111_1110 for i in middle_indices(count, 8)]


def test_multiview_and_training_shapes(dataset_root):
    split = make_split(dataset_root, GOOD)
    multi = VideoDataset(split, ClipSpec(num_frames=4, size=32, num_clips=2, num_crops=3))
    assert multi[0]["video"].shape == (6, 4, 3, 32, 32)
    train = VideoDataset(split, ClipSpec(num_frames=4, size=32), training=True, seed=0)
    assert train[1]["video"].shape == (4, 3, 32, 32)
    with pytest.raises(ValueError, match="testing"):
        VideoDataset(split, ClipSpec(num_clips=2), training=True)


def test_bad_videos_are_skipped_recorded_and_logged_once(dataset_root, caplog):
    split = make_split(dataset_root, GOOD[:2] + BAD + GOOD[2:])
    loader = build_loader(split, ClipSpec(num_frames=4, size=32), batch_size=3, num_workers=0)
    with caplog.at_level(logging.WARNING, logger="stzsar.data"):
        for _ in range(2):  # two passes: every bad video is logged the first time only
            seen, skipped_in_batches = [], []
            for batch in loader:
                assert batch["video"].shape[0] == batch["label"].shape[0] == batch["index"].shape[0] > 0
                seen += batch["index"].tolist()
                skipped_in_batches += [s.index for s in batch["skipped"]]
            assert seen == [0, 1, 6, 7]
            # Batches [0 1 2] [3 4 5] [6 7]: the all-bad middle one is counted, not yielded.
            assert skipped_in_batches == [2]
            assert loader.report()["skipped"] == 4
    warnings = [r for r in caplog.records if "skipping video" in r.getMessage()]
    assert len(warnings) == 4
    reasons = {s.index: s.reason for s in loader.skipped}
    assert reasons[2] == "empty file (0 bytes)"
    assert reasons[3].startswith("not a readable video")
    assert reasons[5].startswith("file not found")
    assert str(dataset_root / "jump" / "empty.mp4") in warnings[0].getMessage()
    report = loader.report()
    assert (report["videos"], report["loaded"], report["skipped"]) == (8, 4, 4)
    assert loader.num_skipped == 4


def test_a_batch_of_only_bad_videos_is_counted_not_yielded(dataset_root):
    split = make_split(dataset_root, BAD[:2] + GOOD[:1])
    loader = build_loader(split, ClipSpec(num_frames=2, size=32), batch_size=2)
    batches = list(loader)
    assert len(batches) == 1 and batches[0]["index"].tolist() == [2]
    assert loader.report()["skipped"] == 2


def test_strict_raises_with_the_path(dataset_root):
    split = make_split(dataset_root, GOOD[:1] + BAD[:1])
    loader = build_loader(split, ClipSpec(num_frames=2, size=32), batch_size=2, strict=True)
    with pytest.raises(VideoDecodeError, match=r"empty\.mp4: empty file"):
        list(loader)


def test_strict_raises_through_worker_processes(dataset_root):
    split = make_split(dataset_root, BAD[1:2])
    loader = build_loader(split, ClipSpec(num_frames=2, size=32), batch_size=1, num_workers=1, strict=True)
    with pytest.raises(VideoDecodeError, match=r"text\.mp4"):
        list(loader)


def test_seeded_training_is_the_same_with_and_without_workers(dataset_root):
    split = make_split(dataset_root, GOOD + BAD[:1])
    spec = ClipSpec(num_frames=4, size=32, hflip=0.5)

    def run(workers):
        loader = build_loader(split, spec, training=True, batch_size=2, num_workers=workers, seed=3)
        passes = []
        for _ in range(2):
            batches = list(loader)
            passes.append((torch.cat([b["index"] for b in batches]), torch.cat([b["video"] for b in batches])))
        return passes, loader.report()

    (first, second), report = run(0)
    (first_w, second_w), report_w = run(2)
    assert torch.equal(first[0], first_w[0]) and torch.equal(first[1], first_w[1])
    assert torch.equal(second[1], second_w[1])
    assert not torch.equal(first[1], second[1]) or not torch.equal(first[0], second[0])  # epochs differ
    assert report["skipped"] == report_w["skipped"] == 1


def test_collate_keeps_skipped_items():
    collate = VideoCollate((2, 3, 4, 4))
    good = {"video": torch.zeros(2, 3, 4, 4), "label": 1, "index": 0}
    batch = collate([good, SkippedVideo(1, "/x.mp4", "file not found")])
    assert batch["video"].shape == (1, 2, 3, 4, 4) and batch["index"].tolist() == [0]
    assert batch["skipped"] == [SkippedVideo(1, "/x.mp4", "file not found")]
    empty = collate([SkippedVideo(2, "/y.mp4", "empty file (0 bytes)")])
    assert empty["video"].shape == (0, 2, 3, 4, 4) and empty["label"].shape == (0,)


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'opencv'"):
        build_loader(VideoSplit("s", "/", ["a"], []), backend="opencv")


# -- DALI (CPU) --------------------------------------------------------------------------------------------
def test_dali_loader_matches_pyav_loader(dataset_root):
    from stzsar.data.decode_dali import dali_status

    ok, why = dali_status()
    if not ok:
        pytest.skip(f"DALI is not usable here: {why}")
    # VP9 and MJPEG decoded by DALI; H.264 (not decodable by DALI on the CPU) falls back to PyAV.
    split = make_split(dataset_root, GOOD + BAD)
    spec = ClipSpec(num_frames=4, size=32, num_clips=2, num_crops=3)
    pyav = list(build_loader(split, spec, batch_size=4))
    dali_loader = build_loader(split, spec, batch_size=4, backend="dali", device="cpu", num_threads=1)
    dali = list(dali_loader)
    assert [b["index"].tolist() for b in dali] == [b["index"].tolist() for b in pyav]
    assert sorted(s.index for s in dali_loader.skipped) == [4, 5, 6, 7]
    assert dali_loader.fallbacks == 1  # the H.264 video (DALI on the CPU reads VP9 and MJPEG)
    for a, b in zip(pyav, dali):
        assert a["video"].shape == b["video"].shape == (len(a["index"]), 6, 4, 3, 32, 32)
        assert torch.equal(a["label"], b["label"])
        # Normalised values: one grey level is 1 / (255 * 0.27) = 0.0146. The decoders' RGB
        # conversions differ by about one level on average (see test_data_decode).
        assert (a["video"] - b["video"]).abs().mean() < 0.05



def test_a_file_dali_fails_on_is_read_by_pyav_and_skipped_only_if_pyav_fails_too(dataset_root, monkeypatch):
    from stzsar.data import decode_dali
    from stzsar.data.decode_dali import dali_status

    ok, why = dali_status()
    if not ok:
        pytest.skip(f"DALI is not usable here: {why}")
    split = make_split(dataset_root, [("run/b.webm", 0), ("jump/c", 1)])
    spec = ClipSpec(num_frames=2, size=32)
    bad = (dataset_root / "jump" / "c.webm").read_bytes()

    def failing_loader():
        loader = build_loader(split, spec, batch_size=2, backend="dali", device="cpu", num_threads=1)
        decode = loader.decoder.decode

        def failing(items):  # DALI fails a whole batch when one file in it is bad
            if any(bytes(data) == bad for data, _ in items):
                raise RuntimeError("Critical error in pipeline:\nencountered:\n\nbroken VP9 stream\nC++ context")
            return decode(items)

        loader.decoder.decode = failing
        return loader

    loader = failing_loader()
    (batch,) = list(loader)
    (reference,) = list(build_loader(split, spec, batch_size=2))
    assert batch["index"].tolist() == [0, 1] and not loader.skipped
    assert (batch["video"] - reference["video"]).abs().mean() < 0.05
    assert loader.report()["fallback_reasons"] == {"DALI failed on the file": 1}

    class Unreadable(decode_dali.PyAVVideo):
        def read_clip(self, choose):
            raise VideoDecodeError(self.path, "decoding failed: InvalidDataError")

    monkeypatch.setattr(decode_dali, "PyAVVideo", Unreadable)
    loader = failing_loader()
    (batch,) = list(loader)
    assert batch["index"].tolist() == [0]
    assert [(s.index, s.reason) for s in loader.skipped] == [
        (1, "decoding failed: InvalidDataError; DALI failed on the file (broken VP9 stream)")]


def test_dali_loader_turns_rotated_videos_upright_like_pyav(tmp_path):
    from stzsar.data.decode_dali import dali_status

    ok, why = dali_status()
    if not ok:
        pytest.skip(f"DALI is not usable here: {why}")
    (tmp_path / "run").mkdir()
    # DALI returns frames as stored; the rotation comes from the shared probe and orient().
    write_video(tmp_path / "run" / "portrait.webm", 8, 64, 48, codec="vp9", rotation=-90)
    split = make_split(tmp_path, [("run/portrait.webm", 0)])
    spec = ClipSpec(num_frames=2, size=48, short_side=48)
    (pyav,) = list(build_loader(split, spec, batch_size=1))
    (dali,) = list(build_loader(split, spec, batch_size=1, backend="dali", device="cpu", num_threads=1))
    # Upright the frame is 48 wide and 64 high: resized to 48 x 64, a centre crop 48 x 48.
    assert pyav["video"].shape == dali["video"].shape == (1, 2, 3, 48, 48)
    assert (pyav["video"] - dali["video"]).abs().mean() < 0.05
    upright = write_video(tmp_path / "upright.webm", 8, 64, 48, codec="vp9")  # reference pixels
    # Test frames 2 and 6 of 8 (segment middles); upright 64 high: rows 8..55 are the centre crop.
    expected = np.rot90(np.stack([upright[2], upright[6]]), -1, axes=(1, 2))[:, 8:56]
    assert np.abs(pixels(dali["video"][0]).astype(np.float64) - expected).mean() < 8

@pytest.mark.skipif(not torch.cuda.is_available(), reason="the DALI GPU (NVDEC) path needs a CUDA device")
def test_dali_gpu_loader_matches_pyav_loader(tmp_path):
    from stzsar.data.decode_dali import dali_status

    ok, why = dali_status()
    if not ok:
        pytest.skip(f"DALI is not usable here: {why}")
    for folder in ("run", "jump"):
        (tmp_path / folder).mkdir()
    # NVDEC has minimum frame sizes (VP9: 128 x 128).
    write_video(tmp_path / "run" / "a.mp4", 30, 160, 128, codec="h264")
    write_video(tmp_path / "run" / "b.webm", 17, 160, 128, codec="vp9")
    write_video(tmp_path / "jump" / "c.mp4", 3, 160, 128, codec="h264")
    (tmp_path / "jump" / "empty.mp4").write_bytes(b"")
    split = make_split(tmp_path, [("run/a", 0), ("run/b.webm", 0), ("jump/empty.mp4", 1), ("jump/c", 1)])
    spec = ClipSpec(num_frames=4, size=112, num_clips=2, num_crops=3)
    pyav = list(build_loader(split, spec, batch_size=4))
    loader = build_loader(split, spec, batch_size=4, backend="auto", device="cuda")
    assert loader.backend == "dali-gpu"
    dali = list(loader)
    assert len(dali) == len(pyav) == 1
    assert dali[0]["video"].is_cuda and dali[0]["index"].tolist() == pyav[0]["index"].tolist() == [0, 1, 3]
    assert [s.index for s in loader.skipped] == [2] and loader.fallbacks == 0
    assert (dali[0]["video"].cpu() - pyav[0]["video"]).abs().mean() < 0.05
