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
    assert "pretrained='/path/to/" in message and "HF_HUB_OFFLINE=1" in message
    assert "\n" in message and len(message.splitlines()) < 6  # one error, not a stack of them


# The weight download runs in a child process: huggingface_hub reads HF_ENDPOINT, HF_HUB_CACHE and
# HF_HUB_OFFLINE when it is imported, and open_clip configures the root logger as a side effect.
# Port 9 on the loopback has no listener, so the "hub" refuses every connection at once, which is
# what a machine without a route sees after its DNS lookup fails.
_WEIGHTS_CHILD = r"""
import json, os, sys, time
import torch
import open_clip
from open_clip import pretrained as oc_pretrained
from stzsar.model import PretrainedWeightsUnavailable, _create_clip, build_model

name, tag, cache = sys.argv[1:4]
expected = None
if tag == "cachedtest":
    # A tag of the tiny model whose weights are in the hub cache (as a past download leaves them).
    oc_pretrained._PRETRAINED.setdefault(name, {})[tag] = oc_pretrained._pcfg(hf_hub="stzsar-test/tiny/")
    clip, _ = _create_clip(name, None, None)
    repo = os.path.join(cache, "models--stzsar-test--tiny")
    os.makedirs(os.path.join(repo, "snapshots", "a" * 40))
    os.makedirs(os.path.join(repo, "refs"))
    open(os.path.join(repo, "refs", "main"), "w").write("a" * 40)
    torch.save(clip.state_dict(), os.path.join(repo, "snapshots", "a" * 40, "open_clip_pytorch_model.bin"))
    expected = clip.visual.proj.detach()
start = time.perf_counter()
try:
    model = build_model(name, pretrained=tag)
    outcome = {"error": None, "same_weights": bool(torch.equal(model.video.visual.proj, expected))}
except PretrainedWeightsUnavailable as error:
    outcome = {"error": str(error)}
outcome["seconds"] = time.perf_counter() - start
print("RESULT " + json.dumps(outcome))
"""


def _build_in_child(tmp_path, name, tag, **env):
    import json
    import subprocess
    import sys

    cache = tmp_path / "hub"
    cache.mkdir()
    child_env = {k: v for k, v in os.environ.items()
                 if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
                 and not k.startswith(("HF_", "TRANSFORMERS_"))}
    child_env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_CACHE=str(cache), HOME=str(tmp_path), **env)
    result = subprocess.run([sys.executable, "-c", _WEIGHTS_CHILD, name, tag, str(cache)], env=child_env,
                            capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"child failed (rc {result.returncode}):\n{result.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):]), result.stderr


def test_unreachable_hub_fails_within_seconds_naming_offline_mode(tmp_path):
    """Without a route to the hub, the hub client retries for about a minute; build_model fails
    at once with the two offline routes (a local file, the cache with HF_HUB_OFFLINE=1)."""
    outcome, stderr = _build_in_child(tmp_path, "ViT-B-16", "openai")
    assert outcome["error"] is not None
    assert outcome["seconds"] < 15, outcome
    message = outcome["error"]
    assert "127.0.0.1:9" in message  # says which server did not answer
    assert "HF_HUB_OFFLINE=1" in message and "pretrained='/path/to/" in message
    assert "vit_base_patch16_clip_224.openai" in message  # what to download elsewhere
    assert "Retrying" not in stderr


def test_offline_mode_without_cached_weights_says_so(tmp_path):
    outcome, stderr = _build_in_child(tmp_path, "ViT-B-16", "openai", HF_HUB_OFFLINE="1")
    assert outcome["seconds"] < 15, outcome
    assert "offline mode is on (HF_HUB_OFFLINE=1)" in outcome["error"]
    assert "pretrained='/path/to/" in outcome["error"]


def test_cached_weights_load_without_the_hub(tmp_path):
    """Weights in the hub cache are read at once when the hub cannot be reached, with no
    retries and no warning printed."""
    outcome, stderr = _build_in_child(tmp_path, "stzsar-tiny", "cachedtest")
    assert outcome["error"] is None and outcome["same_weights"]
    assert outcome["seconds"] < 15, outcome
    assert "Retrying" not in stderr and "WARNING" not in stderr, stderr[-2000:]


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
