"""The CLIP wrappers against open_clip's own outputs, the prompt builder and the freezing policy."""

import logging

import open_clip
import pytest
import torch

from stzsar.model import _create_clip, build_model
from stzsar.text import TextEncoder, build_prompt, count_tokens
from stzsar.video import VideoEncoder


@pytest.fixture(scope="module")
def clip_and_tokenizer():
    torch.manual_seed(0)
    clip, tokenizer = _create_clip("stzsar-tiny", None, None)
    return clip.eval(), tokenizer


def test_class_embedding_equals_open_clip_encode_text(clip_and_tokenizer):
    clip, tokenizer = clip_and_tokenizer
    prompts = ["This is a video about salsa spin, dance, partner.", "This is a video about archery."]
    expected = clip.encode_text(tokenizer(prompts))
    bank = TextEncoder.from_clip(clip, tokenizer)(prompts)
    torch.testing.assert_close(bank.class_emb, expected, rtol=1e-5, atol=1e-6)


def test_sentence_word_mask_keeps_every_token_of_the_sentence(clip_and_tokenizer):
    clip, tokenizer = clip_and_tokenizer
    prompts = ["This is a video about archery.", "This is a video about salsa spin, dance, partner, turn."]
    bank = TextEncoder.from_clip(clip, tokenizer, word_tokens="sentence")(prompts)
    simple = open_clip.tokenizer.SimpleTokenizer()
    lengths = [len(simple.encode(p)) for p in prompts]
    assert bank.word_mask.sum(1).tolist() == lengths
    assert bank.words.shape[1] == max(lengths)  # trimmed to the longest prompt
    # positions are contiguous from the first word
    for row, n in zip(bank.word_mask, lengths):
        assert row[:n].all() and not row[n:].any()
    # the word features are the per-token outputs of open_clip's text tower, projected
    tokens = tokenizer(prompts)
    x = clip.token_embedding(tokens) + clip.positional_embedding
    x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask)) @ clip.text_projection
    torch.testing.assert_close(bank.words[0, : lengths[0]], x[0, 1 : 1 + lengths[0]], rtol=1e-5, atol=1e-6)


def test_default_word_mask_keeps_class_and_attribute_tokens_only(clip_and_tokenizer):
    clip, tokenizer = clip_and_tokenizer
    name, attributes = "salsa spin", ["dance", "partner", "turn-taking"]
    prompt = build_prompt(name, attributes).text
    bank = TextEncoder.from_clip(clip, tokenizer)([prompt, "This is a video about archery."])
    simple = open_clip.tokenizer.SimpleTokenizer()
    # Independently: the prompt's tokens, and which of them come from the name and the attributes.
    ids = simple.encode(prompt)
    keep = set()
    for piece in [name, *attributes]:
        keep |= {i for i in simple.encode(piece) if any(ch.isalnum() for ch in simple.decode([i]))}
    expected = [i in keep for i in ids]
    row = bank.word_mask[0, : len(ids)].tolist()
    assert row == expected and not bank.word_mask[0, len(ids):].any()
    kept = [simple.decoder[i].replace("</w>", "") for i, k in zip(ids, row) if k]
    assert kept == ["salsa", "spin", "dance", "partner", "turn", "taking"]  # no "a", "is", ",", "-", "."
    assert bank.word_mask[1].sum() == len(simple.encode("archery"))
    # z_c (end-of-text token) does not depend on the word set
    sentence = TextEncoder.from_clip(clip, tokenizer, word_tokens="sentence")([prompt])
    torch.testing.assert_close(bank.class_emb[:1], sentence.class_emb)
    with pytest.raises(ValueError, match="word_tokens"):
        TextEncoder.from_clip(clip, tokenizer, word_tokens="template")


def test_frame_and_patch_embeddings_equal_open_clip(clip_and_tokenizer):
    clip, _ = clip_and_tokenizer
    encoder = VideoEncoder(clip.visual)
    video = torch.randn(2, 3, 3, 32, 32)
    frames, patches = encoder(video)
    assert frames.shape == (2, 3, 32)
    assert patches.shape == (2, 3, (32 // 8) ** 2, 32) == (2, 3, encoder.num_patches(32, 32), 32)
    flat = video.flatten(0, 1)
    torch.testing.assert_close(frames.flatten(0, 1), clip.encode_image(flat), rtol=1e-5, atol=1e-5)
    clip.visual.output_tokens = True
    try:
        _, tokens = clip.visual(flat)  # open_clip: after ln_post, not projected
    finally:
        clip.visual.output_tokens = False
    torch.testing.assert_close(patches.flatten(0, 1), tokens @ clip.visual.proj, rtol=1e-5, atol=1e-5)


def test_patch_count_at_other_resolution():
    model = build_model("stzsar-tiny", image_size=48)
    frames, patches = model.encode_video(torch.randn(1, 2, 3, 48, 48))
    assert patches.shape[2] == (48 // 8) ** 2


def test_frozen_parts_receive_no_gradient():
    torch.manual_seed(0)
    model = build_model("stzsar-tiny", frozen_blocks=1)
    bank = model.encode_classes(["archery", "salsa spin"], {"archery": ["bow", "arrow"]})
    logits = model(torch.randn(2, 2, 3, 32, 32), bank)
    logits.sum().backward()
    visual = model.video.visual
    for name, param in model.text.named_parameters():
        assert not param.requires_grad and param.grad is None, name
    for param in list(visual.conv1.parameters()) + list(visual.transformer.resblocks[0].parameters()):
        assert not param.requires_grad and param.grad is None
    for param in list(visual.transformer.resblocks[1].parameters()) + [visual.proj]:
        assert param.requires_grad and param.grad is not None and param.grad.abs().sum() > 0
    for param in model.sti.parameters():
        assert param.grad is not None


def test_default_freezes_first_half():
    model = build_model("stzsar-small")
    blocks = model.video.visual.transformer.resblocks
    assert [all(not p.requires_grad for p in b.parameters()) for b in blocks] == [True, True, False, False]


def test_prompt_drops_trailing_attributes_to_fit(caplog):
    attributes = [f"attribute{i} with several words" for i in range(30)]
    with caplog.at_level(logging.WARNING):
        prompt = build_prompt("ApplyEyeMakeup", attributes)
    assert prompt.text.startswith("This is a video about apply eye makeup, attribute0")
    assert prompt.num_tokens == count_tokens(prompt.text) <= 77
    one_more = build_prompt("ApplyEyeMakeup", prompt.kept + prompt.dropped[:1], warn=False)
    assert one_more.dropped  # the first dropped attribute really did not fit
    assert prompt.kept + prompt.dropped == attributes and prompt.dropped
    assert "dropped" in caplog.text
    with pytest.raises(ValueError, match="without any attribute"):
        build_prompt("word " * 80, ["a"])
