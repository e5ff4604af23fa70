"""Training-step and evaluation throughput, split into decode, ViT, text bank, STI and loss.

    python -m benchmarks.throughput                      # tiny model on the CPU (or gpu-b16 on a GPU)
    python -m benchmarks.throughput --preset gpu-b16     # ViT-B/16, batch 64, 16 frames, bf16 (~1-2 min)
    python -m benchmarks.throughput --preset gpu-l14     # ViT-L/14, batch 64, 8 frames, bf16
    python -m benchmarks.throughput --train-step         # the train step eager vs compiled, utilisation
    python -m benchmarks.throughput --eval-forward       # the evaluation forward, 1x1 and 4x3 views

Every part is timed on its own, with the device synchronised around each call (median of
``--iters`` runs after ``--warmup`` runs):

- decode: one clip from an H.264 file to the normalised ``[T, 3, S, S]`` tensor through
  ``stzsar.data`` (PyAV), in one process with one thread (DataLoader workers multiply it);
- text bank: the frozen text tower over ``--classes`` prompts (once per class list, then cached);
- train: ViT forward+backward, STI forward+backward (``B`` videos x the ``B`` prompts of their
  labels), loss forward+backward, the AdamW step, and the whole step end to end;
- eval: ViT forward, STI forward against all ``--classes`` classes, and the whole forward.

The STI runs twice: "fused" is the model's own ``STIModule`` (fused ops, ``backend="auto"``), "naive"
is ``STIModule(fused=False, backend="torch")``, the plain PyTorch formulation that materialises
the similarity tensor chunk by chunk. Which backend "auto" resolved to is printed: without the
compiled extension or Triton the fused path falls back to PyTorch code too.

``--compile`` (or ``--train-step``, alias ``--compile-only``, which skips the parts above) adds
the full train step (forward, loss, backward, AdamW; ``B`` clips against ``--prompts`` prompts,
by default ``B``) eager and compiled as ``train.compile`` compiles it
(``stzsar.train.trainer.compile_model``: the video encoder and the STI head, in place), on the
same weights and clips: the first step of each is timed on its own (the compiled one includes
the compile), then the steady-state median, with the peak memory of the steady steps. The
compile time is the first compiled step less a steady one; break-even steps = compile time /
(eager step - compiled step); the first losses of both must agree. Also per mode:

- the STI head's share: the STI, the cosine logits and the loss, forward and backward, timed
  alone on the ViT's features of the same clips, over the whole step;
- model FLOP utilisation: the step's FLOPs (``benchmarks.flops.train_step_flops``, forward and
  backward as autograd runs them, frozen blocks without a backward) over the step's time, against
  the dense ``torch.mm`` rate of the autocast dtype measured in the same run;
- ``--max-batch N``: the eager step at 2, 4, 8... times the batch up to ``N``, until memory runs
  out or ``--search-budget-s`` is spent.

Inductor's caches go to a fresh temporary folder, so the compile is a cold one
(``--warm-cache`` keeps torch's default caches; ``--cache-dir`` keeps them in a folder and
records whether it was empty, i.e. whether the compile was cold). ``--compile-backend aot_eager``
traces the same graphs without generating code (the CPU dry run of the device check).

``--eval-forward`` times what ``stzsar eval`` runs per batch (``stzsar.eval.engine.batch_logits``:
the ViT on every view, the STI against ``--classes`` classes) for each layout of ``--views``
(default ``1x1,4x3``): videos/s, clips/s, peak memory, and utilisation as above with the call's
FLOPs (``benchmarks.flops``).

Inside a stage of ``benchmarks/gpu_check.py`` (``GPU_CHECK_STEP_JSON`` set), ``--train-step`` and
``--eval-forward`` also hand their figures to the runner, the train step after each part, so
that a step stopped at its cap keeps what it measured.

Peak memory is ``torch.cuda.max_memory_allocated`` during each part on a GPU (weights, optimizer
state and activations together); on the CPU it is the process's peak resident size during the
part (``VmHWM``, reset before each part through ``/proc/self/clear_refs`` on Linux).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from benchmarks.common import (describe_machine, fmt, format_table, machine_info, step_figures, synchronize, time_call,
                               write_result)

#: Named configurations. ``gpu-b16`` is the paper's training setting (batch 64, 16 frames, ViT-B/16)
#: where the STI share of a step is meant to stay under 10%.
PRESETS: Dict[str, Dict[str, Any]] = {
    # CPU presets use one thread: on a shared machine, OpenMP threads that spin while their core is
    # taken by another process made timings 10-50x slower and unstable (docs/benchmarks.md).
    "tiny": dict(model="stzsar-tiny", size=None, frames=4, batch=4, classes=16, iters=5, warmup=1, amp="none",
                 threads=1, decode_clips=2, decode_frames=60, decode_size=(320, 240)),
    "cpu-small": dict(model="stzsar-small", size=None, frames=8, batch=4, classes=64, iters=3, warmup=1,
                      amp="none", threads=1, decode_clips=3, decode_frames=150, decode_size=(340, 256)),
    "gpu-b16": dict(model="ViT-B-16", size=224, frames=16, batch=64, classes=400, iters=5, warmup=2, amp="bf16",
                    threads=0, decode_clips=4, decode_frames=250, decode_size=(340, 256)),
    "gpu-l14": dict(model="ViT-L-14", size=224, frames=8, batch=64, classes=400, iters=5, warmup=2, amp="bf16",
                    threads=0, decode_clips=4, decode_frames=250, decode_size=(340, 256)),
}

# Words for the synthetic class names and attributes (prompt length is what matters, not meaning).
_VOCAB = (
    "run jump swim climb throw catch kick ride dance cook paint play sing read write walk push pull lift carry "
    "ball bike horse guitar piano water snow rope board field kitchen stage street pool mountain table hand "
    "foot fast slow spin turn"
).split()


def synthetic_classes(count: int, attributes: int = 8) -> Tuple[List[str], Dict[str, List[str]]]:
    """``count`` distinct class names of two words and ``attributes`` keywords each (deterministic)."""
    rng = random.Random(0)
    names: List[str] = []
    seen = set()
    while len(names) < count:
        name = f"{rng.choice(_VOCAB)} {rng.choice(_VOCAB)} {len(names)}"
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names, {name: rng.sample(_VOCAB, attributes) for name in names}


# --------------------------------------------------------------------------------------------
# Decode
# --------------------------------------------------------------------------------------------


def measure_decode(frames: int, size: int, clips: int, clip_frames: int, clip_size: Tuple[int, int],
                   repeats: int = 2) -> Dict[str, Any]:
    """Seconds per training clip through the PyAV path, or why it was not measured."""
    try:
        return _measure_decode(frames, size, clips, clip_frames, clip_size, repeats)
    except Exception as error:  # recorded, reported and turned into the exit status
        return {"measured": False, "failed": True, "reason": f"{type(error).__name__}: {error}"}


def _measure_decode(frames: int, size: int, clips: int, clip_frames: int, clip_size: Tuple[int, int],
                    repeats: int) -> Dict[str, Any]:
    if clips < 1:
        return {"measured": False, "reason": "--decode-clips 0"}
    try:
        from stzsar.data.dataset import sample_indices, video_from_frames
        from stzsar.data.decode_pyav import PyAVVideo
        from stzsar.data.spec import ClipSpec
        from stzsar.data.synthetic import write_video
    except ImportError as error:
        return {"measured": False, "reason": f"stzsar.data PyAV path unavailable ({error})"}
    spec = ClipSpec(num_frames=frames, size=size)
    width, height = clip_size
    times: List[float] = []
    with tempfile.TemporaryDirectory(prefix="stzsar-decode-") as tmp:
        paths = []
        for i in range(clips):
            path = Path(tmp) / f"clip{i}.mp4"
            write_video(path, clip_frames, width=width, height=height, codec="h264", fps=25)
            paths.append(path)
        rng = random.Random(0)
        for _ in range(repeats):
            for path in paths:
                start = time.perf_counter()
                with PyAVVideo(path, threads=1) as video:
                    indices = sample_indices(video.num_frames, spec, training=True, rng=rng)
                    decoded, rotation = video.read(indices)
                tensor = video_from_frames(torch.from_numpy(decoded), rotation, spec, training=True, rng=rng)
                times.append(time.perf_counter() - start)
        if tuple(tensor.shape) != (frames, 3, size, size):
            raise RuntimeError(f"decode produced {tuple(tensor.shape)}, expected {(frames, 3, size, size)}")
    median = statistics.median(times)
    return {"measured": True, "median_s": median, "clips_per_s": 1.0 / median, "clip": f"{width}x{height} "
            f"H.264, {clip_frames} frames", "samples": len(times)}


# --------------------------------------------------------------------------------------------
# Model parts
# --------------------------------------------------------------------------------------------


def _autocast(device: torch.device, amp: str):
    if amp == "none":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device.type, dtype=dtype)


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        # Linux: writing 5 to clear_refs resets the process's peak resident size (VmHWM).
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
        except OSError:
            pass


def _peak_mib(device: torch.device) -> Optional[float]:
    """GPU: peak allocated by torch; CPU: peak resident size of the whole process (Linux)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def run_part(name: str, fn: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> Dict[str, Any]:
    """Time one part. A failure (out of memory, a backend that breaks) is recorded with its
    message and shown in the table, so that the other parts still run; ``main`` then exits 1."""
    _peak_reset(device)
    try:
        timing = time_call(fn, device=device, warmup=warmup, iters=iters)
    except Exception as error:  # recorded, reported and turned into the exit status
        _free(device)
        return {"part": name, "error": _error_text(error)}
    return {"part": name, **timing, "peak_mib": _peak_mib(device)}


def failures(result: Dict[str, Any]) -> List[str]:
    """``"part: error"`` for every part that failed."""
    model = result["model"]
    found = [f"decode: {result['decode']['reason']}"] if result["decode"].get("failed") else []
    found += [f"{p['part']}: {p['error']}" for p in model["parts"].values() if "error" in p]
    for variant, parts in model["variants"].items():
        found += [f"{variant} {p['part']}: {p['error']}" for p in parts.values()
                  if isinstance(p, dict) and "error" in p]
    return found


def resolved_backends(sti, device: torch.device) -> str:
    """Which kernels an STI module runs on ``device`` (spatial max-sim / temporal ops)."""
    from stzsar.ops.spatial_maxsim import resolve_backend

    spatial = resolve_backend(sti.backend, device)
    try:
        temporal = resolve_backend(sti.backend, device, kernel="sti_temporal") if sti.fused else "reference"
    except Exception as error:  # pragma: no cover - depends on the install
        temporal = f"unavailable ({error})"
    return f"spatial={spatial}, temporal={temporal}"


def measure_model(cfg: argparse.Namespace, device: torch.device, progress) -> Dict[str, Any]:
    from stzsar.losses import multi_positive_contrastive_loss
    from stzsar.model import build_model
    from stzsar.sti import STIModule

    model = build_model(cfg.model, None, image_size=cfg.size, device=device)
    model.train()
    size, T, B, C = model.image_size, cfg.frames, cfg.batch, cfg.classes
    autocast = lambda: _autocast(device, cfg.amp)  # noqa: E731
    names, attributes = synthetic_classes(C)
    warmup, iters = cfg.warmup, cfg.iters
    parts: Dict[str, Dict[str, Any]] = {}

    def bank_once():
        return model.encode_classes(names, attributes)

    parts["text_bank"] = run_part("text bank", bank_once, device, min(warmup, 1), max(1, min(iters, 3)))
    progress.update()
    bank = bank_once()
    generator = torch.Generator(device="cpu").manual_seed(0)
    video = torch.randn(B, T, 3, size, size, generator=generator).to(device)
    labels = (torch.arange(B) % C).to(device)
    train_bank = bank.select(labels.cpu()).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=5e-5, weight_decay=0.05)

    # Features with the dtype and shape the ViT gives, as leaves for the STI parts.
    with torch.no_grad(), autocast():
        frames0, patches0 = model.encode_video(video)
    grad_frames, grad_patches = torch.randn_like(frames0), torch.randn_like(patches0)

    def vit_train():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            frames, patches = model.encode_video(video)
        torch.autograd.backward([frames, patches], [grad_frames, grad_patches])

    parts["train_vit"] = run_part("train: ViT fwd+bwd", vit_train, device, warmup, iters)
    progress.update()

    logits0 = torch.randn(B, B, device=device, requires_grad=True)

    def loss_train():
        multi_positive_contrastive_loss(logits0, labels).backward()

    parts["train_loss"] = run_part("train: loss fwd+bwd", loss_train, device, warmup, iters)
    progress.update()
    parts["train_optimizer"] = run_part("train: AdamW step", optimizer.step, device, warmup, iters)
    progress.update()

    def eval_vit():
        with torch.no_grad(), autocast():
            model.encode_video(video)

    parts["eval_vit"] = run_part("eval: ViT fwd", eval_vit, device, warmup, iters)
    progress.update()

    fused_sti = model.sti
    naive_sti = STIModule(fused_sti.dim, temperature=fused_sti.temperature, normalize=fused_sti.normalize,
                          backend="torch", fused=False).to(device)
    naive_sti.load_state_dict(fused_sti.state_dict())
    variants: Dict[str, Dict[str, Any]] = {}
    for variant, sti in (("fused", fused_sti), ("naive", naive_sti)):
        model.sti = sti
        frames_leaf = frames0.detach().clone().requires_grad_(True)
        patches_leaf = patches0.detach().clone().requires_grad_(True)
        grad_logits = torch.randn(B, B, device=device)

        def sti_train():
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                logits = model.logits_from_features(frames_leaf, patches_leaf, train_bank)
            logits.backward(grad_logits.to(logits.dtype))

        def full_train():
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                logits = model(video, train_bank)
            multi_positive_contrastive_loss(logits.float(), labels).backward()
            optimizer.step()

        def sti_eval():
            with torch.no_grad(), autocast():
                model.logits_from_features(frames0, patches0, bank)

        def full_eval():
            with torch.no_grad(), autocast():
                model(video, bank)

        out = {"backends": resolved_backends(sti, device)}
        for key, label, fn in (("train_sti", "train: STI fwd+bwd", sti_train), ("train_step", "train: full step", full_train),
                               ("eval_sti", f"eval: STI fwd, {C} classes", sti_eval),
                               ("eval_forward", "eval: full forward", full_eval)):
            out[key] = run_part(label, fn, device, warmup, iters)
            progress.update()
        variants[variant] = out
    model.sti = fused_sti
    nw = int(bank.words.shape[1])
    return {"parts": parts, "variants": variants, "size": size, "words": nw,
            "patches": model.video.num_patches(size, size), "dim": model.dim,
            "trainable_parameters": sum(p.numel() for p in trainable)}


# --------------------------------------------------------------------------------------------
# Train step eager vs compiled, with model FLOP utilisation; evaluation forward
# --------------------------------------------------------------------------------------------

_AMP_DTYPES = {"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Relative difference allowed between the first loss of the eager and the compiled model (same
#: weights, same batch): fp32 differs by reordering only, bf16 by a rounding of each product.
_LOSS_TOLERANCE = {"none": 1e-4, "bf16": 3e-2, "fp16": 1e-2}


def _error_text(error: BaseException) -> str:
    message = str(error).splitlines()[0] if str(error) else ""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return f"out of memory: {message}"
    return f"{type(error).__name__}: {message}"


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextlib.contextmanager
def compile_backend(backend: str):
    """``torch.compile`` uses ``backend`` inside the block.

    ``compile_model`` (the trainer's, measured here as training runs it) names no backend.
    ``aot_eager`` traces the same forward and backward graphs as inductor, so graph breaks and
    tracing errors still show, but generates no code: the CPU dry run then takes seconds, not the
    minute inductor's C++ compile takes on two cores.
    """
    if backend == "inductor":
        yield
        return
    original = torch.compile
    torch.compile = functools.partial(original, backend=backend)
    try:
        yield
    finally:
        torch.compile = original


def matmul_reference(device: torch.device, amp: str) -> Dict[str, Any]:
    """The dense ``torch.mm`` rate of this device in the autocast dtype (the utilisation's
    denominator), measured in the same process as the model."""
    from benchmarks.kernels import matmul_rate

    side, warmup, repeats = (8192, 3, 10) if device.type == "cuda" else (512, 1, 3)
    return matmul_rate(device, _AMP_DTYPES[amp], side, side, side, warmup, repeats)


def _train_inputs(model, device: torch.device, batch: int, frames: int, prompts: int) -> Dict[str, Any]:
    """``batch`` random clips scored against ``prompts`` prompts of ``K = min(batch, prompts)``
    classes (clip ``i`` and prompt ``j`` have classes ``i % K`` and ``j % K``): the symmetric loss
    needs a positive in every row and every column."""
    names, attributes = synthetic_classes(prompts)
    with torch.no_grad():
        bank = model.encode_classes(names, attributes).to(device)
    size = model.image_size
    generator = torch.Generator(device=device).manual_seed(0)
    video = torch.randn(batch, frames, 3, size, size, generator=generator, device=device)
    classes = min(batch, prompts)
    return {"video": video, "bank": bank, "labels": torch.arange(batch, device=device) % classes,
            "text_labels": torch.arange(prompts, device=device) % classes}


def _train_fns(model, optimizer, inputs: Dict[str, Any], device: torch.device, amp: str):
    """The full step (forward, loss, backward, AdamW) and the STI head with the loss alone, on the
    features the ViT gives for the same clips (forward and backward, the features' gradient too)."""
    from stzsar.losses import multi_positive_contrastive_loss

    video, bank, labels, text_labels = inputs["video"], inputs["bank"], inputs["labels"], inputs["text_labels"]

    def step():
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, amp):
            logits = model(video, bank)
        loss = multi_positive_contrastive_loss(logits.float(), labels, text_labels)
        loss.backward()
        optimizer.step()
        return loss

    def head():
        with torch.no_grad(), _autocast(device, amp):
            frames, patches = model.encode_video(video)
        frames.requires_grad_(True)
        patches.requires_grad_(True)

        def run():
            with _autocast(device, amp):
                logits = model.logits_from_features(frames, patches, bank)
            multi_positive_contrastive_loss(logits.float(), labels, text_labels).backward()

        return run

    return step, head


def measure_train_step(cfg: argparse.Namespace, device: torch.device,
                       checkpoint: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """The full train step eager and compiled (``compile_model``, as ``train.compile`` does) on the
    same weights and batch: first step, steady state, peak memory, the STI head's share, model
    FLOP utilisation; then, with ``cfg.max_batch``, the eager step at doubled batches up to it.
    ``checkpoint(result so far)`` is called after each of these parts."""
    checkpoint = checkpoint or (lambda partial: None)
    from benchmarks import flops as flops_bench
    from stzsar.model import build_model
    from stzsar.train.trainer import compile_model

    B, T = cfg.batch, cfg.frames
    P = cfg.prompts or B

    def build():
        torch.manual_seed(0)
        model = build_model(cfg.model, None, image_size=cfg.size, device=device)
        model.train()
        model.text.eval()
        return model

    meta = flops_bench.build_meta_model(flops_bench.FlopConfig(cfg.model, T, cfg.size))
    first = build()
    inputs = _train_inputs(first, device, B, T, P)
    words = int(inputs["bank"].words.shape[1])
    flops = flops_bench.train_step_flops(meta, B, T, P, words)
    matmul = matmul_reference(device, cfg.amp)
    rate = matmul["gflops"] * 1e9
    out: Dict[str, Any] = {
        "batch": B, "frames": T, "prompts": P, "words": words, "size": meta.image_size,
        "frozen_blocks": meta.video.frozen_blocks, "blocks": meta.video.num_blocks,
        "iters": cfg.iters, "warmup": cfg.warmup, "compile_backend": cfg.compile_backend,
        "flops": flops, "matmul": matmul,
    }
    for name in ("eager", "compiled"):
        model, first = (first if name == "eager" else build()), None
        optimizer = step = head = None
        try:
            if name == "compiled":
                torch._dynamo.reset()
                with compile_backend(cfg.compile_backend):
                    compile_model(model)
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5,
                                          weight_decay=0.05)
            step, head = _train_fns(model, optimizer, inputs, device, cfg.amp)
            synchronize(device)
            start = time.perf_counter()
            loss = float(step().detach())
            synchronize(device)
            first = time.perf_counter() - start
            _peak_reset(device)
            steady = time_call(step, device=device, warmup=cfg.warmup, iters=cfg.iters)
            peak = _peak_mib(device)
            # Warm-up runs take any compile of the head's own call (leaf features).
            head_timing = time_call(head(), device=device, warmup=max(1, cfg.warmup), iters=cfg.iters)
        except Exception as error:  # recorded, reported and turned into the exit status
            out[name] = {"error": _error_text(error)}
            continue
        finally:
            model = optimizer = step = head = None
            _free(device)
        seconds = steady["median_s"]
        out[name] = {
            "first_step_s": first, **steady, "peak_mib": peak, "clips_per_s": B / seconds, "first_loss": loss,
            "head": {**head_timing, "share_of_step": head_timing["median_s"] / seconds},
            "model_tflops_per_s": flops["total"] / seconds / 1e12, "mfu": flops["total"] / seconds / rate,
        }
        checkpoint(out)
    eager, compiled = out["eager"], out["compiled"]
    if "error" not in eager and "error" not in compiled:
        eager_s, compiled_s = eager["median_s"], compiled["median_s"]
        out["compile_s"] = max(0.0, compiled["first_step_s"] - compiled_s)
        out["saving_per_step_s"] = eager_s - compiled_s
        out["speedup"] = eager_s / compiled_s
        out["break_even_steps"] = (out["compile_s"] / out["saving_per_step_s"]) if out["saving_per_step_s"] > 0 else None
        difference = abs(compiled["first_loss"] - eager["first_loss"]) / abs(eager["first_loss"])
        out["first_loss_check"] = {"relative_difference": difference, "tolerance": _LOSS_TOLERANCE[cfg.amp],
                                   "ok": difference <= _LOSS_TOLERANCE[cfg.amp]}
    if cfg.max_batch:
        checkpoint(out)
        out["batch_search"] = search_batches(cfg, device, build, meta, rate, words)
    return out


def search_batches(cfg: argparse.Namespace, device: torch.device, build: Callable[[], Any], meta, rate: float,
                   words: int) -> Dict[str, Any]:
    """The eager step at 2, 4, 8... times ``cfg.batch`` up to ``cfg.max_batch``, until one runs out
    of memory or the next would pass ``cfg.search_budget_s`` (each costs about twice the last)."""
    from benchmarks import flops as flops_bench

    T, P = cfg.frames, cfg.prompts or cfg.batch
    rows: List[Dict[str, Any]] = []
    stopped = f"reached --max-batch {cfg.max_batch}"
    started = time.perf_counter()
    model = build()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5, weight_decay=0.05)
    batch = 2 * cfg.batch
    while batch <= cfg.max_batch:
        spent = time.perf_counter() - started
        if rows and spent + 2.5 * rows[-1]["wall_s"] > cfg.search_budget_s:
            stopped = f"time: batch {batch} would pass --search-budget-s {cfg.search_budget_s:g}"
            break
        t0 = time.perf_counter()
        try:
            inputs = _train_inputs(model, device, batch, T, P)
            step, _ = _train_fns(model, optimizer, inputs, device, cfg.amp)
            _peak_reset(device)
            timing = time_call(step, device=device, warmup=1, iters=max(1, min(cfg.iters, 3)))
        except Exception as error:  # out of memory ends the search; anything else is a failure
            rows.append({"batch": batch, "error": _error_text(error), "wall_s": time.perf_counter() - t0})
            inputs = step = None
            _free(device)
            stopped = "out of memory" if isinstance(error, torch.cuda.OutOfMemoryError) else "error"
            break
        total = flops_bench.train_step_flops(meta, batch, T, P, words)["total"]
        rows.append({"batch": batch, **timing, "peak_mib": _peak_mib(device), "clips_per_s": batch / timing["median_s"],
                     "mfu": total / timing["median_s"] / rate, "wall_s": time.perf_counter() - t0})
        inputs = step = None
        _free(device)
        batch *= 2
    del model, optimizer
    _free(device)
    fitted = [row for row in rows if "error" not in row]
    return {"rows": rows, "stopped": stopped, "largest": fitted[-1]["batch"] if fitted else None}


def measure_eval_forward(cfg: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    """``stzsar eval``'s forward of a batch (``batch_logits``: the ViT once per view, the STI against
    every class in class chunks) for each test-view layout in ``cfg.views``."""
    from benchmarks import flops as flops_bench
    from stzsar.eval.engine import batch_logits
    from stzsar.model import build_model

    B, T, C = cfg.batch, cfg.frames, cfg.classes
    torch.manual_seed(0)
    model = build_model(cfg.model, None, image_size=cfg.size, device=device).eval()
    names, attributes = synthetic_classes(C)
    with torch.no_grad():
        bank = model.encode_classes(names, attributes).to(device)
    size, words = model.image_size, int(bank.words.shape[1])
    meta = flops_bench.build_meta_model(flops_bench.FlopConfig(cfg.model, T, cfg.size))
    patches = meta.video.num_patches(size, size)
    matmul = matmul_reference(device, cfg.amp)
    dtype = None if cfg.amp == "none" else _AMP_DTYPES[cfg.amp]
    out: Dict[str, Any] = {"batch": B, "frames": T, "classes": C, "words": words, "size": size,
                           "iters": cfg.iters, "warmup": cfg.warmup, "matmul": matmul, "views": {}}
    for clips, crops in cfg.views:
        views = clips * crops
        key = f"{clips}x{crops}"
        count = B * views
        calls = flops_bench.video_flops(meta, T, size, batch=count)["vit"] + \
            flops_bench.sti_flops(meta, count, T, patches, C, words)["total"]
        try:
            generator = torch.Generator(device=device).manual_seed(0)
            video = torch.randn(B, views, T, 3, size, size, generator=generator, device=device)
            _peak_reset(device)
            timing = time_call(lambda: batch_logits(model, video, bank, device=device, amp_dtype=dtype),
                               device=device, warmup=cfg.warmup, iters=cfg.iters)
        except Exception as error:  # recorded, reported and turned into the exit status
            out["views"][key] = {"views": views, "error": _error_text(error)}
            continue
        finally:
            video = None
            _free(device)
        seconds = timing["median_s"]
        out["views"][key] = {
            "views": views, **timing, "peak_mib": _peak_mib(device), "videos_per_s": B / seconds,
            "clips_per_s": count / seconds, "flops_per_call": calls,
            "model_tflops_per_s": calls / seconds / 1e12, "mfu": calls / seconds / (matmul["gflops"] * 1e9),
        }
    return out


def train_step_summary(m: Dict[str, Any]) -> str:
    """One line for the stage runner's table."""
    parts = []
    for name in ("eager", "compiled"):
        part = m.get(name)
        if part is None:
            continue
        if "error" in part:
            parts.append(f"{name}: {part['error'][:60]}")
            continue
        peak = part["peak_mib"]
        parts.append(f"{name} {part['median_s'] * 1e3:.1f} ms, {part['clips_per_s']:.1f} clips/s, utilisation "
                     f"{_pct(part['mfu'])}, head {_pct(part['head']['share_of_step'])}"
                     + (f", peak {peak / 1024:.1f} GiB" if peak is not None else ""))
    if "speedup" in m:
        even = m["break_even_steps"]
        parts.append(f"x{m['speedup']:.2f} compiled, compile {m['compile_s']:.0f} s, break-even "
                     + (f"{even:.0f} steps" if even is not None else "never"))
    search = m.get("batch_search")
    if search:
        parts.append(f"largest batch {search['largest']} ({search['stopped']})")
    return "; ".join(parts)


def eval_forward_summary(m: Dict[str, Any]) -> str:
    """One line for the stage runner's table."""
    return "; ".join(
        f"{key}: {part['error'][:60]}" if "error" in part else
        f"{key}: {part['videos_per_s']:.1f} videos/s, {_pct(part['mfu'])}"
        + (f", peak {part['peak_mib'] / 1024:.1f} GiB" if part["peak_mib"] is not None else "")
        for key, part in m["views"].items())


def train_step_failures(m: Dict[str, Any]) -> List[str]:
    found = [f"{name}: {m[name]['error']}" for name in ("eager", "compiled") if "error" in m.get(name, {})]
    check = m.get("first_loss_check")
    if check and not check["ok"]:
        found.append(f"first loss: compiled differs from eager by {check['relative_difference']:.2e} "
                     f"(tolerance {check['tolerance']:.0e})")
    search = m.get("batch_search") or {}
    found += [f"batch {row['batch']}: {row['error']}" for row in search.get("rows", [])
              if "error" in row and not row["error"].startswith("out of memory")]
    return found


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def compile_table(result: Dict[str, Any]) -> str:
    cfg, m = result["config"], result["compile"]
    rows = []
    for name in ("eager", "compiled"):
        part = m.get(name, {})
        if "error" in part:
            rows.append([name] + ["-"] * 8 + [part["error"]])
            continue
        rows.append([name, fmt(part["first_step_s"], 2), fmt(part["median_s"] * 1e3, 1), fmt(part["clips_per_s"], 1),
                     _mem(part), fmt(part["head"]["median_s"] * 1e3, 2), _pct(part["head"]["share_of_step"]),
                     fmt(part["model_tflops_per_s"], 3 if result["device"] == "cpu" else 1), _pct(part["mfu"]), ""])
    f, mm = m["flops"], m["matmul"]
    notes = [f"machine: {result['machine_line']}; steady state: median of {m['iters']} steps after {m['warmup']} "
             "warm-up steps; clips/s = batch / steady step.",
             f"batch {m['batch']} clips x {m['frames']} frames x {m['size']} px against {m['prompts']} prompts "
             f"(Nw={m['words']}); lower {m['frozen_blocks']} of {m['blocks']} blocks frozen.",
             f"model FLOPs of a step (benchmarks/flops.py, forward {f['forward'] / 1e12:.4g} + backward "
             f"{f['backward'] / 1e12:.4g} TFLOP, 2 per multiply-add); utilisation = FLOPs / step time / the "
             f"{mm['dtype']} torch.mm rate measured in this run, {mm['gflops']:,.1f} GFLOP/s "
             f"({'x'.join(map(str, mm['shape']))}).",
             "head: the STI, the cosine logits and the loss, forward and backward, alone on the ViT's features "
             f"of the same clips ({_pct(f['head'] / f['total'])} of the step's FLOPs)."]
    if "compile_s" in m:
        even = m["break_even_steps"]
        notes.append(f"compile time (first compiled step less a steady one): {m['compile_s']:.1f} s; saving per step "
                     f"{m['saving_per_step_s'] * 1e3:.1f} ms (x{m['speedup']:.2f}); break-even after "
                     + (f"{even:.0f} steps" if even is not None else "never (compiled is not faster)") + ".")
        check = m["first_loss_check"]
        notes.append(f"first loss, compiled vs eager: relative difference {check['relative_difference']:.1e} "
                     f"({'ok' if check['ok'] else 'MISMATCH'}, tolerance {check['tolerance']:.0e}).")
    notes.append(f"compile backend {m['compile_backend']}; inductor caches: {result.get('cache', 'unknown')}.")
    search = m.get("batch_search")
    if search:
        found = ", ".join(
            f"{row['batch']}: {row['error'].split(':')[0]}" if "error" in row else
            f"{row['batch']}: {row['clips_per_s']:.1f} clips/s, {_pct(row['mfu'])}, {fmt(row['peak_mib'], 0)} MiB"
            for row in search["rows"])
        notes.append(f"larger batches, eager: {found or 'none tried'}; largest that ran: {search['largest']} "
                     f"(stopped: {search['stopped']}).")
    notes += [f"FAILED {text}" for text in train_step_failures(m)]
    title = (f"Train step eager vs torch.compile: {cfg['model']}, batch {m['batch']} x {m['frames']} frames, "
             f"amp {cfg['amp']}, on {result['device']}"
             + (f" ({cfg['threads']} torch threads)" if result["device"] == "cpu" else ""))
    headers = ["mode", "first step s", "steady ms", "clips/s", "peak MiB", "head ms", "head share",
               "TFLOP/s", "of mm rate", "error"]
    return format_table(headers, rows, title=title, notes=notes, align="lrrrrrrrrl")


def eval_forward_table(result: Dict[str, Any]) -> str:
    cfg, m = result["config"], result["eval_forward"]
    rows = []
    for key, part in m["views"].items():
        if "error" in part:
            rows.append([key, str(part["views"])] + ["-"] * 6 + [part["error"]])
            continue
        rows.append([key, str(part["views"]), fmt(part["median_s"] * 1e3, 1), fmt(part["videos_per_s"], 1),
                     fmt(part["clips_per_s"], 1), _mem(part), fmt(part["model_tflops_per_s"], 3), _pct(part["mfu"]),
                     ""])
    mm = m["matmul"]
    notes = [f"machine: {result['machine_line']}; median of {m['iters']} calls after {m['warmup']} warm-up calls.",
             f"one call: stzsar.eval.engine.batch_logits on {m['batch']} videos x views, {m['frames']} frames x "
             f"{m['size']} px, against {m['classes']} classes (Nw={m['words']}), amp {cfg['amp']}.",
             f"utilisation: the call's FLOPs (benchmarks/flops.py) / its time / the {mm['dtype']} torch.mm rate "
             f"measured in this run, {mm['gflops']:,.1f} GFLOP/s."]
    notes += [f"FAILED {key}: {part['error']}" for key, part in m["views"].items() if "error" in part]
    title = f"Evaluation forward: {cfg['model']}, {m['classes']} classes, on {result['device']}"
    headers = ["views", "V", "ms per call", "videos/s", "clips/s", "peak MiB", "TFLOP/s", "of mm rate", "error"]
    return format_table(headers, rows, title=title, notes=notes, align="lrrrrrrrl")


# --------------------------------------------------------------------------------------------
# Table
# --------------------------------------------------------------------------------------------


def _ms(part: Optional[Dict[str, Any]]) -> str:
    if part is None:
        return "-"
    if "error" in part:
        return "OOM" if part["error"].startswith("out of memory") else "error"
    return fmt(part["median_s"] * 1e3, 1)


def _rate(part: Optional[Dict[str, Any]], count: int) -> str:
    if part is None or "error" in part:
        return "-"
    return fmt(count / part["median_s"], 1)


def _mem(part: Optional[Dict[str, Any]]) -> str:
    if part is None or "error" in part or part.get("peak_mib") is None:
        return "-"
    return fmt(part["peak_mib"], 0)


def sti_share(variant: Dict[str, Any]) -> Optional[float]:
    sti, step = variant.get("train_sti"), variant.get("train_step")
    if not sti or not step or "error" in sti or "error" in step:
        return None
    return sti["median_s"] / step["median_s"]


def make_table(result: Dict[str, Any]) -> str:
    cfg, m, decode = result["config"], result["model"], result["decode"]
    B, C = cfg["batch"], cfg["classes"]
    parts, fused, naive = m["parts"], m["variants"]["fused"], m["variants"]["naive"]
    same = ["same", "same", "same"]
    rows: List[List[str]] = []
    if decode.get("measured"):
        per_clip = {"median_s": decode["median_s"], "peak_mib": None}
        rows.append(["decode + transforms, 1 clip, 1 process", _ms(per_clip), fmt(decode["clips_per_s"], 1), "-"] + same)
    else:
        rows.append(["decode + transforms", f"not measured: {decode['reason']}", "-", "-"] + same)
    tb = parts["text_bank"]
    rows.append([f"text bank, {C} classes (once per list)", _ms(tb), "-", _mem(tb)] + same)
    for key in ("train_vit",):
        rows.append([parts[key]["part"], _ms(parts[key]), _rate(parts[key], B), _mem(parts[key])] + same)
    for key in ("train_sti",):
        rows.append([fused[key]["part"], _ms(fused[key]), _rate(fused[key], B), _mem(fused[key]),
                     _ms(naive[key]), _rate(naive[key], B), _mem(naive[key])])
    for key in ("train_loss", "train_optimizer"):
        rows.append([parts[key]["part"], _ms(parts[key]), _rate(parts[key], B), _mem(parts[key])] + same)
    rows.append(["train: full step", _ms(fused["train_step"]), _rate(fused["train_step"], B), _mem(fused["train_step"]),
                 _ms(naive["train_step"]), _rate(naive["train_step"], B), _mem(naive["train_step"])])
    shares = [sti_share(fused), sti_share(naive)]
    rows.append(["train: STI share of the step"] + [f"{100 * shares[0]:.1f}%" if shares[0] is not None else "-", "-", "-"]
                + [f"{100 * shares[1]:.1f}%" if shares[1] is not None else "-", "-", "-"])
    rows.append([parts["eval_vit"]["part"], _ms(parts["eval_vit"]), _rate(parts["eval_vit"], B), _mem(parts["eval_vit"])]
                + same)
    for key in ("eval_sti", "eval_forward"):
        rows.append([fused[key]["part"], _ms(fused[key]), _rate(fused[key], B), _mem(fused[key]),
                     _ms(naive[key]), _rate(naive[key], B), _mem(naive[key])])
    headers = ["part", "fused ms", "fused clips/s", "fused peak MiB", "naive ms", "naive clips/s", "naive peak MiB"]
    title = (f"Throughput: {cfg['model']}, batch {B} x {cfg['frames']} frames x {m['size']} px, Np={m['patches']}, "
             f"D={m['dim']}, Nw={m['words']}, eval classes {C}, amp {cfg['amp']}, on {result['device']}"
             + (f" ({cfg['threads']} torch threads)" if result["device"] == "cpu" else ""))
    notes = [
        f"machine: {result['machine_line']}; median of {cfg['iters']} runs after {cfg['warmup']} warm-up runs.",
        f"fused STI backends: {fused['backends']}; naive: {naive['backends']} (STIModule(fused=False, backend='torch')).",
        "train parts: B videos against the B prompts of their labels; eval: B videos against all classes. "
        "'same': that part does not involve the STI.",
        "full step = forward + loss + backward + AdamW over the trainable parameters "
        f"({m['trainable_parameters'] / 1e6:.2f} M).",
    ]
    if result["device"] == "cpu":
        notes.append("CPU peak MiB: the whole process's peak resident size during the part (VmHWM, reset before "
                     "each part), model and Python included. A shared, noisy CPU: compare ratios, not absolute times.")
    else:
        notes.append("GPU peak MiB: torch.cuda.max_memory_allocated during the part (weights, optimizer state and "
                     "activations).")
    if decode.get("measured"):
        notes.append(f"decode: synthetic {decode['clip']} clips through stzsar.data (PyAVVideo, training sampling "
                     f"and transforms), median of {decode['samples']}; DataLoader workers multiply it.")
    else:
        notes.append(f"decode not measured: {decode['reason']}.")
    notes += [f"FAILED {text}" for text in failures(result)]
    return format_table(headers, rows, title=title, notes=notes, align="lrrrrrr")


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _size_pair(text: str) -> Tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    return width, height


def _views_list(text: str) -> List[Tuple[int, int]]:
    from benchmarks.flops import parse_views

    return [parse_views(item) for item in text.split(",") if item.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="named configuration (default: tiny on the CPU, gpu-b16 on a GPU)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--model", default=None, help="override the preset's open_clip architecture")
    parser.add_argument("--size", type=int, default=None, help="input side in px")
    parser.add_argument("--frames", type=int, default=None, help="frames per clip T")
    parser.add_argument("--batch", type=int, default=None, help="videos per step B")
    parser.add_argument("--classes", type=int, default=None, help="classes of the eval bank C")
    parser.add_argument("--iters", type=int, default=None, help="timed runs per part")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs per part")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default=None, help="autocast dtype")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (0: torch's default; CPU presets use 1)")
    parser.add_argument("--decode-clips", type=int, default=None, help="synthetic clips to decode (0: skip)")
    parser.add_argument("--decode-frames", type=int, default=None, help="frames of each synthetic clip")
    parser.add_argument("--decode-size", type=_size_pair, default=None, help="WIDTHxHEIGHT of the synthetic clips")
    parser.add_argument("--compile", action="store_true",
                        help="also time the full train step eager vs torch.compile'd (compile time apart)")
    parser.add_argument("--train-step", "--compile-only", dest="train_step", action="store_true",
                        help="only the train step, eager vs compiled: clips/s, peak memory, the STI head's "
                             "share, model FLOP utilisation")
    parser.add_argument("--eval-forward", action="store_true",
                        help="only the evaluation forward (batch_logits) for each layout of --views")
    parser.add_argument("--prompts", type=int, default=None,
                        help="train step: prompts the clips are scored against (default: the batch; per GPU "
                             "in data-parallel training, the prompts of the global batch)")
    parser.add_argument("--max-batch", type=int, default=0,
                        help="train step: also the eager step at 2, 4, 8... times --batch up to this, until "
                             "memory runs out (0: no search)")
    parser.add_argument("--search-budget-s", type=float, default=90.0,
                        help="train step: seconds the batch search may take (default 90)")
    parser.add_argument("--views", type=_views_list, default=[(1, 1), (4, 3)],
                        help="eval forward: test views, clips x crops, comma-separated (default 1x1,4x3)")
    parser.add_argument("--compile-backend", choices=("inductor", "aot_eager", "eager"), default="inductor",
                        help="torch.compile backend (default inductor, as training uses; aot_eager traces the "
                             "same graphs without generating code)")
    parser.add_argument("--warm-cache", action="store_true",
                        help="keep inductor's default caches (default: a fresh temporary folder, a cold compile)")
    parser.add_argument("--cache-dir", default=None,
                        help="inductor's and Triton's caches in this folder, kept for a rerun (the result says "
                             "whether it was empty at the start, i.e. whether the compile was cold)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of the table")
    parser.add_argument("--out", default=None, help="folder of the JSON result (default benchmarks/results/)")
    parser.add_argument("--no-save", action="store_true", help="do not write the JSON result file")
    return parser


def resolve_config(args: argparse.Namespace) -> Tuple[argparse.Namespace, torch.device]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    preset = args.preset or ("gpu-b16" if device.type == "cuda" else "tiny")
    cfg = dict(PRESETS[preset], preset=preset)
    for key in ("model", "size", "frames", "batch", "classes", "iters", "warmup", "amp", "threads", "decode_clips",
                "decode_frames", "decode_size"):
        value = getattr(args, key)
        if value is not None:
            cfg[key] = value
    for key in ("frames", "batch", "classes", "iters"):
        if cfg[key] < 1:
            raise ValueError(f"--{key} must be >= 1, got {cfg[key]}")
    if cfg["warmup"] < 0 or cfg["decode_clips"] < 0 or cfg["threads"] < 0:
        raise ValueError("--warmup, --threads and --decode-clips must be >= 0")
    if device.type == "cpu" and cfg["amp"] == "fp16":
        raise ValueError("--amp fp16 needs a GPU; use bf16 or none on the CPU")
    if args.prompts is not None and args.prompts < 1:
        raise ValueError(f"--prompts must be >= 1, got {args.prompts}")
    if args.max_batch < 0 or args.search_budget_s < 0:
        raise ValueError("--max-batch and --search-budget-s must be >= 0")
    if not args.views:
        raise ValueError("--views needs at least one layout, e.g. 1x1,4x3")
    if args.train_step and args.eval_forward:
        raise ValueError("--train-step and --eval-forward are separate runs; give one of them")
    cfg.update(prompts=args.prompts, max_batch=args.max_batch, search_budget_s=args.search_budget_s,
               views=[list(v) for v in args.views], compile_backend=args.compile_backend)
    return argparse.Namespace(**cfg), device


def compile_caches(args: argparse.Namespace) -> Tuple[str, Any]:
    """Point inductor's and Triton's caches where ``args`` says; returns a description for the
    result and the temporary folder to keep alive (or ``None``)."""
    import os

    if args.warm_cache:
        return "torch's default (may be warm)", None
    if args.cache_dir:
        folder = Path(args.cache_dir).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        held = sum(1 for _ in folder.rglob("*"))
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
        os.environ["TRITON_CACHE_DIR"] = str(folder / "triton")
        return (f"{folder}, " + ("empty at the start (cold compile)" if held == 0 else
                                 f"{held} entries at the start (a rerun: warm)")), None
    cache = tempfile.TemporaryDirectory(prefix="stzsar-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache.name
    os.environ["TRITON_CACHE_DIR"] = os.path.join(cache.name, "triton")
    return "a fresh temporary folder (cold compile)", cache


def _report(args: argparse.Namespace, result: Dict[str, Any], config: Dict[str, Any], tag: str, table: str) -> None:
    path = None if args.no_save else write_result("throughput", tag, config, result, args.out)
    if args.json:
        import json

        print(json.dumps(result, indent=2, default=float))
    else:
        print(table)
        if path is not None:
            print(f"\nwrote {path}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg, device = resolve_config(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from tqdm import tqdm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)  # also bounds the extension's OpenMP regions (same runtime)
    cfg.threads = torch.get_num_threads()
    cfg.warm_cache = bool(args.warm_cache)
    cache_note, cache = (compile_caches(args) if args.compile or args.train_step else (None, None))
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()}
    base = {"config": config, "device": str(device)}
    if args.train_step or args.eval_forward:
        result = {**base, "machine_line": describe_machine(machine_info())}
        if args.train_step:
            tag = f"train-step_{cfg.model}_B{cfg.batch}_T{cfg.frames}_{device.type}"
        else:
            tag = f"eval-forward_{cfg.model}_B{cfg.batch}_T{cfg.frames}_C{cfg.classes}_{device.type}"

        def checkpoint(partial: Dict[str, Any]) -> None:
            # What is measured so far survives a step stopped at its time cap.
            result.update(compile=partial, cache=cache_note, partial=True)
            if not args.no_save:
                write_result("throughput", tag, config, result, args.out)
            step_figures({"summary": "partial: " + train_step_summary(partial), "train_step": partial})

        try:
            if args.train_step:
                measured = measure_train_step(cfg, device, checkpoint)
            else:
                measured = measure_eval_forward(cfg, device)
        except ValueError as error:  # unknown architecture, bad image size, ...
            print(f"error: {error}", file=sys.stderr)
            return 2
        result.pop("partial", None)
        if args.train_step:
            result.update(compile=measured, cache=cache_note)
            table, failed = compile_table(result), train_step_failures(measured)
            figures = {"summary": train_step_summary(measured), "train_step": measured}
        else:
            result["eval_forward"] = measured
            table = eval_forward_table(result)
            failed = [key for key, part in measured["views"].items() if "error" in part]
            figures = {"summary": eval_forward_summary(measured), "eval_forward": measured}
        _report(args, result, config, tag, table)
        step_figures({**figures, "failures": failed})
        return 1 if failed else 0
    with tqdm(total=6 + 8, desc=f"throughput {cfg.preset}", unit="part", file=sys.stderr) as progress:
        try:
            model_result = measure_model(cfg, device, progress)
        except ValueError as error:  # unknown architecture, bad image size, ...
            print(f"error: {error}", file=sys.stderr)
            return 2
        decode = measure_decode(cfg.frames, model_result["size"], cfg.decode_clips, cfg.decode_frames,
                                tuple(cfg.decode_size))
        progress.update()
    info = machine_info()
    result = {
        **base, "machine_line": describe_machine(info),
        "decode": decode, "model": model_result,
        "sti_share_fused": sti_share(model_result["variants"]["fused"]),
        "sti_share_naive": sti_share(model_result["variants"]["naive"]),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if args.compile:
        result.update(compile=measure_train_step(cfg, device), cache=cache_note)
    tag = f"{cfg.preset}_{device.type}" if not any(getattr(args, k) is not None for k in ("model", "size", "frames", "batch", "classes")) \
        else f"{cfg.model}_{cfg.frames}x{model_result['size']}_B{cfg.batch}_C{cfg.classes}_{device.type}"
    table = make_table(result) + (("\n\n" + compile_table(result)) if "compile" in result else "")
    _report(args, result, config, tag, table)
    compile_failed = bool(train_step_failures(result["compile"])) if "compile" in result else False
    del cache
    return 1 if failures(result) or compile_failed else 0


if __name__ == "__main__":
    sys.exit(main())
