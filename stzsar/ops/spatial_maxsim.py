"""The spatial double max of the STI module (docs/method.md section 4) as one ``torch.library`` op.

``S_sp[b, c, t] = max over valid words l, max over patches k of <patches[b, t, k], words[c, l]>``

The op ``stzsar::spatial_maxsim`` returns the scores (float32) and, for the backward pass, the
winning flat index ``k * Nw + l`` per (b, c, t) (int32). Ties resolve to the lowest flat index in
every backend. Gradients flow only to the winners, as with ``torch.max``.

Backends (``backend=``):
- ``"torch"``: the reference, forms the similarity tensor one chunk of classes at a time;
- ``"cpu"``: the C++/OpenMP kernel of ``stzsar._C`` (CPU tensors);
- ``"cuda"``: the CUDA kernel of ``stzsar._C`` (CUDA tensors);
- ``"triton"``: the Triton kernel (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``);
- ``"auto"``: the fastest available one for the tensors' device.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Optional, Tuple

import torch
from torch import Tensor

from stzsar._extension import has_cpu_kernels, has_cuda_kernels

BACKENDS = ("auto", "torch", "cpu", "cuda", "triton")

# The reference backend materialises [B, chunk, T, Np, Nw]; this bounds that chunk.
_TORCH_CHUNK_ELEMENTS = 1 << 26


def maxsim_flops(batch: int, frames: int, patches: int, classes: int, words: int, dim: int) -> int:
    """Flops of the spatial step, one multiply-add counted as 2: ``2*B*T*Np*C*Nw*D``."""
    return 2 * batch * frames * patches * classes * words * dim


def output_dtype(input_dtype: torch.dtype) -> torch.dtype:
    """Scores are float32 (float64 only for float64 inputs, which reference checks use)."""
    return torch.float64 if input_dtype == torch.float64 else torch.float32


def no_autocast(tensor: Tensor):
    """Autocast off for ``tensor``'s device type. The ops of :mod:`stzsar.ops` choose their compute
    dtypes themselves (inputs read in their dtype, float32 accumulation and results), the same on
    every backend; their bodies run under this, so autocast never recasts the GEMMs inside them."""
    if not torch.amp.is_autocast_available(tensor.device.type):
        return contextlib.nullcontext()
    return torch.autocast(tensor.device.type, enabled=False)


# --------------------------------------------------------------------------------------------
# Reference backend (also the fallback when no kernel is available)
# --------------------------------------------------------------------------------------------


def torch_forward(patches: Tensor, words: Tensor, word_mask: Tensor) -> Tuple[Tensor, Tensor]:
    B, T, Np, D = patches.shape
    C, Nw, _ = words.shape
    acc = output_dtype(patches.dtype)
    out = patches.new_empty((B, C, T), dtype=acc)
    index = torch.empty((B, C, T), dtype=torch.int32, device=patches.device)
    p = patches.to(acc).reshape(B * T * Np, D)
    per_class = max(1, B * T * Np * Nw)
    chunk = max(1, min(C, _TORCH_CHUNK_ELEMENTS // per_class))
    for start in range(0, C, chunk):
        stop = min(C, start + chunk)
        w = words[start:stop].to(acc)  # [c, Nw, D]
        sim = (p @ w.reshape(-1, D).t()).view(B, T, Np, stop - start, Nw)
        sim = sim.masked_fill(~word_mask[start:stop].view(1, 1, 1, stop - start, Nw), float("-inf"))
        sim = sim.permute(0, 3, 1, 2, 4).reshape(B, stop - start, T, Np * Nw)
        best, arg = sim.max(dim=-1)  # first maximum on ties: lowest k * Nw + l
        out[:, start:stop] = best
        index[:, start:stop] = arg.to(torch.int32)
    return out, index


def torch_backward(
    grad: Tensor, patches: Tensor, words: Tensor, index: Tensor
) -> Tuple[Tensor, Tensor]:
    B, T, Np, D = patches.shape
    C, Nw, _ = words.shape
    acc = output_dtype(patches.dtype)
    grad = grad.to(acc)
    idx = index.long()
    k = idx // Nw  # [B, C, T]
    l = idx % Nw
    # dP[b, t, k] += g[b, c, t] * W[c, l]
    w_win = words.to(acc)[torch.arange(C, device=words.device).view(1, C, 1), l]  # [B, C, T, D]
    contrib_p = (grad.unsqueeze(-1) * w_win).permute(0, 2, 1, 3)  # [B, T, C, D]
    grad_p = torch.zeros((B, T, Np, D), dtype=acc, device=patches.device)
    grad_p.scatter_add_(2, k.permute(0, 2, 1).unsqueeze(-1).expand(B, T, C, D), contrib_p)
    # dW[c, l] += g[b, c, t] * P[b, t, k]
    p_win = patches.to(acc)[
        torch.arange(B, device=patches.device).view(B, 1, 1),
        torch.arange(T, device=patches.device).view(1, 1, T),
        k,
    ]  # [B, C, T, D]
    contrib_w = (grad.unsqueeze(-1) * p_win).permute(1, 0, 2, 3).reshape(C, B * T, D)
    grad_w = torch.zeros((C, Nw, D), dtype=acc, device=words.device)
    grad_w.scatter_add_(1, l.permute(1, 0, 2).reshape(C, B * T, 1).expand(C, B * T, D), contrib_w)
    return grad_p.to(patches.dtype), grad_w.to(words.dtype)


# --------------------------------------------------------------------------------------------
# Backend selection
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _triton_available(kernel: str = "spatial_maxsim") -> bool:
    """Whether Triton and the kernel module ``stzsar.kernels.<kernel>`` import."""
    try:
        import importlib

        import triton  # noqa: F401

        importlib.import_module(f"stzsar.kernels.{kernel}")
    except Exception:  # pragma: no cover - depends on the install
        return False
    return True


def _triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available_backends(device: torch.device | str, kernel: str = "spatial_maxsim") -> Tuple[str, ...]:
    """Backends that can run on tensors of ``device`` here (``"torch"`` always can); ``kernel``
    names the Triton module (``stzsar.kernels.<kernel>``) the op needs."""
    device = torch.device(device)
    found = ["torch"]
    if device.type == "cpu":
        if has_cpu_kernels():
            found.append("cpu")
        if _triton_available(kernel) and _triton_interpreting():
            found.append("triton")
    elif device.type == "cuda":
        if has_cuda_kernels():
            found.append("cuda")
        if _triton_available(kernel):
            found.append("triton")
    return tuple(found)


@torch.compiler.assume_constant_result
def resolve_backend(
    backend: str,
    device: torch.device | str,
    kernel: str = "spatial_maxsim",
    dtype: Optional[torch.dtype] = None,
) -> str:
    """Turn ``backend`` (possibly ``"auto"``) into a concrete backend for ``device``, or raise.

    ``auto`` on CUDA tensors follows the H200 measurements in docs/kernels.md: for the spatial op
    Triton is fastest in fp16/bf16 (0.62 of the bf16 matmul rate vs 0.14 for the CUDA kernel), the
    CUDA kernel in fp32 (1.39x faster than Triton)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    device = torch.device(device)
    found = available_backends(device, kernel)
    if backend == "auto":
        # Preference order per device, from benchmarks/kernels.py (docs/kernels.md).
        if device.type == "cpu":
            order = ("cpu", "torch")
        elif kernel == "spatial_maxsim" and dtype == torch.float32:
            order = ("cuda", "triton", "torch")
        else:
            order = ("triton", "cuda", "torch")
        return next(name for name in order if name in found)
    if backend not in found:
        raise RuntimeError(
            f"backend {backend!r} is not available for {device.type} tensors here "
            f"(available: {', '.join(found)})"
        )
    return backend


def _forward_impl(backend: str, patches: Tensor, words: Tensor, word_mask: Tensor):
    if backend == "torch":
        return torch_forward(patches, words, word_mask)
    if backend in ("cpu", "cuda"):
        return torch.ops.stzsar.spatial_maxsim_fused_fwd(patches, words, word_mask)
    from stzsar.kernels.spatial_maxsim import triton_spatial_maxsim_fwd

    return triton_spatial_maxsim_fwd(patches, words, word_mask)


def _backward_impl(backend: str, grad: Tensor, patches: Tensor, words: Tensor, index: Tensor):
    if backend == "torch":
        return torch_backward(grad, patches, words, index)
    if backend in ("cpu", "cuda"):
        return torch.ops.stzsar.spatial_maxsim_fused_bwd(grad, patches, words, index)
    from stzsar.kernels.spatial_maxsim import triton_spatial_maxsim_bwd

    return triton_spatial_maxsim_bwd(grad, patches, words, index)


# --------------------------------------------------------------------------------------------
# The op
# --------------------------------------------------------------------------------------------


@torch.library.custom_op("stzsar::spatial_maxsim", mutates_args=())
def _spatial_maxsim_op(
    patches: Tensor, words: Tensor, word_mask: Tensor, backend: str
) -> Tuple[Tensor, Tensor]:
    with no_autocast(patches):
        out, index = _forward_impl(backend, patches.contiguous(), words.contiguous(), word_mask.contiguous())
    return out, index


@_spatial_maxsim_op.register_fake
def _(patches, words, word_mask, backend):
    B, T, _, _ = patches.shape
    C = words.shape[0]
    return (
        patches.new_empty((B, C, T), dtype=output_dtype(patches.dtype)),
        patches.new_empty((B, C, T), dtype=torch.int32),
    )


@torch.library.custom_op("stzsar::spatial_maxsim_backward", mutates_args=())
def _spatial_maxsim_backward_op(
    grad: Tensor, patches: Tensor, words: Tensor, index: Tensor, backend: str
) -> Tuple[Tensor, Tensor]:
    with no_autocast(patches):
        grad_p, grad_w = _backward_impl(
            backend, grad.contiguous(), patches.contiguous(), words.contiguous(), index.contiguous()
        )
    return grad_p, grad_w


@_spatial_maxsim_backward_op.register_fake
def _(grad, patches, words, index, backend):
    return torch.empty_like(patches), torch.empty_like(words)


def _setup_context(ctx, inputs, output):
    patches, words, _, backend = inputs
    _, index = output
    ctx.save_for_backward(patches, words, index)
    ctx.backend = backend


def _backward(ctx, grad_out, grad_index):
    patches, words, index = ctx.saved_tensors
    if grad_out is None:
        return None, None, None, None
    grad_p, grad_w = _spatial_maxsim_backward_op(grad_out, patches, words, index, ctx.backend)
    return grad_p, grad_w, None, None


_spatial_maxsim_op.register_autograd(_backward, setup_context=_setup_context)


def _register_flop_formulas():
    from torch.utils.flop_counter import register_flop_formula

    @register_flop_formula(torch.ops.stzsar.spatial_maxsim)
    def _forward_flops(patches_shape, words_shape, *args, **kwargs) -> int:
        B, T, Np, D = patches_shape
        C, Nw, _ = words_shape
        return maxsim_flops(B, T, Np, C, Nw, D)

    @register_flop_formula(torch.ops.stzsar.spatial_maxsim_backward)
    def _backward_flops(grad_shape, patches_shape, words_shape, *args, **kwargs) -> int:
        # Only the winners are touched: two multiply-adds of length D per (b, c, t).
        B, C, T = grad_shape
        D = patches_shape[-1]
        return 2 * 2 * B * C * T * D


_register_flop_formulas()


def _check_inputs(patches: Tensor, words: Tensor, word_mask: Tensor) -> None:
    if patches.dim() != 4:
        raise ValueError(f"patches must be [B, T, Np, D], got shape {tuple(patches.shape)}")
    if words.dim() != 3:
        raise ValueError(f"words must be [C, Nw, D], got shape {tuple(words.shape)}")
    if patches.shape[-1] != words.shape[-1]:
        raise ValueError(
            f"patches and words must share the feature size D, got {patches.shape[-1]} and {words.shape[-1]}"
        )
    if word_mask.shape != words.shape[:2]:
        raise ValueError(
            f"word_mask must be [C, Nw] = {tuple(words.shape[:2])}, got {tuple(word_mask.shape)}"
        )
    if word_mask.dtype != torch.bool:
        raise TypeError(f"word_mask must be a bool tensor, got {word_mask.dtype}")
    if patches.device != words.device or patches.device != word_mask.device:
        raise ValueError("patches, words and word_mask must be on one device")
    for name, tensor in (("patches", patches), ("words", words)):
        if tensor.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            raise TypeError(f"{name} must be float32, float16 or bfloat16, got {tensor.dtype}")


def check_word_mask(word_mask: Tensor) -> None:
    """Raise ``ValueError`` naming the first class that has no valid word (eager mode only)."""
    if torch.compiler.is_compiling() or word_mask.device.type == "meta":
        return  # the check needs the mask's values (FLOP counting on meta has none)
    empty = (~word_mask.any(dim=1)).nonzero()
    if empty.numel():
        raise ValueError(f"class {int(empty[0, 0])} has no valid word in word_mask")


def spatial_maxsim_with_index(
    patches: Tensor, words: Tensor, word_mask: Tensor, backend: str = "auto"
) -> Tuple[Tensor, Tensor]:
    """Like :func:`spatial_maxsim`, also returning the winning flat index ``k * Nw + l`` (int32)."""
    _check_inputs(patches, words, word_mask)
    if patches.dtype != words.dtype:
        common = torch.promote_types(patches.dtype, words.dtype)
        patches, words = patches.to(common), words.to(common)
    resolved = resolve_backend(backend, patches.device, dtype=patches.dtype)
    if resolved != "torch" and patches.dtype == torch.float64:
        resolved = "torch"  # the kernels take fp32/fp16/bf16; float64 is for reference checks
    return _spatial_maxsim_op(patches, words, word_mask, resolved)


def spatial_maxsim(
    patches: Tensor, words: Tensor, word_mask: Tensor, backend: str = "auto"
) -> Tensor:
    """``S_sp [B, C, T]`` (float32) from ``patches [B, T, Np, D]``, ``words [C, Nw, D]`` and
    ``word_mask [C, Nw]`` (bool). Differentiable in ``patches`` and ``words``.

    The inputs are read in their own dtype (the two promoted to a common one) and the dot products
    accumulate in float32 on every backend, with or without autocast (which does not recast them);
    the gradients come back in the inputs' dtypes."""
    return spatial_maxsim_with_index(patches, words, word_mask, backend)[0]
