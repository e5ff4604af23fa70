"""Video data: dataset splits, frame sampling, decoding (PyAV on CPU, DALI on GPU) and loaders.

Typical use::

    from stzsar.data import ClipSpec, build_split, build_loader

    split = build_split("bike", "val_rgb_split_1.txt", "/data/ucf101/videos", labels="ucf_labels.csv")
    loader = build_loader(split, ClipSpec(num_frames=8, num_clips=1, num_crops=3),
                          batch_size=16, num_workers=8)
    for batch in loader:            # {"video": [B, V, T, 3, 224, 224], "label", "index", "skipped", "short"}
        ...
    print(loader.report())          # videos, loaded, skipped (+ path and reason of each), decoded short

See ``docs/data.md``.
"""

from .dataset import (
    ShortVideo,
    SkippedVideo,
    VideoCheck,
    VideoCollate,
    VideoDataset,
    VideoLoader,
    build_loader,
    check_video,
    sample_indices,
    video_from_frames,
)
from .decode_dali import DaliDecoder, DaliVideoLoader, dali_status  # DALI itself is imported on use
from .decode_pyav import PyAVVideo, VideoInfo, probe_video, read_frames
from .errors import ShortVideoError, SplitFormatError, VideoDecodeError
from .protocols import (
    draw_zero_shot_classes,
    few_shot,
    k600_new_classes,
    k600_zero_shot,
    load_zero_shot_classes,
    match_classes,
)
from .sampling import clip_indices, middle_indices, random_indices
from .spec import CLIP_MEAN, CLIP_STD, ClipSpec
from .splits import (
    FORMATS,
    VIDEO_EXTENSIONS,
    Video,
    VideoSplit,
    build_split,
    kinetics_clip_name,
    read_hmdb51,
    read_kinetics_csv,
    read_list,
    read_ucf101,
)
from .transforms import crop_windows, make_views, orient, random_crop_window, resized_shape

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "ClipSpec",
    "DaliDecoder",
    "DaliVideoLoader",
    "FORMATS",
    "PyAVVideo",
    "ShortVideo",
    "ShortVideoError",
    "SkippedVideo",
    "SplitFormatError",
    "VIDEO_EXTENSIONS",
    "Video",
    "VideoCheck",
    "VideoCollate",
    "VideoDataset",
    "VideoDecodeError",
    "VideoInfo",
    "VideoLoader",
    "VideoSplit",
    "build_loader",
    "build_split",
    "check_video",
    "clip_indices",
    "crop_windows",
    "dali_status",
    "draw_zero_shot_classes",
    "few_shot",
    "k600_new_classes",
    "k600_zero_shot",
    "kinetics_clip_name",
    "load_zero_shot_classes",
    "make_views",
    "match_classes",
    "middle_indices",
    "orient",
    "probe_video",
    "random_crop_window",
    "random_indices",
    "read_frames",
    "read_hmdb51",
    "read_kinetics_csv",
    "read_list",
    "read_ucf101",
    "resized_shape",
    "sample_indices",
    "video_from_frames",
]
