"""Tests of the benchmarks: FLOP counts against closed forms, the STI flop formula through
FlopCounterMode on real calls, the meta-device model build, and the benchmark commands in a tiny
configuration."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import flops as flops_bench
from benchmarks import throughput as throughput_bench
from benchmarks.common import format_table, write_result
from stzsar.model import build_model
from stzsar.ops.spatial_maxsim import spatial_maxsim
from stzsar.sti import STIModule


# --------------------------------------------------------------------------------------------
# Closed form of a CLIP ViT, derived by hand (one multiply-add = 2 flops)
# --------------------------------------------------------------------------------------------


def closed_form_vit_flops(name: str, image_size: int, frames: int) -> int:
    """Forward flops of ``VideoEncoder`` (an open_clip ViT run per frame) on one clip.

    Per frame, with ``w`` the width, ``L`` blocks, patch ``p``, ``Np = (image/p)^2`` patches,
    ``N = Np + 1`` tokens (class token), MLP hidden ``m = mlp_ratio * w`` and output size ``D``,
    in multiply-adds:

    - patch embedding (a conv of stride p = one matrix product): ``Np * (3 p^2) * w``
    - per block: Q, K and V projections ``N * w * 3w``; output projection ``N * w * w``;
      attention scores Q K^T over all heads ``N * N * w`` (h heads of ``N x N x w/h``); attention
      times values ``N * N * w``; MLP ``N * w * m + N * m * w``
    - projection of every token (class and patches) to the joint space: ``N * w * D``

    Not counted (FlopCounterMode does not count them either): layer norms, softmax, GELU,
    residual, bias and positional-embedding additions, the class-token concatenation.
    """
    parts = vit_macs_per_frame(name, image_size)
    macs_per_frame = parts["patch_embed"] + parts["layers"] * parts["block"] + parts["projection"]
    return 2 * macs_per_frame * frames


def vit_macs_per_frame(name: str, image_size: int) -> dict:
    """The per-frame multiply-adds of :func:`closed_form_vit_flops`, part by part."""
    import open_clip

    from stzsar.model import register_model_configs

    register_model_configs()
    cfg = open_clip.get_model_config(name)
    vision = cfg["vision_cfg"]
    w, layers, p = vision["width"], vision["layers"], vision["patch_size"]
    m = int(w * vision.get("mlp_ratio", 4.0))
    d = cfg["embed_dim"]
    np_ = (image_size // p) ** 2
    n = np_ + 1
    return {
        "layers": layers,
        "patch_embed": np_ * (3 * p * p) * w,
        "block": n * w * 3 * w + n * w * w + n * n * w + n * n * w + 2 * n * w * m,
        "projection": n * w * d,
    }


def closed_form_vit_train_flops(name: str, image_size: int, clips: int, frames: int, frozen_blocks: int) -> int:
    """Forward and backward flops of the image tower in one training step of ``clips`` clips.

    Forward: :func:`closed_form_vit_flops`. Backward: every product of a trainable block and of
    the projection twice (the gradient of each operand), nothing for the frozen stem and blocks
    (nothing below them needs a gradient). The first trainable block's input projections still
    need their input's gradient: that block's own layer norm learns.
    """
    parts = vit_macs_per_frame(name, image_size)
    backward_macs = 2 * ((parts["layers"] - frozen_blocks) * parts["block"] + parts["projection"])
    return closed_form_vit_flops(name, image_size, frames) * clips + 2 * backward_macs * frames * clips


@pytest.mark.parametrize(
    "name, size, frames",
    [("stzsar-tiny", 32, 3), ("ViT-B-16", 224, 16), ("ViT-L-14", 336, 2)],
)
def test_vit_flops_match_closed_form(name, size, frames):
    model = flops_bench.build_meta_model(flops_bench.FlopConfig(name, frames, size))
    counted = flops_bench.video_flops(model, frames, size)
    expected = closed_form_vit_flops(name, size, frames)
    assert abs(counted["vit"] - expected) / expected < 0.01, (counted["vit"], expected)
    # Attention is there: the score and value products are batched matrix products.
    assert counted["by_op"].get("aten.bmm", 0) > 0


def test_vit_flops_known_public_figure():
    # open_clip's docs/model_profile.csv: ViT-B-16 image tower 35.13 GFLOPs at 224 px, with the
    # class token projected only (stzsar also projects the 196 patch tokens).
    result = flops_bench.analyse(flops_bench.FlopConfig("ViT-B-16", frames=1, size=224, classes=1, words=1))
    per_frame = result["flops"]["vit_per_frame_class_token_projection_only"] / 1e9
    assert per_frame == pytest.approx(35.13, abs=0.01)


def test_temporal_transformer_is_counted_apart():
    T, D = 4, 32  # stzsar-tiny: embed_dim 32, one head (32 // 64 -> 1), feed-forward 4 * D
    model = flops_bench.build_meta_model(flops_bench.FlopConfig("stzsar-tiny", T, temporal_layers=2))
    counted = flops_bench.video_flops(model, T, 32)
    per_layer = 2 * (T * D * 3 * D + T * D * D + 2 * T * T * D + 2 * T * D * 4 * D)
    assert counted["temporal"] == 2 * per_layer
    assert counted["vit"] == closed_form_vit_flops("stzsar-tiny", 32, T)


# --------------------------------------------------------------------------------------------
# The STI flop formula, through FlopCounterMode on real calls
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_spatial_maxsim_flops_formula_on_real_call(backend):
    B, T, Np, C, Nw, D = 2, 3, 5, 4, 6, 8
    g = torch.Generator().manual_seed(0)
    patches = torch.randn(B, T, Np, D, generator=g, requires_grad=True)
    words = torch.randn(C, Nw, D, generator=g, requires_grad=True)
    mask = torch.ones(C, Nw, dtype=torch.bool)
    mask[0, 3:] = False  # masked words still cost their products in the dense formula
    with FlopCounterMode(display=False) as counter:
        scores = spatial_maxsim(patches, words, mask, backend=backend)
    counts = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    assert counts["stzsar.spatial_maxsim"] == 2 * B * T * Np * C * Nw * D
    # The op is counted once, by its formula; the products inside its implementation are not
    # counted a second time.
    assert counter.get_total_flops() == 2 * B * T * Np * C * Nw * D
    # The values are real ones (a real call, not a shape-only one).
    reference = torch.einsum("btkd,cld->bctkl", patches, words).masked_fill(
        ~mask.view(1, C, 1, 1, Nw), float("-inf")).flatten(-2).amax(-1)
    torch.testing.assert_close(scores, reference.detach())


def test_sti_module_counts_spatial_step_by_formula():
    B, T, Np, C, Nw, D = 2, 3, 4, 5, 6, 16
    g = torch.Generator().manual_seed(1)
    sti = STIModule(D, backend="torch", fused=False)
    frames, patches = torch.randn(B, T, D, generator=g), torch.randn(B, T, Np, D, generator=g)
    words, class_emb = torch.randn(C, Nw, D, generator=g), torch.randn(C, D, generator=g)
    mask = torch.ones(C, Nw, dtype=torch.bool)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        sti.similarity(frames, patches, words, mask, class_emb)
    counts = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    assert counts["stzsar.spatial_maxsim"] == 2 * B * T * Np * C * Nw * D


def test_analyse_breakdown_is_consistent():
    cfg = flops_bench.FlopConfig("stzsar-tiny", frames=3, clips=2, crops=3, classes=7, words=9, batch=2)
    r = flops_bench.analyse(cfg)
    f, c = r["flops"], r["config"]
    T, Np, D, C, Nw = 3, c["patches"], c["dim"], 7, 9
    assert Np == 16 and D == 32
    assert f["sti_spatial_maxsim_per_view"] == 2 * T * Np * C * Nw * D  # per video = batch share
    assert f["sti_patch_projection_per_view"] == 2 * T * Np * D * D
    assert f["sti_word_projection_per_call"] == 2 * C * Nw * D * D
    assert f["vit"] == closed_form_vit_flops("stzsar-tiny", 32, T)
    assert f["per_view"] == pytest.approx(f["vit"] + f["temporal_transformer"] + f["sti_call"] / 2)
    assert f["total"] == pytest.approx(6 * f["per_view"])
    # Parameters counted on the meta model equal those of a real model.
    real = build_model("stzsar-tiny")
    assert r["parameters"]["total"] == sum(p.numel() for p in real.parameters())
    assert r["parameters"]["trainable"] == sum(p.numel() for p in real.parameters() if p.requires_grad)
    assert r["paper_table3"] == "not reproduced: the paper's Table 3 figures are not part of this repository"


# --------------------------------------------------------------------------------------------
# build_model on the meta device
# --------------------------------------------------------------------------------------------


def test_build_model_on_meta_device():
    model = build_model("ViT-B-16", device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    assert model.logit_scale.device.type == "meta"
    video = torch.empty(1, 2, 3, 224, 224, device="meta")
    frames, patches = model.encode_video(video)
    assert frames.shape == (1, 2, 512) and patches.shape == (1, 2, 196, 512)
    with pytest.raises(ValueError, match="meta device"):
        build_model("stzsar-tiny", pretrained="openai", device="meta")


# --------------------------------------------------------------------------------------------
# Commands and helpers
# --------------------------------------------------------------------------------------------


def test_flops_command_tiny(tmp_path, capsys):
    rc = flops_bench.main(["--model", "stzsar-tiny", "--frames", "2", "--views", "2x3", "--classes", "3",
                           "--json", "--out", str(tmp_path)])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["config"]["views"] == 6
    files = list(tmp_path.glob("flops_*.json"))
    assert len(files) == 1
    saved = json.loads(files[0].read_text())
    for key in ("machine", "versions", "git", "created", "config", "results"):
        assert key in saved
    assert saved["results"]["flops"]["total"] == pytest.approx(6 * saved["results"]["flops"]["per_view"])

    rc = flops_bench.main(["--model", "stzsar-tiny", "--frames", "2", "--classes", "3", "--no-save"])
    table = capsys.readouterr().out
    assert rc == 0 and "paper Table 3" in table and "not reproduced" in table


def test_flops_command_rejects_bad_views():
    with pytest.raises(SystemExit):
        flops_bench.main(["--views", "4by3"])


def test_throughput_command_tiny(tmp_path, capsys):
    rc = throughput_bench.main([
        "--preset", "tiny", "--device", "cpu", "--batch", "2", "--frames", "2", "--classes", "3",
        "--iters", "1", "--warmup", "0", "--decode-clips", "1", "--decode-frames", "8",
        "--decode-size", "64x48", "--out", str(tmp_path),
    ])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "train: STI share of the step" in out and "eval: full forward" in out
    saved = json.loads(next(tmp_path.glob("throughput_*.json")).read_text())
    result = saved["results"]
    assert saved["machine"]["usable_cores"] >= 1 and saved["git"]["commit"]
    for variant in ("fused", "naive"):
        parts = result["model"]["variants"][variant]
        assert parts["train_step"]["median_s"] > 0 and parts["eval_forward"]["median_s"] > 0
        assert 0 < result[f"sti_share_{variant}"] < 1
    decode = result["decode"]
    if not decode["measured"]:
        pytest.skip(f"decode not measured here: {decode['reason']}")
    assert decode["clips_per_s"] > 0


def test_throughput_rejects_bad_config(capsys):
    assert throughput_bench.main(["--preset", "tiny", "--batch", "0", "--no-save"]) == 2
    assert "--batch must be >= 1" in capsys.readouterr().err


def test_format_table_and_write_result(tmp_path):
    table = format_table(["name", "value"], [["a", "1.5"], ["bb", "10"]])
    lines = table.splitlines()
    assert lines[0] == "| name | value |"
    assert lines[1] == "|------|------:|"
    assert lines[3] == "| bb   |    10 |"
    with pytest.raises(ValueError, match="cells"):
        format_table(["a", "b"], [["1"]])
    path = write_result("demo", "x/y", {"k": 1}, {"v": 2.5}, tmp_path)
    assert path.name == "demo_x-y.json"
    saved = json.loads(path.read_text())
    assert saved["config"] == {"k": 1} and saved["results"] == {"v": 2.5}


# --------------------------------------------------------------------------------------------
# The device check's stage `model`: train step, evaluation forward, end to end (dry-run sizes)
# --------------------------------------------------------------------------------------------


def _math_attention():
    """Attention as plain products that FlopCounterMode counts (it has no formula for the fused
    CPU attention kernel, and none for nn.MultiheadAttention's inference fast path)."""
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

    stack = contextlib.ExitStack()
    stack.enter_context(sdpa_kernel(SDPBackend.MATH))
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    stack.callback(torch.backends.mha.set_fastpath_enabled, fastpath)
    return stack


def test_train_step_flops_match_closed_form_vit_b16():
    meta = flops_bench.build_meta_model(flops_bench.FlopConfig("ViT-B-16", 2, 224))
    counted = flops_bench.train_step_flops(meta, batch=2, frames=2, prompts=3, words=5)
    assert counted["total"] - counted["head"] == closed_form_vit_train_flops("ViT-B-16", 224, 2, 2, frozen_blocks=6)
    assert counted["total"] == counted["forward"] + counted["backward"]
    # The head's forward holds at least its spatial products and the two projections.
    B, T, Np, C, Nw, D = 2, 2, 196, 3, 5, 512
    assert counted["head_forward"] >= 2 * B * T * Np * C * Nw * D + 2 * B * T * Np * D * D + 2 * C * Nw * D * D


def test_train_step_command_measures_the_step_it_counts(tmp_path, capsys, monkeypatch):
    from stzsar.losses import multi_positive_contrastive_loss

    figures = tmp_path / "figures.json"
    monkeypatch.setenv("GPU_CHECK_STEP_JSON", str(figures))
    B, T, P = 2, 3, 4
    rc = throughput_bench.main([
        "--train-step", "--preset", "tiny", "--device", "cpu", "--batch", str(B), "--frames", str(T),
        "--prompts", str(P), "--iters", "1", "--warmup", "1", "--max-batch", "4", "--compile-backend", "aot_eager",
        "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path),
    ])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "| eager" in out and "| compiled" in out
    saved = json.loads(next(tmp_path.glob("throughput_train-step_*.json")).read_text())
    assert saved["git"]["commit"] and saved["versions"]["torch"] and "partial" not in saved["results"]
    m = saved["results"]["compile"]
    assert "empty at the start" in saved["results"]["cache"]

    # The same step, counted and run here on its own: the same weights (seed 0), clips and prompts.
    torch.manual_seed(0)
    model = build_model("stzsar-tiny").train()
    model.text.eval()
    names, attributes = throughput_bench.synthetic_classes(P)
    bank = model.encode_classes(names, attributes)
    size = model.image_size
    video = torch.randn(B, T, 3, size, size, generator=torch.Generator().manual_seed(0))
    labels, text_labels = torch.arange(B) % 2, torch.arange(P) % 2
    with _math_attention(), FlopCounterMode(display=False) as forward:
        loss = multi_positive_contrastive_loss(model(video, bank).float(), labels, text_labels)
    with _math_attention(), FlopCounterMode(display=False) as backward:
        loss.backward()
    assert m["flops"]["forward"] == forward.get_total_flops()
    assert m["flops"]["backward"] == backward.get_total_flops()
    assert m["eager"]["first_loss"] == pytest.approx(float(loss.detach()), rel=1e-5)
    assert m["compiled"]["first_loss"] == pytest.approx(float(loss.detach()), rel=1e-4)
    assert m["first_loss_check"]["ok"]

    for mode in ("eager", "compiled"):
        part = m[mode]
        assert part["median_s"] > 0 and part["first_step_s"] > 0 and part["peak_mib"] > 0
        assert 0 < part["head"]["median_s"] < part["median_s"]
        assert 0 < part["mfu"] < 2  # of a matmul rate measured on the same noisy CPU
    assert m["matmul"]["gflops"] > 0 and m["compile_s"] >= 0
    search = m["batch_search"]
    assert [row["batch"] for row in search["rows"]] == [4] and search["largest"] == 4
    handed = json.loads(figures.read_text())
    assert handed["summary"].startswith("eager ") and handed["failures"] == []


def test_eval_forward_command_counts_what_it_times(tmp_path, capsys):
    from stzsar.eval.engine import batch_logits

    B, T, C = 2, 2, 5
    rc = throughput_bench.main([
        "--eval-forward", "--preset", "tiny", "--device", "cpu", "--batch", str(B), "--frames", str(T),
        "--classes", str(C), "--views", "1x1,2x3", "--iters", "1", "--warmup", "0", "--out", str(tmp_path),
    ])
    out = capsys.readouterr().out
    assert rc == 0, out
    m = json.loads(next(tmp_path.glob("throughput_eval-forward_*.json")).read_text())["results"]["eval_forward"]
    assert list(m["views"]) == ["1x1", "2x3"]
    torch.manual_seed(0)
    model = build_model("stzsar-tiny").eval()
    names, attributes = throughput_bench.synthetic_classes(C)
    bank = model.encode_classes(names, attributes)
    for key, views in (("1x1", 1), ("2x3", 6)):
        part = m["views"][key]
        assert part["views"] == views and part["videos_per_s"] > 0 and part["peak_mib"] > 0
        assert part["clips_per_s"] == pytest.approx(views * part["videos_per_s"])
        video = torch.randn(B, views, T, 3, 32, 32)
        with torch.no_grad(), _math_attention(), FlopCounterMode(display=False) as counter:
            logits = batch_logits(model, video, bank, device=torch.device("cpu"))
        assert logits.shape == (B, views, C)
        assert part["flops_per_call"] == counter.get_total_flops()


def test_make_split_writes_distinct_videos_and_repeats_them(tmp_path):
    import av

    from benchmarks import eval_throughput as eval_bench

    list_file = eval_bench.make_split(tmp_path, count=5, frames=9, width=64, height=48, num_classes=3,
                                      distinct=2, processes=2)
    entries = [line.split() for line in list_file.read_text().splitlines()]
    assert entries == [["v0000.mp4", "0"], ["v0001.mp4", "1"], ["v0000.mp4", "2"], ["v0001.mp4", "0"],
                       ["v0000.mp4", "1"]]
    assert sorted(p.name for p in tmp_path.glob("*.mp4")) == ["v0000.mp4", "v0001.mp4"]
    for name, expected in (("v0000.mp4", 9), ("v0001.mp4", 16)):  # lengths frames + 7 * (i % 5)
        with av.open(str(tmp_path / name)) as container:
            frames = list(container.decode(video=0))
        assert len(frames) == expected and (frames[0].width, frames[0].height) == (64, 48)


def test_eval_throughput_command_scores_every_video(tmp_path, capsys, monkeypatch):
    from benchmarks import eval_throughput as eval_bench

    figures = tmp_path / "figures.json"
    monkeypatch.setenv("GPU_CHECK_STEP_JSON", str(figures))
    rc = eval_bench.main([
        "--model", "stzsar-tiny", "--device", "cpu", "--num-frames", "2", "--classes", "5", "--videos", "6",
        "--distinct-videos", "2", "--frames-per-video", "12", "--width", "64", "--height", "48", "--batch-size", "3",
        "--workers", "1", "--passes", "1", "--repeats", "1", "--compile", "false", "--out", str(tmp_path),
    ])
    out = capsys.readouterr().out
    assert rc == 0, out
    r = json.loads(next(tmp_path.glob("eval_throughput_*.json")).read_text())["results"]
    assert r["videos written"] == 2 and r["compiled"] is False
    assert r["videos scored, skipped (last end-to-end pass)"] == [6, 0]
    for key in ("decode", "vit", "sti", "store", "model (vit + sti + store)", "end to end"):
        assert r[key] > 0, key
    handed = json.loads(figures.read_text())
    assert handed["summary"].startswith("decode ") and handed["results"]["end to end"] == r["end to end"]
