"""Where the time of ``stzsar eval`` goes: videos per second end to end and per part.

    python -m benchmarks.eval_throughput                       # CPU: the small model, 400 classes
    python -m benchmarks.eval_throughput --model stzsar-tiny --classes 20   # a model cheap beside decoding
    python -m benchmarks.eval_throughput --workers 8 --videos 64 --model ViT-B-16   # a GPU machine

Parts, each measured alone on the same synthetic videos (``--width`` x ``--height``,
``--frames-per-video`` frames at 25 fps: 250 is a 10 s Kinetics clip), under the conditions the
end-to-end run gives them:

- ``decode``: the evaluation DataLoader (PyAV, ``--workers`` processes, the test transform, the
  same prefetch), no model; timed from the iterator's creation, worker start included, as end to
  end is;
- ``copy``: host-to-device copy of a decoded batch (pinned memory and ``non_blocking``; CUDA only:
  on the CPU there is nothing to copy);
- ``vit``: the image encoder on a decoded batch, with the intra-op threads
  :func:`stzsar.eval.engine.evaluate` gives the model (on the CPU: the cores the workers leave);
- ``sti``: the STI and similarity of the batch's features against ``--classes`` classes (same threads);
- ``store``: writing the batch's per-view logits to the results store (one part per batch);
- ``end to end``: :func:`stzsar.eval.engine.evaluate` with the store, as ``stzsar eval`` runs it
  (decoding in workers overlaps the model; ``prefetch`` batches ahead).

Passes of ``decode`` and ``end to end`` alternate (``--passes``, the best of each counts), so
that both meet about the same load of other jobs on the machine.

Each part also reports the CPU seconds it spends per video (main process and workers), which the
load of other jobs on the machine changes far less than videos/s, and decode and end to end the
cores they kept busy (videos/s x CPU seconds per video): below the usable cores, other jobs or
waiting took the rest.

Ratios: ``end to end / decode`` is the share of the workers' decode rate the whole evaluation
keeps; ``end to end / min(decode, model)`` how well decoding and the model overlap. On a CPU the
workers and the model share the cores, so where the model costs about as much CPU as decoding the
first ratio cannot approach 1 by construction; ``cpu bound`` is the rate the cores allow for both
(usable cores / CPU seconds per video of decode and model together). ``--model-threads 2`` on a
2-core machine measures torch's default (one thread per core) against the default here. Prints a table and writes
``benchmarks/results/eval_throughput_<device>_<model>_w<workers>_c<classes>.json``.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch.utils.data import DataLoader

from benchmarks.common import describe_machine, format_table, write_result
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


def cpu_seconds() -> float:
    """CPU seconds of this process (all its threads) and of its children that have ended."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn: Callable[[], Any], repeats: int) -> Tuple[float, float]:
    """Best-of-``repeats`` wall seconds of ``fn`` after one warm-up call, and its mean CPU seconds."""
    fn()
    best, cpu = float("inf"), 0.0
    for _ in range(repeats):
        c0, start = cpu_seconds(), time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
        cpu += cpu_seconds() - c0
    return best, cpu / repeats


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args: argparse.Namespace) -> Dict[str, Any]:
    from stzsar.data import VideoDataset, build_split
    from stzsar.eval.engine import (EvalSettings, _autocast, autocast_dtype, class_logits, collate_eval, evaluate,
                                    intra_op_threads, model_cpu_threads, resolve_device)
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
    # The threads evaluate() gives the model; the model's parts are measured with the same.
    threads = model_cpu_threads(device, args.workers, args.model_threads)
    results: Dict[str, Any] = {"model threads": threads or torch.get_num_threads()}
    cpu: Dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        list_file = make_split(folder, args.videos, args.frames_per_video, args.width, args.height, args.classes)
        (folder / "labels.txt").write_text("\n".join(classes) + "\n")
        split = build_split("bike", str(list_file), str(folder), labels=str(folder / "labels.txt"))
        dataset = VideoDataset(split, spec, training=False)
        loader_args = dict(batch_size=args.batch_size, num_workers=args.workers, collate_fn=collate_eval,
                           pin_memory=device.type == "cuda", prefetch_factor=args.prefetch if args.workers else None)

        # decode: whole passes of the loader, worker start included (the workers have ended,
        # and been waited for, when a pass ends: their CPU time is the children's).
        def decode_pass():
            c0, start = cpu_seconds(), time.perf_counter()
            first, done = None, 0
            for item in DataLoader(dataset, **loader_args):
                first = first if first is not None else item
                done += int(item["label"].numel())
            return done / (time.perf_counter() - start), (cpu_seconds() - c0) / done, first

        rate, cpu_video, batch = decode_pass()

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

        with intra_op_threads(threads):
            frames, patches = vit()

        @torch.no_grad()
        def sti():
            with _autocast(device, amp):
                out = class_logits(model, frames, patches, bank)
            sync(device)
            return out

        with intra_op_threads(threads):
            logits = sti().float().view(B, -1, len(classes))
        store = SplitStore(folder / "store", {"benchmark": True})
        labels, indices = batch["label"], batch["index"]

        def write():
            store.add(logits, labels, indices)
            store.flush()

        parts = (("copy", copy),) if device.type == "cuda" else ()
        for name, fn in parts + (("vit", vit), ("sti", sti), ("store", write)):
            with intra_op_threads(threads):
                seconds, cpu_spent = timed(fn, args.repeats)
            results[name] = B / seconds if seconds > 0 else float("inf")
            cpu[name] = cpu_spent / B

        # end to end, as stzsar eval runs it (the clock includes the workers' start). Passes of
        # decode alone and end to end alternate, so that both meet the same load of other jobs;
        # the best of each counts.
        settings = EvalSettings(batch_size=args.batch_size, num_workers=args.workers, device=str(device),
                                progress=False, prefetch=args.prefetch, flush_every=4,
                                cpu_threads=args.model_threads)

        def end_to_end_pass(number: int):
            c0, start = cpu_seconds(), time.perf_counter()
            result = evaluate(model, dataset, bank, classes, settings=settings,
                              store=SplitStore(folder / f"e2e{number}", {"benchmark": True}))
            videos = result.num_scored + result.num_skipped
            return videos / (time.perf_counter() - start), (cpu_seconds() - c0) / videos

        passes = {"decode": [(rate, cpu_video)], "end to end": [end_to_end_pass(0)]}
        for number in range(1, args.passes):
            passes["decode"].append(decode_pass()[:2])
            passes["end to end"].append(end_to_end_pass(number))
        for name, figures in passes.items():
            results[name], cpu[name] = max(figures)
        results["passes (videos/s, CPU s per video)"] = passes
    # The model's parts run one after the other in the main process; decoding runs beside them.
    model_parts = [k for k in ("copy", "vit", "sti", "store") if k in results]
    results["model (vit + sti + store)"] = 1.0 / sum(1.0 / results[k] for k in model_parts)
    cpu["model (vit + sti + store)"] = sum(cpu[k] for k in model_parts)
    results["end to end / decode"] = results["end to end"] / results["decode"]
    results["end to end / min(decode, model)"] = results["end to end"] / min(results["decode"],
                                                                          results["model (vit + sti + store)"])
    if device.type == "cpu":
        # Workers and model share the cores: together they allow at most this many videos/s.
        results["cpu bound"] = args.cores / (cpu["decode"] + cpu["model (vit + sti + store)"])
    results["cpu seconds per video"] = cpu
    results["load average (1, 5, 15 min) at start"] = args.load_at_start
    results["load average (1, 5, 15 min) at end"] = list(os.getloadavg())
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="stzsar-small", help="model configuration (random weights)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--videos", type=int, default=64)
    parser.add_argument("--frames-per-video", type=int, default=250, help="250: 10 s at 25 fps")
    parser.add_argument("--width", type=int, default=426)
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--num-frames", type=int, default=8, help="frames per clip")
    parser.add_argument("--classes", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=None, help="decoding workers (default: the usable cores)")
    parser.add_argument("--model-threads", type=int, default=0,
                        help="the model's intra-op threads (default 0: as evaluate chooses them)")
    parser.add_argument("--prefetch", type=int, default=4, help="batches each worker prepares ahead")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--passes", type=int, default=3, help="alternate passes of decode and end to end (best counts)")
    parser.add_argument("--no-save", action="store_true", help="print only; no results file")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from stzsar.eval.engine import usable_cores

    args = build_parser().parse_args(argv)
    args.cores = usable_cores()
    if args.workers is None:
        args.workers = args.cores
    args.load_at_start = list(os.getloadavg())
    results = run(args)
    cpu = results["cpu seconds per video"]
    rows = []
    order = ["decode", "copy", "vit", "sti", "store", "model (vit + sti + store)", "end to end", "cpu bound"]
    for name in [n for n in order if n in results] + [n for n in results if n.startswith("end to end /")]:
        value = results[name]
        ratio = name.startswith("end to end /")
        timed_part = not ratio and name in cpu
        rows.append([name, f"{value:.3f}" if ratio else f"{value:.2f}",
                     f"{cpu[name]:.4f}" if timed_part else "",
                     f"{cpu[name] * value:.2f}" if timed_part and name in ("decode", "end to end") else ""])
    print(f"{describe_machine()}; {args.model}, {args.num_frames} frames, {args.classes} classes, "
          f"batch {args.batch_size}, {args.workers} decoding worker(s), {results['model threads']} model "
          f"thread(s); load average {args.load_at_start[0]:.2f} at start, "
          f"{results['load average (1, 5, 15 min) at end'][0]:.2f} at end")
    print(format_table(["part", "videos/s (ratios: end to end / ...)", "CPU s per video", "cores busy"], rows))
    if not args.no_save:
        device = "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"
        tag = f"{device}_{args.model}_w{args.workers}_c{args.classes}"
        tag += f"_t{args.model_threads}" if args.model_threads else ""
        path = write_result("eval_throughput", tag, vars(args), results)
        print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
