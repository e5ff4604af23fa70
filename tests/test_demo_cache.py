"""The demo's cached dataset serves the clips the file-reading dataset gives, without reading files."""

from __future__ import annotations

import torch

import stzsar.data.dataset as dataset_module
from stzsar.data import ClipSpec, VideoDataset, VideoSplit
from stzsar.data.synthetic import write_video
from stzsar.demo.cached import CachedVideoDataset


def test_cached_items_equal_decoded_items_and_open_no_file_after_preload(tmp_path, monkeypatch):
    for name, frames in (("a.mp4", 30), ("b.mp4", 11)):
        write_video(tmp_path / name, frames, 48, 40, codec="h264")
    split = VideoSplit("toy", tmp_path, ["x"], [(tmp_path / "a.mp4", 0), (tmp_path / "b.mp4", 0)])
    for training in (True, False):
        spec = ClipSpec(num_frames=4, size=32, short_side=36, hflip=0.5 if training else 0.0)
        plain = VideoDataset(split, spec, training=training, seed=3)
        cached = CachedVideoDataset(split, spec, training=training, seed=3)
        assert cached.preload() == []
        expected = [plain[i]["video"] for i in range(len(split))]

        def no_file(*args, **kwargs):
            raise AssertionError("the cached dataset opened a video file after preload")

        with monkeypatch.context() as patch:
            patch.setattr(dataset_module, "PyAVVideo", no_file)
            got = [cached[i]["video"] for i in range(len(split))]
        for a, b in zip(got, expected):
            assert torch.equal(a, b)
