"""Training-step and evaluation throughput, split into decode, ViT, text bank, STI and loss.

    python -m benchmarks.throughput                      # tiny model on the CPU (or gpu-b16 on a GPU)
    python -m benchmarks.throughput --preset gpu-b16     # ViT-B/16, batch 64, 16 frames, bf16 (~1-2 min)
    python -m benchmarks.throughput --preset gpu-l14     # ViT-L/14, batch 64, 8 frames, bf16
    python -m benchmarks.throughput --compile-only       # eager vs torch.compile'd train step only

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

``--compile`` (or ``--compile-only``, which skips the parts above) adds the full train step
eager and compiled as ``train.compile`` compiles it (``stzsar.train.trainer.compile_model``: the
video encoder and the STI head, in place): the first step of each is timed on its own (the
compiled one includes the compile), then the steady-state median. The compile time is the first
compiled step less a steady one; break-even steps = compile time / (eager step - compiled step).
Inductor's caches go to a fresh temporary folder, so the compile is a cold one
(``--warm-cache`` keeps torch's default caches: a rerun then reuses the compiled code).

Peak memory is ``torch.cuda.max_memory_allocated`` during each part on a GPU (weights, optimizer
state and activations together); on the CPU it is the process's peak resident size during the
part (``VmHWM``, reset before each part through ``/proc/self/clear_refs`` on Linux).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from benchmarks.common import describe_machine, fmt, format_table, machine_info, synchronize, time_call, write_result

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
    except torch.cuda.OutOfMemoryError as error:
        torch.cuda.empty_cache()
        return {"part": name, "error": f"out of memory: {str(error).splitlines()[0]}"}
    except Exception as error:  # recorded, reported and turned into the exit status
        message = str(error).splitlines()[0] if str(error) else ""
        return {"part": name, "error": f"{type(error).__name__}: {message}"}
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


def measure_compile(cfg: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    """Eager vs compiled full train step (forward, loss, backward, AdamW) on the same weights."""
    from stzsar.losses import multi_positive_contrastive_loss
    from stzsar.model import build_model
    from stzsar.train.trainer import compile_model

    def build():
        torch.manual_seed(0)
        model = build_model(cfg.model, None, image_size=cfg.size, device=device)
        model.train()
        model.text.eval()
        return model

    eager = build()
    size, T, B, C = eager.image_size, cfg.frames, cfg.batch, cfg.classes
    names, attributes = synthetic_classes(C)
    with torch.no_grad():
        bank = eager.encode_classes(names, attributes)
    generator = torch.Generator(device="cpu").manual_seed(0)
    video = torch.randn(B, T, 3, size, size, generator=generator).to(device)
    labels = (torch.arange(B) % C).to(device)
    train_bank = bank.select(labels.cpu()).to(device)
    out: Dict[str, Any] = {"iters": cfg.iters, "warmup": cfg.warmup}
    losses = {}
    for name in ("eager", "compiled"):
        model = eager if name == "eager" else build()
        if name == "compiled":
            torch._dynamo.reset()
            compile_model(model)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5,
                                      weight_decay=0.05)

        def step():
            optimizer.zero_grad(set_to_none=True)
            with _autocast(device, cfg.amp):
                logits = model(video, train_bank)
            loss = multi_positive_contrastive_loss(logits.float(), labels)
            loss.backward()
            optimizer.step()
            return loss

        try:
            synchronize(device)
            start = time.perf_counter()
            losses[name] = float(step().detach())
            synchronize(device)
            first = time.perf_counter() - start
            steady = time_call(step, device=device, warmup=cfg.warmup, iters=cfg.iters)
        except Exception as error:  # recorded, reported and turned into the exit status
            message = str(error).splitlines()[0] if str(error) else ""
            out[name] = {"error": f"{type(error).__name__}: {message}"}
            continue
        out[name] = {"first_step_s": first, **steady}
        del model, optimizer
    if "error" in out.get("eager", {}) or "error" in out.get("compiled", {}):
        return out
    eager_s, compiled_s = out["eager"]["median_s"], out["compiled"]["median_s"]
    out["compile_s"] = max(0.0, out["compiled"]["first_step_s"] - compiled_s)
    out["saving_per_step_s"] = eager_s - compiled_s
    out["speedup"] = eager_s / compiled_s
    out["break_even_steps"] = (out["compile_s"] / out["saving_per_step_s"]) if out["saving_per_step_s"] > 0 else None
    out["first_loss"] = losses
    return out


def compile_table(result: Dict[str, Any]) -> str:
    cfg, m = result["config"], result["compile"]
    rows = []
    for name in ("eager", "compiled"):
        part = m.get(name, {})
        if "error" in part:
            rows.append([name, "error", "-", "-", part["error"]])
            continue
        rows.append([name, fmt(part["first_step_s"], 2), fmt(part["median_s"] * 1e3, 1),
                     fmt(cfg["batch"] / part["median_s"], 1), ""])
    notes = [f"machine: {result['machine_line']}; steady state: median of {m['iters']} steps after {m['warmup']} "
             "warm-up steps."]
    if "compile_s" in m:
        even = m["break_even_steps"]
        notes.append(f"compile time (first compiled step less a steady one): {m['compile_s']:.1f} s; saving per step "
                     f"{m['saving_per_step_s'] * 1e3:.1f} ms (x{m['speedup']:.2f}); break-even after "
                     + (f"{even:.0f} steps" if even is not None else "never (compiled is not faster)") + ".")
    notes.append("inductor caches: " + ("torch's default (may be warm)" if cfg.get("warm_cache") else
                                        "a fresh temporary folder (cold compile)") + ".")
    title = (f"Train step eager vs torch.compile: {cfg['model']}, batch {cfg['batch']} x {cfg['frames']} frames, "
             f"amp {cfg['amp']}, on {result['device']}"
             + (f" ({cfg['threads']} torch threads)" if result["device"] == "cpu" else ""))
    return format_table(["mode", "first step s", "steady ms", "clips/s", "error"], rows, title=title, notes=notes,
                        align="lrrrl")


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
    parser.add_argument("--compile-only", action="store_true", help="only the eager vs compiled train step")
    parser.add_argument("--warm-cache", action="store_true",
                        help="keep inductor's default caches (default: a fresh temporary folder, a cold compile)")
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
    return argparse.Namespace(**cfg), device


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
    cache = None
    if (args.compile or args.compile_only) and not args.warm_cache:
        import os

        cache = tempfile.TemporaryDirectory(prefix="stzsar-inductor-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache.name
        os.environ["TRITON_CACHE_DIR"] = os.path.join(cache.name, "triton")
    if args.compile_only:
        compiled = measure_compile(cfg, device)
        config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()}
        result = {"config": config, "device": str(device), "machine_line": describe_machine(machine_info()),
                  "compile": compiled}
        tag = f"compile_{cfg.model}_B{cfg.batch}_T{cfg.frames}_{device.type}"
        path = None if args.no_save else write_result("throughput", tag, config, result, args.out)
        if args.json:
            import json

            print(json.dumps(result, indent=2, default=float))
        else:
            print(compile_table(result))
            if path is not None:
                print(f"\nwrote {path}")
        return 1 if any("error" in compiled.get(k, {}) for k in ("eager", "compiled")) else 0
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
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()}
    result = {
        "config": config, "device": str(device), "machine_line": describe_machine(info),
        "decode": decode, "model": model_result,
        "sti_share_fused": sti_share(model_result["variants"]["fused"]),
        "sti_share_naive": sti_share(model_result["variants"]["naive"]),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if args.compile:
        result["compile"] = measure_compile(cfg, device)
    tag = f"{cfg.preset}_{device.type}" if not any(getattr(args, k) is not None for k in ("model", "size", "frames", "batch", "classes")) \
        else f"{cfg.model}_{cfg.frames}x{model_result['size']}_B{cfg.batch}_C{cfg.classes}_{device.type}"
    path = None if args.no_save else write_result("throughput", tag, config, result, args.out)
    if args.json:
        import json

        print(json.dumps(result, indent=2, default=float))
    else:
        print(make_table(result))
        if "compile" in result:
            print()
            print(compile_table(result))
        if path is not None:
            print(f"\nwrote {path}")
    compile_failed = any("error" in result.get("compile", {}).get(k, {}) for k in ("eager", "compiled"))
    return 1 if failures(result) or compile_failed else 0


if __name__ == "__main__":
    sys.exit(main())
