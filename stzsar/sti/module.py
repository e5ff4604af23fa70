"""The spatio-temporal interaction (STI) module of docs/method.md section 4.

For a batch of B videos and C classes::

    P~[b,t,k]     = ReLU(W_p P[b,t,k] + b_p)
    A~[c,l]       = ReLU(W_w A[c,l] + b_w)
    S_sp[b,c,t]   = max over valid l of max over k of <P~[b,t,k], A~[c,l]>
    G[b,c,t,l]    = S_sp[b,c,t] <v[b,t], A~[c,l]> / tau
    S_temp[b,c,t] = mean over valid l of softmax over t of G[b,c,t,l]
    f_st[b,c]     = sum over t of S_temp[b,c,t] v[b,t]

Inputs (v, P, A and the class embeddings z) are L2-normalised first unless ``normalize=False``.

The paper's ablations (its Table 4) are switches of the module: ``spatial=False`` sets
``S_sp = 1`` in ``G``; ``temporal=False`` weights the frames by ``S_sp`` itself
(``f[b,c] = sum_t S_sp[b,c,t] v[b,t]``); with both off the video is the mean of its frames.
Every variant ends in the same cosine, ``cos(z_c, sum_t w[b,c,t] v[b,t])`` with the frame weights
``w`` of the variant, so every backend of the fused similarity op serves all four.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stzsar.ops import temporal as _temporal_ops
from stzsar.ops.projected_maxsim import projected_spatial_maxsim
from stzsar.ops.dispatch import check_word_mask, no_autocast, output_dtype
from stzsar.ops.spatial_maxsim import spatial_maxsim

# Guards the cosine against a zero-norm weighted video (all-zero frames); the fused op uses the same.
COSINE_EPS = _temporal_ops.SIMILARITY_EPS


class _AutocastOff(torch.autograd.Function):
    """``fn(*args)`` with autocast off in the forward and in the backward, which recomputes ``fn``
    (autocast also recasts the GEMMs of a backward run inside it, so plain autograd would redo
    float32 products in the autocast dtype). The plain path's counterpart of the fused ops'
    own backward."""

    @staticmethod
    def forward(ctx, fn, *args):
        tensors = [a for a in args if isinstance(a, Tensor)]
        ctx.fn, ctx.is_tensor = fn, [isinstance(a, Tensor) for a in args]
        ctx.others = [None if isinstance(a, Tensor) else a for a in args]
        ctx.save_for_backward(*tensors)
        with no_autocast(tensors[0]):
            return fn(*args)

    @staticmethod
    def backward(ctx, grad):
        saved = iter(ctx.saved_tensors)
        needs = ctx.needs_input_grad[1:]
        args, leaves = [], []
        for is_tensor, other, need in zip(ctx.is_tensor, ctx.others, needs):
            if not is_tensor:
                args.append(other)
                continue
            arg = next(saved).detach().requires_grad_(need)
            args.append(arg)
            if need:
                leaves.append(arg)
        with no_autocast(grad), torch.enable_grad():
            grads = iter(torch.autograd.grad(ctx.fn(*args), leaves, grad, allow_unused=True))
        return (None,) + tuple(next(grads) if need else None for need in needs)


def _autocast_off(fn, *args):
    if torch.is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad for a in args):
        return _AutocastOff.apply(fn, *args)
    with no_autocast(next(a for a in args if isinstance(a, Tensor))):
        return fn(*args)


def temporal_saliency_reference(
    s_sp: Tensor, frames: Tensor, words: Tensor, word_mask: Tensor, temperature: float
) -> Tensor:
    """S_temp [B, C, T] in plain PyTorch (forms [B, C, T, Nw]); the reference backend of the
    fused op, under its dtype rule (autocast off in the forward and the backward)."""
    return _autocast_off(_temporal_ops.torch_temporal_forward, s_sp, frames, words, word_mask, float(temperature))


def _similarity_plain(s_temp: Tensor, frames: Tensor, class_emb: Tensor) -> Tensor:
    dtype = output_dtype(torch.promote_types(torch.promote_types(s_temp.dtype, frames.dtype), class_emb.dtype))
    s_temp, frames, class_emb = s_temp.to(dtype), frames.to(dtype), class_emb.to(dtype)
    numerator = torch.einsum("bct,btc->bc", s_temp, frames @ class_emb.t())
    gram = frames @ frames.transpose(1, 2)  # [B, T, T]
    norm_sq = torch.einsum("bct,bts,bcs->bc", s_temp, gram, s_temp)
    denominator = norm_sq.clamp_min(0).sqrt() * class_emb.norm(dim=-1).unsqueeze(0)
    return numerator / denominator.clamp_min(COSINE_EPS)


def sti_similarity_reference(s_temp: Tensor, frames: Tensor, class_emb: Tensor) -> Tensor:
    """``cos(z_c, f_st[b, c])`` through the frame Gram matrix, never forming ``f_st``.

    The dtype rule of the fused op (docs/kernels.md, "Dtypes and autocast"): float32 math
    (float64 for float64 inputs) with autocast off, in the forward and in the backward, a float32
    result, gradients in the inputs' dtypes."""
    return _autocast_off(_similarity_plain, s_temp, frames, class_emb)




class STIModule(nn.Module):
    """Spatio-temporal interaction between frame/patch features and class word features.

    Args:
        dim: feature size D (CLIP's joint embedding size).
        temperature: tau of the temporal softmax (default 0.01).
        normalize: L2-normalise frames, patches, words and class embeddings first.
        backend: backend of the fused ops (``"auto"``, ``"torch"``, ``"cpu"``, ``"cuda"``, ``"triton"``).
        fused: use the fused ops (patch projection with the spatial double max, then the
            temporal saliency and the similarity); ``False`` runs the plain PyTorch formulation
            (the spatial double max still uses ``spatial_maxsim``). Results agree up to rounding.
        spatial: the spatial interaction (``False``: ``S_sp = 1``; no patch projection).
        temporal: the temporal interaction (``False``: the frames are weighted by ``S_sp``;
            with ``spatial=False`` too, the module is mean pooling and has no parameters).
    """

    def __init__(
        self,
        dim: int,
        temperature: float = 0.01,
        normalize: bool = True,
        backend: str = "auto",
        fused: bool = True,
        spatial: bool = True,
        temporal: bool = True,
    ):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.dim = dim
        self.temperature = float(temperature)
        self.normalize = normalize
        self.backend = backend
        self.fused = fused
        self.spatial = bool(spatial)
        self.temporal = bool(temporal)
        # Only the projections a variant uses exist (unused parameters would break DDP).
        self.patch_proj = nn.Linear(dim, dim) if self.spatial else None
        self.word_proj = nn.Linear(dim, dim) if self.spatial or self.temporal else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Identity start: before training, S_sp is the best cosine between (rectified) CLIP
        # patch and word features, which is already meaningful with pretrained CLIP.
        for layer in (self.patch_proj, self.word_proj):
            if layer is not None:
                nn.init.eye_(layer.weight)
                nn.init.zeros_(layer.bias)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, temperature={self.temperature}, normalize={self.normalize}, "
                f"spatial={self.spatial}, temporal={self.temporal}")

    # ---------------------------------------------------------------------------------------

    def _check(self, frames: Tensor, patches: Tensor, words: Tensor, word_mask: Tensor) -> None:
        if frames.dim() != 3 or patches.dim() != 4:
            raise ValueError(
                f"frames must be [B, T, D] and patches [B, T, Np, D], got {tuple(frames.shape)} "
                f"and {tuple(patches.shape)}"
            )
        if frames.shape[:2] != patches.shape[:2]:
            raise ValueError(
                f"frames {tuple(frames.shape)} and patches {tuple(patches.shape)} disagree on [B, T]"
            )
        if words.dim() != 3 or word_mask.shape != words.shape[:2]:
            raise ValueError(
                f"words must be [C, Nw, D] with word_mask [C, Nw], got {tuple(words.shape)} and "
                f"{tuple(word_mask.shape)}"
            )
        for name, tensor in (("frames", frames), ("patches", patches), ("words", words)):
            if tensor.shape[-1] != self.dim:
                raise ValueError(f"{name} has feature size {tensor.shape[-1]}, expected {self.dim}")
        check_word_mask(word_mask)

    def _project(self, features: Tensor, layer: nn.Linear) -> Tensor:
        """``ReLU(layer(normalize(features)))`` computed as ``ReLU((W x) / |x| + b)``: the two are
        equal, and this way no normalised copy of the input is made, nor saved for the backward
        (autograd keeps ``x`` itself). Without autograd it runs in one buffer."""
        grad = torch.is_grad_enabled()
        out = F.linear(features, layer.weight)
        if self.normalize:  # same eps as F.normalize
            norm = features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            out = out / norm if grad else out.div_(norm)
        if layer.bias is not None:
            out = out + layer.bias if grad else out.add_(layer.bias)
        return F.relu(out) if grad else out.relu_()

    def spatial_scores(self, patches: Tensor, projected_words: Tensor, word_mask: Tensor) -> Tensor:
        """``S_sp [B, C, T]`` from the raw patches. The fused path projects them chunk by chunk
        inside ``projected_spatial_maxsim`` (the projected patches ``[B, T, Np, D]`` are the
        largest tensor of the step and are never held whole); the plain path projects them all,
        then takes the double max."""
        if self.fused:
            return projected_spatial_maxsim(
                patches,
                self.patch_proj.weight,
                self.patch_proj.bias,
                projected_words,
                word_mask,
                normalize=self.normalize,
                backend=self.backend,
            )
        projected_patches = self._project(patches, self.patch_proj)
        return spatial_maxsim(projected_patches, projected_words, word_mask, backend=self.backend)

    def saliency(
        self, frames: Tensor, patches: Tensor, words: Tensor, word_mask: Tensor
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """``(S_sp, S_temp, frames_used)``: the spatial scores and the frame weights ``[B, C, T]``
        and the (normalised) frame features they weight. Without the temporal interaction the
        frame weights are ``S_sp`` (with neither step, ``1/T``); without the spatial one,
        ``S_sp = 1``."""
        self._check(frames, patches, words, word_mask)
        if self.normalize:
            frames = F.normalize(frames, dim=-1)
        B, T = frames.shape[:2]
        C = words.shape[0]
        projected_words = self._project(words, self.word_proj) if self.word_proj is not None else None
        if self.spatial:
            s_sp = self.spatial_scores(patches, projected_words, word_mask)
        else:
            s_sp = frames.new_ones(B, C, T)
        if not self.temporal:
            weights = s_sp if self.spatial else frames.new_full((B, C, T), 1.0 / T)
            return s_sp, weights, frames
        if self.fused:
            s_temp = _temporal_ops.temporal_saliency(
                s_sp, frames, projected_words, word_mask, self.temperature, backend=self.backend
            )
        else:
            s_temp = temporal_saliency_reference(
                s_sp, frames, projected_words, word_mask, self.temperature
            )
        return s_sp, s_temp, frames

    def forward(self, frames: Tensor, patches: Tensor, words: Tensor, word_mask: Tensor) -> Tensor:
        """``f_st [B, C, D]``: the class-conditioned video representation."""
        _, s_temp, frames = self.saliency(frames, patches, words, word_mask)
        return torch.einsum("bct,btd->bcd", s_temp.to(frames.dtype), frames)

    def similarity(
        self,
        frames: Tensor,
        patches: Tensor,
        words: Tensor,
        word_mask: Tensor,
        class_emb: Tensor,
    ) -> Tensor:
        """``cos(z_c, f_st[b, c])`` ``[B, C]`` (no logit scale), without forming ``[B, C, D]``."""
        if class_emb.dim() != 2 or class_emb.shape[0] != words.shape[0]:
            raise ValueError(
                f"class_emb must be [C, D] with C = {words.shape[0]}, got {tuple(class_emb.shape)}"
            )
        _, s_temp, frames = self.saliency(frames, patches, words, word_mask)
        if self.normalize:
            class_emb = F.normalize(class_emb, dim=-1)
        if self.fused:
            return _temporal_ops.sti_similarity(s_temp, frames, class_emb, backend=self.backend)
        return sti_similarity_reference(s_temp, frames, class_emb)
