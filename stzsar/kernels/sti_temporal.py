"""Triton kernels of ``stzsar::temporal_saliency`` and ``stzsar::sti_similarity`` (docs/method.md section 4).

temporal_saliency, forward
    One program per (video b, block of ``CB`` classes), all on grid axis x (videos fastest). The
    class block's words, each class padded to ``NWP`` (a power of two >= Nw) columns, form a
    ``[CB*NWP, D]`` tile; ``tl.dot`` against the video's ``[T, D]`` frames (fp32 accumulation, D
    in chunks) gives all ``<v_t, A~_l>`` on chip. The softmax over t runs per column in registers
    with the maximum subtracted, the ``[T, CB, NWP]`` reshape averages over each class's valid
    words, and only ``S_temp[b, block, :]`` is written.

temporal_saliency, backward
    The same programs recompute the dot products and the softmax, and write ``d S_sp`` and the
    coefficients ``d loss / d <v_t, A~_l>`` for one chunk of classes into a ``[B*T, chunk*Nw]``
    buffer (bounded by ``_COEF_ELEMENTS``); two GEMMs per chunk then give the word gradients of
    the chunk and add the chunk's share of the frame gradients. Deterministic, no atomics, no
    ``[B, C, T, Nw]`` tensor.

sti_similarity
    One program per (video, block of ``CBZ`` classes): ``<z_c, v_t>`` and the video's T x T Gram
    matrix by ``tl.dot``, then per class ``sum_t S[t] <z_c, v_t>`` and ``S^T G S``; only the cosine
    is written. The backward program writes ``d S_temp`` and three scalars per (b, c) (see
    ``_similarity_epilogue``), from which GEMMs give the frame and class gradients without ever
    forming ``f_st [B, C, D]``.

Under ``TRITON_INTERPRET=1`` (CPU tensors, used by the tests) the kernels run in Triton's
interpreter, and operands are upcast to fp32 before ``tl.dot`` because the interpreter has no
bf16/fp16 dot. fp32 inputs use ``input_precision="ieee"`` (no TF32) to keep the 1e-5 accuracy.
"""

from __future__ import annotations

import os
from typing import Sequence, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from stzsar.kernels.spatial_maxsim import checked_grid
from stzsar.kernels.spatial_maxsim import launch_on_inputs_device as _launch_on_inputs_device

__all__ = [
    "limit_message",
    "similarity_fits",
    "sti_similarity_bwd",
    "sti_similarity_fwd",
    "temporal_fits",
    "temporal_saliency_bwd",
    "temporal_saliency_fwd",
    "video_block_grid",
]

# triton.jit picks the interpreter at decoration time, so this is fixed at import.
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Upper bound on the elements of the backward coefficient buffer (16 MB of fp32).
_COEF_ELEMENTS = 1 << 22


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


# Largest fp32 tiles the compiled kernels hold per program (registers, staged through shared
# memory by tl.dot). temporal: [BLOCK_T, CB * NWP]; similarity: the [BLOCK_T, BLOCK_T] Gram
# matrix. Beyond them the shared memory of an sm_80/sm_90 block is exceeded (the largest accepted
# shapes are compiled for both in tests/test_sti_temporal.py: 160 KB at T=64, Nw=256 in fp32).
MAX_TEMPORAL_FRAMES = 64
MAX_TEMPORAL_WORDS = 256
MAX_SIMILARITY_FRAMES = 128


def temporal_fits(T: int, Nw: int) -> bool:
    """Whether the compiled temporal_saliency kernels take ``T`` frames x ``Nw`` words."""
    return T <= MAX_TEMPORAL_FRAMES and Nw <= MAX_TEMPORAL_WORDS


def similarity_fits(T: int) -> bool:
    """Whether the compiled sti_similarity kernels take ``T`` frames."""
    return T <= MAX_SIMILARITY_FRAMES


def limit_message(op: str, T: int, Nw: int) -> str:
    """Why the compiled kernels of ``op`` cannot take the shape (see :data:`MAX_TEMPORAL_TILE`)."""
    if op == "temporal_saliency":
        return (
            f"the Triton kernel holds a [next_pow2(T), max(64, next_pow2(Nw))] fp32 tile per program in "
            f"registers and shared memory and takes T <= {MAX_TEMPORAL_FRAMES}, Nw <= {MAX_TEMPORAL_WORDS}"
        )
    return f"the Triton kernel holds a T x T Gram matrix per program and takes T <= {MAX_SIMILARITY_FRAMES}, got T={T}"


def _check_device(*tensors: Tensor) -> None:
    for tensor in tensors:
        if tensor.device.type == "cuda":
            if _INTERPRET:
                raise RuntimeError(
                    "stzsar.kernels.sti_temporal was imported with TRITON_INTERPRET=1, so its kernels "
                    "run in the interpreter and take CPU tensors only"
                )
        elif not _INTERPRET:
            raise RuntimeError(
                f"the Triton backend needs CUDA tensors, got one on {tensor.device}; CPU tensors run "
                "only in Triton's interpreter (set TRITON_INTERPRET=1 before importing stzsar)"
            )


def _dot_dtype_args(x: Tensor) -> dict:
    """Compile-time switches of the dot products for the feature dtype ``x.dtype``."""
    return {"UPCAST": _INTERPRET, "IEEE": x.dtype == torch.float32 or _INTERPRET}


def _temporal_blocks(T: int, Nw: int, D: int) -> dict:
    nwp = max(_next_pow2(Nw), 1)
    # ~64 word columns per program on a GPU (the tile [T, 64] stays in registers); at least 16
    # columns since tl.dot needs N >= 16.
    cb = max(1, (16 if _INTERPRET else 64) // nwp)
    return {
        "BLOCK_T": max(16, _next_pow2(T)),
        "NWP": nwp,
        "CB": cb,
        "BLOCK_D": min(32 if _INTERPRET else 64, max(16, _next_pow2(D))),
    }


# --------------------------------------------------------------------------------------------
# temporal_saliency
# --------------------------------------------------------------------------------------------


def video_block_grid(B: int, blocks: int, kernel: str) -> Tuple[int]:
    """The launch grid of ``B`` videos x ``blocks`` class blocks: one flat axis (x takes up to
    2^31 - 1 programs, y only 65,535, which 65,536 classes of more than 64 words would exceed)."""
    return checked_grid((B * blocks,), kernel, "score fewer videos x classes per call")


@triton.jit
def _video_and_block(B):
    """``(video, class block)`` of this program on the flat grid, videos fastest (programs that
    run together share the block's words). int64, so offsets such as ``(b*C + c)*T`` and
    ``row*D`` do not overflow int32 at large class counts."""
    pid = tl.program_id(0).to(tl.int64)
    return pid % B, pid // B


@triton.jit
def _frame_word_dots(
    v_ptr, w_ptr, b, T, D, rows, row_ok, t, t_ok,
    BLOCK_T: tl.constexpr, R: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
):
    """``acc[t, r] = <v[b, t], w[rows[r]]>`` ([BLOCK_T, R] fp32), D in chunks of BLOCK_D."""
    acc = tl.zeros((BLOCK_T, R), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_ok = d < D
        v = tl.load(v_ptr + (b * T + t)[:, None] * D + d[None, :], mask=t_ok[:, None] & d_ok[None, :], other=0.0)
        w = tl.load(w_ptr + rows[:, None] * D + d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        if UPCAST:
            v = v.to(tl.float32)
            w = w.to(tl.float32)
        if IEEE:
            acc = tl.dot(v, tl.trans(w), acc, input_precision="ieee")
        else:
            acc = tl.dot(v, tl.trans(w), acc)
    return acc


@triton.jit
def _temporal_fwd_kernel(
    s_ptr,  # [B, C, T] fp32
    v_ptr,  # [B, T, D]
    w_ptr,  # [C, Nw, D]
    mask_ptr,  # [C, Nw] uint8
    out_ptr,  # [B, C, T] fp32
    B, C, T, Nw, D, tau,
    BLOCK_T: tl.constexpr, NWP: tl.constexpr, CB: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, IEEE: tl.constexpr,
):
    b, blk = _video_and_block(B)
    R: tl.constexpr = CB * NWP
    r = tl.arange(0, R)
    cls = blk * CB + r // NWP
    l = r % NWP
    col_ok = (l < Nw) & (cls < C)
    rows = cls * Nw + l
    t = tl.arange(0, BLOCK_T)
    t_ok = t < T

    dots = _frame_word_dots(v_ptr, w_ptr, b, T, D, rows, col_ok, t, t_ok, BLOCK_T, R, BLOCK_D, UPCAST, IEEE)
    word_ok = (tl.load(mask_ptr + rows, mask=col_ok, other=0) != 0) & col_ok
    s = tl.load(s_ptr + (b * C + cls)[None, :] * T + t[:, None], mask=t_ok[:, None] & col_ok[None, :], other=0.0)

    # Softmax over t per column, max-shifted; padded frames get -inf (every column has T >= 1 real).
    logits = tl.where(t_ok[:, None], s * dots / tau, float("-inf"))
    shifted = tl.exp(logits - tl.max(logits, axis=0)[None, :])
    probs = shifted / tl.sum(shifted, axis=0)[None, :]
    probs = tl.where(word_ok[None, :], probs, 0.0)

    count = tl.sum(tl.reshape(word_ok.to(tl.float32), (CB, NWP)), axis=1)  # [CB]
    total = tl.sum(tl.reshape(probs, (BLOCK_T, CB, NWP)), axis=2)  # [BLOCK_T, CB]
    s_temp = total / tl.maximum(count, 1.0)[None, :]

    c_out = blk * CB + tl.arange(0, CB)
    tl.store(out_ptr + (b * C + c_out)[None, :] * T + t[:, None], s_temp, mask=t_ok[:, None] & (c_out < C)[None, :])


@triton.jit
def _temporal_bwd_kernel(
    g_ptr,  # [B, C, T] fp32, d loss / d S_temp
    s_ptr,  # [B, C, T] fp32
    v_ptr,  # [B, T, D]
    w_ptr,  # [C, Nw, D]
    mask_ptr,  # [C, Nw] uint8
    gs_ptr,  # [B, C, T] fp32, d loss / d S_sp (out)
    coef_ptr,  # [B*T, ldc] fp32: d loss / d <v_t, A~_l> of the chunk's classes (out)
    B, C, T, Nw, D, tau, c_lo, c_hi, ldc,
    BLOCK_T: tl.constexpr, NWP: tl.constexpr, CB: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, IEEE: tl.constexpr,
):
    b, blk = _video_and_block(B)
    R: tl.constexpr = CB * NWP
    r = tl.arange(0, R)
    cls = c_lo + blk * CB + r // NWP
    l = r % NWP
    col_ok = (l < Nw) & (cls < c_hi)
    rows = cls * Nw + l
    t = tl.arange(0, BLOCK_T)
    t_ok = t < T
    tile_ok = t_ok[:, None] & col_ok[None, :]

    dots = _frame_word_dots(v_ptr, w_ptr, b, T, D, rows, col_ok, t, t_ok, BLOCK_T, R, BLOCK_D, UPCAST, IEEE)
    word_ok = (tl.load(mask_ptr + rows, mask=col_ok, other=0) != 0) & col_ok
    offs = (b * C + cls)[None, :] * T + t[:, None]
    s = tl.load(s_ptr + offs, mask=tile_ok, other=0.0)
    g = tl.load(g_ptr + offs, mask=tile_ok, other=0.0)

    logits = tl.where(t_ok[:, None], s * dots / tau, float("-inf"))
    shifted = tl.exp(logits - tl.max(logits, axis=0)[None, :])
    probs = shifted / tl.sum(shifted, axis=0)[None, :]

    count = tl.sum(tl.reshape(word_ok.to(tl.float32), (CB, NWP)), axis=1)  # [CB]
    inv_count = 1.0 / tl.maximum(count, 1.0)
    col_inv_count = tl.reshape(tl.broadcast_to(inv_count[:, None], (CB, NWP)), (R,))
    # d loss / d logit = p (g - sum_t p g) / count; the 1/tau of the logit is folded in here.
    pg = tl.sum(probs * g, axis=0)
    d_logit = probs * (g - pg[None, :]) * (col_inv_count / tau)[None, :]
    d_logit = tl.where(word_ok[None, :] & t_ok[:, None], d_logit, 0.0)

    grad_s = tl.sum(tl.reshape(d_logit * dots, (BLOCK_T, CB, NWP)), axis=2)  # [BLOCK_T, CB]
    c_out = c_lo + blk * CB + tl.arange(0, CB)
    tl.store(gs_ptr + (b * C + c_out)[None, :] * T + t[:, None], grad_s, mask=t_ok[:, None] & (c_out < c_hi)[None, :])

    coef_offs = (b * T + t)[:, None] * ldc + ((cls - c_lo) * Nw + l)[None, :]
    tl.store(coef_ptr + coef_offs, d_logit * s, mask=tile_ok)


@_launch_on_inputs_device
def temporal_saliency_fwd(
    s_sp: Tensor, frames: Tensor, words: Tensor, word_mask: Tensor, temperature: float
) -> Tensor:
    """``S_temp [B, C, T]`` (fp32); inputs contiguous, ``frames``/``words`` of one dtype."""
    _check_device(s_sp, frames, words, word_mask)
    B, C, T = s_sp.shape
    Nw, D = words.shape[1], words.shape[2]
    out = torch.zeros((B, C, T), dtype=torch.float32, device=s_sp.device)
    if out.numel() == 0 or Nw == 0:
        return out
    blocks = _temporal_blocks(T, Nw, D)
    grid = video_block_grid(B, triton.cdiv(C, blocks["CB"]), "temporal_saliency")
    _temporal_fwd_kernel[grid](
        s_sp, frames, words, word_mask.to(torch.uint8), out, B, C, T, Nw, D, float(temperature),
        **blocks, **_dot_dtype_args(frames), num_warps=4,
    )
    return out


def backward_chunk(B: int, C: int, T: int, Nw: int, cb: int) -> int:
    """Classes per chunk of the temporal backward: a multiple of the class block ``cb``, the
    coefficient buffer ``[B*T, chunk*Nw]`` under ``_COEF_ELEMENTS``."""
    per_chunk = max(cb, (_COEF_ELEMENTS // max(1, B * T * Nw)) // cb * cb)
    return min(per_chunk, triton.cdiv(C, cb) * cb)


def _masked(needed: bool, grad: Tensor, like: Tensor) -> Tensor:
    """``grad`` in the dtype of ``like``, or an empty tensor when the gradient is not wanted."""
    return grad.to(like.dtype) if needed else like.new_empty((0,))


@_launch_on_inputs_device
def temporal_saliency_bwd(
    grad: Tensor,
    s_sp: Tensor,
    frames: Tensor,
    words: Tensor,
    word_mask: Tensor,
    temperature: float,
    output_mask: Sequence[bool] = (True, True, True),
) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients w.r.t. ``s_sp`` (fp32), ``frames`` and ``words`` (their dtype); those that
    ``output_mask`` leaves out come back empty and cost nothing."""
    need_s, need_v, need_w = (bool(x) for x in output_mask)
    _check_device(grad, s_sp, frames, words, word_mask)
    B, C, T = s_sp.shape
    Nw, D = words.shape[1], words.shape[2]
    device = s_sp.device
    grad_s = torch.zeros((B, C, T), dtype=torch.float32, device=device)
    grad_v = torch.zeros((B * T, D), dtype=torch.float32, device=device)
    grad_w = torch.zeros((C * Nw if need_w else 0, D), dtype=torch.float32, device=device)
    if grad_s.numel() > 0 and Nw > 0 and D > 0:
        blocks = _temporal_blocks(T, Nw, D)
        cb = blocks["CB"]
        per_chunk = backward_chunk(B, C, T, Nw, cb)
        coef = torch.empty((B * T, per_chunk * Nw), dtype=torch.float32, device=device)
        v32 = frames.reshape(B * T, D).float()
        w32 = words.reshape(C * Nw, D).float()
        mask8 = word_mask.to(torch.uint8)
        for c_lo in range(0, C, per_chunk):
            c_hi = min(C, c_lo + per_chunk)
            cols = (c_hi - c_lo) * Nw
            grid = video_block_grid(B, triton.cdiv(c_hi - c_lo, cb), "temporal_saliency backward")
            _temporal_bwd_kernel[grid](
                grad, s_sp, frames, words, mask8, grad_s, coef, B, C, T, Nw, D, float(temperature),
                c_lo, c_hi, per_chunk * Nw, **blocks, **_dot_dtype_args(frames), num_warps=4,
            )
            chunk = coef[:, :cols]
            if need_v:
                grad_v.addmm_(chunk, w32[c_lo * Nw : c_hi * Nw])
            if need_w:
                torch.mm(chunk.t(), v32, out=grad_w[c_lo * Nw : c_hi * Nw])
    return (
        _masked(need_s, grad_s, s_sp),
        _masked(need_v, grad_v.view(B, T, D), frames),
        _masked(need_w, grad_w.view(-1, Nw, D), words),
    )


# --------------------------------------------------------------------------------------------
# sti_similarity
# --------------------------------------------------------------------------------------------


def _similarity_blocks(T: int, D: int) -> dict:
    return {
        "BLOCK_T": max(16, _next_pow2(T)),
        "CBZ": 16 if _INTERPRET else 32,
        "BLOCK_D": min(32 if _INTERPRET else 64, max(16, _next_pow2(D))),
    }


@triton.jit
def _video_class_products(
    v_ptr, z_ptr, b, T, C, D, c, c_ok, t, t_ok,
    BLOCK_T: tl.constexpr, CBZ: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
):
    """``zv [CBZ, BLOCK_T] = <z_c, v_t>``, the Gram matrix ``[BLOCK_T, BLOCK_T]`` and ``|z_c|^2``."""
    zv = tl.zeros((CBZ, BLOCK_T), dtype=tl.float32)
    gram = tl.zeros((BLOCK_T, BLOCK_T), dtype=tl.float32)
    z_sq = tl.zeros((CBZ,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_ok = d < D
        v = tl.load(v_ptr + (b * T + t)[:, None] * D + d[None, :], mask=t_ok[:, None] & d_ok[None, :], other=0.0)
        z = tl.load(z_ptr + c[:, None] * D + d[None, :], mask=c_ok[:, None] & d_ok[None, :], other=0.0)
        if UPCAST:
            v = v.to(tl.float32)
            z = z.to(tl.float32)
        if IEEE:
            zv = tl.dot(z, tl.trans(v), zv, input_precision="ieee")
            gram = tl.dot(v, tl.trans(v), gram, input_precision="ieee")
        else:
            zv = tl.dot(z, tl.trans(v), zv)
            gram = tl.dot(v, tl.trans(v), gram)
        z32 = z.to(tl.float32)
        z_sq += tl.sum(z32 * z32, axis=1)
    return zv, gram, z_sq


@triton.jit
def _similarity_fwd_kernel(
    s_ptr,  # [B, C, T] fp32
    v_ptr,  # [B, T, D]
    z_ptr,  # [C, D]
    out_ptr,  # [B, C] fp32
    B, C, T, D, eps,
    BLOCK_T: tl.constexpr, CBZ: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
):
    b, blk = _video_and_block(B)
    c = blk * CBZ + tl.arange(0, CBZ)
    c_ok = c < C
    t = tl.arange(0, BLOCK_T)
    t_ok = t < T
    zv, gram, z_sq = _video_class_products(
        v_ptr, z_ptr, b, T, C, D, c, c_ok, t, t_ok, BLOCK_T, CBZ, BLOCK_D, UPCAST, IEEE
    )
    s = tl.load(s_ptr + (b * C + c)[:, None] * T + t[None, :], mask=c_ok[:, None] & t_ok[None, :], other=0.0)
    num = tl.sum(s * zv, axis=1)
    gs = tl.dot(s, gram, input_precision="ieee")  # [CBZ, BLOCK_T] = S G (G symmetric)
    quad = tl.sum(gs * s, axis=1)
    den = tl.sqrt(tl.maximum(quad, 0.0)) * tl.sqrt(z_sq)
    tl.store(out_ptr + b * C + c, num / tl.maximum(den, eps), mask=c_ok)


@triton.jit
def _similarity_bwd_kernel(
    g_ptr,  # [B, C] fp32, d loss / d cos
    s_ptr,  # [B, C, T] fp32
    v_ptr,  # [B, T, D]
    z_ptr,  # [C, D]
    gs_ptr,  # [B, C, T] fp32, d loss / d S_temp (out)
    coef_ptr,  # [3, B, C] fp32: a, w, u of _similarity_epilogue (out)
    B, C, T, D, eps,
    BLOCK_T: tl.constexpr, CBZ: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
):
    b, blk = _video_and_block(B)
    c = blk * CBZ + tl.arange(0, CBZ)
    c_ok = c < C
    t = tl.arange(0, BLOCK_T)
    t_ok = t < T
    zv, gram, z_sq = _video_class_products(
        v_ptr, z_ptr, b, T, C, D, c, c_ok, t, t_ok, BLOCK_T, CBZ, BLOCK_D, UPCAST, IEEE
    )
    tile_ok = c_ok[:, None] & t_ok[None, :]
    s = tl.load(s_ptr + (b * C + c)[:, None] * T + t[None, :], mask=tile_ok, other=0.0)
    g = tl.load(g_ptr + b * C + c, mask=c_ok, other=0.0)
    num = tl.sum(s * zv, axis=1)
    gs = tl.dot(s, gram, input_precision="ieee")
    quad = tl.sum(gs * s, axis=1)
    f_norm = tl.sqrt(tl.maximum(quad, 0.0))
    z_norm = tl.sqrt(z_sq)
    den = f_norm * z_norm
    active = den >= eps  # below the floor the denominator is a constant: no gradient through it
    safe = tl.maximum(den, eps)
    d_num = g / safe
    d_den = tl.where(active, -g * num / (safe * safe), 0.0)
    w = tl.where(active, d_den * z_norm / tl.where(active, f_norm, 1.0), 0.0)
    u = tl.where(active, d_den * f_norm / tl.where(active, z_norm, 1.0), 0.0)
    grad_s = d_num[:, None] * zv + w[:, None] * gs
    tl.store(gs_ptr + (b * C + c)[:, None] * T + t[None, :], grad_s, mask=tile_ok)
    o = b * C + c
    tl.store(coef_ptr + o, d_num, mask=c_ok)
    tl.store(coef_ptr + B * C + o, w, mask=c_ok)
    tl.store(coef_ptr + 2 * B * C + o, u, mask=c_ok)


@_launch_on_inputs_device
def sti_similarity_fwd(s_temp: Tensor, frames: Tensor, class_emb: Tensor, eps: float) -> Tensor:
    """``cos [B, C]`` (fp32); inputs contiguous, ``frames``/``class_emb`` of one dtype."""
    _check_device(s_temp, frames, class_emb)
    B, C, T = s_temp.shape
    D = frames.shape[2]
    out = torch.zeros((B, C), dtype=torch.float32, device=s_temp.device)
    if out.numel() == 0:
        return out
    blocks = _similarity_blocks(T, D)
    grid = video_block_grid(B, triton.cdiv(C, blocks["CBZ"]), "sti_similarity")
    _similarity_fwd_kernel[grid](
        s_temp, frames, class_emb, out, B, C, T, D, float(eps), **blocks, **_dot_dtype_args(frames), num_warps=4
    )
    return out


def _similarity_epilogue(
    s_temp: Tensor, v32: Tensor, z32: Tensor, a: Tensor, w: Tensor, u: Tensor, need_v: bool, need_z: bool
) -> Tuple[Tensor, Tensor]:
    """Frame and class gradients from the per-(b, c) coefficients (as csrc/sti_temporal_common.h):
    ``dz[c] = sum_{b,t} a s v + (sum_b u) z``, ``dv[b] = sum_c a s z^T + M[b] V[b]`` with
    ``M[b] = sum_c w s s^T`` (T x T). Only [B, C, T] and [B, T, T] temporaries."""
    B, C, T = s_temp.shape
    D = v32.shape[-1]
    q_t = (s_temp * a.unsqueeze(-1)).transpose(1, 2)  # [B, T, C]
    grad_v = grad_z = None
    if need_z:
        grad_z = q_t.reshape(B * T, C).t() @ v32.reshape(B * T, D)
        grad_z += z32 * u.sum(0).unsqueeze(-1)
    if need_v:
        grad_v = q_t @ z32
        m = (s_temp * w.unsqueeze(-1)).transpose(1, 2) @ s_temp  # [B, T, T]
        grad_v.baddbmm_(m, v32)
    return grad_v, grad_z


@_launch_on_inputs_device
def sti_similarity_bwd(
    grad: Tensor,
    s_temp: Tensor,
    frames: Tensor,
    class_emb: Tensor,
    eps: float,
    output_mask: Sequence[bool] = (True, True, True),
) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients w.r.t. ``s_temp`` (fp32), ``frames`` and ``class_emb`` (their dtype); those that
    ``output_mask`` leaves out come back empty."""
    need_s, need_v, need_z = (bool(x) for x in output_mask)
    _check_device(grad, s_temp, frames, class_emb)
    B, C, T = s_temp.shape
    D = frames.shape[2]
    device = s_temp.device
    grad_s = torch.zeros((B, C, T), dtype=torch.float32, device=device)
    coef = torch.zeros((3, B, C), dtype=torch.float32, device=device)
    if grad_s.numel() > 0:
        blocks = _similarity_blocks(T, D)
        grid = video_block_grid(B, triton.cdiv(C, blocks["CBZ"]), "sti_similarity backward")
        _similarity_bwd_kernel[grid](
            grad, s_temp, frames, class_emb, grad_s, coef, B, C, T, D, float(eps),
            **blocks, **_dot_dtype_args(frames), num_warps=4,
        )
    grad_v, grad_z = _similarity_epilogue(
        s_temp, frames.float(), class_emb.float(), coef[0], coef[1], coef[2], need_v, need_z
    )
    return (
        _masked(need_s, grad_s, s_temp),
        _masked(need_v, grad_v, frames),
        _masked(need_z, grad_z, class_emb),
    )
