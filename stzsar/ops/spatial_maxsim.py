"""The spatial double max of the STI module (docs/method.md section 4) as one ``torch.library`` op.

``S_sp[b, c, t] = max over valid words l, max over patches k of <patches[b, t, k], words[c, l]>``

The op ``stzsar::spatial_maxsim`` returns the scores (float32) and, for the backward pass, the
winning flat index ``k * Nw + l`` per (b, c, t) (int32). Ties resolve to the lowest flat index in
every backend. Gradients flow only to the winners, as with ``torch.max``.

Backends (``backend=``): ``torch``, ``cpu``, ``cuda``, ``triton`` or ``auto``, as described in
:mod:`stzsar.ops.dispatch`; the ``torch`` backend forms the similarity tensor one chunk of classes at
a time.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

# available_backends, resolve_backend and check_word_mask are re-exported: callers (benchmarks)
# import them from here too.
from stzsar.ops.dispatch import (  # noqa: F401
    available_backends,
    check_maxsim_inputs,
    check_word_mask,
    for_dtype,
    no_autocast,
    output_dtype,
    resolve_backend,
)

# The reference backend materialises [B, chunk, T, Np, Nw]; this bounds that chunk.
_TORCH_CHUNK_ELEMENTS = 1 << 26


def maxsim_flops(batch: int, frames: int, patches: int, classes: int, words: int, dim: int) -> int:
    """Flops of the spatial step, one multiply-add counted as 2: ``2*B*T*Np*C*Nw*D``."""
    return 2 * batch * frames * patches * classes * words * dim


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


def run_forward(backend: str, patches: Tensor, words: Tensor, word_mask: Tensor):
    if backend == "torch":
        return torch_forward(patches, words, word_mask)
    if backend in ("cpu", "cuda"):
        return torch.ops.stzsar.spatial_maxsim_fused_fwd(patches, words, word_mask)
    from stzsar.kernels.spatial_maxsim import triton_spatial_maxsim_fwd

    return triton_spatial_maxsim_fwd(patches, words, word_mask)


def run_backward(backend: str, grad: Tensor, patches: Tensor, words: Tensor, index: Tensor):
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
        out, index = run_forward(backend, patches.contiguous(), words.contiguous(), word_mask.contiguous())
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
        grad_p, grad_w = run_backward(
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


def spatial_maxsim_with_index(
    patches: Tensor, words: Tensor, word_mask: Tensor, backend: str = "auto"
) -> Tuple[Tensor, Tensor]:
    """Like :func:`spatial_maxsim`, also returning the winning flat index ``k * Nw + l`` (int32)."""
    check_maxsim_inputs(patches, words, word_mask)
    if patches.dtype != words.dtype:
        common = torch.promote_types(patches.dtype, words.dtype)
        patches, words = patches.to(common), words.to(common)
    resolved = for_dtype(resolve_backend(backend, patches.device, "spatial_maxsim", patches.dtype), patches.dtype)
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
