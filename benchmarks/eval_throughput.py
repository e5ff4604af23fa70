"""Where the time of ``stzsar eval`` goes: videos per second end to end and per part.

    python -m benchmarks.eval_throughput                       # CPU: the small model, 400 classes
    python -m benchmarks.eval_throughput --workers 8 --videos 64 --model ViT-B-16   # a GPU machine

Parts, each measured alone on the same synthetic videos (``--width`` x ``--height``,
``--frames-per-video`` frames at 25 fps: 250 is a 10 s Kinetics clip):

- ``decode``: the evaluation DataLoader (PyAV, ``--workers`` processes, the test transform), no model;
- ``copy``: host-to-device copy of a decoded batch (pinned memory and ``non_blocking`` on CUDA;
  on the CPU there is nothing to copy);
- ``vit``: the image encoder on a decoded batch;
- ``sti``: the STI and similarity of the batch's features against ``--classes`` classes;
- ``store``: writing the batch's per-view logits to the results store (one part per batch);
- ``end to end``: :func:`stzsar.eval.engine.evaluate` with the store, as ``stzsar eval`` runs it
  (decoding in workers overlaps the model; ``prefetch`` batches ahead).

The line that matters is ``end to end / decode``: the share of the workers' decode rate the whole
evaluation keeps. Where the model is slower than decoding (a CPU that also runs the model),
``end to end / min(decode, model)`` says how well the two overlap. Prints a table and writes ``benchmarks/results/eval_throughput_<device>.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch.utils.data import DataLoader

from benchmarks.common import describe_machine, format_table, write_result
from benchmarks.decode import _usable_cores
from benchmarks.throughput import synthetic_classes


def make_split(folder: Path, count: int, frames: int, width: int, height: int, num_classes: int):
    """``count`` H.264 videos and a list file labelling them with the first classes."""
    from tqdm import tqdm

    from stzsar.data.synthetic import write_video

    lines = []
    for i in tqdm(range(count), desc="writing test videos", unit="video"):
        path = folder / f"v{i:04d}.mp4"
        write_video(path, frames + (i % 5) * 7, width, height, gop=50)
        lines.append(f"{path.name} {i % num_classes}")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return folder / "list.txt"


def timed(fn, repeats: int) -> float:
    """Best-of-``repeats`` seconds of ``fn`` after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args: argparse.Namespace) -> Dict[str, Any]:
    from stzsar.classes import read_class_list  # noqa: F401  (the package imports cleanly)
    from stzsar.data import VideoDataset, build_split
    from stzsar.eval.engine import (EvalSettings, autocast_dtype, class_logits, collate_eval, evaluate,
                                    resolve_device, _autocast)
    from stzsar.eval.loading import clip_spec
    from stzsar.eval.store import SplitStore
    from stzsar.model import build_model

    device = resolve_device(args.device)
    amp = autocast_dtype(device, "auto")
    torch.manual_seed(0)
    model = build_model(args.model, pretrained=None, backend="auto").eval().to(device)
    classes, attributes = synthetic_classes(args.classes)
    with torch.no_grad():
        bank = model.encode_classes(classes, attributes).to(device)
    spec = clip_spec(model, args.num_frames)
    results: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        list_file = make_split(folder, args.videos, args.frames_per_video, args.width, args.height, args.classes)
        (folder / "labels.txt").write_text("\n".join(classes) + "\n")
        split = build_split("bike", str(list_file), str(folder), labels=str(folder / "labels.txt"))
        dataset = VideoDataset(split, spec, training=False)
        loader_args = dict(batch_size=args.batch_size, num_workers=args.workers, collate_fn=collate_eval,
                           pin_memory=device.type == "cuda", prefetch_factor=4 if args.workers else None)

        # decode: one pass of the loader (after its first batch: worker start-up).
        iterator = iter(DataLoader(dataset, **loader_args))
        batch = next(iterator)
        start, done = time.perf_counter(), 0
        for item in iterator:
            done += int(item["label"].numel())
        results["decode"] = done / (time.perf_counter() - start)

        video = batch["video"]
        B = int(video.shape[0])
        pinned = video.pin_memory() if device.type == "cuda" else video

        def copy():
            out = pinned.to(device, non_blocking=True)
            sync(device)
            return out

        clips = copy().flatten(0, 1) if video.dim() == 6 else copy()

        @torch.no_grad()
        def vit():
            with _autocast(device, amp):
                out = model.encode_video(clips)
            sync(device)
            return out

        frames, patches = vit()

        @torch.no_grad()
        def sti():
            with _autocast(device, amp):
                out = class_logits(model, frames, patches, bank)
            sync(device)
            return out

        logits = sti().float().view(B, -1, len(classes))
        store = SplitStore(folder / "store", {"benchmark": True})
        labels, indices = batch["label"], batch["index"]

        def write():
            store.add(logits, labels, indices)
            store.flush()

        for name, fn in (("copy", copy), ("vit", vit), ("sti", sti), ("store", write)):
            seconds = timed(fn, args.repeats)
            results[name] = B / seconds if seconds > 0 else float("inf")

        # end to end, as stzsar eval runs it (the clock includes the workers' start).
        settings = EvalSettings(batch_size=args.batch_size, num_workers=args.workers, device=str(device),
                                progress=False, flush_every=4)
        start = time.perf_counter()
        result = evaluate(model, dataset, bank, classes, settings=settings,
                          store=SplitStore(folder / "e2e", {"benchmark": True}))
        results["end to end"] = (result.num_scored + result.num_skipped) / (time.perf_counter() - start)
    # The model's parts run one after the other in the main process; decoding runs beside them.
    results["model (vit + sti + store)"] = 1.0 / sum(1.0 / results[k] for k in ("vit", "sti", "store"))
    results["end to end / decode"] = results["end to end"] / results["decode"]
    results["end to end / min(decode, model)"] = results["end to end"] / min(results["decode"],
                                                                          results["model (vit + sti + store)"])
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="stzsar-small", help="model configuration (random weights)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--videos", type=int, default=32)
    parser.add_argument("--frames-per-video", type=int, default=250, help="250: 10 s at 25 fps")
    parser.add_argument("--width", type=int, default=426)
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--num-frames", type=int, default=8, help="frames per clip")
    parser.add_argument("--classes", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=None, help="decoding workers (default: the usable cores)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-save", action="store_true", help="print only; no results file")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers is None:
        args.workers = _usable_cores()
    results = run(args)
    rows = [[name, f"{value:.3f}" if name.startswith("end to end /") else f"{value:.2f}"]
            for name, value in results.items()]
    print(f"{describe_machine()}; {args.model}, {args.num_frames} frames, {args.classes} classes, "
          f"batch {args.batch_size}, {args.workers} decoding worker(s)")
    print(format_table(["part", "videos/s (end to end / decode: ratio)"], rows))
    if not args.no_save:
        device = "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"
        path = write_result("eval_throughput", device, vars(args), results)
        print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
