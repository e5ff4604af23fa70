"""build_model: weights from a local file, a clear error when weights cannot be had, logits."""

import os

import pytest
import torch

from stzsar.model import PretrainedWeightsUnavailable, _create_clip, build_model
from tests.sti_reference import sti_loops


def test_local_checkpoint_round_trip(tmp_path):
    torch.manual_seed(3)
    clip, _ = _create_clip("stzsar-tiny", None, None)
    path = tmp_path / "tiny.pt"
    torch.save(clip.state_dict(), path)
    model = build_model("stzsar-tiny", pretrained=str(path))
    torch.testing.assert_close(model.video.visual.proj, clip.visual.proj)
    torch.testing.assert_close(model.text.token_embedding.weight, clip.token_embedding.weight)
    assert model.logit_scale.item() == pytest.approx(min(100.0, clip.logit_scale.exp().item()))


def test_wrong_checkpoint_file_is_a_clear_error(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"not": torch.zeros(1)}, path)
    with pytest.raises(PretrainedWeightsUnavailable, match="not a CLIP checkpoint"):
        build_model("stzsar-tiny", pretrained=str(path))


def test_unavailable_weights_say_how_to_pass_a_local_file(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network here; fail fast either way
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        build_model("stzsar-tiny", pretrained="openai")
    message = str(info.value)
    assert "local path" in message and "pretrained=" in message
    assert "\n" in message and len(message.splitlines()) < 6  # one error, not a stack of them


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("ViT-Nope-1")


def test_logits_equal_reference_equations():
    torch.manual_seed(4)
    model = build_model("stzsar-tiny").double()
    bank = model.encode_classes(["archery", "ApplyEyeMakeup", "salsa spin"], {"salsa spin": ["dance"]})
    video = torch.randn(2, 3, 3, 32, 32, dtype=torch.float64)
    logits = model(video, bank)
    frames, patches = model.encode_video(video)
    sti = model.sti
    *_, cos = sti_loops(frames.detach(), patches.detach(), bank.words, bank.word_mask, bank.class_emb,
                        sti.patch_proj.weight.detach(), sti.patch_proj.bias.detach(),
                        sti.word_proj.weight.detach(), sti.word_proj.bias.detach(), sti.temperature)
    torch.testing.assert_close(logits.detach(), model.logit_scale * cos, rtol=1e-8, atol=1e-8)


def test_no_random_init_warning_where_weights_come_later(caplog):
    """open_clip warns 'No pretrained weights loaded' for every model it builds without weights;
    build_model keeps that out of the log (checkpoint loads print it otherwise)."""
    import logging

    import open_clip

    from stzsar.model import build_model, register_model_configs

    register_model_configs()
    with caplog.at_level(logging.WARNING):
        open_clip.create_model("stzsar-tiny", pretrained=None)
    assert any("No pretrained weights" in r.getMessage() for r in caplog.records)  # the check can fail
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        build_model("stzsar-tiny", pretrained=None)
    assert not [r.getMessage() for r in caplog.records if "pretrained" in r.getMessage()]


@pytest.mark.parametrize("keep_template, expected", [(True, "sentence"), (False, "class_and_attributes")])
def test_checkpoints_of_the_template_words_release_still_load(tmp_path, keep_template, expected):
    """Checkpoints written before `word_tokens` store `template_words`; they load with its meaning."""
    import torch

    from stzsar.config import config_from_dict, config_to_dict, load_config
    from stzsar.model import build_model
    from stzsar.train.checkpoint import load_model_from_checkpoint, save_checkpoint

    model = build_model("stzsar-tiny", pretrained=None)
    config = config_to_dict(load_config(None, ["model.name=stzsar-tiny", "model.pretrained=null"]))
    path = save_checkpoint(tmp_path / "old.pt", model, config=config, full=True)
    payload = torch.load(path, weights_only=True)
    for model_section in (payload["model_config"], payload["config"]["model"]):
        del model_section["word_tokens"]
        model_section["template_words"] = keep_template
    torch.save(payload, path)

    loaded, meta = load_model_from_checkpoint(path)
    assert loaded.config.word_tokens == expected
    assert config_from_dict(payload["config"]).model.word_tokens == expected
