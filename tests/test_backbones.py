"""Backbones beyond OpenAI's CLIP (docs/backbones.md): open_clip's own ViTs, its timm image towers
(EVA02, SigLIP-style attention pooling, PE, timm ViTs with average pooling, ConvNeXt, Swin) and
text towers with other tokenizers and pooling, all with random weights and offline.

The references are independent of the code under test: ``v_t`` against open_clip's own
``encode_image``; the patch features against the tower's final tokens or feature map as timm's own
``forward_intermediates`` / ``forward_features`` returns them, taken through the head's equations in
float64; the text embedding against open_clip's ``encode_text``; the word masks against the
tokenizer's own ids of the class name and attributes.

``EVA02-B-16`` and ``convnext_base`` are built by name (at 64 px: 4 x 4 patches, 2 x 2 positions,
to keep the CPU time small); the other families use small configs of the same timm model families,
registered here.
"""

from __future__ import annotations

import copy
import json
import logging
import re

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from stzsar.config import load_config
from stzsar.data.synthetic import write_video
from stzsar.eval.engine import EvalSettings, evaluate
from stzsar.eval.explain import explain_video, prompt_words, render_explanation
from stzsar.eval.loading import clip_spec, load_video
from stzsar.eval.predict import predict_videos
from stzsar.model import TokenizerUnavailable, build_model
from stzsar.ops import spatial_maxsim
from stzsar.sti import STIModule
from stzsar.train.trainer import Trainer

CLASSES = ["salsa spin", "archery", "bowling"]
ATTRIBUTES = {"salsa spin": ["dance", "partner"], "archery": ["bow", "arrow"]}

#: Words of the local Hugging Face tokenizer of the SigLIP-style config (word level, lower case,
#: end-of-text appended, no start token: as SigLIP's).
HF_WORDS = ["<pad>", "</s>", "<unk>", "this", "is", "a", "video", "about", "salsa", "spin", "archery",
            "bowling", "dance", "partner", "bow", "arrow", ",", "."]


def _test_configs(tokenizer_dir: str) -> dict:
    small_text = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
    return {
        # open_clip's own ViT with average pooling and ln_post after the pooling (CLIPA's layout)
        "stzsar-test-vit-avg": {
            "embed_dim": 32,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8,
                           "no_ln_pre": True, "pool_type": "avg", "final_ln_after_pool": True},
            "text_cfg": small_text,
        },
        # timm ViT with attention pooling and no projection, text tower pooled at the last
        # position without a causal mask, with a Hugging Face tokenizer (SigLIP's layout)
        "stzsar-test-siglip": {
            "embed_dim": 96, "custom_text": True, "init_logit_bias": -10,
            "vision_cfg": {"image_size": 160, "timm_model_name": "test_vit3", "timm_model_pretrained": False,
                           "timm_pool": "map", "timm_proj": "none"},
            "text_cfg": {"context_length": 16, "vocab_size": len(HF_WORDS), "hf_tokenizer_name": tokenizer_dir,
                         "width": 32, "heads": 2, "layers": 1, "no_causal_mask": True, "proj_bias": True,
                         "pool_type": "last", "norm_kwargs": {"eps": 1e-6}},
        },
        # timm EVA with attention pooling and the classifier as projection (PE's layout)
        "stzsar-test-pe": {
            "embed_dim": 48, "custom_text": True,
            "vision_cfg": {"image_size": 384, "timm_model_name": "vit_pe_core_tiny_patch16_384",
                           "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": None},
            "text_cfg": {**small_text, "context_length": 32},
        },
        # timm ViT with average pooling and fc_norm, open_clip's linear projection
        "stzsar-test-vit-gap": {
            "embed_dim": 32,
            "vision_cfg": {"image_size": 160, "timm_model_name": "test_vit2", "timm_model_pretrained": False,
                           "timm_pool": "", "timm_proj": "linear"},
            "text_cfg": small_text,
        },
        # a small timm ConvNeXt (the same code as convnext_base, fewer and narrower blocks)
        "stzsar-test-convnext": {
            "embed_dim": 32,
            "vision_cfg": {"image_size": 160, "timm_model_name": "test_convnext", "timm_model_pretrained": False,
                           "timm_pool": "", "timm_proj": "linear"},
            "text_cfg": small_text,
        },
        # timm Swin: a feature map in NHWC layout
        "stzsar-test-swin": {
            "embed_dim": 32,
            "vision_cfg": {"image_size": 224, "timm_model_name": "swin_tiny_patch4_window7_224",
                           "timm_model_pretrained": False, "timm_pool": "", "timm_proj": "linear"},
            "text_cfg": small_text,
        },
    }


def _write_hf_tokenizer(folder) -> str:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(HF_WORDS)}, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbones")
    configs = root / "configs"
    configs.mkdir()
    for name, config in _test_configs(_write_hf_tokenizer(root / "hf_tokenizer")).items():
        (configs / f"{name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(configs)
    return root


#: family -> (model name, image size). The first two are the issue's names, built as a user would.
FAMILIES = {
    "eva02": ("EVA02-B-16", 64),
    "convnext": ("convnext_base", 64),
    "openai-vit": ("stzsar-tiny", None),
    "vit-avg": ("stzsar-test-vit-avg", None),
    "siglip": ("stzsar-test-siglip", 64),
    "pe": ("stzsar-test-pe", 64),
    "timm-vit-gap": ("stzsar-test-vit-gap", 64),
    "convnext-small": ("stzsar-test-convnext", 64),
    "swin": ("stzsar-test-swin", None),
}
TRAINED = ["eva02", "convnext", "openai-vit", "vit-avg", "siglip", "pe", "timm-vit-gap"]


@pytest.fixture(scope="module")
def models(registered):
    """One model per family, built on first use (the full-size ones take a while on a CPU)."""
    cache = {}

    def get(family):
        if family not in cache:
            name, size = FAMILIES[family]
            torch.manual_seed(0)
            cache[family] = build_model(name, image_size=size, backend="torch").eval()
        return cache[family]

    return get


def _open_clip_shell(model):
    """open_clip's own model class around the model's image tower (the rest on the meta device)."""
    logging.getLogger().disabled = True  # open_clip warns that the shell has no weights
    try:
        shell = open_clip.create_model(model.config.name, device="meta",
                                       force_image_size=model.config.image_size)
    finally:
        logging.getLogger().disabled = False
    shell.visual = model.video.visual
    return shell


def _frames(model, count=2, seed=1):
    size = model.image_size
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------
# v_t and the patch features
# --------------------------------------------------------------------------------------------


def _linear(x, module):
    if isinstance(module, torch.nn.Identity):
        return x
    out = x @ module.weight.double().T
    return out + module.bias.double() if module.bias is not None else out


def _layer_norm(x, module):
    if isinstance(module, torch.nn.Identity):
        return x
    weight = module.weight.double() if module.weight is not None else None
    bias = module.bias.double() if module.bias is not None else None
    return F.layer_norm(x, module.normalized_shape, weight, bias, module.eps)


def _adapter_head(x, visual):
    """open_clip's TimmModel head after the trunk: dropout (off in eval) and the projection."""
    for layer in visual.head:
        if isinstance(layer, torch.nn.Linear):
            x = _linear(x, layer)
    return x


def _attention_pool_alone(tokens, pool):
    """The attention pool of one token (all attention weight on it): value and output projections,
    then the pool's residual MLP, written from the equations (``kv`` holds keys, then values)."""
    width = tokens.shape[-1]
    value = tokens @ pool.kv.weight.double()[width:].T + pool.kv.bias.double()[width:]
    out = _linear(value, pool.proj)
    mlp = copy.deepcopy(pool.mlp).double()
    return out + mlp(_layer_norm(out, pool.norm))


def reference_patches(model, images):
    """``[N, Np, D]`` float64: the tower's own final tokens / feature map (its own code, in its
    float32) through the head's equations in float64."""
    visual = model.video.visual
    if not hasattr(visual, "trunk"):  # open_clip's ViT: its own patch tokens (output_tokens)
        visual.output_tokens = True
        try:
            _, tokens = visual(images)
        finally:
            visual.output_tokens = False
        tokens = tokens.double()
        if visual.final_ln_after_pool:  # the tokens come out before ln_post there
            tokens = _layer_norm(tokens, visual.ln_post)
        return tokens @ visual.proj.double()
    trunk = visual.trunk
    if hasattr(trunk, "blocks"):  # timm ViT: final patch tokens after the final norm
        tokens = trunk.forward_intermediates(images, indices=1, norm=True, output_fmt="NLC",
                                             intermediates_only=True)[-1].double()
        if trunk.attn_pool is not None:
            tokens = _attention_pool_alone(tokens, trunk.attn_pool)
        return _adapter_head(_linear(_layer_norm(tokens, trunk.fc_norm), trunk.head), visual)
    features = trunk.forward_features(images).double()
    if getattr(trunk, "output_fmt", "NCHW") == "NHWC":  # Swin: norm already applied, head = pool + fc
        positions = features.flatten(1, 2)
        return _adapter_head(_linear(positions, trunk.head.fc), visual)
    positions = features.flatten(2).transpose(1, 2)  # ConvNeXt: head = pool, norm, fc
    return _adapter_head(_linear(_layer_norm(positions, trunk.head.norm), trunk.head.fc), visual)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_frame_and_patch_features(models, family):
    """``v_t`` is open_clip's own ``encode_image``; the patch features are the head on each token."""
    model = models(family)
    images = _frames(model)
    with torch.no_grad():
        frames, patches = model.encode_video(images.unsqueeze(0))
        expected_frames = _open_clip_shell(model).encode_image(images)
        expected_patches = reference_patches(model, images)
    torch.testing.assert_close(frames[0], expected_frames, rtol=1e-5, atol=1e-5)
    size = model.image_size
    assert patches.shape == (1, 2, model.video.num_patches(size, size), model.dim)
    torch.testing.assert_close(patches[0].double(), expected_patches, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["siglip", "pe"])
def test_attention_pool_of_equal_tokens_is_their_patch_feature(models, family):
    """The choice for attention pooling (docs/method.md section 7), seen through the pool's own
    full forward: when every token is the same, the pooled frame feature and the patch feature of
    that token agree, whatever the attention weights."""
    model = models(family)
    trunk = model.video.visual.trunk
    token = torch.randn(3, 1, trunk.num_features, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        pooled = model.video.visual.head(trunk.forward_head(token.expand(3, 7, -1)))
        alone = model.video.token_head(token)[:, 0]
    torch.testing.assert_close(alone, pooled, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Freezing, checkpointing and a training step
# --------------------------------------------------------------------------------------------


def expected_frozen(model, name: str) -> bool:
    """Whether image-tower parameter ``name`` should be frozen, from the names alone: the stem
    and the lower ``frozen_blocks`` blocks (counted across stages; a stage's downsampling goes with
    its first block)."""
    k = model.video.frozen_blocks
    visual = model.video.visual
    if not hasattr(visual, "trunk"):
        match = re.match(r"transformer\.resblocks\.(\d+)\.", name)
        return bool(match and int(match.group(1)) < k) or name.split(".")[0] in (
            "conv1", "class_embedding", "positional_embedding", "ln_pre")
    name = name.removeprefix("trunk.")
    if re.match(r"(patch_embed|cls_token|reg_token|pos_embed|norm_pre|stem)\b", name) and \
            not (name.startswith("norm_pre") and hasattr(visual.trunk, "stages")):
        return True
    match = re.match(r"blocks\.(\d+)\.", name)
    if match:
        return int(match.group(1)) < k
    match = re.match(r"(?:stages|layers)\.(\d+)\.(?:blocks\.(\d+)|downsample)\.", name)
    if match:
        stages = getattr(visual.trunk, "stages", None) or visual.trunk.layers
        first = sum(len(stages[s].blocks) for s in range(int(match.group(1))))
        return first + int(match.group(2) or 0) < k
    return False


@pytest.mark.parametrize("family", TRAINED)
def test_training_step_changes_only_the_unfrozen_parameters(models, family, tmp_path):
    model = models(family)
    video = model.video
    assert 0 < video.frozen_blocks == video.num_blocks // 2 < video.num_blocks
    for name, param in video.visual.named_parameters():
        assert param.requires_grad != expected_frozen(model, name), name
    size = model.image_size
    clips = [{"video": torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(i)),
              "label": i, "index": i} for i in range(2)]
    config = load_config(None, [
        "train.batch_size=2", "train.epochs=1", "train.max_steps=1", "train.progress=false",
        "train.tensorboard=false", f"train.output_dir={tmp_path}", "data.num_workers=0",
        "optim.lr=1e-3", "optim.warmup_epochs=0", "train.device=cpu",
    ])
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainer = Trainer(config, clips, class_names=CLASSES[:2], attributes=ATTRIBUTES, model=model,
                      save_checkpoints=False)
    result = trainer.fit()
    assert result.step == 1 and np.isfinite(result.history[-1]["loss"])
    model.eval()
    changed = {k for k, v in model.named_parameters() if not torch.equal(v.detach(), before[k])}
    trainable = {k for k, v in model.named_parameters() if v.requires_grad}
    assert changed <= trainable
    # everything that learns moved: the upper blocks, the head, the STI projections
    assert {k for k in trainable if k.startswith("video.")} <= changed
    assert any(k.startswith("sti.") for k in changed)
    assert not any(k.startswith("text.") for k in trainable)


@pytest.mark.parametrize("family", ["pe", "timm-vit-gap", "convnext-small"])
def test_activation_checkpointing_gives_the_same_gradients(models, family):
    model = models(family)
    bank = model.encode_classes(CLASSES, ATTRIBUTES)
    video = _frames(model).unsqueeze(0)

    def gradients():
        model.zero_grad(set_to_none=True)
        model(video, bank).logsumexp(-1).sum().backward()
        return {k: p.grad.clone() for k, p in model.video.named_parameters() if p.grad is not None}

    plain = gradients()
    model.video.set_grad_checkpointing(True)
    try:
        checkpointed = gradients()
    finally:
        model.video.set_grad_checkpointing(False)
        model.zero_grad(set_to_none=True)
    assert plain and plain.keys() == checkpointed.keys()
    for key in plain:
        torch.testing.assert_close(checkpointed[key], plain[key], rtol=1e-4, atol=1e-6, msg=key)


# --------------------------------------------------------------------------------------------
# Evaluation, predict and explain
# --------------------------------------------------------------------------------------------


class _Clips(Dataset):
    def __init__(self, size):
        self.size = size

    def __len__(self):
        return 3

    def __getitem__(self, index):
        generator = torch.Generator().manual_seed(10 + index)
        return {"video": torch.randn(2, 3, self.size, self.size, generator=generator), "label": index,
                "index": index}


@pytest.mark.parametrize("family", TRAINED)
def test_evaluation_predict_and_explain_run(models, family, tmp_path):
    model = models(family)
    bank = model.encode_classes(CLASSES, ATTRIBUTES)
    data = _Clips(model.image_size)
    result = evaluate(model, data, bank, CLASSES, topk=(1, 2),
                      settings=EvalSettings(num_workers=0, progress=False, batch_size=2, device="cpu"))
    with torch.no_grad():
        direct = torch.stack([model(data[i]["video"].unsqueeze(0), bank)[0] for i in range(3)])
    assert result.num_scored == 3
    assert result.predictions[:, 0].tolist() == direct.argmax(-1).tolist()

    path = tmp_path / "clip.mp4"
    write_video(path, 8, 80, 64)
    spec = clip_spec(model, 2)
    (prediction,) = predict_videos(model, [path], bank, CLASSES, spec, top_k=3)
    clip, _ = load_video(path, spec)
    with torch.no_grad():
        probs = model(clip[:1], bank)[0].double().softmax(-1)
    assert prediction.error is None
    assert [name for name, _ in prediction.top] == [CLASSES[i] for i in probs.argsort(descending=True)]
    np.testing.assert_allclose([p for _, p in prediction.top], probs.sort(descending=True).values.numpy(),
                               rtol=1e-5)

    explanation = explain_video(model, clip[0], bank, CLASSES)
    grid = model.image_size // model.video.patch_size
    assert explanation.patch_scores.shape == (2, grid, grid)
    assert explanation.target == int(probs.argmax())
    if family in ("eva02", "convnext"):
        assert render_explanation(explanation, tmp_path / "explain.png").stat().st_size > 0


# --------------------------------------------------------------------------------------------
# Text side
# --------------------------------------------------------------------------------------------


def test_hugging_face_tokenizer_last_token_pooling(models):
    """The SigLIP layout: z_c is the last context position of a non-causal tower (open_clip's own
    encode_text); the words are the prompt's own tokens, positions from 0 (no start token)."""
    model = models("siglip")
    tokenizer = model.text.tokenizer
    prompts = ["This is a video about salsa spin, dance, partner.", "This is a video about archery."]
    bank = model.text(prompts)
    # open_clip's own text tower class, holding the modules the model took over
    text = model.text
    shell = open_clip.create_model("stzsar-test-siglip").eval()
    tower = shell.text
    tower.token_embedding, tower.positional_embedding = text.token_embedding, text.positional_embedding
    tower.transformer, tower.ln_final, tower.text_projection = text.transformer, text.ln_final, text.text_projection
    with torch.no_grad():
        expected = shell.encode_text(tokenizer(prompts))
    torch.testing.assert_close(bank.class_emb, expected, rtol=1e-5, atol=1e-6)

    hf = tokenizer.tokenizer
    ids = [hf.encode(p, add_special_tokens=False) for p in prompts]
    keep = {hf.convert_tokens_to_ids(w) for w in ("salsa", "spin", "dance", "partner", "archery")}
    for row, prompt_ids in enumerate(ids):
        assert bank.word_mask[row, : len(prompt_ids)].tolist() == [i in keep for i in prompt_ids]
        assert not bank.word_mask[row, len(prompt_ids):].any()
    assert bank.words.shape[1] == max(len(i) for i in ids)  # end-of-text and padding trimmed
    sentence = type(text).from_clip(shell, tokenizer, word_tokens="sentence")(prompts)
    assert sentence.word_mask.sum(1).tolist() == [len(i) for i in ids]
    torch.testing.assert_close(sentence.class_emb, bank.class_emb)
    # explain names the same positions' words (no start token: position j is token j)
    valid = bank.word_mask[0].nonzero().flatten().tolist()
    words = prompt_words(tokenizer, prompts[0], "salsa spin", model.config.template, valid)
    assert [(words[j].word, words[j].role) for j in valid] == [
        ("salsa", "class"), ("spin", "class"), ("dance", "attribute"), ("partner", "attribute")]


def test_a_tokenizer_that_cannot_be_loaded_fails_at_once_saying_how_to_provide_it(monkeypatch, tmp_path):
    from huggingface_hub import constants

    # No cached copy and offline: the answer must not depend on this machine's cache or network.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(TokenizerUnavailable) as error:
        build_model("ViT-B-16-SigLIP")
    message = str(error.value)
    for part in ("'timm/ViT-B-16-SigLIP'", "HF_HUB_OFFLINE=1", "AutoTokenizer.from_pretrained", "cache"):
        assert part in message
    # Shapes only (FLOP counting) need no tokenizer; using it says the same.
    meta = build_model("ViT-B-16-SigLIP", device="meta")
    assert meta.dim == 768 and meta.video.num_patches(224, 224) == 196
    with pytest.raises(TokenizerUnavailable, match="HF_HUB_OFFLINE=1"):
        meta.encode_classes(["archery"])


# --------------------------------------------------------------------------------------------
# The fused STI ops at each family's D and Np
# --------------------------------------------------------------------------------------------

#: Full-size names whose D and Np at their own input size are read from the built (meta) model.
SHAPE_MODELS = ["EVA02-B-16", "convnext_base", "ViT-B-16-SigLIP", "PE-Core-B-16"]


@pytest.fixture(scope="module")
def family_shapes():
    from huggingface_hub import constants

    offline, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True  # no tokenizer download
    try:
        shapes = {}
        for name in SHAPE_MODELS:
            meta = build_model(name, device="meta")
            shapes[name] = (meta.dim, meta.video.num_patches(meta.image_size, meta.image_size))
    finally:
        constants.HF_HUB_OFFLINE = offline
    return shapes


@pytest.mark.parametrize("name", SHAPE_MODELS)
def test_fused_sti_at_the_familys_dim_and_patch_count(family_shapes, name):
    dim, num_patches = family_shapes[name]
    generator = torch.Generator().manual_seed(3)
    B, T, C, Nw = 2, 2, 3, 5
    patches = torch.randn(B, T, num_patches, dim, generator=generator)
    words = torch.randn(C, Nw, dim, generator=generator)
    mask = torch.ones(C, Nw, dtype=torch.bool)
    mask[1, 3:] = False
    # The spatial double max against float64 loops of its definition, value and gradients.
    p64, w64 = patches.double().requires_grad_(), words.double().requires_grad_()
    sim = torch.einsum("btkd,cld->bctkl", p64, w64).masked_fill(~mask[None, :, None, None, :], float("-inf"))
    expected = sim.amax(dim=(-1, -2))
    expected.sum().backward()
    p, w = patches.clone().requires_grad_(), words.clone().requires_grad_()
    got = spatial_maxsim(p, w, mask, backend="cpu")
    got.sum().backward()
    torch.testing.assert_close(got.double(), expected.detach(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(p.grad.double(), p64.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w.grad.double(), w64.grad, rtol=1e-5, atol=1e-5)
    # The whole fused module (folded patch projection, temporal ops) against its plain PyTorch form.
    torch.manual_seed(4)
    fused = STIModule(dim, backend="cpu")
    plain = STIModule(dim, fused=False)
    plain.load_state_dict(fused.state_dict())
    frames = torch.randn(B, T, dim, generator=generator)
    class_emb = torch.randn(C, dim, generator=generator)
    results = []
    for module in (fused, plain):
        x = patches.clone().requires_grad_()
        cosine = module.similarity(frames, x, words, mask, class_emb)
        cosine.sum().backward()
        results.append((cosine.detach(), x.grad, [q.grad.clone() for q in module.parameters()]))
        module.zero_grad()
    (c1, g1, q1), (c2, g2, q2) = results
    torch.testing.assert_close(c1, c2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)
    for a, b in zip(q1, q2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Towers that cannot work say why
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, why", [
    ("coca_ViT-B-32", "learned queries, not patches"),
    ("MobileCLIP-S1", "final_conv between the stages and the head"),
    ("RN50", "ResNet towers"),
])
def test_unsupported_towers_say_why(name, why):
    with pytest.raises(TypeError, match=why):
        build_model(name, device="meta")


def test_flops_of_an_attention_pooled_tower(monkeypatch):
    """benchmarks/flops.py counts SigLIP's tower (meta device, no tokenizer needed): the patch
    features add, per patch, the attention pool over one token, in closed form (multiply-adds: kv
    2C^2, the latent's query C^2, output projection C^2, MLP 8C^2, attention 2C)."""
    from huggingface_hub import constants

    from benchmarks import flops as flops_bench

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    result = flops_bench.analyse(flops_bench.FlopConfig("ViT-B-16-SigLIP", frames=1, classes=1, words=1))
    f, width, patches = result["flops"], 768, result["config"]["patches"]
    assert patches == 196
    per_patch_head = 2 * (12 * width * width + 2 * width)
    assert f["vit_per_frame"] - f["vit_per_frame_class_token_projection_only"] == patches * per_patch_head


def test_a_hugging_face_text_model_is_refused_by_name():
    """roberta/xlm-roberta/mt5/nllb towers (open_clip's HFTextEncoder) have no token embedding of
    open_clip's own text transformer; the text encoder says what it needs."""
    from types import SimpleNamespace

    from stzsar.text import TextEncoder

    with pytest.raises(TypeError, match="Hugging Face text model"):
        TextEncoder.from_clip(SimpleNamespace(text=torch.nn.Linear(2, 2)), tokenizer=None)
