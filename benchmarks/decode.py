"""Video decoding benchmarks: per-clip decode time (seeking vs decoding every frame) and decoded
clips per second for each decoding path.

    python -m benchmarks.decode                    # both parts
    python -m benchmarks.decode --what seek        # per-clip time only
    python -m benchmarks.decode --what throughput --videos 32 --frames-per-video 300 --workers 8

Per-clip time (``seek``): a 10-second 340x256 H.264 clip at 25 fps (the size of Kinetics copies
at "short side 256"), written with libx264's default B-frames, in MP4 with a key frame every
250 frames (libx264's default: one key frame in the clip), every 50 (2 s) and every 25 (1 s),
and the 50-frame one in AVI too (no presentation timestamps: read sequentially). For each test
clip (``T`` = 8 and 16 middle frames) and a training clip (``T`` = 8 random frames), it times one
clip from a closed file to RGB frames (open, demux, decode, convert), median of ``--repeats``:

- ``loader``: what the loaders do (:class:`stzsar.data.decode_pyav.PyAVVideo`: seeks to the key
  frame before each wanted frame when timestamps allow and that skips decoding; else decodes
  from the start up to the last wanted frame);
- ``sequential``: decoding from the start up to the last wanted frame, never seeking;
- ``decode all``: decoding every frame of the file with plain PyAV (converting the wanted ones).

Throughput (``throughput``), paths:
- ``pyav``: PyAV in ``--workers`` DataLoader worker processes (default: the usable cores);
- ``dali-cpu``: DALI's CPU decoder (VP9 only here: DALI's CPU backend cannot decode H.264);
- ``dali-gpu``: DALI with NVDEC (``mixed`` backend), when CUDA and DALI are both usable.

Each measures one test pass (one centre clip of ``T`` frames a video, short side resized to 224,
centre crop 224, CLIP normalisation) over ``--clips`` clips from synthetic videos of
``--width`` x ``--height`` (default 426 x 320, the "short edge 320" size of common Kinetics
copies). The clock starts after a first warm-up batch (worker start-up, DALI pipeline build) and
stops when the last batch is on its device. Prints a table and writes
``benchmarks/results/decode-<device>.json`` with the machine, versions and git commit.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from benchmarks.common import RESULTS_DIR, describe_machine, format_table, provenance


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def make_videos(folder: Path, count: int, frames: int, width: int, height: int) -> Dict[str, List[Path]]:
    """``count`` synthetic videos per codec (H.264 in MP4, VP9 in WebM)."""
    from tqdm import tqdm

    from stzsar.data.synthetic import write_video

    made: Dict[str, List[Path]] = {"h264": [], "vp9": []}
    jobs = [(codec, i) for codec in made for i in range(count)]
    for codec, i in tqdm(jobs, desc="writing test videos", unit="video"):
        path = folder / f"{codec}_{i:03d}{'.mp4' if codec == 'h264' else '.webm'}"
        # Key frames every 2 s at 25 fps, as typical of web video; frame counts vary a little.
        write_video(path, frames + (i % 5) * 7, width, height, codec=codec, gop=50)
        made[codec].append(path)
    return made


def measure(loader, clips: int) -> Dict[str, Any]:
    """Clips per second of one pass of ``loader`` (after its first batch)."""
    iterator = iter(loader)
    first = next(iterator)  # warm-up: worker start, pipeline build, first decode
    done, start = 0, time.perf_counter()
    last = first
    for batch in iterator:
        done += int(batch["label"].numel())
        last = batch
    if last["video"].is_cuda:
        torch.cuda.synchronize(last["video"].device)
    elapsed = time.perf_counter() - start
    report = loader.report()
    return {
        "clips": done,
        "seconds": elapsed,
        "clips_per_s": done / elapsed if elapsed > 0 and done else None,
        "skipped": report["skipped"],
        "fallbacks": report.get("fallbacks", 0),
        "shape": list(first["video"].shape[1:]),
    }


def device_tag() -> str:
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(torch.cuda.current_device()).lower()
        return re.sub(r"[^a-z0-9]+", "-", name.replace("nvidia", "")).strip("-") or "cuda"
    return "cpu"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.decode", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=8, help="synthetic videos per codec")
    parser.add_argument("--frames-per-video", type=int, default=150, help="frames per synthetic video")
    parser.add_argument("--width", type=int, default=426)
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--clips", type=int, default=48, help="clips timed per measurement")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 16], help="T values")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=None, help="PyAV DataLoader workers (default: usable cores)")
    parser.add_argument("--dali-threads", type=int, default=None, help="DALI threads (default: usable cores)")
    parser.add_argument("--paths", nargs="+", default=["pyav", "dali-cpu", "dali-gpu"])
    parser.add_argument("--videos-dir", type=Path, help="reuse (or keep) the synthetic videos in this folder")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder of the JSON result")
    parser.add_argument("--what", nargs="+", choices=("seek", "throughput"), default=["seek", "throughput"],
                        help="which parts to run (a part not run keeps its earlier figures in the JSON)")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per clip (seek part)")
    parser.add_argument("--seek-seconds", type=float, default=10.0, help="length of the seek part's clip")
    args = parser.parse_args(argv)
    out = args.out / f"decode-{device_tag()}.json"
    previous = json.loads(out.read_text()) if out.is_file() else {}
    payload: Dict[str, Any] = {"benchmark": "decode"}
    if "seek" in args.what:
        payload["seek"] = {**provenance(), "command": "python -m benchmarks.decode --what seek",
                           **run_seek(args)}
    elif "seek" in previous:
        payload["seek"] = previous["seek"]
    if "throughput" in args.what:
        payload["throughput"] = run_throughput(args, parser)
    elif "throughput" in previous:
        payload["throughput"] = previous["throughput"]
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(out)
    print(f"\nwrote {out}")
    return 0


# -- per-clip time: seek vs decode all ------------------------------------------------------------------
SEEK_FILES = (
    # (name, key frame interval)
    ("kinetics_gop250.mp4", 250),
    ("kinetics_gop50.mp4", 50),
    ("kinetics_gop25.mp4", 25),
    ("kinetics_gop50.avi", 50),
)


def write_h264_clip(path: Path, frames: int, width: int, height: int, keyint: int, fps: int = 25) -> None:
    """A synthetic H.264 clip with libx264's default preset (3 B-frames) and a key frame every ``keyint``."""
    import av

    from stzsar.data.synthetic import make_frame

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "medium", "crf": "23",
                          "x264-params": f"keyint={keyint}:min-keyint={min(keyint, 25)}:scenecut=0"}
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(make_frame(index, height, width), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _decode_all(path: Path, indices: List[int]) -> int:
    """Plain PyAV: every frame in order, the wanted ones converted to RGB; returns frames decoded."""
    import av

    wanted, count = set(indices), 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        for frame in container.decode(stream):
            if count in wanted:
                frame.to_ndarray(format="rgb24")
            count += 1
    return count


def _timed(fn, repeats: int) -> Dict[str, Any]:
    times, decoded = [], None
    for _ in range(repeats + 1):  # the first run warms the file cache and the decoder's libraries
        start = time.perf_counter()
        decoded = fn()
        times.append(time.perf_counter() - start)
    times = sorted(times[1:])
    return {"ms": 1000 * times[len(times) // 2], "ms_min": 1000 * times[0], "frames_decoded": decoded}


def run_seek(args) -> Dict[str, Any]:
    import random

    from stzsar.data.decode_pyav import PyAVVideo
    from stzsar.data.sampling import middle_indices, random_indices

    fps, width, height = 25, 340, 256
    frames = int(round(args.seek_seconds * fps))
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.videos_dir or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        clips = {
            "test T=8": middle_indices(frames, 8),
            "test T=16": middle_indices(frames, 16),
            "train T=8": random_indices(frames, 8, random.Random(0)),
        }
        for name, keyint in SEEK_FILES:
            path = folder / name
            if not path.exists():
                write_h264_clip(path, frames, width, height, keyint, fps)
            with PyAVVideo(path) as probe:
                addressing, keys = probe.info.addressing, len(probe.info.keyframe_pts)
            for clip, indices in clips.items():

                def loader(seek=True):
                    with PyAVVideo(path, seek=seek) as video:
                        video.read(indices)
                        return video.decoded_frames

                row = {"file": name, "keyint": keyint, "addressing": addressing, "keyframes": keys,
                       "clip": clip, "indices": indices}
                for method, fn in (("loader", loader), ("sequential", lambda: loader(False)),
                                   ("decode all", lambda: _decode_all(path, indices))):
                    row[method] = _timed(fn, args.repeats)
                rows.append(row)
                print(f"{name:20s} {clip:10s} loader {row['loader']['ms']:7.1f} ms ({row['loader']['frames_decoded']:3d} "
                      f"frames)  sequential {row['sequential']['ms']:7.1f} ms  decode all {row['decode all']['ms']:7.1f} ms")
    table = format_table(
        ["file", "key frames", "read by", "clip", "loader ms", "frames", "sequential ms", "decode all ms"],
        [[r["file"], r["keyframes"], r["addressing"], r["clip"], f"{r['loader']['ms']:.1f}",
          r["loader"]["frames_decoded"], f"{r['sequential']['ms']:.1f}", f"{r['decode all']['ms']:.1f}"] for r in rows],
        title=f"Per-clip decode time, {args.seek_seconds:g} s {width}x{height} H.264 at {fps} fps ({describe_machine()})",
        notes=["median of the repeats; one clip from a closed file: open, demux, decode, RGB; one decoder thread"],
    )
    print()
    print(table)
    return {"config": {"seconds": args.seek_seconds, "fps": fps, "width": width, "height": height,
                       "frames": frames, "repeats": args.repeats, "load_average_before": load_before,
                       "load_average_after": os.getloadavg() if hasattr(os, "getloadavg") else None},
            "results": rows}


# -- throughput -------------------------------------------------------------------------------------------
def run_throughput(args, parser) -> Dict[str, Any]:
    from stzsar.data import ClipSpec, VideoSplit, build_loader
    from stzsar.data.decode_dali import dali_status

    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    cores = _usable_cores()
    workers = args.workers if args.workers is not None else cores
    dali_threads = args.dali_threads or cores
    dali_ok, dali_version = dali_status()
    paths = []
    for path in args.paths:
        if path == "pyav":
            paths.append(path)
        elif path.startswith("dali") and not dali_ok:
            print(f"skipping {path}: {dali_version}")
        elif path == "dali-gpu" and not torch.cuda.is_available():
            print("skipping dali-gpu: no CUDA device")
        elif path in ("dali-cpu", "dali-gpu"):
            paths.append(path)
        else:
            parser.error(f"unknown path {path!r}")

    with tempfile.TemporaryDirectory() as scratch:
        folder = args.videos_dir or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        videos = make_videos(folder, args.videos, args.frames_per_video, args.width, args.height)
        results = []
        for codec, files in videos.items():
            # Enough list entries for the warm-up batch plus --clips timed clips.
            total = args.clips + args.batch_size
            entries = [(files[i % len(files)], 0) for i in range(total)]
            split = VideoSplit(f"bench-{codec}", folder, ["synthetic"], entries)
            for path in paths:
                if path == "dali-cpu" and codec != "vp9":
                    continue  # DALI's CPU decoder reads VP8/VP9/MJPEG only
                for frames in args.frames:
                    spec = ClipSpec(num_frames=frames, size=args.size)
                    if path == "pyav":
                        loader = build_loader(split, spec, batch_size=args.batch_size, num_workers=workers)
                        parallel = f"{workers} workers"
                    else:
                        loader = build_loader(split, spec, batch_size=args.batch_size, backend="dali",
                                              device="gpu" if path == "dali-gpu" else "cpu",
                                              num_threads=dali_threads)
                        parallel = f"{dali_threads} threads"
                    row = {"path": path, "codec": codec, "frames": frames, "size": args.size,
                           "workers": workers if path == "pyav" else 0, "dali_threads": None if path == "pyav" else dali_threads,
                           "parallelism": parallel, **measure(loader, args.clips)}
                    results.append(row)
                    print(f"{path:9s} {codec:5s} T={frames:<3d} {row['clips_per_s'] or 0:8.1f} clips/s ({parallel})")

    table = format_table(
        ["path", "codec", "T", "px", "parallelism", "clips", "clips/s"],
        [[r["path"], r["codec"], r["frames"], r["size"], r["parallelism"], r["clips"],
          f"{r['clips_per_s']:.1f}" if r["clips_per_s"] else "-"] for r in results],
        title=f"Decoded clips per second ({describe_machine()})",
        notes=[f"synthetic {args.width}x{args.height} videos, {args.frames_per_video}+ frames at 25 fps, key frame every 50",
               "one centre clip a video: short side -> size, centre crop, CLIP normalisation"],
    )
    print()
    print(table)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config.update({"workers_used": workers, "dali_threads_used": dali_threads,
                   # other work on a shared machine lowers the figures: record how busy it was
                   "load_average_before": load_before,
                   "load_average_after": os.getloadavg() if hasattr(os, "getloadavg") else None})
    payload = {**provenance(), "command": "python -m benchmarks.decode --what throughput", "config": config,
               "results": results}
    import av

    payload["versions"].update({"dali": dali_version if dali_ok else None,
                                "libavcodec": ".".join(map(str, av.library_versions.get("libavcodec", ())))})
    return payload


if __name__ == "__main__":
    raise SystemExit(main())
