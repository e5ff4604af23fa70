"""The spatial double max with the patch projection folded in: ``stzsar::projected_spatial_maxsim``.

``S_sp[b, c, t] = max over valid l, max over k of <ReLU(W normalize(P[b, t, k]) + bias), A~[c, l]>``

The projected patches ``P~`` are the largest tensor of the STI step ([B, T, Np, D]: 205 MB in fp32
for a Kinetics-400 evaluation batch). This op never holds all of them: it projects a chunk of
frames, runs the spatial kernel of the chosen backend on that chunk, and moves on. Its backward
recomputes each chunk's projection and writes the gradients of the raw patches, of ``W`` and of
``bias`` directly (explicit formulas for the ReLU, the linear map and the L2 normalisation), so
autograd never saves ``P~`` or ``normalize(P)`` either. Only the winners get gradient, so the
backward gathers the winning rows and adds them in with ``index_add_`` (the same code on every
device; it is O(B*C*T*D), negligible beside the forward's GEMMs) rather than calling a backend
kernel that would return a whole ``[C, Nw, D]`` word gradient per chunk. Under
``torch.use_deterministic_algorithms(True)`` (``train.deterministic``) the winners are instead
summed per destination row in a fixed order (a stable sort by row, then one sequential sum per
row), so the gradients are bitwise the same from run to run on every device.

The result equals ``spatial_maxsim(F.relu(F.linear(F.normalize(P), W, bias)), A~, mask)`` (the
chunk's projection runs F.normalize's own ops, then F.linear and F.relu), ties included.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from stzsar.ops.dispatch import check_maxsim_inputs, for_dtype, no_autocast, output_dtype, resolve_backend
from stzsar.ops.spatial_maxsim import maxsim_flops, run_forward

__all__ = ["projected_spatial_maxsim", "projected_spatial_maxsim_with_index", "default_chunk_frames"]

# F.normalize's eps: |x| below it divides by eps instead.
NORMALIZE_EPS = 1e-12

# Bytes of projected patches one chunk may hold, per device type. On the CPU a few MB keeps the
# working set near the cache and the step's peak memory small; a GPU wants big launches, and at
# the Kinetics-400 shape (103 MB of bf16 P~) one chunk is the whole batch.
CHUNK_BYTES = {"cpu": 1 << 20, "cuda": 256 << 20}


def _chunk_budget(tensor: Tensor) -> int:
    return CHUNK_BYTES.get(tensor.device.type, CHUNK_BYTES["cuda"])


def default_chunk_frames(patches: Tensor) -> int:
    """Frames (of the B*T) per chunk so that one chunk of ``P~`` fits ``CHUNK_BYTES``."""
    B, T, Np, D = patches.shape
    budget = _chunk_budget(patches)
    per_frame = max(1, Np * D * patches.element_size())
    return max(1, min(B * T, budget // per_frame))


def projection_flops(rows: int, dim: int) -> int:
    """One ``[rows, D] x [D, D]`` projection, one multiply-add = 2 flops."""
    return 2 * rows * dim * dim


def _project(
    chunk: Tensor, weight: Tensor, bias: Optional[Tensor], normalize: bool
) -> Tuple[Tensor, Optional[Tensor], Tensor]:
    """``(y, |x|, ReLU(W y + bias))`` with ``y = x / max(|x|, eps)``, exactly ``F.normalize``'s
    ops (``y = x`` and no norm without normalisation); the backward reuses ``|x|``."""
    if not normalize:
        return chunk, None, F.relu(F.linear(chunk, weight, bias))
    norm = chunk.norm(dim=-1, keepdim=True)
    unit = chunk / norm.clamp_min(NORMALIZE_EPS)
    return unit, norm, F.relu(F.linear(unit, weight, bias))


def _frame_chunks(total: int, chunk_frames: int):
    for start in range(0, total, chunk_frames):
        yield start, min(total, start + chunk_frames)


# --------------------------------------------------------------------------------------------
# The op and its backward
# --------------------------------------------------------------------------------------------


@torch.library.custom_op("stzsar::projected_spatial_maxsim", mutates_args=())
def _projected_op(
    patches: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    words: Tensor,
    word_mask: Tensor,
    normalize: bool,
    chunk_frames: int,
    backend: str,
) -> Tuple[Tensor, Tensor]:
    B, T, Np, D = patches.shape
    C = words.shape[0]
    frames = patches.reshape(B * T, Np, D)
    words, word_mask = words.contiguous(), word_mask.contiguous()
    # Scores and winners per (class, flat frame); chunks of flat frames may straddle videos.
    out = patches.new_empty((C, B * T), dtype=output_dtype(patches.dtype))
    index = torch.empty((C, B * T), dtype=torch.int32, device=patches.device)
    with no_autocast(patches):  # the inputs already carry the dtype to project in (see the face)
        for start, stop in _frame_chunks(B * T, chunk_frames):
            _, _, projected = _project(frames[start:stop], weight, bias, normalize)
            scores, winners = run_forward(backend, projected.unsqueeze(0), words, word_mask)
            del projected
            out[:, start:stop] = scores[0]
            index[:, start:stop] = winners[0]
    return (
        out.view(C, B, T).permute(1, 0, 2).contiguous(),
        index.view(C, B, T).permute(1, 0, 2).contiguous(),
    )


@_projected_op.register_fake
def _(patches, weight, bias, words, word_mask, normalize, chunk_frames, backend):
    B, T = patches.shape[:2]
    C = words.shape[0]
    return (
        patches.new_empty((B, C, T), dtype=output_dtype(patches.dtype)),
        patches.new_empty((B, C, T), dtype=torch.int32),
    )


@torch.library.custom_op("stzsar::projected_spatial_maxsim_backward", mutates_args=())
def _projected_backward_op(
    grad: Tensor,
    index: Tensor,
    patches: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    words: Tensor,
    normalize: bool,
    chunk_frames: int,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(dP, dW, dbias, dA~)``; ``dbias`` is empty when there is no bias. The gradient GEMMs run
    in float32 (autocast off), the projection it recomputes in the inputs' dtype as the forward."""
    with no_autocast(patches):
        return _projected_backward(grad, index, patches, weight, bias, words, normalize, chunk_frames)


def add_rows(out: Tensor, rows: Tensor, values: Tensor) -> None:
    """``out[rows[i]] += values[i]`` for every i. ``index_add_`` is the fast way, but on CUDA it
    adds with atomics, whose order (and so the rounding) changes from run to run; with
    deterministic algorithms requested the rows are summed in a fixed order instead."""
    if torch.are_deterministic_algorithms_enabled():
        segment_add_rows(out, rows, values)
    else:
        index_add_rows(out, rows, values)


def index_add_rows(out: Tensor, rows: Tensor, values: Tensor) -> None:
    out.index_add_(0, rows, values)


def segment_add_rows(out: Tensor, rows: Tensor, values: Tensor) -> None:
    """``out[r] += (sum of values[i] with rows[i] == r, in the order of i)``: a stable sort by row
    and one sequential sum per row (``segment_reduce``), the same order on every device and run.
    No host synchronisation: the segments are found with ``searchsorted`` into fixed sizes."""
    order = torch.argsort(rows, stable=True)
    sorted_rows = rows[order]
    bounds = torch.arange(out.shape[0] + 1, device=rows.device, dtype=sorted_rows.dtype)
    offsets = torch.searchsorted(sorted_rows, bounds)
    out += torch.segment_reduce(values[order], "sum", offsets=offsets, axis=0, unsafe=True)


def _projected_backward(grad, index, patches, weight, bias, words, normalize, chunk_frames):
    B, T, Np, D = patches.shape
    C, Nw, _ = words.shape
    acc = output_dtype(patches.dtype)
    frames = patches.reshape(B * T, Np, D)
    words = words.contiguous()
    grad_flat = grad.to(acc).permute(1, 0, 2).reshape(C, B * T)
    index_flat = index.permute(1, 0, 2).reshape(C, B * T)
    grad_patches = torch.empty_like(frames)
    grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device)
    grad_bias = torch.zeros(D if bias is not None else 0, dtype=acc, device=weight.device)
    grad_words = torch.zeros(words.shape, dtype=acc, device=words.device)
    weight_acc = weight.to(acc)
    classes = torch.arange(C, device=patches.device).view(C, 1)
    words_by_row = words.view(C * Nw, D)
    frame_starts = torch.arange(min(chunk_frames, B * T), device=patches.device).view(1, -1) * Np
    for start, stop in _frame_chunks(B * T, chunk_frames):
        n = stop - start
        chunk = frames[start:stop]
        unit, norm, projected = _project(chunk, weight, bias, normalize)  # as in the forward
        # Only the winners get gradient: dP~[t, k*] += g A~[c, l*], dA~[c, l*] += g P~[t, k*].
        # The winning rows are gathered a block of classes at a time ([classes, n, D], within
        # the chunk budget), and no [C, Nw, D] buffer is made per chunk.
        d_projected = torch.zeros((n * Np, D), dtype=acc, device=patches.device)
        projected_rows = projected.view(n * Np, D)
        class_block = max(1, _chunk_budget(patches) // (n * D * 4))
        for c0 in range(0, C, class_block):
            c1 = min(C, c0 + class_block)
            g = grad_flat[c0:c1, start:stop].unsqueeze(-1)  # [c, n, 1]
            idx = index_flat[c0:c1, start:stop].long()
            k, l = idx // Nw, idx % Nw  # winning patch and word per (class, frame of the chunk)
            frame_rows = (frame_starts[:, :n] + k).reshape(-1)
            word_rows = (classes[c0:c1] * Nw + l).reshape(-1)
            add_rows(d_projected, frame_rows, (g * words_by_row[word_rows].view(c1 - c0, n, D).to(acc)).view(-1, D))
            add_rows(
                grad_words.view(C * Nw, D)[c0 * Nw : c1 * Nw],
                word_rows - c0 * Nw,
                (g * projected_rows[frame_rows].view(c1 - c0, n, D).to(acc)).view(-1, D),
            )
        # Through the ReLU (the gradient passes where the output is positive) and the linear map.
        d_pre = d_projected.mul_(projected_rows > 0)
        del projected, projected_rows, d_projected
        rows_unit = unit.reshape(-1, D).to(acc)
        grad_weight.addmm_(d_pre.t(), rows_unit)
        if bias is not None:
            grad_bias += d_pre.sum(0)
        d_unit = d_pre @ weight_acc  # [n * Np, D]
        del d_pre
        if normalize:
            # y = x / max(|x|, eps): dx = (dy - y <y, dy>) / |x| where |x| > eps, dy / eps elsewhere.
            norm = norm.reshape(-1, 1).to(acc)
            radial = (d_unit.unsqueeze(1) @ rows_unit.unsqueeze(-1)).view(-1, 1)  # <y, dy>
            radial.masked_fill_(norm <= NORMALIZE_EPS, 0)
            d_unit.sub_(rows_unit.mul_(radial)).div_(norm.clamp_min_(NORMALIZE_EPS))
        grad_patches[start:stop] = d_unit.view(n, Np, D)
        del unit, rows_unit, d_unit
    return (
        grad_patches.view(B, T, Np, D),
        grad_weight.to(weight.dtype),
        grad_bias.to(weight.dtype),
        grad_words.to(words.dtype),
    )


@_projected_backward_op.register_fake
def _(grad, index, patches, weight, bias, words, normalize, chunk_frames):
    D = patches.shape[-1]
    return (
        torch.empty_like(patches),
        torch.empty_like(weight),
        weight.new_empty((D if bias is not None else 0,)),
        torch.empty_like(words),
    )


def _setup_context(ctx, inputs, output):
    patches, weight, bias, words, _, normalize, chunk_frames, _ = inputs
    ctx.save_for_backward(patches, weight, bias, words, output[1])
    ctx.has_bias = bias is not None
    ctx.normalize, ctx.chunk_frames = normalize, chunk_frames


def _backward(ctx, grad_out, grad_index):
    patches, weight, bias, words, index = ctx.saved_tensors
    if grad_out is None:
        return (None,) * 8
    grad_patches, grad_weight, grad_bias, grad_words = _projected_backward_op(
        grad_out, index, patches, weight, bias if ctx.has_bias else None, words,
        ctx.normalize, ctx.chunk_frames,
    )
    return (
        grad_patches,
        grad_weight,
        grad_bias if ctx.has_bias else None,
        grad_words,
        None,
        None,
        None,
        None,
    )


_projected_op.register_autograd(_backward, setup_context=_setup_context)


def _register_flop_formulas():
    from torch.utils.flop_counter import register_flop_formula

    @register_flop_formula(torch.ops.stzsar.projected_spatial_maxsim)
    def _forward_flops(patches_shape, weight_shape, bias_shape, words_shape, *args, **kwargs) -> int:
        B, T, Np, D = patches_shape
        C, Nw, _ = words_shape
        return projection_flops(B * T * Np, D) + maxsim_flops(B, T, Np, C, Nw, D)

    @register_flop_formula(torch.ops.stzsar.projected_spatial_maxsim_backward)
    def _backward_flops(grad_shape, index_shape, patches_shape, *args, **kwargs) -> int:
        # The projection recomputed, its two gradient GEMMs, and the winners' two multiply-adds.
        B, C, T = grad_shape
        _, _, Np, D = patches_shape
        return 3 * projection_flops(B * T * Np, D) + 2 * 2 * B * C * T * D


_register_flop_formulas()


# --------------------------------------------------------------------------------------------
# Python face
# --------------------------------------------------------------------------------------------


def projected_spatial_maxsim_with_index(
    patches: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    words: Tensor,
    word_mask: Tensor,
    normalize: bool = True,
    backend: str = "auto",
    chunk_frames: Optional[int] = None,
) -> Tuple[Tensor, Tensor]:
    """Like :func:`projected_spatial_maxsim`, also returning the winning flat index ``k * Nw + l``."""
    check_maxsim_inputs(patches, words, word_mask)
    D = patches.shape[-1]
    if weight.shape != (D, D) or (bias is not None and bias.shape != (D,)):
        raise ValueError(
            f"weight must be [D, D] and bias [D] with D = {D}, got {tuple(weight.shape)} and "
            f"{None if bias is None else tuple(bias.shape)}"
        )
    device_type = patches.device.type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        # Behave like F.linear under autocast: the projection runs in the autocast dtype.
        dtype = torch.get_autocast_dtype(device_type)
        patches, weight, words = patches.to(dtype), weight.to(dtype), words.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    if len({patches.dtype, words.dtype, weight.dtype} | ({bias.dtype} if bias is not None else set())) > 1:
        raise TypeError(
            f"patches ({patches.dtype}), weight ({weight.dtype}), bias and words ({words.dtype}) "
            "must share one dtype"
        )
    if chunk_frames is None:
        chunk_frames = default_chunk_frames(patches)
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be positive, got {chunk_frames}")
    resolved = for_dtype(
        resolve_backend(backend, patches.device, "projected_spatial_maxsim", patches.dtype), patches.dtype
    )
    # No .contiguous(): patch tokens sliced from the encoder's output ([:, 1:]) still merge B and T
    # into a view, and each chunk is copied as it is projected, never the whole tensor.
    return _projected_op(patches, weight, bias, words, word_mask, normalize, int(chunk_frames), resolved)


def projected_spatial_maxsim(
    patches: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    words: Tensor,
    word_mask: Tensor,
    normalize: bool = True,
    backend: str = "auto",
    chunk_frames: Optional[int] = None,
) -> Tensor:
    """``S_sp [B, C, T]`` from raw patches ``[B, T, Np, D]``, the patch projection ``weight [D, D]``
    and ``bias [D]`` (or ``None``), projected ``words [C, Nw, D]`` and ``word_mask [C, Nw]``.

    Equal to ``spatial_maxsim(ReLU(F.linear(normalize(patches), weight, bias)), words, word_mask)``
    without ever holding all projected patches: ``chunk_frames`` frames (of the ``B * T``) are
    projected at a time (default: :data:`CHUNK_BYTES` of projected patches per chunk).
    Differentiable in ``patches``, ``weight``, ``bias`` and ``words``."""
    return projected_spatial_maxsim_with_index(
        patches, weight, bias, words, word_mask, normalize, backend, chunk_frames
    )[0]
