"""The whole STI step, fused versus the PyTorch formulation (``--op sti``).

    python -m benchmarks.kernels --op sti                    # CPU default shape, fp32
    python -m benchmarks.kernels --op sti --shape k400       # on a GPU: bf16, the K400 eval shape

Two ops are timed, each forward only (``torch.no_grad``) and forward+backward (gradients for the
frames, the patches and the two projections, as in training; the text side is frozen):

``sti``
    The whole step of docs/method.md section 4 from the CLIP features to the cosine, projections included:
    L2 normalisation, ``ReLU(W_p P + b_p)``, ``ReLU(W_w A + b_w)``, then
    - fused (backend ``cpu``/``cuda``/``triton``): ``STIModule.similarity``, i.e.
      ``spatial_maxsim -> temporal_saliency -> sti_similarity`` on that backend;
    - naive: the PyTorch formulation, the full ``[B*T*Np, C*Nw]`` similarity matrix with an amax
      (``benchmarks.kernels.naive_spatial_maxsim``), the ``[B, C, T, Nw]`` logits with a softmax,
      ``f_st [B, C, D]`` and the cosine; autograd's backward through all of it.
``sti-tail``
    Only this issue's part, from ``S_sp`` to the cosine: ``temporal_saliency`` and
    ``sti_similarity`` (fused) against the ``[B, C, T, Nw]`` / ``f_st`` formulation (naive).

Peak extra memory: on a GPU ``torch.cuda.max_memory_allocated`` above what was allocated before
the call; on the CPU the resident-set growth of one call in a fresh subprocess (``VmHWM`` after
``clear_refs``, as in ``benchmarks/kernels.py``), after one full-size warm-up call and with
``MALLOC_MMAP_THRESHOLD_=65536`` so that every large block is fresh pages. ``work MB`` is that peak less the outputs every formulation returns
(the cosines and, with the backward, the gradients of the inputs and parameters).

Targets: the fused step at least 2x faster than the naive one forward+backward, and at
most a tenth of its peak extra memory.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from benchmarks.common import proc_status_kb

NAIVE = "naive"
OPS = ("sti", "sti-tail")
TARGETS = {"fwdbwd_vs_naive": 2.0, "peak_vs_naive": 0.1}
TEMPERATURE = 0.01
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DIM_KEYS = ("B", "C", "T", "Np", "Nw", "D")


# --------------------------------------------------------------------------------------------
# Inputs and the two formulations
# --------------------------------------------------------------------------------------------


def make_inputs(dims: Dict[str, int], dtype: torch.dtype, device: torch.device, seed: int = 0) -> Dict[str, Any]:
    """CLIP-like random features, ragged word masks, a projected-away-from-identity STI module,
    the spatial scores of the tail op and upstream gradients."""
    from stzsar.sti import STIModule

    gen = torch.Generator().manual_seed(seed)
    B, C, T, Np, Nw, D = (dims[k] for k in DIM_KEYS)
    lengths = torch.randint(max(1, Nw // 2), Nw + 1, (C,), generator=gen)
    module = STIModule(D, temperature=TEMPERATURE)
    with torch.no_grad():
        for layer in (module.patch_proj, module.word_proj):
            layer.weight.add_(torch.randn(layer.weight.shape, generator=gen) / D**0.5)
    cast = lambda x: x.to(device=device, dtype=dtype)  # noqa: E731
    words = torch.relu(torch.randn(C, Nw, D, generator=gen))
    return {
        "frames": cast(torch.randn(B, T, D, generator=gen)),
        "patches": cast(torch.randn(B, T, Np, D, generator=gen)),
        "words": cast(torch.randn(C, Nw, D, generator=gen)),
        "word_mask": (torch.arange(Nw).view(1, Nw) < lengths.view(C, 1)).to(device),
        "class_emb": cast(torch.randn(C, D, generator=gen)),
        "module": module.to(device=device, dtype=dtype),
        # The tail op's own inputs: normalised frames, projected words, scores in [0, 1).
        "tail_frames": cast(F.normalize(torch.randn(B, T, D, generator=gen), dim=-1)),
        "tail_words": cast(F.normalize(words, dim=-1)),
        "tail_s_sp": torch.rand(B, C, T, generator=gen).to(device),
        "tail_class_emb": cast(F.normalize(torch.randn(C, D, generator=gen), dim=-1)),
        "grad": torch.randn(B, C, generator=gen).to(device),
    }


def naive_tail(s_sp, frames, words, word_mask, class_emb, temperature: float = TEMPERATURE):
    """S_sp -> cosine in plain PyTorch: the [B, C, T, Nw] logits and f_st [B, C, D] in memory."""
    dots = torch.einsum("btd,cld->bctl", frames, words)
    logits = s_sp.to(dots.dtype).unsqueeze(-1) * dots / temperature
    probs = logits.float().softmax(dim=2)
    mask = word_mask.to(probs.dtype).unsqueeze(0).unsqueeze(2)
    s_temp = (probs * mask).sum(-1) / mask.sum(-1)
    f_st = torch.einsum("bct,btd->bcd", s_temp.to(frames.dtype), frames)
    return F.cosine_similarity(f_st.float(), class_emb.float().unsqueeze(0), dim=-1)


def naive_step(module, frames, patches, words, word_mask, class_emb):
    """The whole step in plain PyTorch (the module's equations with naive tensors)."""
    from benchmarks.kernels import naive_spatial_maxsim

    frames, patches, words = (F.normalize(x, dim=-1) for x in (frames, patches, words))
    projected_patches = F.relu(module.patch_proj(patches))
    projected_words = F.relu(module.word_proj(words))
    s_sp = naive_spatial_maxsim(projected_patches, projected_words, word_mask)
    return naive_tail(s_sp, frames, projected_words, word_mask, F.normalize(class_emb, dim=-1), module.temperature)


def make_call(op: str, backend: str, inputs: Dict[str, Any]) -> Callable[..., torch.Tensor]:
    """``call(frames_or_s_sp, patches_or_frames) -> cos [B, C]`` for one (op, backend)."""
    module = inputs["module"]
    if op == "sti":
        words, mask, class_emb = inputs["words"], inputs["word_mask"], inputs["class_emb"]
        if backend == NAIVE:
            return lambda frames, patches: naive_step(module, frames, patches, words, mask, class_emb)
        module.backend, module.fused = backend, True
        return lambda frames, patches: module.similarity(frames, patches, words, mask, class_emb)

    from stzsar.ops import sti_similarity, temporal_saliency

    words, mask, class_emb = inputs["tail_words"], inputs["word_mask"], inputs["tail_class_emb"]
    if backend == NAIVE:
        return lambda s_sp, frames: naive_tail(s_sp, frames, words, mask, class_emb)

    def fused(s_sp, frames):
        s_temp = temporal_saliency(s_sp, frames, words, mask, TEMPERATURE, backend=backend)
        return sti_similarity(s_temp, frames, class_emb, backend=backend)

    return fused


def case_fn(op: str, backend: str, inputs: Dict[str, Any], backward: bool) -> Callable[[], Any]:
    call = make_call(op, backend, inputs)
    first, second = (
        (inputs["frames"], inputs["patches"]) if op == "sti" else (inputs["tail_s_sp"], inputs["tail_frames"])
    )
    if not backward:

        def forward():
            with torch.no_grad():
                return call(first, second)

        return forward
    a = first.detach().requires_grad_(True)
    b = second.detach().requires_grad_(True)
    params = list(inputs["module"].parameters()) if op == "sti" else []
    for p in params:
        p.requires_grad_(True)
    grad = inputs["grad"]

    def forward_backward():
        a.grad = b.grad = None
        for p in params:
            p.grad = None
        call(a, b).backward(grad)

    return forward_backward


def output_bytes(op: str, dims: Dict[str, int], dtype: torch.dtype, backward: bool) -> int:
    """What every formulation returns: the cosines and, with the backward, the input and
    parameter gradients. Peak memory minus this is the working memory a formulation adds."""
    B, C, T, Np, Nw, D = (dims[k] for k in DIM_KEYS)
    elem = torch.empty((), dtype=dtype).element_size()
    out = B * C * 4
    if backward:
        if op == "sti":
            out += (B * T * D + B * T * Np * D + 2 * (D * D + D)) * elem
        else:
            out += B * C * T * 4 + B * T * D * elem
    return out


# --------------------------------------------------------------------------------------------
# Memory on the CPU: one case in a fresh process
# --------------------------------------------------------------------------------------------


def measure_cpu_memory_here(op: str, backend: str, backward: bool, dims: Dict[str, int], dtype: torch.dtype) -> Dict[str, Any]:
    """Peak resident growth of one call (run inside the subprocess)."""
    device = torch.device("cpu")
    fn = case_fn(op, backend, make_inputs(dims, dtype, device), backward)
    # One full-size warm-up call: loads the libraries and starts the OpenMP/BLAS thread pools
    # (their stacks and buffers are not the formulation's working memory); what it allocated is
    # freed again before the measured call.
    fn()
    gc.collect()
    before = proc_status_kb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current RSS
        fn()
        return {"peak_bytes": (proc_status_kb("VmHWM") - before) * 1024, "method": "VmHWM-after-clear_refs"}
    except OSError:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        extra = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024
        return {"peak_bytes": extra, "method": "ru_maxrss-delta"}


def cpu_peak_bytes(op: str, backend: str, backward: bool, dims: Dict[str, int], dtype_name: str) -> Dict[str, Any]:
    root = str(Path(__file__).resolve().parent.parent)
    cmd = [sys.executable, "-m", "benchmarks.sti_step", "--case", f"{op}:{backend}:{int(backward)}",
           "--dims", ",".join(str(dims[k]) for k in DIM_KEYS), "--dtype", dtype_name]
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # Blocks of 64 KB and more are mmap'ed and unmapped on free (glibc), so the measured call's
    # allocations touch fresh pages and show in the peak even after the full-size warm-up call;
    # with glibc's default dynamic threshold they would reuse the warm-up's heap and show as 0.
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=1800)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["failed"]
        return {"peak_bytes": None, "method": "failed: " + tail[0]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_case(fn, device, warmup, repeats) -> List[float]:
    import time

    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _flops(op: str, dims: Dict[str, int], backward: bool) -> int:
    """Useful flops of the fused formulation (the op flop formulas; projections counted 2*M*D*D)."""
    from stzsar.ops.spatial_maxsim import maxsim_flops
    from stzsar.ops.temporal import (
        sti_similarity_backward_flops,
        sti_similarity_flops,
        temporal_saliency_backward_flops,
        temporal_saliency_flops,
    )

    B, C, T, Np, Nw, D = (dims[k] for k in DIM_KEYS)
    flops = temporal_saliency_flops(B, C, T, Nw, D) + sti_similarity_flops(B, C, T, D)
    if backward:
        flops += temporal_saliency_backward_flops(B, C, T, Nw, D) + sti_similarity_backward_flops(B, C, T, D)
    if op == "sti":
        projections = 2 * (B * T * Np + C * Nw) * D * D
        flops += maxsim_flops(B, T, Np, C, Nw, D) + projections
        if backward:
            flops += 4 * B * C * T * D + 2 * projections
    return flops


# Largest |cos - reference| accepted by the cross-check. The reference is the naive formulation
# in float32 on the same (upcast) inputs and weights. With bf16/fp16 features the fused whole step
# rounds the projections to the input dtype before the logits, and tau = 0.01 multiplies that
# rounding by 100 inside the softmax: 9.5e-4 (bf16) and 1.1e-4 (fp16) at the CPU default shape.
# The tail takes the same upcast values and accumulates in fp32 (3e-8 in every dtype there).
CHECK_TOL = {("sti", True): 1e-4, ("sti", False): 1e-2, ("sti-tail", True): 1e-4, ("sti-tail", False): 1e-4}


def _float32_copy(inputs: Dict[str, Any]) -> Dict[str, Any]:
    import copy

    out = {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in inputs.items()}
    out["module"] = copy.deepcopy(inputs["module"]).float()
    return out


def cross_check(op: str, backends: Sequence[str], inputs: Dict[str, Any], dtype: torch.dtype) -> Dict[str, str]:
    """Each fused backend's cosines against the naive formulation in float32 on the same inputs."""
    pick = lambda d: (d["frames"], d["patches"]) if op == "sti" else (d["tail_s_sp"], d["tail_frames"])  # noqa: E731
    ref_inputs = _float32_copy(inputs)
    tol = CHECK_TOL[(op, dtype == torch.float32)]
    with torch.no_grad():
        ref = make_call(op, NAIVE, ref_inputs)(*pick(ref_inputs)).float()
        result = {}
        for backend in backends:
            err = float((make_call(op, backend, inputs)(*pick(inputs)).float() - ref).abs().max())
            result[backend] = f"{'ok' if err <= tol else 'FAIL'} {err:.1e}"
    return result


def run(args) -> List[Dict[str, Any]]:
    """Rows for ``benchmarks/kernels.py`` (``--op sti``): one per (op, backend, mode)."""
    from stzsar.ops import available_backends

    device = getattr(args, "device_obj", torch.device("cpu"))
    dtype = getattr(args, "dtype_obj", torch.float32)
    dims = dict(args.dims)
    time_case = getattr(args, "time_case", _time_case)
    # The Triton interpreter on CPU is a correctness tool, not worth timing.
    fused = [b for b in available_backends(device, "sti_temporal") if b not in ("torch",) and not (b == "triton" and device.type == "cpu")]
    backends = fused + [NAIVE]
    if getattr(args, "backends", None):
        wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
        backends = [b for b in wanted if b in backends]
    inputs = make_inputs(dims, dtype, device)
    rows: List[Dict[str, Any]] = []
    for op in OPS:
        checks = {} if getattr(args, "no_check", False) else cross_check(op, [b for b in backends if b != NAIVE], inputs, dtype)
        for backend in backends:
            for backward in (False, True):
                mode = "fwd+bwd" if backward else "fwd"
                row: Dict[str, Any] = {"op": op, "backend": backend, "mode": mode, "flops": _flops(op, dims, backward)}
                fn = case_fn(op, backend, inputs, backward)
                try:
                    times = time_case(fn, device, args.warmup, args.repeats)
                except torch.OutOfMemoryError as error:  # the naive step at large shapes
                    row["note"] = f"out of memory: {str(error).splitlines()[0]}"
                    rows.append(row)
                    fn = None  # frees the case's tensors before the next one
                    gc.collect()
                    torch.cuda.empty_cache()
                    continue
                row["time_s"] = statistics.median(times)
                row["times_s"] = times
                if device.type == "cuda":
                    row["peak_bytes"] = args.gpu_peak_bytes(fn, device)
                    row["mem_method"] = "cuda.max_memory_allocated - allocated before"
                elif not getattr(args, "no_memory", False):
                    mem = cpu_peak_bytes(op, backend, backward, dims, str(dtype).replace("torch.", ""))
                    row["peak_bytes"], row["mem_method"] = mem["peak_bytes"], mem["method"]
                if row.get("peak_bytes") is not None:
                    row["work_bytes"] = max(0, row["peak_bytes"] - output_bytes(op, dims, dtype, backward))
                if not backward and backend in checks:
                    row["check"] = checks[backend]
                row["note"] = op
                rows.append(row)
                print(f"  {op:>8} {backend:>7} {mode:<8} {row['time_s'] * 1e3:10.3f} ms", flush=True)
                del fn
                gc.collect()
    return rows


def targets(rows: List[Dict[str, Any]], args=None) -> List[Dict[str, Any]]:
    """The targets for each op: the best fused backend against the naive formulation."""
    out = []
    for op in OPS:
        naive = {r["mode"]: r for r in rows if r["op"] == op and r["backend"] == NAIVE and r.get("time_s")}
        fused = [r for r in rows if r["op"] == op and r["backend"] != NAIVE and r.get("time_s")]
        fb = [r for r in fused if r["mode"] == "fwd+bwd"]
        if "fwd+bwd" in naive and fb:
            best = min(fb, key=lambda r: r["time_s"])
            speedup = naive["fwd+bwd"]["time_s"] / best["time_s"]
            out.append(_target(f"{op}: fwd+bwd speed-up over naive (x, >=)", TARGETS["fwdbwd_vs_naive"], speedup, best["backend"], True))
        ratios = {}
        for r in fused:
            ref = naive.get(r["mode"])
            if ref and ref.get("peak_bytes") and r.get("peak_bytes") is not None:
                ratios[r["backend"]] = max(ratios.get(r["backend"], 0.0), r["peak_bytes"] / ref["peak_bytes"])
        if ratios:
            backend = min(ratios, key=ratios.get)
            out.append(_target(f"{op}: peak extra memory / naive, worse mode (<=)", TARGETS["peak_vs_naive"], ratios[backend], backend, False))
    return out


def _target(name: str, required: float, measured: float, backend: str, higher_is_better: bool) -> Dict[str, Any]:
    ok = measured >= required if higher_is_better else measured <= required
    row = {"target": name, "required": required, "measured": round(measured, 4), "backend": backend, "status": "PASS" if ok else "MISS"}
    if name.startswith("sti-tail"):
        # The targets apply to the whole step; the tail's ratios are shown for reference.
        row["status"], row["note"] = ("info: " + row["status"].lower()), "the tail alone is not an issue target"
    return row


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Internal entry point: one CPU memory measurement (``--case op:backend:backward``), as JSON.
    The benchmark itself runs through ``python -m benchmarks.kernels --op sti``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sti_step", description=main.__doc__)
    parser.add_argument("--case", required=True, help="op:backend:backward, e.g. sti:cpu:1")
    parser.add_argument("--dims", required=True, help="B,C,T,Np,Nw,D")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    args = parser.parse_args(argv)
    op, backend, backward = args.case.split(":")
    dims = dict(zip(DIM_KEYS, (int(x) for x in args.dims.split(","))))
    print(json.dumps(measure_cpu_memory_here(op, backend, bool(int(backward)), dims, DTYPES[args.dtype])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
