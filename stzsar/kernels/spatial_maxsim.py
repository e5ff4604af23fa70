"""Triton kernels of ``stzsar::spatial_maxsim`` (docs/method.md section 4, the spatial double max).

``out[b, c, t] = max over valid words l, max over patches k of <patches[b, t, k], words[c, l]>``
and ``index[b, c, t] = k * Nw + l`` of the winner (lowest flat index on exact ties).

Forward
    One tiled GEMM of all patches ``[M = B*T*Np, D]`` against all words, fp32 accumulation in
    ``tl.dot``. A program owns ``BLOCK_M`` consecutive patch rows (they may straddle frames) and
    ``CB`` whole classes, each padded to ``NWP`` (a power of two >= Nw) columns, so the
    ``[BLOCK_M, CB*NWP]`` tile reshapes to ``[.., CB, NWP]`` for the per-class reduction. The
    epilogue reduces the tile with the order (higher score, then lower flat index), first over
    each class's words, then over the rows of each frame segment, and merges into a per
    (b, c, t) 64-bit key with ``atomic_max``: high bits the order-preserving image of the fp32
    score, low 24 bits ``2**24 - 1 - flat`` so that equal scores prefer the lowest flat index.
    The merge is a maximum, so the result does not depend on the order of the atomics. A tiny
    second kernel decodes the keys into ``out`` and ``index``. Nothing of size
    ``B*C*T*Np*Nw`` ever exists; the extra memory is one int64 per (b, c, t).

Backward
    Gradients flow only to the winners. Both gradients are segment sums over the B*C*T winners:
    ``dP[row(b,t,k)] = sum g[b,c,t] * W[c, l]`` and ``dW[c, l] = sum g[b,c,t] * P[b,t,k]``.
    The winners are sorted (stably) by destination row and a Triton kernel sums each segment in
    a fixed order, in fp32, so the backward is deterministic and free of atomics.

Under ``TRITON_INTERPRET=1`` (CPU tensors, used by the tests) the kernels run in Triton's
interpreter with one small configuration, and operands are upcast to fp32 before ``tl.dot``
because the interpreter computes low-precision dots wrongly.
"""

from __future__ import annotations

import functools
import os
from typing import Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["triton_spatial_maxsim_fwd", "triton_spatial_maxsim_bwd", "is_interpreting", "checked_grid"]

# The flat index k * Nw + l lives in the low 24 bits of the merge key.
_INDEX_BITS = 24
_MAX_FLAT = (1 << _INDEX_BITS) - 1


def is_interpreting() -> bool:
    """True when the kernels were built for Triton's CPU interpreter (``TRITON_INTERPRET=1``)."""
    return _INTERPRET


# triton.jit picks the interpreter at decoration time, so this is fixed at import.
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


# --------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------


@triton.jit
def _lex_max(value, flat, axis: tl.constexpr):
    """Reduce (score, flat index) pairs along ``axis``: the highest score, and among equal
    scores the lowest index. Two plain reductions (fast in the interpreter too)."""
    best = tl.max(value, axis=axis)
    cand = tl.where(value == tl.expand_dims(best, axis), flat, 2147483647)
    return best, tl.min(cand, axis=axis)


# Sizes that vary per call are not specialised on (no recompiles for a new batch or class
# count); the shape constants that matter for code generation are constexpr.
@triton.jit(do_not_specialize=["M", "C", "T"])
def _maxsim_fwd_kernel(
    p_ptr,  # [M, D] patches, M = B*T*Np rows, contiguous
    w_ptr,  # [C*Nw, D] words, contiguous
    mask_ptr,  # [C, Nw] uint8 word mask
    key_ptr,  # [B, C, T] int64 merge keys, zero-initialised
    M,
    C,
    T,
    Np: tl.constexpr,
    Nw: tl.constexpr,
    D: tl.constexpr,
    NWP: tl.constexpr,  # Nw padded to a power of two
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,  # target columns per program; CB = max(1, BLOCK_N // NWP) classes
    BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr,  # interpreter: do the dot in fp32
    PRECISION: tl.constexpr,  # "ieee" for fp32 inputs (exact fp32, no TF32); 16-bit ignore it
):
    CB: tl.constexpr = BLOCK_N // NWP if BLOCK_N >= NWP else 1
    BN: tl.constexpr = CB * NWP
    EVEN_D: tl.constexpr = D % BLOCK_D == 0

    # Class blocks vary fastest: programs running together share one patch tile, and the
    # words (a few MB) stay resident in L2 while the patches stream from memory once.
    pid = tl.program_id(0)
    num_cb = tl.cdiv(C, CB)
    pid_m = pid // num_cb
    pid_c = pid % num_cb
    m0 = pid_m * BLOCK_M
    c0 = pid_c * CB

    rows = m0 + tl.arange(0, BLOCK_M)  # patch rows (global)
    cols = tl.arange(0, BN)
    cls = c0 + cols // NWP  # class of each column
    word = cols % NWP  # word of each column within its class
    col_real = (word < Nw) & (cls < C)
    # Out-of-range rows/columns load a valid row (row 0) instead of masking, so the mainloop
    # loads are unmasked along M and N; the epilogue discards them.
    p_row = tl.where(rows < M, rows, 0).to(tl.int64)
    w_row = tl.where(col_real, cls * Nw + word, 0).to(tl.int64)

    offs_d = tl.arange(0, BLOCK_D)
    p_ptrs = p_ptr + p_row[:, None] * D + offs_d[None, :]
    w_ptrs = w_ptr + w_row[None, :] * D + offs_d[:, None]

    acc = tl.zeros((BLOCK_M, BN), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        if EVEN_D:
            a = tl.load(p_ptrs)
            b = tl.load(w_ptrs)
        else:
            a = tl.load(p_ptrs, mask=(d0 + offs_d)[None, :] < D, other=0.0)
            b = tl.load(w_ptrs, mask=(d0 + offs_d)[:, None] < D, other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        p_ptrs += BLOCK_D
        w_ptrs += BLOCK_D

    # ---- epilogue: lexicographic (max score, min flat index) over each class's words, then
    # over the rows of each frame segment; both reductions use the same total order, so the
    # result is the first-occurrence argmax over the frame's flattened (k, l).
    valid = tl.load(mask_ptr + tl.where(col_real, cls * Nw + word, 0), mask=col_real, other=0)
    col_ok = col_real & (valid != 0)
    neg_inf = float("-inf")
    big = 2147483647
    frame_of_row = rows // Np
    k_of_row = rows - frame_of_row * Np
    # Words first: the best score of each (row, class) and its lowest word. Only per-column
    # vectors and one [BLOCK_M, BN] tile at a time stay live (registers are the limit here).
    score = tl.reshape(tl.where(col_ok[None, :], acc, neg_inf), (BLOCK_M, CB, NWP))
    row_val = tl.max(score, axis=2)  # [BLOCK_M, CB]
    word_real = tl.reshape(tl.where(col_real, word, big), (CB, NWP))
    row_word = tl.min(tl.where(score == row_val[:, :, None], word_real[None, :, :], big), axis=2)
    # A masked word of a real class competes as k = 0 with -inf, so an all-masked class reports
    # its first word (index l), like the reference's argmax over all -inf; rows past M never win.
    row_flat = tl.where(row_val == neg_inf, row_word, k_of_row[:, None] * Nw + row_word)
    row_flat = tl.where((rows < M)[:, None], row_flat, big)

    # Frames the tile touches; past the last frame (rows >= M of the final tile) the segment is
    # empty and its atomic masked off.
    n_frames = M // Np
    f_first = m0 // Np
    f_last = (m0 + BLOCK_M - 1) // Np
    cls_b = c0 + tl.arange(0, CB)
    for f in range(f_first, f_last + 1):
        seg = ((frame_of_row == f) & (rows < M))[:, None]
        best, best_flat = _lex_max(
            tl.where(seg, row_val, neg_inf), tl.where(seg, row_flat, big), 0
        )  # [CB]
        # Order-preserving map of fp32 to uint32 (kept in int64), then append the index.
        bits = best.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
        ordered = tl.where(bits >= 0x80000000, bits ^ 0xFFFFFFFF, bits | 0x80000000)
        key = (ordered << 24) | (0xFFFFFF - best_flat.to(tl.int64))
        b_idx = f // T
        t_idx = f - b_idx * T
        dst = (b_idx.to(tl.int64) * C + cls_b) * T + t_idx
        tl.atomic_max(key_ptr + dst, key, mask=(cls_b < C) & (f < n_frames), sem="relaxed")


@triton.jit(do_not_specialize=["n"])
def _maxsim_decode_kernel(key_ptr, out_ptr, index_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # B*C*T may pass 2^31
    m = offs < n
    key = tl.load(key_ptr + offs, mask=m, other=0)
    ordered = key >> 24
    bits = tl.where(ordered >= 0x80000000, ordered ^ 0x80000000, ordered ^ 0xFFFFFFFF)
    value = bits.to(tl.uint32).to(tl.float32, bitcast=True)
    flat = 0xFFFFFF - (key & 0xFFFFFF)
    tl.store(out_ptr + offs, value, mask=m)
    tl.store(index_ptr + offs, flat.to(tl.int32), mask=m)


def _cfg(bm: int, bn: int, bd: int, warps: int, stages: int) -> triton.Config:
    return triton.Config(
        {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_D": bd}, num_warps=warps, num_stages=stages
    )


# Forward tile configurations per device/dtype family (the first of each is the default when
# autotuning is off). BLOCK_N counts similarity columns: BLOCK_N // NWP whole classes.
_FWD_CONFIGS = {
    # H100 / H200 (sm_90), 16-bit inputs: wgmma tiles, up to ~227 KB shared memory.
    "sm90": [
        # 98 KB of shared memory and ~120 registers: two programs per SM, so one's epilogue
        # and pipeline fill overlap the other's main loop.
        _cfg(128, 128, 64, 8, 3),
        _cfg(128, 128, 64, 8, 4),
        _cfg(128, 256, 64, 8, 3),
        _cfg(256, 128, 64, 8, 3),
        _cfg(64, 256, 64, 4, 4),
        _cfg(128, 128, 64, 4, 3),
    ],
    # A100 (sm_80), 16-bit inputs: mma.sync tiles, 164 KB shared memory.
    "sm80": [
        _cfg(128, 128, 64, 8, 3),
        _cfg(128, 128, 32, 8, 4),
        _cfg(128, 64, 64, 4, 4),
        _cfg(64, 128, 64, 4, 4),
    ],
    # fp32 inputs with exact fp32 dots (no tensor cores): smaller tiles.
    "fp32": [
        _cfg(64, 64, 32, 4, 3),
        _cfg(128, 64, 32, 8, 3),
        _cfg(64, 128, 16, 4, 3),
    ],
}


def _prune_fwd(configs, named_args, **kwargs):
    p = named_args["p_ptr"]
    if p.dtype == torch.float32:
        family = "fp32"
    else:
        major, _ = torch.cuda.get_device_capability(p.device)
        family = "sm90" if major >= 9 else "sm80"
    kept = [c for c in configs if any(c is x for x in _FWD_CONFIGS[family])] or list(configs[:1])
    if os.environ.get("STZSAR_TRITON_AUTOTUNE", "1") == "0":
        # Tests on a GPU: one compile per shape instead of one per config; benchmarks and
        # normal use keep autotuning.
        return kept[:1]
    return kept


# The shape key: a new (Np, Nw, D, dtype) re-tunes; batch and class counts do not.
_maxsim_fwd_tuned = triton.autotune(
    configs=[c for family in _FWD_CONFIGS.values() for c in family],
    key=["Np", "Nw", "D"],
    prune_configs_by={"early_config_prune": _prune_fwd},
    reset_to_zero=["key_ptr"],
)(_maxsim_fwd_kernel)

# One small configuration for the interpreter (every program is a numpy loop there).
_INTERPRET_FWD = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_D": 64}


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


# CUDA's launch limits: up to 2^31 - 1 programs on grid axis x, 65,535 on y and z.
MAX_GRID = (2**31 - 1, 65535, 65535)


def checked_grid(grid: Tuple[int, ...], kernel: str, remedy: str) -> Tuple[int, ...]:
    """``grid`` itself, or a ``ValueError`` naming the axis past CUDA's limit (a launch past it
    fails with an opaque "invalid argument") and ``remedy``."""
    for axis, (size, limit) in enumerate(zip(grid, MAX_GRID)):
        if size > limit:
            raise ValueError(
                f"{kernel}: {size} programs on grid axis {'xyz'[axis]} exceed CUDA's limit of {limit}; {remedy}"
            )
    return grid


def forward_grid(M: int, C: int, NWP: int, meta: dict) -> Tuple[int]:
    """The forward's grid: ``BLOCK_M`` patch rows x ``BLOCK_N // NWP`` classes per program, on axis x."""
    cb = max(1, meta["BLOCK_N"] // NWP)
    grid = (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(C, cb),)
    return checked_grid(grid, "spatial_maxsim", "score fewer frames x classes per call")


def segment_grid(rows: int, D: int, block_r: int, block_d: int) -> Tuple[int, int]:
    """The backward's segment sums: destination rows on axis x, feature blocks on y."""
    grid = (triton.cdiv(rows, block_r), triton.cdiv(D, block_d))
    return checked_grid(grid, "spatial_maxsim backward", "use fewer patches or words per call")


def launch_on_inputs_device(launcher):
    """Run ``launcher`` under its first tensor's CUDA device (Triton launches on the current device,
    which need not be the tensors'), with autocast off: the launchers choose their dtypes (float32
    accumulation, float32 epilogue GEMMs) whatever the caller's autocast state."""

    @functools.wraps(launcher)
    def wrapper(first: Tensor, *args, **kwargs):
        with torch.cuda.device_of(first), torch.autocast(first.device.type, enabled=False):
            return launcher(first, *args, **kwargs)

    return wrapper


def _check_device(*tensors: Tensor) -> None:
    device = tensors[0].device
    if device.type == "cuda":
        if _INTERPRET:
            raise RuntimeError(
                "stzsar.kernels.spatial_maxsim was imported with TRITON_INTERPRET=1, so its kernels "
                "run only on CPU tensors; got CUDA tensors"
            )
    elif device.type == "cpu":
        if not _INTERPRET:
            raise RuntimeError(
                "the Triton spatial_maxsim kernel needs CUDA tensors; CPU tensors run only in "
                "Triton's interpreter (set TRITON_INTERPRET=1 before importing stzsar)"
            )
    else:
        raise RuntimeError(f"the Triton spatial_maxsim kernel does not run on {device.type} tensors")


@launch_on_inputs_device
def triton_spatial_maxsim_fwd(
    patches: Tensor, words: Tensor, word_mask: Tensor
) -> Tuple[Tensor, Tensor]:
    """Fused forward: ``(out [B, C, T] float32, index [B, C, T] int32)``.

    ``patches [B, T, Np, D]`` and ``words [C, Nw, D]`` (one dtype among fp32/fp16/bf16),
    ``word_mask [C, Nw]`` bool.
    """
    if patches.dim() != 4 or words.dim() != 3:
        raise ValueError(
            f"expected patches [B, T, Np, D] and words [C, Nw, D], got {tuple(patches.shape)} "
            f"and {tuple(words.shape)}"
        )
    B, T, Np, D = patches.shape
    C, Nw, Dw = words.shape
    if Dw != D:
        raise ValueError(f"patches and words must share D, got {D} and {Dw}")
    if tuple(word_mask.shape) != (C, Nw) or word_mask.dtype != torch.bool:
        raise ValueError(
            f"word_mask must be a bool tensor of shape {(C, Nw)}, got {word_mask.dtype} "
            f"{tuple(word_mask.shape)}"
        )
    if patches.dtype != words.dtype or patches.dtype not in (
        torch.float32,
        torch.float16,
        torch.bfloat16,
    ):
        raise TypeError(
            f"patches and words must share one of float32/float16/bfloat16, got {patches.dtype} "
            f"and {words.dtype}"
        )
    if Np * Nw > _MAX_FLAT:
        raise ValueError(f"Np * Nw = {Np * Nw} exceeds the kernel's index range ({_MAX_FLAT})")
    _check_device(patches, words, word_mask)

    out = torch.empty((B, C, T), dtype=torch.float32, device=patches.device)
    index = torch.empty((B, C, T), dtype=torch.int32, device=patches.device)
    if out.numel() == 0:
        return out, index
    if Np == 0 or Nw == 0 or D == 0:
        raise ValueError(f"empty patches or words: Np={Np}, Nw={Nw}, D={D}")

    p = patches.contiguous().view(B * T * Np, D)
    w = words.contiguous().view(C * Nw, D)
    mask = word_mask.contiguous().view(torch.uint8)
    keys = torch.zeros((B, C, T), dtype=torch.int64, device=patches.device)
    M = B * T * Np
    NWP = max(_next_pow2(Nw), 16)  # tl.dot needs N >= 16
    precision = "ieee" if patches.dtype == torch.float32 else "tf32"

    def grid(meta):
        return forward_grid(M, C, NWP, meta)

    args = (p, w, mask, keys, M, C, T)
    consts = dict(Np=Np, Nw=Nw, D=D, NWP=NWP, PRECISION=precision)
    if _INTERPRET:
        _maxsim_fwd_kernel[grid](*args, **consts, **_INTERPRET_FWD, UPCAST=True)
    else:
        _maxsim_fwd_tuned[grid](*args, **consts, UPCAST=False)

    n = out.numel()
    block = 1024
    grid = checked_grid((triton.cdiv(n, block),), "spatial_maxsim decode", "score fewer frames x classes per call")
    _maxsim_decode_kernel[grid](keys, out, index, n, BLOCK=block)
    return out, index


# --------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["R"])
def _segment_sum_kernel(
    src_ptr,  # [S, D] rows to gather (patches or words), input dtype
    key_ptr,  # [E] int64 destination row of each winner, sorted
    src_row_ptr,  # [E] int64 source row of each winner, in the same order
    coef_ptr,  # [E] float32 upstream gradient of each winner, in the same order
    offsets_ptr,  # [R + 1] int64 segment starts
    out_ptr,  # [R, D] output, input dtype
    R,
    D: tl.constexpr,
    BLOCK_R: tl.constexpr,  # destination rows per program (1 on a GPU, many in the interpreter)
    BLOCK_E: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    r0 = tl.program_id(0) * BLOCK_R
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    local_rows = tl.arange(0, BLOCK_R)
    # The winners of rows r0 .. r0 + BLOCK_R - 1 are contiguous in the sorted order.
    start = tl.load(offsets_ptr + r0)
    stop = tl.load(offsets_ptr + tl.minimum(r0 + BLOCK_R, R))
    acc = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
    for e0 in range(start, stop, BLOCK_E):
        e = e0 + tl.arange(0, BLOCK_E)
        e_ok = e < stop
        src_row = tl.load(src_row_ptr + e, mask=e_ok, other=0)
        coef = tl.load(coef_ptr + e, mask=e_ok, other=0.0)
        x = tl.load(
            src_ptr + src_row[:, None] * D + offs_d[None, :],
            mask=e_ok[:, None] & d_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        cx = coef[:, None] * x  # [BLOCK_E, BLOCK_D]
        if BLOCK_R == 1:
            acc += tl.sum(cx, axis=0)[None, :]
        else:
            local = tl.load(key_ptr + e, mask=e_ok, other=-1) - r0
            hit = local[None, :] == local_rows[:, None]  # [BLOCK_R, BLOCK_E]
            acc += tl.sum(tl.where(hit[:, :, None], cx[None, :, :], 0.0), axis=1)
    rows = r0 + local_rows
    out_ptrs = out_ptr + rows.to(tl.int64)[:, None] * D + offs_d[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=(rows < R)[:, None] & d_ok[None, :])


# (BLOCK_R, BLOCK_E, BLOCK_D) of the segment sums. On a GPU one destination row per program
# (100k+ programs keep every SM busy, segments are short); the interpreter pays per program, so
# there it takes many rows at once.
_GPU_SEGMENT = (1, 16, 256)
_INTERPRET_SEGMENT = (64, 64, 128)


def _segment_sum(
    src: Tensor, dst_key: Tensor, src_row: Tensor, coef: Tensor, rows: int, out_dtype: torch.dtype
) -> Tensor:
    """``out[r] = sum over winners e with dst_key[e] == r of coef[e] * src[src_row[e]]`` in a
    fixed (stable-sorted) order; ``out`` is ``[rows, D]``, rows without winners are zero."""
    D = src.shape[1]
    out = torch.empty((rows, D), dtype=out_dtype, device=src.device)
    if rows == 0 or D == 0:
        return out
    order = torch.argsort(dst_key, stable=True)
    sorted_key = dst_key[order]
    offsets = torch.searchsorted(
        sorted_key, torch.arange(rows + 1, device=src.device, dtype=sorted_key.dtype)
    )
    block_r, block_e, block_d = _INTERPRET_SEGMENT if _INTERPRET else _GPU_SEGMENT
    block_d = min(_next_pow2(D), block_d)
    grid = segment_grid(rows, D, block_r, block_d)
    _segment_sum_kernel[grid](
        src,
        sorted_key,
        src_row[order].contiguous(),
        coef[order].contiguous(),
        offsets,
        out,
        rows,
        D=D,
        BLOCK_R=block_r,
        BLOCK_E=block_e,
        BLOCK_D=block_d,
        num_warps=4,
    )
    return out


@launch_on_inputs_device
def triton_spatial_maxsim_bwd(
    grad: Tensor, patches: Tensor, words: Tensor, index: Tensor
) -> Tuple[Tensor, Tensor]:
    """Gradients ``(grad_patches, grad_words)`` in the input dtypes from the winners ``index``.

    ``grad_patches[b, t, k] += grad[b, c, t] * words[c, l]`` and
    ``grad_words[c, l] += grad[b, c, t] * patches[b, t, k]`` for each winner ``k * Nw + l``.
    """
    B, T, Np, D = patches.shape
    C, Nw, _ = words.shape
    if tuple(grad.shape) != (B, C, T) or tuple(index.shape) != (B, C, T):
        raise ValueError(
            f"grad and index must be [B, C, T] = {(B, C, T)}, got {tuple(grad.shape)} and "
            f"{tuple(index.shape)}"
        )
    _check_device(patches, words, grad, index)
    device = patches.device
    idx = index.to(torch.int64)
    k = idx // Nw
    l = idx - k * Nw
    frame = (
        torch.arange(B, device=device).view(B, 1, 1) * T + torch.arange(T, device=device).view(1, 1, T)
    )
    patch_row = (frame * Np + k).reshape(-1)  # row of patches[B*T*Np, D] of each winner
    word_row = (torch.arange(C, device=device).view(1, C, 1) * Nw + l).reshape(-1)
    coef = grad.to(torch.float32).reshape(-1)
    p = patches.contiguous().view(B * T * Np, D)
    w = words.contiguous().view(C * Nw, D)
    grad_p = _segment_sum(w, patch_row, word_row, coef, B * T * Np, patches.dtype)
    grad_w = _segment_sum(p, word_row, patch_row, coef, C * Nw, words.dtype)
    return grad_p.view(B, T, Np, D), grad_w.view(C, Nw, D)
