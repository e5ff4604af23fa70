"""Speed and memory of the fused STI kernels against the naive formulation, in one run.

    python -m benchmarks.kernels                          # CPU default shape, fp32
    python -m benchmarks.kernels --shape k400             # on a GPU: bf16, the K400 eval shape
    python -m benchmarks.kernels --op sti --shape k400    # the whole STI step

``--op maxsim`` (default) times ``stzsar.ops.spatial_maxsim`` for every backend available on the
device (``stzsar.ops.available_backends``) and the *naive* formulation: one big matmul of all
patches by all words (the word mask folded in as a -inf bias) and a max over (patch, word), with
autograd's backward through it. Each is timed forward only and forward+backward (warm-up, then
the median of several repeats; CUDA events on a GPU). Achieved GFLOP/s use the op's useful flops,
``2*B*T*Np*C*Nw*D`` (forward; fwd+bwd adds the winners-only backward, ``4*B*C*T*D``, for every
row, so rows compare the same work), and are set against the dense matmul rate of the same
machine, measured in the same run with ``torch.mm`` on the naive formulation's own GEMM size.

Peak memory is the extra memory above the inputs:
- GPU: ``torch.cuda.max_memory_allocated()`` minus what was allocated before the call;
- CPU: each case runs once more in a fresh subprocess, which resets the kernel's peak-RSS mark
  (``/proc/self/clear_refs``) after building its inputs and a small warm-up, and reports
  ``VmHWM - VmRSS`` around the call (``ru_maxrss`` deltas where ``clear_refs`` is not allowed).
  Resident memory counts what the process really touched, including allocator slack.

``--peers`` also times the published late-interaction MaxSim kernels (``flash-maxsim``,
``late-interaction-kernels``; ``benchmarks/peers.py``) on the same similarity volume: each class a
query of its words, each frame a document of its patches; they sum the per-word maxima where the
op takes their max. Their rows carry ``peer: true``; every fused row gets ``vs_peer`` (peer time /
its time, per peer and mode), and their forward row a check of their per-word maxima against a
float64 reference and of their max over the words against the op. On the CPU they run only under
``TRITON_INTERPRET=1`` (times meaningless; forward only, their backward needs CUDA tensors).

``--op sti`` dispatches to ``benchmarks/sti_step.py`` (``run(args) -> rows``) when it exists.

Results: one table on stdout, and JSON (``--json-out``, default
``benchmarks/results/kernels[-sti]-<device>.json``) with the machine, versions and git commit.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from benchmarks.common import RESULTS_DIR, describe_machine, fmt, format_table, proc_status_kb, provenance

SHAPES: Dict[str, Dict[str, int]] = {
    # The CPU default (a UCF-101-sized class bank).
    "default": dict(B=4, C=101, T=8, Np=196, Nw=32, D=512),
    # One Kinetics-400 evaluation batch (ViT-B/16 at 224 px).
    "k400": dict(B=32, C=400, T=16, Np=196, Nw=32, D=512),
    # Seconds-long smoke runs (the dry run of benchmarks/gpu_check.sh).
    "tiny": dict(B=2, C=6, T=2, Np=20, Nw=6, D=32),
}
DIM_FLAGS = {"B": "batch", "C": "classes", "T": "frames", "Np": "patches", "Nw": "words", "D": "dim"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
NAIVE = "naive"
FUSED = ("cpu", "cuda", "triton")

# The spatial op's targets.
CPU_TARGETS = {"fwd_vs_naive": 1.0, "fwd_vs_matmul_time": 1.25, "fwdbwd_vs_naive": 2.5, "mem_vs_naive": 1 / 20}
GPU_TARGETS = {"fwd_frac_matmul": 0.5, "fwdbwd_vs_naive": 2.5, "fwd_vs_peers": 1.0, "fwdbwd_vs_peers": 1.0}


# --------------------------------------------------------------------------------------------
# The formulations
# --------------------------------------------------------------------------------------------


def naive_spatial_maxsim(patches: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
    """``S_sp [B, C, T]`` from the full ``[B*T*Np, C*Nw]`` similarity matrix (one GEMM)."""
    B, T, Np, D = patches.shape
    C, Nw, _ = words.shape
    bias = torch.zeros(C * Nw, dtype=patches.dtype, device=patches.device)
    bias = bias.masked_fill(~word_mask.reshape(-1), float("-inf"))
    sim = torch.addmm(bias, patches.reshape(-1, D), words.reshape(-1, D).t())
    return sim.view(B, T, Np, C, Nw).amax(dim=(2, 4)).transpose(1, 2).float()


def make_call(backend: str) -> Callable[..., torch.Tensor]:
    if backend == NAIVE:
        return naive_spatial_maxsim
    from stzsar.ops import spatial_maxsim

    return lambda p, w, m: spatial_maxsim(p, w, m, backend=backend)


def make_inputs(dims: Dict[str, int], dtype: torch.dtype, device: torch.device, seed: int = 0):
    """L2-normalised random features and ragged word masks (each class keeps >= Nw/2 words)."""
    gen = torch.Generator().manual_seed(seed)
    B, C, T, Np, Nw, D = (dims[k] for k in ("B", "C", "T", "Np", "Nw", "D"))
    patches = torch.nn.functional.normalize(torch.randn(B, T, Np, D, generator=gen), dim=-1)
    words = torch.nn.functional.normalize(torch.randn(C, Nw, D, generator=gen), dim=-1)
    lengths = torch.randint(max(1, Nw // 2), Nw + 1, (C,), generator=gen)
    word_mask = torch.arange(Nw).view(1, Nw) < lengths.view(C, 1)
    grad = torch.randn(B, C, T, generator=gen)
    return (
        patches.to(device=device, dtype=dtype),
        words.to(device=device, dtype=dtype),
        word_mask.to(device),
        grad.to(device),
    )


def maxsim_flops(dims: Dict[str, int], backward: bool) -> int:
    B, C, T, Np, Nw, D = (dims[k] for k in ("B", "C", "T", "Np", "Nw", "D"))
    flops = 2 * B * T * Np * C * Nw * D
    return flops + (4 * B * C * T * D if backward else 0)


def output_bytes(dims: Dict[str, int], dtype: torch.dtype, backward: bool) -> int:
    """What every formulation must return: the scores (fp32), and with the backward the two input
    gradients. Peak memory minus this is the working memory a formulation adds."""
    B, C, T, Np, Nw, D = (dims[k] for k in ("B", "C", "T", "Np", "Nw", "D"))
    elem = torch.empty((), dtype=dtype).element_size()
    return B * C * T * 4 + ((B * T * Np * D + C * Nw * D) * elem if backward else 0)


def naive_bytes(dims: Dict[str, int], dtype: torch.dtype, backward: bool) -> int:
    """What the naive formulation holds at its peak: the similarity matrix (forward); with the
    backward also its gradient and the equality mask of ``amax``'s backward."""
    n = math.prod(dims[k] for k in ("B", "C", "T", "Np", "Nw"))
    elem = torch.empty((), dtype=dtype).element_size()
    return n * elem * (1 if not backward else 2) + (n if backward else 0)


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


# --------------------------------------------------------------------------------------------
# Timing and memory
# --------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_case(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> List[float]:
    """Seconds of each of ``repeats`` calls after ``warmup`` untimed ones (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def case_fn(backend: str, inputs, backward: bool) -> Callable[[], Any]:
    patches, words, word_mask, grad = inputs
    call = make_call(backend)
    if not backward:

        def forward():
            with torch.no_grad():
                return call(patches, words, word_mask)

        return forward
    p = patches.detach().requires_grad_(True)
    w = words.detach().requires_grad_(True)

    def forward_backward():
        p.grad = w.grad = None
        call(p, w, word_mask).backward(grad)

    return forward_backward


def gpu_peak_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak allocated memory during ``fn`` above what was allocated before it."""
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    result = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del result
    return int(peak)


def _measure_cpu_memory_here(backend: str, backward: bool, dims: Dict[str, int], dtype: torch.dtype) -> Dict[str, Any]:
    """Runs inside the subprocess: peak resident growth of one call."""
    device = torch.device("cpu")
    # Warm-up on a small shape loads libraries and kernels without touching the full size.
    small = dict(dims, B=1, T=1, C=min(2, dims["C"]))
    case_fn(backend, make_inputs(small, dtype, device), backward)()
    inputs = make_inputs(dims, dtype, device)
    fn = case_fn(backend, inputs, backward)
    gc.collect()
    before = proc_status_kb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current RSS
        method = "VmHWM-after-clear_refs"
        fn()
        peak = proc_status_kb("VmHWM")
        extra = (peak - before) * 1024
    except OSError:
        method = "ru_maxrss-delta"
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        extra = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024
    return {"peak_bytes": int(extra), "method": method}


def cpu_peak_bytes(backend: str, backward: bool, dims: Dict[str, int], dtype_name: str) -> Dict[str, Any]:
    """Run one case in a fresh interpreter (so earlier cases leave no resident slack behind)."""
    cmd = [sys.executable, "-m", "benchmarks.kernels", "--_memory-case", f"{backend}:{int(backward)}", "--dtype", dtype_name]
    for key, flag in DIM_FLAGS.items():
        cmd += [f"--{flag}", str(dims[key])]
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=1800)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"  memory of {backend} ({'fwd+bwd' if backward else 'fwd'}) not measured: {last}", file=sys.stderr)
        return {"peak_bytes": None, "method": f"failed: {last}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def matmul_rate(device: torch.device, dtype: torch.dtype, m: int, k: int, n: int, warmup: int, repeats: int) -> Dict[str, Any]:
    """Dense ``torch.mm`` rate (GFLOP/s) for an ``[m, k] @ [k, n]`` product."""
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(m, k, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(k, n, generator=gen).to(device=device, dtype=dtype)
    out = torch.empty(m, n, device=device, dtype=dtype)
    times = time_case(lambda: torch.mm(a, b, out=out), device, warmup, repeats)
    seconds = statistics.median(times)
    del a, b, out
    return {"dtype": str(dtype).replace("torch.", ""), "shape": [m, k, n], "seconds": seconds, "gflops": 2 * m * k * n / seconds / 1e9}


# --------------------------------------------------------------------------------------------
# Rows, tables, targets
# --------------------------------------------------------------------------------------------


def finish_rows(rows: List[Dict[str, Any]], matmul_gflops: Optional[float]) -> None:
    """Fill the derived columns of rows that have ``time_s`` and ``flops``: ``gflops``,
    ``frac_matmul`` and ``vs_naive`` (the naive row of the same op and mode, time ratio)."""
    for row in rows:
        if row.get("time_s") and row.get("flops"):
            row.setdefault("gflops", row["flops"] / row["time_s"] / 1e9)
            if matmul_gflops:
                row.setdefault("frac_matmul", row["gflops"] / matmul_gflops)
    for row in rows:
        naive = next(
            (r for r in rows if r.get("backend") == NAIVE and r.get("mode") == row.get("mode") and r.get("op") == row.get("op") and r.get("time_s")),
            None,
        )
        if naive and row.get("time_s"):
            row.setdefault("vs_naive", naive["time_s"] / row["time_s"])


def add_vs_peer(rows: List[Dict[str, Any]]) -> None:
    """``vs_peer`` of every timed fused row: each peer's time in the same mode / the row's time."""
    for row in rows:
        if row.get("backend") not in FUSED or not row.get("time_s"):
            continue
        ratios = {
            peer["backend"]: peer["time_s"] / row["time_s"]
            for peer in rows
            if peer.get("peer") and peer.get("mode") == row.get("mode") and peer.get("time_s")
        }
        if ratios:
            row["vs_peer"] = ratios


def _vs_peer_text(row: Dict[str, Any]) -> str:
    from benchmarks.peers import PEERS

    ratios = row.get("vs_peer") or {}
    return ", ".join(f"{PEERS[name].short} {fmt(value)}x" for name, value in ratios.items()) or "-"


def print_table(rows: List[Dict[str, Any]], device: torch.device, title: str, notes: Sequence[str]) -> None:
    unit, scale = ("TFLOP/s", 1e-3) if device.type == "cuda" else ("GFLOP/s", 1.0)
    with_peers = any(row.get("vs_peer") for row in rows)
    body = []
    for row in rows:
        peak = row.get("peak_bytes")
        body.append(
            [
                row.get("backend"),
                row.get("mode"),
                fmt(row["time_s"] * 1e3, 3 if device.type == "cuda" else 1) if row.get("time_s") else "-",
                (fmt(row["vs_naive"]) + "x") if row.get("vs_naive") else "-",
                fmt(row["gflops"] * scale, 1) if row.get("gflops") else "-",
                (fmt(100 * row["frac_matmul"], 1) + "%") if row.get("frac_matmul") else "-",
                fmt(peak / 2**20, 1) if peak is not None else "-",
                fmt(row["work_bytes"] / 2**20, 1) if row.get("work_bytes") is not None else "-",
                row.get("check", "-"),
                row.get("note", ""),
            ]
        )
        if with_peers:
            body[-1].insert(4, _vs_peer_text(row))
    headers = ["backend", "mode", "time ms", "vs naive", unit, "of matmul", "peak MB", "work MB", "check", "note"]
    if with_peers:
        headers.insert(4, "vs peers")
    print(format_table(headers, body, title=title, notes=notes))


def _best(rows, mode, key, highest=True):
    cands = [r for r in rows if r.get("backend") in FUSED and r.get("mode") == mode and r.get(key)]
    if not cands:
        return None
    return (max if highest else min)(cands, key=lambda r: r[key])


def check_targets(rows: List[Dict[str, Any]], device: torch.device, matmul_gflops: float) -> List[Dict[str, Any]]:
    """The spatial op's targets, each with the measured ratio and the backend that achieved it."""
    out: List[Dict[str, Any]] = []

    def add(name, required, measured, backend, higher_is_better=True, note=""):
        if measured is None:
            out.append({"target": name, "required": required, "measured": None, "backend": backend, "status": "n/a", "note": note})
            return
        ok = measured >= required if higher_is_better else measured <= required
        out.append({"target": name, "required": required, "measured": measured, "backend": backend, "status": "PASS" if ok else "MISS", "note": note})

    naive_missing = "naive not measured" if not any(r["backend"] == NAIVE and r.get("time_s") for r in rows) else ""
    if device.type == "cpu":
        fwd = _best(rows, "fwd", "vs_naive")
        add(">= naive speed, forward (x)", CPU_TARGETS["fwd_vs_naive"], fwd and fwd["vs_naive"], fwd and fwd["backend"], note=naive_missing)
        fwd_t = _best(rows, "fwd", "gflops")
        ratio = (matmul_gflops / fwd_t["gflops"]) if fwd_t else None  # time / matmul time for same flops
        add("forward time / fp32 matmul time (<=)", CPU_TARGETS["fwd_vs_matmul_time"], ratio, fwd_t and fwd_t["backend"], higher_is_better=False)
        fb = _best(rows, "fwd+bwd", "vs_naive")
        add("fwd+bwd faster than naive (x)", CPU_TARGETS["fwdbwd_vs_naive"], fb and fb["vs_naive"], fb and fb["backend"], note=naive_missing)
        # Memory: per mode, fused working memory / naive working memory (peak above the inputs,
        # less the outputs every formulation returns); a backend's figure is its worse mode.
        ratios: Dict[str, float] = {}
        for mode in ("fwd", "fwd+bwd"):
            naive = next((r for r in rows if r["backend"] == NAIVE and r["mode"] == mode and r.get("work_bytes")), None)
            for r in rows:
                if naive and r["backend"] in FUSED and r["mode"] == mode and r.get("work_bytes") is not None:
                    ratio = r["work_bytes"] / naive["work_bytes"]
                    ratios[r["backend"]] = max(ratios.get(r["backend"], 0.0), ratio)
        if ratios:
            backend = min(ratios, key=ratios.get)
            add("working memory / naive, worse mode (<=)", CPU_TARGETS["mem_vs_naive"], ratios[backend], backend, higher_is_better=False)
        else:
            add("working memory / naive, worse mode (<=)", CPU_TARGETS["mem_vs_naive"], None, None, note="memory not measured")
    else:
        fwd = _best(rows, "fwd", "frac_matmul")
        add("forward / bf16 matmul rate (>=)", GPU_TARGETS["fwd_frac_matmul"], fwd and fwd["frac_matmul"], fwd and fwd["backend"])
        fb = _best(rows, "fwd+bwd", "vs_naive")
        add("fwd+bwd faster than naive (x)", GPU_TARGETS["fwdbwd_vs_naive"], fb and fb["vs_naive"], fb and fb["backend"], note=naive_missing)
        for mode, key, name in (("fwd", "fwd_vs_peers", "forward"), ("fwd+bwd", "fwdbwd_vs_peers", "fwd+bwd")):
            timed_peers = [r for r in rows if r.get("peer") and r.get("mode") == mode and r.get("time_s")]
            if not timed_peers:
                continue
            fastest = min(timed_peers, key=lambda r: r["time_s"])
            ours = _best(rows, mode, "time_s", highest=False)
            measured = ours and fastest["time_s"] / ours["time_s"]
            add(f"{name} vs the faster peer (x)", GPU_TARGETS[key], measured, ours and ours["backend"], note=f"fastest peer: {fastest['backend']}")
    return out


def print_targets(targets: List[Dict[str, Any]]) -> None:
    print("\nTargets (spatial op):")
    for t in targets:
        measured = "-" if t["measured"] is None else f"{t['measured']:.3f}"
        extra = f"  [{t['note']}]" if t.get("note") else ""
        print(f"  {t['status']:<4}  {t['target']:<40} required {t['required']:.3f}  measured {measured}  ({t['backend'] or '-'}){extra}")


# --------------------------------------------------------------------------------------------
# The maxsim benchmark
# --------------------------------------------------------------------------------------------


def cross_check(backends: Sequence[str], inputs, device: torch.device) -> Dict[str, str]:
    """Each backend's scores against the reference backend ("torch") on the benchmark's inputs."""
    from stzsar.ops import spatial_maxsim_with_index

    patches, words, word_mask, _ = inputs
    with torch.no_grad():
        ref, ref_index = spatial_maxsim_with_index(patches, words, word_mask, backend="torch")
        scale = float(ref.abs().max().clamp_min(1e-12))
        result = {}
        for backend in backends:
            if backend == NAIVE:
                out, index = naive_spatial_maxsim(patches, words, word_mask), None
                tol = 1e-5 if patches.dtype == torch.float32 else 1e-2  # scores rounded to the input dtype
            else:
                out, index = spatial_maxsim_with_index(patches, words, word_mask, backend=backend)
                tol = 1e-4
            err = float((out.float() - ref).abs().max()) / scale
            text = f"{'ok' if err <= tol else 'FAIL'} {err:.1e}"
            if index is not None:
                same = float((index == ref_index).float().mean())
                text += f", idx {100 * same:.2f}%"
            result[backend] = text
            del out, index
    return result


def time_row(row: Dict[str, Any], fn: Callable[[], Any], device: torch.device, args) -> None:
    """The row's median time and every timing; on a GPU also its peak memory."""
    times = time_case(fn, device, args.warmup, args.repeats)
    row["time_s"] = statistics.median(times)
    row["times_s"] = times
    if device.type == "cuda":
        row["peak_bytes"] = gpu_peak_bytes(fn, device)
        row["mem_method"] = "cuda.max_memory_allocated - allocated before"


def require_peers(device: torch.device) -> None:
    """Fail before any timing when a peer cannot run here."""
    from benchmarks import peers

    for name in peers.PEERS:
        try:
            peers.load(name)
            peers.check_device(name, torch.empty(0, device=device))
        except peers.PeerUnavailable as error:
            raise SystemExit(f"--peers: {error}") from error


def run_peers(args, device: torch.device, dtype: torch.dtype, dims: Dict[str, int], inputs, rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Rows of the published MaxSim kernels (``benchmarks/peers.py``) on the benchmark's inputs,
    appended to ``rows``; returns what each peer is and how it checked."""
    from benchmarks import peers
    from stzsar.ops import spatial_maxsim

    patches, words, word_mask, grad = inputs
    info: Dict[str, Any] = {}
    if not args.no_check:
        with torch.no_grad():
            ours = spatial_maxsim(patches[:1, :2], words, word_mask)  # the slice peers.check compares
    for name, peer in peers.PEERS.items():
        entry = info[name] = {"version": peers.version(name), "api": peer.api, "compared": peers.COMPARED}
        if not args.no_check:
            entry["check"] = peers.check(name, patches, words, word_mask, ours)
        for backward in (False, True):
            mode = "fwd+bwd" if backward else "fwd"
            flops = maxsim_flops(dims, False) + (peers.backward_flops(dims) if backward else 0)
            row: Dict[str, Any] = {"op": "maxsim", "backend": name, "peer": True, "version": entry["version"], "mode": mode, "flops": flops}
            if backward and device.type == "cpu":
                row["note"] = f"not run: {peer.cpu_backward}"
                rows.append(row)
                continue
            fn = peers.timed_call(name, patches, words, word_mask, grad, backward)
            time_row(row, fn, device, args)
            if row.get("peak_bytes") is not None:
                row["work_bytes"] = max(0, row["peak_bytes"] - output_bytes(dims, dtype, backward))
            if not backward and "check" in entry:
                row["check"] = entry["check"]["text"]
            rows.append(row)
            print(f"  {peer.short:>7} {mode:<8} {row['time_s'] * 1e3:10.3f} ms  ({name} {entry['version']})", flush=True)
            del fn
            gc.collect()
    return info


def run_maxsim(args, device: torch.device, dtype: torch.dtype, dims: Dict[str, int]) -> Dict[str, Any]:
    from stzsar.ops import available_backends

    backends = list(available_backends(device)) + [NAIVE]
    if args.backends:
        wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
        unknown = [b for b in wanted if b not in backends]
        if unknown:
            raise SystemExit(f"backend(s) {unknown} not available on {device.type} here (available: {backends})")
        backends = wanted

    if args.peers:
        require_peers(device)
    B, C, T, Np, Nw, D = (dims[k] for k in ("B", "C", "T", "Np", "Nw", "D"))
    # The machine's dense matmul rate at the naive formulation's GEMM size.
    rates = {}
    rate_dtypes = [torch.float32] if device.type == "cpu" else [torch.bfloat16, torch.float32]
    if dtype not in rate_dtypes:
        rate_dtypes.append(dtype)
    for rd in rate_dtypes:
        if device.type == "cuda" and rd == torch.float32:
            torch.backends.cuda.matmul.allow_tf32 = False  # plain fp32, like the fp32 kernels
        rates[str(rd).replace("torch.", "")] = matmul_rate(device, rd, B * T * Np, D, C * Nw, args.warmup, args.repeats)
    matmul_gflops = rates[str(dtype).replace("torch.", "")]["gflops"]

    inputs = make_inputs(dims, dtype, device)
    notes = []
    checks = cross_check([b for b in backends if b != "torch"] + ["torch"], inputs, device) if not args.no_check else {}
    rows: List[Dict[str, Any]] = []
    free = available_bytes(device)
    for backend in backends:
        for backward in (False, True):
            mode = "fwd+bwd" if backward else "fwd"
            row: Dict[str, Any] = {"op": "maxsim", "backend": backend, "mode": mode, "flops": maxsim_flops(dims, backward)}
            if backend == NAIVE:
                need = naive_bytes(dims, dtype, backward)
                if need * 1.2 > free:
                    row["note"] = f"skipped: needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
                    rows.append(row)
                    continue
            if backend == "torch" and device.type == "cpu" and backward and args.skip_slow_reference:
                row["note"] = "skipped (--skip-slow-reference)"
                rows.append(row)
                continue
            fn = case_fn(backend, inputs, backward)
            time_row(row, fn, device, args)
            if device.type == "cpu" and not args.no_memory:
                mem = cpu_peak_bytes(backend, backward, dims, args.dtype)
                row["peak_bytes"] = mem["peak_bytes"]
                row["mem_method"] = mem["method"]
            if row.get("peak_bytes") is not None:
                row["work_bytes"] = max(0, row["peak_bytes"] - output_bytes(dims, dtype, backward))
            if not backward and backend in checks:
                row["check"] = checks[backend]
            rows.append(row)
            print(f"  {backend:>7} {mode:<8} {row['time_s'] * 1e3:10.3f} ms", flush=True)
            del fn
            gc.collect()
    peer_info = run_peers(args, device, dtype, dims, inputs, rows) if args.peers else None
    finish_rows(rows, matmul_gflops)
    add_vs_peer(rows)
    targets = check_targets(rows, device, matmul_gflops)

    notes += [
        f"machine: {describe_machine()}",
        f"shape: B={B} C={C} T={T} Np={Np} Nw={Nw} D={D}, {args.dtype}; {maxsim_flops(dims, False) / 1e9:.1f} GFLOP forward",
        "matmul: " + ", ".join(f"{k} {v['gflops'] * (1e-3 if device.type == 'cuda' else 1):,.1f} {'TFLOP/s' if device.type == 'cuda' else 'GFLOP/s'} ({'x'.join(map(str, v['shape']))})" for k, v in rates.items()),
        f"time: median of {args.repeats} after {args.warmup} warm-up; rate = useful flops (forward; fwd+bwd adds the winners-only backward) / time",
        "peak MB: " + ("cuda.max_memory_allocated above the inputs" if device.type == "cuda" else "resident-set growth of one call in a fresh process (VmHWM after clear_refs)")
        + "; work MB: peak less the outputs every formulation returns (scores; fwd+bwd: both input gradients)",
        "naive: one addmm of all patches x all words (mask as -inf bias) + amax over (patch, word); autograd backward",
    ]
    if peer_info:
        from benchmarks.peers import COMPARED, PEERS

        notes += [
            "peers: " + ", ".join(f"{PEERS[n].short} = {n} {i['version']}" for n, i in peer_info.items()) + f"; {COMPARED}",
            "peers' rate: forward flops as ours; fwd+bwd adds their winners-only backward, 4*B*T*C*Nw*D (one winner per word); "
            "vs peers = peer time / the row's time",
        ]
        if device.type == "cpu":
            notes.append("peers on the CPU: Triton's interpreter (times say nothing about speed)")
    print_table(rows, device, f"stzsar::spatial_maxsim on {device.type}", notes)
    print_targets(targets)
    result = {"rows": rows, "matmul": rates, "targets": targets, "notes": notes, "checks": checks}
    if peer_info is not None:
        result["peers"] = peer_info
    return result


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kernels", description=__doc__.split("\n\n")[0])
    parser.add_argument("--op", choices=("maxsim", "sti"), default="maxsim")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="default", help="preset shape (default: the CPU shape, a UCF-101-sized class bank)")
    for key, flag in DIM_FLAGS.items():
        parser.add_argument(f"--{flag}", type=int, default=None, help=f"override {key} of the preset")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="input dtype (default: float32 on CPU, bfloat16 on GPU)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    parser.add_argument("--backends", default=None, help="comma list (default: every available backend and naive)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 1 on CPU, 3 on GPU)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls (default 5 on CPU, 20 on GPU)")
    parser.add_argument("--no-memory", action="store_true", help="skip the CPU memory subprocesses")
    parser.add_argument("--no-check", action="store_true", help="skip the cross-check of scores between backends")
    parser.add_argument("--skip-slow-reference", action="store_true", help="skip the torch reference backward on CPU")
    parser.add_argument(
        "--peers",
        action="store_true",
        help="also time flash-maxsim and late-interaction-kernels on the same similarity volume (benchmarks/peers.py; "
        "CUDA, or CPU under TRITON_INTERPRET=1)",
    )
    parser.add_argument("--json-out", default=None, help="JSON path (default benchmarks/results/kernels[-sti]-<device>.json)")
    parser.add_argument("--_memory-case", dest="memory_case", default=None, help=argparse.SUPPRESS)
    return parser


def resolve(args) -> tuple:
    device = torch.device("cuda" if (args.device == "auto" and torch.cuda.is_available()) else ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no GPU is visible")
    args.dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    args.warmup = args.warmup if args.warmup is not None else (3 if device.type == "cuda" else 1)
    args.repeats = args.repeats if args.repeats is not None else (20 if device.type == "cuda" else 5)
    if args.warmup < 0 or args.repeats < 1:
        raise SystemExit("--warmup must be >= 0 and --repeats >= 1")
    dims = dict(SHAPES[args.shape])
    for key, flag in DIM_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            if value < 1:
                raise SystemExit(f"--{flag} must be >= 1, got {value}")
            dims[key] = value
    return device, DTYPES[args.dtype], dims


def run_sti(args, device: torch.device, dtype: torch.dtype, dims: Dict[str, int]) -> Optional[Dict[str, Any]]:
    """The whole STI step benchmark, from ``benchmarks/sti_step.py`` when it exists."""
    try:
        module = importlib.import_module("benchmarks.sti_step")
    except ModuleNotFoundError as error:
        if error.name != "benchmarks.sti_step":
            raise
        print("--op sti is not available: benchmarks/sti_step.py does not exist")
        return None
    # What run(args) can read besides the parsed flags.
    args.device_obj, args.dtype_obj, args.dims = device, dtype, dims
    args.time_case, args.gpu_peak_bytes = time_case, gpu_peak_bytes
    rows = list(module.run(args))
    for row in rows:
        row.setdefault("op", "sti")
    matmul = None
    if not any(r.get("frac_matmul") for r in rows):
        B, C, T, Np, Nw, D = (dims[k] for k in ("B", "C", "T", "Np", "Nw", "D"))
        matmul = matmul_rate(device, dtype, B * T * Np, D, C * Nw, args.warmup, args.repeats)
    finish_rows(rows, matmul and matmul["gflops"])
    targets = list(module.targets(rows, args)) if hasattr(module, "targets") else []
    print_table(rows, device, f"STI step (benchmarks/sti_step.py) on {device.type}", [f"machine: {describe_machine()}"])
    if targets:
        print("\nTargets (whole STI step):")
        for t in targets:
            print(f"  {t.get('status', '?'):<4}  {t.get('target')}: required {t.get('required')} measured {t.get('measured')}")
    return {"rows": rows, "matmul": matmul, "targets": targets}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    device, dtype, dims = resolve(args)
    if args.memory_case:  # internal: one CPU memory measurement, printed as JSON
        backend, backward = args.memory_case.split(":")
        print(json.dumps(_measure_cpu_memory_here(backend, bool(int(backward)), dims, dtype)))
        return 0
    print(f"benchmarks.kernels --op {args.op}: {device.type}, {args.dtype}, {dims}", flush=True)
    if args.op == "maxsim":
        result = run_maxsim(args, device, dtype, dims)
    else:
        result = run_sti(args, device, dtype, dims)
        if result is None:
            return 3
    name = "kernels" if args.op == "maxsim" else "kernels-sti"
    path = Path(args.json_out) if args.json_out else RESULTS_DIR / f"{name}-{device.type}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": f"kernels/{args.op}",
        **provenance(),
        "config": {"shape": args.shape, "dims": dims, "dtype": args.dtype, "device": device.type, "warmup": args.warmup, "repeats": args.repeats},
        **result,
    }
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"\nwrote {path}")
    failed = [r for r in result.get("rows", []) if str(r.get("check", "")).startswith("FAIL")]
    if failed:
        print(f"cross-check FAILED for {[r['backend'] for r in failed]}")
        return 1
    return 0  # a missed target is a result to report, not an error


if __name__ == "__main__":
    sys.exit(main())
