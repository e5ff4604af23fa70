"""The temporal step of the STI module (docs/method.md section 4) as two fused ``torch.library`` ops.

``stzsar::temporal_saliency``::

    G[b,c,t,l]    = S_sp[b,c,t] * <v[b,t], A~[c,l]> / tau
    S_temp[b,c,t] = mean over valid words l of softmax over t of G[b,c,t,l]

``stzsar::sti_similarity``::

    f_st[b,c]  = sum over t of S_temp[b,c,t] * v[b,t]
    out[b,c]   = <z_c, f_st[b,c]> / max(|z_c| * |f_st[b,c]|, eps)         eps = SIMILARITY_EPS

computed through the T x T frame Gram matrix, never forming ``f_st``::

    <z_c, f_st> = sum_t S_temp[t] <z_c, v_t>,     |f_st|^2 = S_temp^T (V V^T) S_temp

``eps`` (1e-8) only matters for an all-zero weighted video; it keeps the result finite (0) there,
exactly like the plain PyTorch formulation of :mod:`stzsar.sti.module`.

Backends (``backend=``), as described in :mod:`stzsar.ops.dispatch`:

- ``"torch"``: the plain PyTorch formulation (forms ``[B, C, T, Nw]`` and ``f_st [B, C, D]``);
- ``"cpu"``: the C++/OpenMP kernels of ``stzsar._C`` (csrc/cpu/sti_temporal_cpu.cpp);
- ``"cuda"``: the CUDA kernels of ``stzsar._C`` (csrc/cuda/sti_temporal_*);
- ``"triton"``: the Triton kernels of ``stzsar.kernels.sti_temporal`` (CUDA tensors, or CPU
  tensors under ``TRITON_INTERPRET=1``);
- ``"auto"``: the first available one of the dispatch order that can run the shape (the GPU
  kernels hold per-program tiles on chip, so large T or Nw rule them out; the choice is logged at
  DEBUG level on the ``stzsar.ops.temporal`` logger). An explicit backend that cannot run the
  shape raises a ``ValueError`` naming the limit and the backends that can.

The fused kernels handle one (video, class block) per program: the ``T x Nw`` frame-word dot
products, the per-word softmax over time (stable: the maximum over t is subtracted) and the mean
over words stay on chip and only ``S_temp`` is written. The backward passes recompute them rather
than saving ``[B, C, T, Nw]``; their reductions over videos (word gradients) and over classes
(frame gradients) run as GEMMs on per-chunk coefficients (see docs/kernels.md).
"""

from __future__ import annotations

import logging
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from stzsar.ops.dispatch import (
    auto_order,
    available_backends,
    check_float,
    check_same_device,
    check_word_mask,
    check_word_mask_shape,
    no_autocast,
    output_dtype,
    resolve_backend,
)

_log = logging.getLogger(__name__)

__all__ = [
    "SIMILARITY_EPS",
    "sti_similarity",
    "sti_similarity_flops",
    "temporal_saliency",
    "temporal_saliency_flops",
]

# Lower bound of |z_c| * |f_st[b, c]| in the cosine (same value as the plain formulation).
SIMILARITY_EPS = 1e-8


# --------------------------------------------------------------------------------------------
# Flop counts (one multiply-add = 2 flops; exp and the elementwise work are not counted)
# --------------------------------------------------------------------------------------------


def temporal_saliency_flops(batch: int, classes: int, frames: int, words: int, dim: int) -> int:
    """Forward flops: the frame-word dot products, ``2*B*C*T*Nw*D``."""
    return 2 * batch * classes * frames * words * dim


def temporal_saliency_backward_flops(batch: int, classes: int, frames: int, words: int, dim: int) -> int:
    """Backward flops: the recomputed dot products plus the two gradient GEMMs, ``6*B*C*T*Nw*D``."""
    return 3 * temporal_saliency_flops(batch, classes, frames, words, dim)


def sti_similarity_flops(batch: int, classes: int, frames: int, dim: int) -> int:
    """Forward flops: ``<z_c, v_t>`` (2BTCD), the Gram matrices (2BT^2D), the quadratic forms
    and numerators (2BCT^2 + 2BCT) and the class norms (2CD)."""
    B, C, T, D = batch, classes, frames, dim
    return 2 * B * T * C * D + 2 * B * T * T * D + 2 * B * C * T * T + 2 * B * C * T + 2 * C * D


def sti_similarity_backward_flops(batch: int, classes: int, frames: int, dim: int) -> int:
    """Backward flops: the recomputed forward, then ``dz`` (2BTCD), ``dv`` (2BTCD + 2BT^2D) and the
    per-video T x T matrices (2BCT^2)."""
    B, C, T, D = batch, classes, frames, dim
    return sti_similarity_flops(B, C, T, D) + 4 * B * T * C * D + 2 * B * T * T * D + 2 * B * C * T * T


# --------------------------------------------------------------------------------------------
# Reference backend: the plain PyTorch formulation
# --------------------------------------------------------------------------------------------


def _word_weights(word_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """``mask / count`` as ``[1, C, 1, Nw]``: the weight of each word in the mean over words."""
    mask = word_mask.to(dtype)
    return (mask / mask.sum(-1, keepdim=True).clamp_min(1)).unsqueeze(0).unsqueeze(2)


def torch_temporal_forward(
    s_sp: Tensor, frames: Tensor, words: Tensor, word_mask: Tensor, temperature: float
) -> Tensor:
    acc = output_dtype(frames.dtype)
    with no_autocast(frames):  # float32 math as in the fused kernels, also when called directly
        _, probs = _temporal_probs(s_sp.to(acc), frames.to(acc), words.to(acc), temperature)
        return (probs * _word_weights(word_mask, acc)).sum(-1)


def _temporal_probs(s: Tensor, v: Tensor, a: Tensor, temperature: float) -> Tuple[Tensor, Tensor]:
    """``(<v_t, A~_l>, softmax over t of S_sp <v_t, A~_l> / tau)``, both ``[B, C, T, Nw]``."""
    dots = torch.einsum("btd,cld->bctl", v, a)
    return dots, (s.unsqueeze(-1) * dots / temperature).softmax(dim=2)  # softmax subtracts the max


def _unused(like: Tensor) -> Tensor:
    """Placeholder returned for a gradient that ``output_mask`` says is not needed."""
    return like.new_empty((0,))


def torch_temporal_backward(
    grad: Tensor,
    s_sp: Tensor,
    frames: Tensor,
    words: Tensor,
    word_mask: Tensor,
    temperature: float,
    output_mask: Sequence[bool] = (True, True, True),
) -> Tuple[Tensor, Tensor, Tensor]:
    acc = output_dtype(frames.dtype)
    v, a, s, g = frames.to(acc), words.to(acc), s_sp.to(acc), grad.to(acc)
    dots, probs = _temporal_probs(s, v, a, temperature)
    grad_probs = g.unsqueeze(-1) * _word_weights(word_mask, acc)
    grad_logits = probs * (grad_probs - (probs * grad_probs).sum(2, keepdim=True))
    grad_s = (grad_logits * dots).sum(-1) / temperature if output_mask[0] else _unused(s_sp)
    grad_dots = grad_logits * s.unsqueeze(-1) / temperature
    grad_v = torch.einsum("bctl,cld->btd", grad_dots, a) if output_mask[1] else _unused(frames)
    grad_a = torch.einsum("bctl,btd->cld", grad_dots, v) if output_mask[2] else _unused(words)
    return grad_s.to(s_sp.dtype), grad_v.to(frames.dtype), grad_a.to(words.dtype)


def torch_similarity_forward(s_temp: Tensor, frames: Tensor, class_emb: Tensor, eps: float) -> Tensor:
    acc = output_dtype(frames.dtype)
    z = class_emb.to(acc)
    f_st = torch.einsum("bct,btd->bcd", s_temp.to(acc), frames.to(acc))
    numerator = (f_st * z.unsqueeze(0)).sum(-1)
    return numerator / (f_st.norm(dim=-1) * z.norm(dim=-1)).clamp_min(eps)


def torch_similarity_backward(
    grad: Tensor,
    s_temp: Tensor,
    frames: Tensor,
    class_emb: Tensor,
    eps: float,
    output_mask: Sequence[bool] = (True, True, True),
) -> Tuple[Tensor, Tensor, Tensor]:
    acc = output_dtype(frames.dtype)
    s, v, z, g = s_temp.to(acc), frames.to(acc), class_emb.to(acc), grad.to(acc)
    f_st = torch.einsum("bct,btd->bcd", s, v)
    f_norm = f_st.norm(dim=-1)  # [B, C]
    z_norm = z.norm(dim=-1).unsqueeze(0)  # [1, C]
    numerator = (f_st * z.unsqueeze(0)).sum(-1)
    denominator = f_norm * z_norm
    active = denominator >= eps  # below eps the clamp is constant: no gradient through the norms
    safe = denominator.clamp_min(eps)
    grad_num = g / safe
    grad_den = torch.where(active, -g * numerator / safe**2, torch.zeros_like(g))
    # d den / d f = |z| f / |f|, d den / d z = |f| z / |z| (only where active, so no 0/0).
    f_coef = torch.where(active, grad_den * z_norm / f_norm.clamp_min(torch.finfo(acc).tiny), 0.0)
    z_coef = torch.where(active, grad_den * f_norm / z_norm.clamp_min(torch.finfo(acc).tiny), 0.0)
    grad_f = grad_num.unsqueeze(-1) * z.unsqueeze(0) + f_coef.unsqueeze(-1) * f_st
    if output_mask[2]:
        grad_z = (grad_num.unsqueeze(-1) * f_st).sum(0) + z_coef.sum(0).unsqueeze(-1) * z
    else:
        grad_z = _unused(class_emb)
    grad_s = torch.einsum("bcd,btd->bct", grad_f, v) if output_mask[0] else _unused(s_temp)
    grad_v = torch.einsum("bcd,bct->btd", grad_f, s) if output_mask[1] else _unused(frames)
    return grad_s.to(s_temp.dtype), grad_v.to(frames.dtype), grad_z.to(class_emb.dtype)


# --------------------------------------------------------------------------------------------
# Backend selection
# --------------------------------------------------------------------------------------------


def _triton_module():
    """``stzsar.kernels.sti_temporal`` (imported on first use; ``resolve_backend`` only offers
    ``"triton"`` when it imports)."""
    from stzsar.kernels import sti_temporal

    return sti_temporal


def _shape_limit(backend: str, device_type: str, op: str, frames: int, words: int) -> Optional[str]:
    """Why ``backend`` cannot run ``op`` (``"temporal_saliency"`` or ``"sti_similarity"``) at
    ``frames`` x ``words`` on ``device_type``, or None when it can. Only the GPU kernels have
    limits: they hold per-program tiles in registers/shared memory (CPU kernels and Triton's
    interpreter do not)."""
    if device_type != "cuda":
        return None
    if backend == "triton":
        limits = _triton_module()
        fits = (
            limits.temporal_fits(frames, words) if op == "temporal_saliency" else limits.similarity_fits(frames)
        )
        return None if fits else limits.limit_message(op, frames, words)
    if backend == "cuda":
        from stzsar import _C

        if op == "temporal_saliency" and not _C.cuda_temporal_fits(frames, words):
            return f"the CUDA kernel keeps T x Nw = {frames} x {words} dot products in 48 KB of shared memory, too many"
        if op == "sti_similarity" and not _C.cuda_similarity_fits(frames):
            return f"the CUDA kernel keeps a T x T = {frames} x {frames} Gram matrix in 48 KB of shared memory, too large"
    return None


@torch.compiler.assume_constant_result
def _resolve(
    backend: str, device: torch.device, dtype: torch.dtype, op: str, frames: int, words: int = 0
) -> str:
    """The backend that runs ``op`` at this shape: ``auto`` takes the first of its preference order
    that is available and can run the shape; an explicit backend that cannot raises, naming the
    limit and the backends that can."""
    if dtype == torch.float64:
        resolve_backend(backend, device, kernel="sti_temporal")  # still reject unknown names
        return "torch"  # the kernels take fp32/fp16/bf16; float64 is for reference checks
    device = torch.device(device)
    if backend == "auto":
        found = available_backends(device, kernel="sti_temporal")
        for name in (b for b in auto_order(op, device.type, dtype) if b in found):
            reason = _shape_limit(name, device.type, op, frames, words)
            if reason is None:
                _log.debug("%s: backend='auto' runs %s (T=%d, Nw=%d, %s)", op, name, frames, words, dtype)
                return name
            _log.debug("%s: backend='auto' skips %s: %s", op, name, reason)
    resolved = resolve_backend(backend, device, kernel="sti_temporal")
    reason = _shape_limit(resolved, device.type, op, frames, words)
    if reason is not None:
        found = available_backends(device, kernel="sti_temporal")
        able = [b for b in found if _shape_limit(b, device.type, op, frames, words) is None]
        raise ValueError(
            f"{op}: backend={resolved!r} cannot run T={frames}, Nw={words}: {reason}; "
            f"use one of {able} (backend='auto' picks one)"
        )
    return resolved


# --------------------------------------------------------------------------------------------
# The ops
# --------------------------------------------------------------------------------------------


@torch.library.custom_op("stzsar::temporal_saliency", mutates_args=())
def _temporal_saliency_op(
    s_sp: Tensor, frames: Tensor, words: Tensor, word_mask: Tensor, temperature: float, backend: str
) -> Tensor:
    args = (s_sp.contiguous(), frames.contiguous(), words.contiguous(), word_mask.contiguous())
    with no_autocast(frames):
        if backend == "torch":
            return torch_temporal_forward(*args, temperature)
        if backend in ("cpu", "cuda"):
            return torch.ops.stzsar.temporal_saliency_fused_fwd(*args, temperature)
        return _triton_module().temporal_saliency_fwd(*args, temperature)


@_temporal_saliency_op.register_fake
def _(s_sp, frames, words, word_mask, temperature, backend):
    return s_sp.new_empty(s_sp.shape, dtype=output_dtype(frames.dtype))


@torch.library.custom_op("stzsar::temporal_saliency_backward", mutates_args=())
def _temporal_saliency_backward_op(
    grad: Tensor,
    s_sp: Tensor,
    frames: Tensor,
    words: Tensor,
    word_mask: Tensor,
    temperature: float,
    backend: str,
    output_mask: List[bool],
) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients w.r.t. (s_sp, frames, words); those that ``output_mask`` leaves out are empty."""
    args = (
        grad.contiguous(),
        s_sp.contiguous(),
        frames.contiguous(),
        words.contiguous(),
        word_mask.contiguous(),
    )
    mask = [bool(x) for x in output_mask]
    with no_autocast(frames):
        if backend == "torch":
            return torch_temporal_backward(*args, temperature, mask)
        if backend in ("cpu", "cuda"):
            return torch.ops.stzsar.temporal_saliency_fused_bwd(*args, temperature, mask)
        return _triton_module().temporal_saliency_bwd(*args, temperature, mask)


def _masked_like(output_mask: Sequence[bool], *inputs: Tensor) -> Tuple[Tensor, ...]:
    return tuple(torch.empty_like(x) if need else x.new_empty((0,)) for need, x in zip(output_mask, inputs))


@_temporal_saliency_backward_op.register_fake
def _(grad, s_sp, frames, words, word_mask, temperature, backend, output_mask):
    return _masked_like(output_mask, s_sp, frames, words)


def _temporal_setup_context(ctx, inputs, output):
    s_sp, frames, words, word_mask, temperature, backend = inputs
    ctx.save_for_backward(s_sp, frames, words, word_mask)
    ctx.temperature = temperature
    ctx.backend = backend


def _temporal_backward(ctx, grad):
    s_sp, frames, words, word_mask = ctx.saved_tensors
    needs = [bool(x) for x in ctx.needs_input_grad[:3]]
    grads = _temporal_saliency_backward_op(
        grad, s_sp, frames, words, word_mask, ctx.temperature, ctx.backend, needs
    )
    return (*(g if need else None for g, need in zip(grads, needs)), None, None, None)


_temporal_saliency_op.register_autograd(_temporal_backward, setup_context=_temporal_setup_context)


@torch.library.custom_op("stzsar::sti_similarity", mutates_args=())
def _sti_similarity_op(s_temp: Tensor, frames: Tensor, class_emb: Tensor, backend: str) -> Tensor:
    args = (s_temp.contiguous(), frames.contiguous(), class_emb.contiguous())
    with no_autocast(frames):
        if backend == "torch":
            return torch_similarity_forward(*args, SIMILARITY_EPS)
        if backend in ("cpu", "cuda"):
            return torch.ops.stzsar.sti_similarity_fused_fwd(*args, SIMILARITY_EPS)
        return _triton_module().sti_similarity_fwd(*args, SIMILARITY_EPS)


@_sti_similarity_op.register_fake
def _(s_temp, frames, class_emb, backend):
    return s_temp.new_empty(s_temp.shape[:2], dtype=output_dtype(frames.dtype))


@torch.library.custom_op("stzsar::sti_similarity_backward", mutates_args=())
def _sti_similarity_backward_op(
    grad: Tensor, s_temp: Tensor, frames: Tensor, class_emb: Tensor, backend: str, output_mask: List[bool]
) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients w.r.t. (s_temp, frames, class_emb); those that ``output_mask`` leaves out are empty."""
    args = (grad.contiguous(), s_temp.contiguous(), frames.contiguous(), class_emb.contiguous())
    mask = [bool(x) for x in output_mask]
    with no_autocast(frames):
        if backend == "torch":
            return torch_similarity_backward(*args, SIMILARITY_EPS, mask)
        if backend in ("cpu", "cuda"):
            return torch.ops.stzsar.sti_similarity_fused_bwd(*args, SIMILARITY_EPS, mask)
        return _triton_module().sti_similarity_bwd(*args, SIMILARITY_EPS, mask)


@_sti_similarity_backward_op.register_fake
def _(grad, s_temp, frames, class_emb, backend, output_mask):
    return _masked_like(output_mask, s_temp, frames, class_emb)


def _similarity_setup_context(ctx, inputs, output):
    s_temp, frames, class_emb, backend = inputs
    ctx.save_for_backward(s_temp, frames, class_emb)
    ctx.backend = backend


def _similarity_backward(ctx, grad):
    s_temp, frames, class_emb = ctx.saved_tensors
    needs = [bool(x) for x in ctx.needs_input_grad[:3]]
    grads = _sti_similarity_backward_op(grad, s_temp, frames, class_emb, ctx.backend, needs)
    return (*(g if need else None for g, need in zip(grads, needs)), None)


_sti_similarity_op.register_autograd(_similarity_backward, setup_context=_similarity_setup_context)


def _register_flop_formulas() -> None:
    from torch.utils.flop_counter import register_flop_formula

    @register_flop_formula(torch.ops.stzsar.temporal_saliency)
    def _temporal_fwd(s_shape, frames_shape, words_shape, *args, **kwargs) -> int:
        B, C, T = s_shape
        Nw, D = words_shape[1], words_shape[2]
        return temporal_saliency_flops(B, C, T, Nw, D)

    @register_flop_formula(torch.ops.stzsar.temporal_saliency_backward)
    def _temporal_bwd(grad_shape, s_shape, frames_shape, words_shape, *args, **kwargs) -> int:
        B, C, T = s_shape
        Nw, D = words_shape[1], words_shape[2]
        return temporal_saliency_backward_flops(B, C, T, Nw, D)

    @register_flop_formula(torch.ops.stzsar.sti_similarity)
    def _similarity_fwd(s_shape, frames_shape, class_shape, *args, **kwargs) -> int:
        B, C, T = s_shape
        return sti_similarity_flops(B, C, T, frames_shape[-1])

    @register_flop_formula(torch.ops.stzsar.sti_similarity_backward)
    def _similarity_bwd(grad_shape, s_shape, frames_shape, class_shape, *args, **kwargs) -> int:
        B, C, T = s_shape
        return sti_similarity_backward_flops(B, C, T, frames_shape[-1])


_register_flop_formulas()


# --------------------------------------------------------------------------------------------
# Public functions: input checks, dtype promotion, backend resolution
# --------------------------------------------------------------------------------------------


def temporal_saliency(
    s_sp: Tensor,
    frames: Tensor,
    words: Tensor,
    word_mask: Tensor,
    temperature: float,
    backend: str = "auto",
) -> Tensor:
    """``S_temp [B, C, T]``: for every word, a softmax over time of
    ``S_sp[b,c,t] <v[b,t], A~[c,l]> / temperature``, averaged over the valid words of class c.

    Args:
        s_sp: spatial scores ``[B, C, T]`` (the output of :func:`~stzsar.ops.spatial_maxsim`).
        frames: frame features ``v`` ``[B, T, D]``.
        words: projected word features ``A~`` ``[C, Nw, D]``.
        word_mask: ``[C, Nw]`` bool, True for real words; every class needs at least one.
        temperature: ``tau > 0``.
        backend: see the module docstring.

    Returns float32 (float64 for float64 inputs), differentiable in ``s_sp``, ``frames`` and
    ``words``. Every backend reads the features in their dtype and computes in float32, with or
    without autocast (which does not recast anything inside the op); the gradients come back in
    the inputs' dtypes (``s_sp``'s in float32).
    """
    if s_sp.dim() != 3:
        raise ValueError(f"s_sp must be [B, C, T], got shape {tuple(s_sp.shape)}")
    if frames.dim() != 3:
        raise ValueError(f"frames must be [B, T, D], got shape {tuple(frames.shape)}")
    if words.dim() != 3:
        raise ValueError(f"words must be [C, Nw, D], got shape {tuple(words.shape)}")
    B, C, T = s_sp.shape
    if frames.shape[:2] != (B, T):
        raise ValueError(
            f"frames must be [B, T, D] with [B, T] = [{B}, {T}] from s_sp, got {tuple(frames.shape)}"
        )
    if words.shape[0] != C or words.shape[2] != frames.shape[2]:
        raise ValueError(
            f"words must be [C, Nw, D] with C = {C} (s_sp) and D = {frames.shape[2]} (frames), "
            f"got {tuple(words.shape)}"
        )
    check_word_mask_shape(word_mask, words)
    for name, tensor in (("s_sp", s_sp), ("frames", frames), ("words", words)):
        check_float(name, tensor)
    if not float(temperature) > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    device = check_same_device(s_sp=s_sp, frames=frames, words=words, word_mask=word_mask)
    check_word_mask(word_mask)

    if torch.float64 in (s_sp.dtype, frames.dtype, words.dtype):
        s_sp, frames, words = s_sp.double(), frames.double(), words.double()
    else:
        if frames.dtype != words.dtype:
            common = torch.promote_types(frames.dtype, words.dtype)
            frames, words = frames.to(common), words.to(common)
        s_sp = s_sp.float()  # scores stay float32 whatever the feature dtype
    resolved = _resolve(backend, device, frames.dtype, "temporal_saliency", T, words.shape[1])
    return _temporal_saliency_op(s_sp, frames, words, word_mask, float(temperature), resolved)


def sti_similarity(s_temp: Tensor, frames: Tensor, class_emb: Tensor, backend: str = "auto") -> Tensor:
    """``cos(z_c, f_st[b, c])`` ``[B, C]`` with ``f_st[b, c] = sum_t s_temp[b, c, t] frames[b, t]``,
    computed through the frame Gram matrix without forming ``f_st``.

    Args:
        s_temp: temporal weights ``[B, C, T]`` (the output of :func:`temporal_saliency`).
        frames: frame features ``v`` ``[B, T, D]``.
        class_emb: class embeddings ``z`` ``[C, D]``.
        backend: see the module docstring.

    The denominator ``|z_c| |f_st|`` is clamped to :data:`SIMILARITY_EPS`. Returns float32
    (float64 for float64 inputs), differentiable in all three inputs. As for
    :func:`temporal_saliency`, the math is float32 on every backend whether autocast is on or not.
    """
    if s_temp.dim() != 3:
        raise ValueError(f"s_temp must be [B, C, T], got shape {tuple(s_temp.shape)}")
    if frames.dim() != 3:
        raise ValueError(f"frames must be [B, T, D], got shape {tuple(frames.shape)}")
    B, C, T = s_temp.shape
    if frames.shape[:2] != (B, T):
        raise ValueError(
            f"frames must be [B, T, D] with [B, T] = [{B}, {T}] from s_temp, got {tuple(frames.shape)}"
        )
    if class_emb.dim() != 2 or class_emb.shape != (C, frames.shape[2]):
        raise ValueError(
            f"class_emb must be [C, D] = [{C}, {frames.shape[2]}], got {tuple(class_emb.shape)}"
        )
    for name, tensor in (("s_temp", s_temp), ("frames", frames), ("class_emb", class_emb)):
        check_float(name, tensor)
    device = check_same_device(s_temp=s_temp, frames=frames, class_emb=class_emb)

    if torch.float64 in (s_temp.dtype, frames.dtype, class_emb.dtype):
        s_temp, frames, class_emb = s_temp.double(), frames.double(), class_emb.double()
    else:
        if frames.dtype != class_emb.dtype:
            common = torch.promote_types(frames.dtype, class_emb.dtype)
            frames, class_emb = frames.to(common), class_emb.to(common)
        s_temp = s_temp.float()
    resolved = _resolve(backend, device, frames.dtype, "sti_similarity", T)
    return _sti_similarity_op(s_temp, frames, class_emb, resolved)
