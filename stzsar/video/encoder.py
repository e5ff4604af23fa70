"""The CLIP image encoder applied to video frames (docs/method.md section 3).

``VideoEncoder(frames [B, T, 3, H, W]) -> (frames [B, T, D], patches [B, T, Np, D])``.

The frame feature ``v_t`` is exactly what the open_clip model's ``encode_image`` returns for that
frame (before normalisation): the class token, or the tower's own pooling where it pools
otherwise. The patch features are the tower's final patch tokens (or, for a convolutional tower,
the positions of its final feature map) mapped into the joint space by the same head, each token
taken as if it were the only one the head pools over (docs/method.md section 7):

- open_clip's own ViT (OpenAI, LAION, DataComp, MetaCLIP, DFN, CLIPA weights): ``ln_post`` and
  ``proj`` on every token; ``v_t`` is the class token or the average, as the model pools;
- timm ViTs (EVA02, SigLIP, PE, ViTamin, MobileCLIP-B...): the final norm, then the head
  (``fc_norm``, the attention pool where there is one, the classifier projection and open_clip's
  adapter projection) on each token;
- timm networks with a feature map (ConvNeXt, Swin): the head (norm, projection) on each position.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from stzsar.video.temporal import TemporalTransformer

#: Modules of a timm ViT that run after its blocks (final norm and head): never part of the stem.
_TOKEN_TRUNK_HEAD = ("norm", "fc_norm", "attn_pool", "head", "head_drop")
#: Pooling of a timm ViT whose result over one token is that token.
_TOKEN_POOLS = ("token", "avg", "max", "avgmax", "map")


class VideoEncoder(nn.Module):
    """Wraps an open_clip image tower (not a copy: the module is shared).

    Args:
        visual: an open_clip model's ``.visual``: its ``VisionTransformer``, or a ``TimmModel``
            over a timm ViT (class token, average or attention pooling) or a timm network with a
            final feature map and a pooling head (ConvNeXt, Swin).
        frozen_blocks: number of lower blocks kept frozen, with the stem (patch embedding,
            class/positional embeddings, ``ln_pre``); ``None`` freezes the first half (paper: 6 of
            12 for ViT-B/16). The blocks are the transformer blocks of a ViT and the blocks of all
            stages of a staged network in order (a stage's downsampling goes with its first
            block). The final norm and the head stay trainable.
        temporal_layers: layers of the optional residual temporal transformer over ``v_t`` (0: none).
    """

    def __init__(self, visual: nn.Module, frozen_blocks: Optional[int] = None, temporal_layers: int = 0):
        super().__init__()
        self.visual = visual
        self.kind = _tower_kind(visual)
        self.patch_size = _stride(visual, self.kind)
        self.num_blocks = len(self._blocks())
        self.frozen_blocks = self.num_blocks // 2 if frozen_blocks is None else int(frozen_blocks)
        if not 0 <= self.frozen_blocks <= self.num_blocks:
            raise ValueError(f"frozen_blocks must be in [0, {self.num_blocks}], got {frozen_blocks}")
        self.dim = _output_dim(visual, self.kind)
        self.temporal = TemporalTransformer(self.dim, temporal_layers) if temporal_layers > 0 else None
        self.apply_freezing()

    # ---------------------------------------------------------------------------- structure

    def _blocks(self) -> List[List[nn.Module]]:
        """The tower's blocks in order, each a list of modules (a stage's downsampling joins its
        first block)."""
        visual = self.visual
        if self.kind == "vit":
            return [[block] for block in visual.transformer.resblocks]
        trunk = visual.trunk
        if self.kind == "timm_tokens":
            return [[block] for block in trunk.blocks]
        blocks = []
        for stage in _stages(trunk):
            group = [m for m in (getattr(stage, "downsample", None),) if m is not None and _has_parameters(m)]
            for block in stage.blocks:
                blocks.append(group + [block])
                group = []
        return blocks

    def _stem_parameters(self) -> List[nn.Parameter]:
        """Parameters that run before the first block."""
        visual = self.visual
        if self.kind == "vit":
            modules = [visual.conv1, visual.ln_pre]
            params = [visual.class_embedding, visual.positional_embedding]
            return params + [p for m in modules for p in m.parameters()]
        trunk = visual.trunk
        if self.kind == "timm_tokens":
            # Everything of the trunk that is neither a block nor its final norm and head:
            # patch embedding, class/register tokens, positional embedding, norm_pre.
            return [p for name, p in trunk.named_parameters()
                    if not name.startswith("blocks.") and name.split(".")[0] not in _TOKEN_TRUNK_HEAD]
        stem = [getattr(trunk, name) for name in ("stem", "patch_embed") if getattr(trunk, name, None) is not None]
        return list(trunk.parameters(recurse=False)) + [p for m in stem for p in m.parameters()]

    def apply_freezing(self) -> None:
        """Freeze the stem and the lower ``frozen_blocks`` blocks; everything above learns."""
        for param in self.visual.parameters():
            param.requires_grad = True
        if self.frozen_blocks > 0:
            frozen = self._stem_parameters()
            for block in self._blocks()[: self.frozen_blocks]:
                frozen.extend(p for module in block for p in module.parameters())
            for param in frozen:
                param.requires_grad = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if self.kind == "vit":
            self.visual.set_grad_checkpointing(enable)
        else:  # TimmModel's own method only warns where the trunk cannot; say it as an error
            self.visual.trunk.set_grad_checkpointing(enable)

    def num_patches(self, height: int, width: int) -> int:
        return (height // self.patch_size) * (width // self.patch_size)

    # ---------------------------------------------------------------------------- forward

    def encode_frames(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        """``images [N, 3, H, W] -> (v [N, D], patches [N, Np, D])``."""
        visual = self.visual
        if self.kind == "vit":
            x = visual.transformer(visual._embeds(images))
            pooled, tokens = visual._pool(x)  # the tower's own pooling, as in its forward
            if getattr(visual, "final_ln_after_pool", False):
                tokens = visual.ln_post(tokens)  # ln_post ran on the pooled feature only
            return pooled @ visual.proj, tokens @ visual.proj
        trunk = visual.trunk
        x = trunk.forward_features(images)
        pooled = visual.head(trunk.forward_head(x))  # == TimmModel.forward == encode_image
        if self.kind == "timm_tokens":
            return pooled, self.token_head(x[:, trunk.num_prefix_tokens:])
        return pooled, self.map_head(x)

    def token_head(self, tokens: Tensor) -> Tensor:
        """The timm ViT's head on each token alone: ``tokens [N, L, C] -> [N, L, D]``.

        Pooling one token returns it; an attention pool over one token gives it all the weight,
        so its output is the pool's value and output projections and its MLP on that token.
        """
        trunk = self.visual.trunk
        N, L, C = tokens.shape
        x = tokens.reshape(N * L, 1, C)
        x = trunk.attn_pool(x) if getattr(trunk, "attn_pool", None) is not None else x[:, 0]
        x = trunk.head(trunk.head_drop(trunk.fc_norm(x)))
        return self.visual.head(x).unflatten(0, (N, L))

    def map_head(self, features: Tensor) -> Tensor:
        """The timm network's head on each position of its final feature map, as a 1 x 1 map:
        ``[N, C, h, w]`` (``[N, h, w, C]`` for NHWC towers) ``-> [N, h * w, D]``."""
        trunk = self.visual.trunk
        if getattr(trunk, "output_fmt", "NCHW") == "NHWC":
            N, h, w, C = features.shape
            positions = features.reshape(N * h * w, 1, 1, C)
        else:
            N, C, h, w = features.shape
            positions = features.permute(0, 2, 3, 1).reshape(N * h * w, C, 1, 1)
        x = self.visual.head(trunk.forward_head(positions))
        return x.unflatten(0, (N, h * w))

    def forward(self, video: Tensor) -> Tuple[Tensor, Tensor]:
        if video.dim() != 5 or video.shape[2] != 3:
            raise ValueError(f"video must be [B, T, 3, H, W], got {tuple(video.shape)}")
        B, T = video.shape[:2]
        pooled, patches = self.encode_frames(video.flatten(0, 1))
        frames = pooled.unflatten(0, (B, T))
        patches = patches.unflatten(0, (B, T))
        if self.temporal is not None:
            frames = self.temporal(frames)
        return frames, patches


# -------------------------------------------------------------------------------- tower kinds


def _unsupported(visual: nn.Module, why: str) -> TypeError:
    return TypeError(
        f"VideoEncoder cannot use this image tower ({_describe(visual)}): {why}. Supported: open_clip's "
        f"VisionTransformer (class-token or average pooling) and timm towers of open_clip models: ViTs "
        f"with class-token, average or attention pooling (EVA02, SigLIP, PE, ...) and networks with a "
        f"final feature map and a pooling head (ConvNeXt, Swin); see docs/backbones.md"
    )


def _describe(visual: nn.Module) -> str:
    trunk = getattr(visual, "trunk", None)
    return type(visual).__name__ + (f" over timm {type(trunk).__name__}" if trunk is not None else "")


def _stages(trunk: nn.Module):
    stages = getattr(trunk, "stages", None)
    if stages is None:
        stages = getattr(trunk, "layers", None)  # Swin
    return stages


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _tower_kind(visual: nn.Module) -> str:
    """``"vit"`` (open_clip's own), ``"timm_tokens"`` (timm ViT) or ``"timm_map"`` (feature map)."""
    trunk = getattr(visual, "trunk", None)
    if trunk is None:
        if hasattr(visual, "attnpool"):
            raise _unsupported(visual, "the ResNet towers (RN50, RN101, ...) pool with an attention pool that "
                                       "adds a positional embedding of its fixed-size map; not supported")
        for attribute in ("conv1", "class_embedding", "transformer", "ln_post", "proj", "_pool"):
            if not hasattr(visual, attribute):
                raise _unsupported(visual, f"it has no {attribute!r}")
        if getattr(visual, "attn_pool", None) is not None:
            raise _unsupported(visual, "its attention pooler (CoCa) returns learned queries, not patches")
        if getattr(visual, "pool_type", "tok") not in ("tok", "avg"):
            raise _unsupported(visual, f"pool_type {visual.pool_type!r} gives no frame feature")
        if visual.proj is None:
            raise _unsupported(visual, "it has no projection into the joint space")
        return "vit"
    head = getattr(visual, "head", None)
    if head is not None and hasattr(head, "pool"):
        raise _unsupported(visual, "open_clip's attention-pool head (abs_attn/rot_attn) over a fixed-size "
                                   "map cannot be applied to one position")
    if hasattr(trunk, "blocks") and hasattr(trunk, "num_prefix_tokens"):
        for attribute in ("fc_norm", "head_drop", "head", "forward_features", "forward_head"):
            if not hasattr(trunk, attribute):
                raise _unsupported(visual, f"its timm ViT has no {attribute!r}")
        attn_pool = getattr(trunk, "attn_pool", None)
        if attn_pool is None and getattr(trunk, "global_pool", None) not in _TOKEN_POOLS:
            raise _unsupported(visual, f"global_pool {getattr(trunk, 'global_pool', None)!r} gives no frame feature")
        if attn_pool is not None and getattr(attn_pool, "pos_embed", None) is not None:
            raise _unsupported(visual, "its attention pool adds positional embeddings of its own")
        return "timm_tokens"
    stages = _stages(trunk)
    if stages is not None and all(hasattr(stage, "blocks") for stage in stages):
        extra = [name for name, _ in trunk.named_children()
                 if name not in ("stem", "patch_embed", "stages", "layers", "norm_pre", "norm", "head", "head_drop")]
        if extra:
            # e.g. FastViT's final convolution mixes positions before the pooling
            raise _unsupported(visual, f"its trunk runs {', '.join(extra)} between the stages and the head")
        if type(trunk.head).__name__ not in ("ClassifierHead", "NormMlpClassifierHead"):
            raise _unsupported(visual, f"its head {type(trunk.head).__name__} is not a pooling classifier head")
        return "timm_map"
    raise _unsupported(visual, "neither a ViT with blocks nor a network with stages of blocks")


def _stride(visual: nn.Module, kind: str) -> int:
    """Input pixels per patch (ViT) or per position of the final feature map."""
    if kind == "vit":
        size = visual.patch_size if hasattr(visual, "patch_size") else visual.conv1.kernel_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)
    trunk = visual.trunk
    info = getattr(trunk, "feature_info", None)
    if info:
        return int(info[-1]["reduction"])
    size = trunk.patch_embed.patch_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _output_dim(visual: nn.Module, kind: str) -> int:
    if kind == "vit":
        return int(visual.proj.shape[1])
    trunk = visual.trunk
    for module in (visual.head, trunk.head):  # the last linear layer of the outer head wins
        linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
        if linears:
            return int(linears[-1].out_features)
    attn_pool = getattr(trunk, "attn_pool", None)
    if attn_pool is not None:
        return int(attn_pool.out_features)
    return int(trunk.num_features)
