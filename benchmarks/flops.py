"""Parameters and FLOPs of a model configuration, counted on the meta device.

    python -m benchmarks.flops --model ViT-B-16 --frames 16 --size 224 [--views 4x3] [--classes 400] [--json]
    python -m benchmarks.flops --table3            # the configurations of the paper's K400 results

The model is built with ``device="meta"``: tensors have shapes but no storage, so nothing is
allocated or computed and ViT-L/14 at 336 px with 32 frames is counted in seconds.
``torch.utils.flop_counter.FlopCounterMode`` counts every matrix product, convolution and attention
kernel that the forward pass dispatches (including ``scaled_dot_product_attention`` and the
``bmm``/``mm`` products that ``nn.MultiheadAttention`` lowers to), and the STI ops through the flop
formulas they register (``stzsar.spatial_maxsim``: ``2*B*T*Np*C*Nw*D``;
``stzsar.projected_spatial_maxsim`` adds the patch projection, which the breakdown moves to its row).

Convention: one multiply-add = 2 flops (FlopCounterMode's). The ``GMACs`` column halves it: that
is the fvcore convention ("one fused multiply-add as one flop") that most video-recognition papers
print under "GFLOPs". Elementwise work (normalisations, softmax, GELU, residual adds, biases) is not
counted, as in both conventions.

Why meta rather than real tensors: in eval mode without grad, PyTorch's ``nn.MultiheadAttention``
takes a fused CPU/CUDA fast path (``_native_multi_head_attention``) whose internals FlopCounterMode
does not see, so counting with real tensors under ``no_grad`` misses part of the attention. The
fast path is not taken for meta tensors, and ``tests/test_benchmarks.py`` checks the count
against a closed form.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import fmt, format_table, write_result

GIGA = 1e9

#: The paper's Table 3 figures are not part of this repository, so none is printed (no value is
#: guessed); see docs/benchmarks.md. The full statement goes into the results and the table notes,
#: the short one into the table's column.
PAPER_TABLE3_NOTE = "not reproduced: the paper's Table 3 figures are not part of this repository"
PAPER_TABLE3_CELL = "not reproduced"

#: Image-tower GFLOPs per image from open_clip's own profile table (docs/model_profile.csv,
#: mlfoundations/open_clip at commit f862f86cd92123615a8695ce8bcb6ecc066af452, column
#: ``image_gflops``), made by src/training/profiler.py with FlopCounterMode (2 flops per
#: multiply-add). open_clip projects only the class token; stzsar also projects the patch tokens.
OPEN_CLIP_IMAGE_GFLOPS: Dict[Tuple[str, int], float] = {
    ("ViT-B-16", 224): 35.13,
    ("ViT-L-14", 224): 162.03,
    ("ViT-L-14", 336): 381.92,  # the row "ViT-L-14-336"
}

#: Configurations of the paper's results (docs/method.md section 6): ViT-B/16 with 16 frames (zero-shot and
#: few-shot) and the supervised Kinetics-400 ViT-L/14 models at 8x224 and 32x336, with 4x3 views.
#: Whether the paper's Table 3 lists exactly these is not checked (see PAPER_TABLE3_NOTE).
TABLE3_CONFIGS: Tuple[Tuple[str, int, int, str, int], ...] = (
    ("ViT-B-16", 16, 224, "1x1", 400),
    ("ViT-B-16", 16, 224, "4x3", 400),
    ("ViT-L-14", 8, 224, "4x3", 400),
    ("ViT-L-14", 32, 336, "4x3", 400),
)


@dataclass
class FlopConfig:
    """One configuration to count.

    Attributes:
        model: open_clip architecture name (or ``stzsar-tiny``/``stzsar-small``).
        frames: ``T``, frames per clip.
        size: input side in pixels (``None``: the architecture's own).
        clips, crops: test views per video (``4x3``: 4 temporal clips x 3 spatial crops).
        classes: ``C``, classes every view is scored against.
        words: ``Nw``, word positions per class prompt (the bank is trimmed to its longest prompt;
            a class name with 8 attributes in the default template is about 20-32 tokens).
        batch: videos per forward call. The STI word projection ``W_w`` runs once per call, so its
            cost per view is divided by ``batch``.
        temporal_layers, frozen_blocks: as in :func:`stzsar.build_model`.
    """

    model: str = "ViT-B-16"
    frames: int = 16
    size: Optional[int] = None
    clips: int = 1
    crops: int = 1
    classes: int = 400
    words: int = 32
    batch: int = 1
    temporal_layers: int = 0
    frozen_blocks: Optional[int] = None

    def __post_init__(self) -> None:
        for name in ("frames", "clips", "crops", "classes", "words", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.size is not None and self.size < 1:
            raise ValueError(f"size must be >= 1, got {self.size}")
        if self.temporal_layers < 0:
            raise ValueError(f"temporal_layers must be >= 0, got {self.temporal_layers}")

    @property
    def views(self) -> int:
        return self.clips * self.crops

    def label(self, size: int) -> str:
        return f"{self.model}_{self.frames}x{size}_{self.clips}x{self.crops}_C{self.classes}"


def parse_views(text: str) -> Tuple[int, int]:
    """``"4x3"`` -> ``(4, 3)`` (temporal clips x spatial crops)."""
    parts = text.lower().split("x")
    try:
        clips, crops = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--views must look like 4x3 (clips x crops), got {text!r}") from None
    if clips < 1 or crops < 1:
        raise argparse.ArgumentTypeError(f"--views needs positive numbers, got {text!r}")
    return clips, crops


# --------------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------------


def count_flops(fn: Callable[[], Any]) -> Tuple[Any, Dict[str, Dict[str, int]]]:
    """Run ``fn`` under ``no_grad`` and FlopCounterMode; return its output and the counts
    ``{module path or "Global": {op name: flops}}``."""
    with torch.no_grad(), FlopCounterMode(display=False, depth=None) as counter:
        out = fn()
    counts = {
        module: {str(op): int(n) for op, n in ops.items()} for module, ops in counter.get_flop_counts().items()
    }
    return out, counts


def total(counts: Dict[str, Dict[str, int]], module: str = "Global") -> int:
    return sum(counts.get(module, {}).values())


@contextlib.contextmanager
def word_mask_values_unchecked() -> Iterator[None]:
    """Skip ``check_word_mask`` (it reads mask values, which meta tensors do not have).

    The masks built here are all-true by construction. The function is replaced in every stzsar
    module that imported it, and restored on exit.
    """
    import stzsar.ops.spatial_maxsim  # noqa: F401  (the package re-exports a function of that name)

    original = sys.modules["stzsar.ops.spatial_maxsim"].check_word_mask
    holders = [
        module for name, module in list(sys.modules.items())
        if name.startswith("stzsar") and getattr(module, "check_word_mask", None) is original
    ]
    for module in holders:
        module.check_word_mask = lambda word_mask: None
    try:
        yield
    finally:
        for module in holders:
            module.check_word_mask = original


def build_meta_model(config: FlopConfig):
    """The model of ``config`` on the meta device (shapes only), in eval mode."""
    from stzsar.model import build_model

    model = build_model(
        config.model, None, frozen_blocks=config.frozen_blocks, temporal_layers=config.temporal_layers,
        image_size=config.size, device="meta",
    )
    return model.eval()


def count_parameters(model) -> Dict[str, int]:
    """Parameters in total, trainable, and per part of the model."""
    def numel(module, trainable_only=False) -> int:
        if module is None:
            return 0
        return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)

    temporal = model.video.temporal
    return {
        "total": numel(model),
        "trainable": numel(model, True),
        "image_tower": numel(model.video.visual),
        "image_tower_trainable": numel(model.video.visual, True),
        "temporal_transformer": numel(temporal),
        "text_tower": numel(model.text),
        "sti": numel(model.sti),
    }


def video_flops(model, frames: int, size: int, batch: int = 1) -> Dict[str, int]:
    """Forward flops of the image tower on ``batch`` clips of ``frames`` frames (meta tensors).

    Returns ``vit`` (the image tower: stem, blocks, and the head on the frame feature and on
    every patch), ``temporal`` (the temporal transformer) and ``by_op``.
    """
    video = torch.empty(batch, frames, 3, size, size, device="meta")
    with parameters_without_grad(model.video):
        _, counts = count_flops(lambda: model.video(video))
    everything = total(counts)
    temporal = total(counts, "VideoEncoder.temporal")
    return {"vit": everything - temporal, "temporal": temporal, "by_op": counts.get("Global", {})}


def encode_image_flops(model, size: int) -> int:
    """Forward flops of the open_clip image tower's own forward (``encode_image``) on one frame:
    open_clip's profile convention, where only the pooled feature goes through the head."""
    image = torch.empty(1, 3, size, size, device="meta")
    with parameters_without_grad(model.video):
        return total(count_flops(lambda: model.video.visual(image))[1])


@contextlib.contextmanager
def parameters_without_grad(module) -> Iterator[None]:
    """No parameter of ``module`` requires grad inside the block (restored on exit). Under
    ``no_grad`` a view of a parameter still says it requires grad but has no grad_fn, and the module
    tracker of FlopCounterMode fails on such a module input (timm's attention pool expands its
    latent query so)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def sti_flops(model, batch: int, frames: int, patches: int, classes: int, words: int) -> Dict[str, Any]:
    """Forward flops of the STI module and the cosine logits for ``batch`` videos x ``classes``."""
    from stzsar.text import ClassBank

    dim = model.dim
    meta = dict(device="meta")
    frame_feat = torch.empty(batch, frames, dim, **meta)
    patch_feat = torch.empty(batch, frames, patches, dim, **meta)
    bank = ClassBank(
        torch.empty(classes, dim, **meta), torch.empty(classes, words, dim, **meta),
        torch.ones(classes, words, dtype=torch.bool, **meta),
    )
    with word_mask_values_unchecked():
        _, counts = count_flops(lambda: model.logits_from_features(frame_feat, patch_feat, bank))
    _, patch_proj = count_flops(lambda: model.sti.patch_proj(patch_feat))
    _, word_proj = count_flops(lambda: model.sti.word_proj(bank.words))
    by_op = counts.get("Global", {})
    everything = total(counts)
    patch_proj, word_proj = total(patch_proj), total(word_proj)
    spatial = by_op.get("stzsar.spatial_maxsim", 0)
    if "stzsar.projected_spatial_maxsim" in by_op:  # the fused op counts the patch projection too
        spatial += by_op["stzsar.projected_spatial_maxsim"] - patch_proj
    return {
        "total": everything,
        "patch_projection": patch_proj,
        "word_projection": word_proj,
        "spatial_maxsim": spatial,
        "temporal_and_similarity": everything - spatial - patch_proj - word_proj,
        "by_op": by_op,
    }


def train_step_flops(model, batch: int, frames: int, prompts: int, words: int = 32) -> Dict[str, int]:
    """Flops of one training step of ``model`` (a meta model from :func:`build_meta_model`, put in
    training mode here): ``batch`` clips of ``frames`` frames scored against ``prompts`` class
    prompts, forward and backward as autograd runs them.

    The backward skips the frozen stem and lower blocks (nothing below them learns); the first
    trainable block still takes its input's gradient, for its own layer norm. The loss and AdamW
    are elementwise (not counted). ``head_*`` is the STI head and the cosine logits alone on the ViT's features,
    its backward including the features' gradient, as the step runs it.
    """
    from stzsar.text import ClassBank

    model.train()
    model.text.eval()
    size, dim = model.image_size, model.dim
    meta = dict(device="meta")
    video = torch.empty(batch, frames, 3, size, size, **meta)
    bank = ClassBank(torch.empty(prompts, dim, **meta), torch.empty(prompts, words, dim, **meta),
                     torch.ones(prompts, words, dtype=torch.bool, **meta))

    def forward_backward(fn: Callable[[], torch.Tensor]) -> Tuple[int, int]:
        with word_mask_values_unchecked(), FlopCounterMode(display=False) as counter:
            logits = fn()
        forward = counter.get_total_flops()
        # Any upstream gradient has the same cost; meta tensors hold no loss value to start from.
        with FlopCounterMode(display=False) as counter:
            logits.backward(torch.empty_like(logits))
        return forward, counter.get_total_flops()

    forward, backward = forward_backward(lambda: model(video, bank))
    patches = model.video.num_patches(size, size)
    frame_feat = torch.empty(batch, frames, dim, requires_grad=True, **meta)
    patch_feat = torch.empty(batch, frames, patches, dim, requires_grad=True, **meta)
    head_forward, head_backward = forward_backward(
        lambda: model.logits_from_features(frame_feat, patch_feat, bank))
    return {"total": forward + backward, "forward": forward, "backward": backward,
            "head_forward": head_forward, "head_backward": head_backward,
            "head": head_forward + head_backward}


def text_bank_flops(model, classes: int) -> int:
    """Forward flops of the frozen text tower for ``classes`` prompts (all context positions run).

    Mirrors the flop-relevant part of ``TextEncoder.encode_tokens`` (transformer, ``ln_final`` and
    the projection); the token lookup has no flops, and the end-of-text search needs token values
    that meta tensors do not have.
    """
    text = model.text
    width = text.positional_embedding.shape[-1]
    x = torch.empty(classes, text.context_length, width, device="meta")

    def run():
        y = text.transformer(x, attn_mask=text.attn_mask)
        return text._project(text.ln_final(y))

    return total(count_flops(run)[1])


def analyse(config: FlopConfig) -> Dict[str, Any]:
    """All figures of one configuration (flops as integers, 2 per multiply-add)."""
    model = build_meta_model(config)
    size = model.image_size
    patches = model.video.num_patches(size, size)
    T = config.frames
    video = video_flops(model, T, size)
    sti = sti_flops(model, config.batch, T, patches, config.classes, config.words)
    # Per view: one clip through the ViT and 1/batch of the STI call. Everything in the STI call
    # scales with the batch except the word projection, which the batch shares.
    sti_per_view = sti["total"] / config.batch
    per_view = video["vit"] + video["temporal"] + sti_per_view
    vit_per_frame = video["vit"] / T
    # open_clip's convention runs the head on the pooled feature only (stzsar: on every patch too).
    per_frame_cls_only = encode_image_flops(model, size)
    reference = OPEN_CLIP_IMAGE_GFLOPS.get((config.model, size))
    return {
        "config": {**asdict(config), "size": size, "patches": patches, "dim": model.dim, "views": config.views},
        "convention": "flops; one multiply-add = 2 flops (GMACs = GFLOPs / 2)",
        "parameters": count_parameters(model),
        "flops": {
            "vit_per_frame": vit_per_frame,
            "vit_per_frame_class_token_projection_only": per_frame_cls_only,
            "vit": video["vit"],
            "temporal_transformer": video["temporal"],
            "sti_call": sti["total"],
            "sti_per_view": sti_per_view,
            "sti_patch_projection_per_view": sti["patch_projection"] / config.batch,
            "sti_word_projection_per_call": sti["word_projection"],
            "sti_spatial_maxsim_per_view": sti["spatial_maxsim"] / config.batch,
            "sti_temporal_and_similarity_per_view": sti["temporal_and_similarity"] / config.batch,
            "per_view": per_view,
            "total": per_view * config.views,
            "text_bank_once_per_class_list": text_bank_flops(model, config.classes),
        },
        "gflops_per_view": per_view / GIGA,
        "gflops_total": per_view * config.views / GIGA,
        "gmacs_total": per_view * config.views / GIGA / 2,
        "sti_share_of_view": sti_per_view / per_view,
        "by_op": {"video": video["by_op"], "sti": sti["by_op"]},
        "reference": {
            "open_clip_image_gflops_per_frame": reference,
            "source": "mlfoundations/open_clip docs/model_profile.csv @ f862f86 (image_gflops)"
            if reference is not None else None,
        },
        "paper_table3": PAPER_TABLE3_NOTE,
    }


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _g(flops: float) -> str:
    return fmt(flops / GIGA, 2)


def _gm(flops: float) -> str:
    return fmt(flops / GIGA / 2, 2)


def breakdown_table(result: Dict[str, Any]) -> str:
    """One configuration, part by part."""
    c, f, p = result["config"], result["flops"], result["parameters"]
    per_view = f["per_view"]

    def share(x: float) -> str:
        return f"{100 * x / per_view:.1f}%"

    ref = result["reference"]["open_clip_image_gflops_per_frame"]
    rows = [
        ["ViT, one frame", _g(f["vit_per_frame"]), _gm(f["vit_per_frame"]), "-", "-", "-"],
        ["image tower, one frame, as encode_image (head on the pooled feature only)",
         _g(f["vit_per_frame_class_token_projection_only"]),
         _gm(f["vit_per_frame_class_token_projection_only"]), "-", fmt(ref) if ref is not None else "-", "-"],
        [f"ViT, {c['frames']} frames", _g(f["vit"]), _gm(f["vit"]), share(f["vit"]), "-", "-"],
        ["temporal transformer", _g(f["temporal_transformer"]), _gm(f["temporal_transformer"]),
         share(f["temporal_transformer"]), "-", "-"],
        ["STI patch projection W_p", _g(f["sti_patch_projection_per_view"]), _gm(f["sti_patch_projection_per_view"]),
         share(f["sti_patch_projection_per_view"]), "-", "-"],
        [f"STI word projection W_w (per call / batch {c['batch']})", _g(f["sti_word_projection_per_call"] / c["batch"]),
         _gm(f["sti_word_projection_per_call"] / c["batch"]), share(f["sti_word_projection_per_call"] / c["batch"]),
         "-", "-"],
        ["STI spatial max-sim 2*T*Np*C*Nw*D", _g(f["sti_spatial_maxsim_per_view"]), _gm(f["sti_spatial_maxsim_per_view"]),
         share(f["sti_spatial_maxsim_per_view"]), "-", "-"],
        ["STI temporal saliency + cosine", _g(f["sti_temporal_and_similarity_per_view"]),
         _gm(f["sti_temporal_and_similarity_per_view"]), share(f["sti_temporal_and_similarity_per_view"]), "-", "-"],
        ["one view (clip)", _g(per_view), _gm(per_view), "100.0%", "-", PAPER_TABLE3_CELL],
        [f"all views ({c['clips']}x{c['crops']} = {c['views']})", _g(f["total"]), _gm(f["total"]), "-", "-",
         PAPER_TABLE3_CELL],
        [f"text bank, {c['classes']} classes (once per class list)", _g(f["text_bank_once_per_class_list"]),
         _gm(f["text_bank_once_per_class_list"]), "-", "-", "-"],
    ]
    title = (f"FLOPs: {c['model']}, {c['frames']} frames x {c['size']} px (Np={c['patches']}, D={c['dim']}), "
             f"views {c['clips']}x{c['crops']}, C={c['classes']} classes, Nw={c['words']} words")
    notes = [
        "GFLOPs count one multiply-add as 2 flops (torch FlopCounterMode); GMACs = GFLOPs / 2, the fvcore "
        "convention most video papers print as 'GFLOPs'. Elementwise ops are not counted.",
        f"parameters: {p['total'] / 1e6:.2f} M total, {p['trainable'] / 1e6:.2f} M trainable "
        f"(image tower {p['image_tower'] / 1e6:.2f} M of which {p['image_tower_trainable'] / 1e6:.2f} M trainable, "
        f"text tower {p['text_tower'] / 1e6:.2f} M frozen, STI {p['sti'] / 1e6:.2f} M, "
        f"temporal transformer {p['temporal_transformer'] / 1e6:.2f} M)",
        "public figure: open_clip docs/model_profile.csv (image_gflops per image, class-token projection "
        "only); stzsar also projects the patch tokens (row above it)." if ref is not None else
        "public figure: none known for this architecture and size.",
        f"paper Table 3: {PAPER_TABLE3_NOTE} (see docs/benchmarks.md).",
    ]
    headers = ["part", "GFLOPs", "GMACs", "share of a view", "public figure (GFLOPs)", "paper Table 3"]
    return format_table(headers, rows, title=title, notes=notes, align="lrrrrl")


def summary_table(results: Sequence[Dict[str, Any]]) -> str:
    """Several configurations, one row each."""
    rows = []
    for r in results:
        c, p = r["config"], r["parameters"]
        rows.append([
            c["model"], f"{c['frames']}x{c['size']}", f"{c['clips']}x{c['crops']}", str(c["classes"]),
            f"{p['total'] / 1e6:.1f} / {p['trainable'] / 1e6:.1f}",
            fmt(r["gflops_per_view"], 1), f"{100 * r['sti_share_of_view']:.1f}%",
            fmt(r["gflops_total"], 1), fmt(r["gmacs_total"], 1), PAPER_TABLE3_CELL,
        ])
    headers = ["model", "frames x px", "views", "classes", "params M (total / trainable)", "GFLOPs / view",
               "STI share", "GFLOPs total", "GMACs total", "paper Table 3"]
    notes = [
        "GFLOPs: one multiply-add = 2 flops (FlopCounterMode); GMACs = GFLOPs / 2 (fvcore convention, "
        "usual in video papers). Totals = views x per view; the text bank (once per class list) is not included.",
        "Nw = 32 words per class prompt; the STI word projection is counted once per view (batch 1).",
        f"paper Table 3: {PAPER_TABLE3_NOTE} (see docs/benchmarks.md).",
    ]
    return format_table(headers, rows, title="FLOPs and parameters per configuration", notes=notes,
                        align="lllrrrrrrl")


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.flops", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="ViT-B-16", help="open_clip architecture (default ViT-B-16)")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip T (default 16)")
    parser.add_argument("--size", type=int, default=None, help="input side in px (default: the model's)")
    parser.add_argument("--views", type=parse_views, default=(1, 1), help="test views, clips x crops (e.g. 4x3)")
    parser.add_argument("--classes", type=int, default=400, help="classes C per view (default 400)")
    parser.add_argument("--words", type=int, default=32, help="word positions Nw per prompt (default 32)")
    parser.add_argument("--batch", type=int, default=1, help="videos per forward call (shares W_w; default 1)")
    parser.add_argument("--temporal-layers", type=int, default=0, help="temporal transformer layers (default 0)")
    parser.add_argument("--frozen-blocks", type=int, default=None, help="frozen ViT blocks (default: half)")
    parser.add_argument("--table3", action="store_true",
                        help="count the configurations of the paper's results (ignores the options above)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object instead of a table")
    parser.add_argument("--out", default=None, help="folder of the JSON result (default benchmarks/results/)")
    parser.add_argument("--no-save", action="store_true", help="do not write the JSON result file")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.table3:
        from tqdm import tqdm

        configs = [FlopConfig(m, t, s, *parse_views(v), classes=c) for m, t, s, v, c in TABLE3_CONFIGS]
        results = [analyse(c) for c in tqdm(configs, desc="counting", unit="config", file=sys.stderr)]
        table, tag, payload = summary_table(results), "table3", results
        config: Dict[str, Any] = {"configs": [r["config"] for r in results]}
    else:
        clips, crops = args.views
        try:  # bad numbers, unknown architecture, image size the patch size does not divide...
            cfg = FlopConfig(args.model, args.frames, args.size, clips, crops, args.classes, args.words,
                             args.batch, args.temporal_layers, args.frozen_blocks)
            result = analyse(cfg)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        table, tag, payload, config = breakdown_table(result), cfg.label(result["config"]["size"]), result, result["config"]
    path = None if args.no_save else write_result("flops", tag, config, payload, args.out)
    if args.json:
        print(json.dumps(payload if not args.table3 else {"configs": payload}, indent=2, default=float))
    else:
        print(table)
        if path is not None:
            print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
