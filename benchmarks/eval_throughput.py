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

The videos are written first, in parallel processes; ``--distinct-videos N`` writes ``N`` files and
lists them again up to ``--videos`` (a few dozen Kinetics-sized files take seconds to write).
``--views 4x3`` decodes and scores the test views of Kinetics' protocol. ``--compile`` is
``stzsar eval``'s (``auto``: on CUDA); when on, the parts above run the compiled model too, their
warm-up call taking the compile.

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
2-core machine measures torch's default (one thread per core) against the default here. On a GPU,
``decoding workers to feed the model`` is the workers times model rate / decode rate: the
cores decoding would need to keep up with the model. Prints a table and writes
``eval_throughput_<device>_<model>_w<workers>_c<classes>.json`` under ``--out`` (default
``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch.utils.data import DataLoader

from benchmarks.common import describe_machine, format_table, step_figures, write_result
from benchmarks.throughput import synthetic_classes


def _write_one(job: Tuple[str, int, int, int]) -> str:
    from stzsar.data.synthetic import write_video

    path, frames, width, height = job
    write_video(path, frames, width, height, gop=50)
    return path


def make_split(folder: Path, count: int, frames: int, width: int, height: int, num_classes: int,
               distinct: Optional[int] = None, processes: int = 1):
    """A list file of ``count`` H.264 videos labelled with the first classes.

    ``distinct`` files are written (default ``count``; lengths ``frames`` to ``frames + 28``), in
    ``processes`` processes, and the list repeats them: decoding a file again costs what decoding
    another file of the same kind costs, and a few dozen files take seconds to write instead of
    minutes."""
    from concurrent.futures import ProcessPoolExecutor

    distinct = min(count, distinct or count)
    jobs = [(str(folder / f"v{i:04d}.mp4"), frames + (i % 5) * 7, width, height) for i in range(distinct)]
    if processes > 1 and distinct > 1:
        # Forked before the model or CUDA exist (run() writes the videos first).
        with ProcessPoolExecutor(max_workers=min(processes, distinct)) as pool:
            list(pool.map(_write_one, jobs))
    else:
        for job in jobs:
            _write_one(job)
    lines = [f"{Path(jobs[i % distinct][0]).name} {i % num_classes}" for i in range(count)]
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

    from stzsar.train.trainer import compile_model, resolve_compile

    classes, attributes = synthetic_classes(args.classes)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        list_file = make_split(folder, args.videos, args.frames_per_video, args.width, args.height, args.classes,
                               args.distinct_videos, args.write_processes or args.cores)
        written = time.perf_counter() - start
        (folder / "labels.txt").write_text("\n".join(classes) + "\n")
        device = resolve_device(args.device)
        amp = autocast_dtype(device, "auto")
        torch.manual_seed(0)
        model = build_model(args.model, pretrained=None, backend="auto").eval().to(device)
        with torch.no_grad():
            bank = model.encode_classes(classes, attributes).to(device)
        compiled = resolve_compile(args.compile, device)
        if compiled:
            # As evaluate() does; the parts' warm-up calls below then include the compile.
            compile_model(model)
        spec = clip_spec(model, args.num_frames, *args.views)
        # The threads evaluate() gives the model; the model's parts are measured with the same.
        threads = model_cpu_threads(device, args.workers, args.model_threads)
        results: Dict[str, Any] = {"model threads": threads or torch.get_num_threads(), "compiled": compiled,
                                   "videos written": min(args.videos, args.distinct_videos or args.videos),
                                   "seconds to write them": written}
        cpu: Dict[str, float] = {}
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
                                cpu_threads=args.model_threads, compile=compiled)

        def end_to_end_pass(number: int):
            c0, start = cpu_seconds(), time.perf_counter()
            result = evaluate(model, dataset, bank, classes, settings=settings,
                              store=SplitStore(folder / f"e2e{number}", {"benchmark": True}))
            videos = result.num_scored + result.num_skipped
            # A skipped video costs less than a scored one: the rate then overstates the speed.
            results["videos scored, skipped (last end-to-end pass)"] = [result.num_scored, result.num_skipped]
            return videos / (time.perf_counter() - start), (cpu_seconds() - c0) / videos

        passes = {"decode": [(rate, cpu_video)], "end to end": [end_to_end_pass(0)]}
        for number in range(1, args.passes):
            passes["decode"].append(decode_pass()[:2])
            passes["end to end"].append(end_to_end_pass(number))
        for name, figures in passes.items():
            results[name], cpu[name] = max(figures)
        results["passes (videos/s, CPU s per video)"] = passes
        if device.type == "cuda":
            results["peak GPU MiB"] = torch.cuda.max_memory_allocated(device) / 2**20
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
    elif args.workers:
        # Decoding scales with its workers while cores are free: the workers it would take to
        # decode as fast as the model scores (each on a core of its own).
        results["decoding workers to feed the model"] = args.workers * results["model (vit + sti + store)"] / results["decode"]
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
    parser.add_argument("--views", type=_views, default=(1, 1),
                        help="test views per video, clips x crops (default 1x1; Kinetics' protocol is 4x3)")
    parser.add_argument("--distinct-videos", type=int, default=None,
                        help="files to write (default: --videos); the list repeats them up to --videos")
    parser.add_argument("--write-processes", type=int, default=0,
                        help="processes writing the videos (default 0: the usable cores)")
    parser.add_argument("--compile", default="auto", choices=("auto", "true", "false"),
                        help="torch.compile the model as stzsar eval --compile does (auto: on CUDA)")
    parser.add_argument("--out", default=None, help="folder of the JSON result (default benchmarks/results/)")
    parser.add_argument("--no-save", action="store_true", help="print only; no results file")
    return parser


def _views(text: str) -> Tuple[int, int]:
    from benchmarks.flops import parse_views

    return parse_views(text)


def summary(results: Dict[str, Any]) -> str:
    """One line for the stage runner's table."""
    text = (f"decode {results['decode']:.1f}, model {results['model (vit + sti + store)']:.1f}, end to end "
            f"{results['end to end']:.1f} videos/s ({results['end to end / min(decode, model)']:.2f} of the slower)")
    if "decoding workers to feed the model" in results:
        text += f"; {results['decoding workers to feed the model']:.0f} decoding workers would feed the model"
    return text


def main(argv: Optional[List[str]] = None) -> int:
    from stzsar.eval.engine import usable_cores

    args = build_parser().parse_args(argv)
    args.cores = usable_cores()
    if args.workers is None:
        args.workers = args.cores
    for name in ("videos", "batch_size", "passes", "repeats"):
        if getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
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
    if "decoding workers to feed the model" in results:
        print(f"decoding workers that would feed the model: {results['decoding workers to feed the model']:.1f} "
              f"({args.workers} ran)")
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}
    if not args.no_save:
        device = "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"
        tag = f"{device}_{args.model}_w{args.workers}_c{args.classes}"
        tag += f"_t{args.model_threads}" if args.model_threads else ""
        tag += f"_v{args.views[0]}x{args.views[1]}" if args.views != (1, 1) else ""
        path = write_result("eval_throughput", tag, config, results, args.out)
        print(f"written: {path}")
    step_figures({"summary": summary(results), "config": config, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
