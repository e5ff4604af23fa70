"""The on-disk class-bank cache: hits, what changes the key, damaged files, chunked encoding."""

import logging

import pytest
import torch

from stzsar.eval.bank_cache import BankCache, bank_key, class_bank, concat_banks, encode_bank
from stzsar.model import build_model

CLASSES = ["apply eye makeup", "salsa spin", "archery", "playing guitar", "yo yo"]
ATTRIBUTES = {"SalsaSpin": ["dance", "partner", "turn"], "archery": ["bow", "arrow"], "surfing": ["wave"]}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("stzsar-tiny", backend="torch")


def assert_same_bank(a, b):
    """Equal class embeddings and equal features on every valid word (padding may differ).

    Tolerances are float32 rounding: encoding 2 or 5 prompts at once changes the GEMM blocking."""
    torch.testing.assert_close(a.class_emb, b.class_emb, rtol=1e-4, atol=1e-5)
    assert a.prompts == b.prompts
    for c in range(len(a)):
        wa, wb = a.words[c][a.word_mask[c]], b.words[c][b.word_mask[c]]
        torch.testing.assert_close(wa, wb, rtol=1e-4, atol=1e-5)


def test_second_request_is_served_from_disk(model, tmp_path):
    cache = BankCache(tmp_path)
    first = cache.get(model, CLASSES, ATTRIBUTES)
    assert (cache.hits, cache.misses) == (0, 1)
    assert len(list(tmp_path.glob("*.pt"))) == 1
    second = BankCache(tmp_path).get(model, CLASSES, ATTRIBUTES)  # a new process would do this
    assert_same_bank(first, second)
    # What the cache returns is what the model computes.
    assert_same_bank(second, model.encode_classes(CLASSES, ATTRIBUTES))
    assert "salsa spin, dance, partner, turn" in second.prompts[1]


def test_key_follows_what_the_prompts_depend_on(model):
    base = bank_key(model, CLASSES, ATTRIBUTES)
    # Attributes of classes outside the list, and naming style of the keys, do not matter.
    assert bank_key(model, CLASSES, {**ATTRIBUTES, "surfing": ["board"]}) == base
    assert bank_key(model, CLASSES, {"salsa spin": ["dance", "partner", "turn"], "archery": ["bow", "arrow"]}) == base
    # Anything that changes a prompt or the text tower does.
    assert bank_key(model, CLASSES, {**ATTRIBUTES, "archery": ["bow", "target"]}) != base
    assert bank_key(model, CLASSES[::-1], ATTRIBUTES) != base
    assert bank_key(model, CLASSES, None) != base
    other = build_model("stzsar-tiny", backend="torch", template="A clip of {}.")
    other.load_state_dict(model.state_dict())
    assert bank_key(other, CLASSES, ATTRIBUTES) != base
    with torch.no_grad():
        other_text = build_model("stzsar-tiny", backend="torch")
        other_text.load_state_dict(model.state_dict())
        other_text.text.ln_final.bias.add_(1e-3)
    assert bank_key(other_text, CLASSES, ATTRIBUTES) != base


def test_damaged_file_is_recomputed(model, tmp_path, caplog):
    cache = BankCache(tmp_path)
    expected = cache.get(model, CLASSES, ATTRIBUTES)
    (path,) = tmp_path.glob("*.pt")
    path.write_bytes(b"not a torch file")
    with caplog.at_level(logging.WARNING, logger="stzsar.eval.bank_cache"):
        again = BankCache(tmp_path).get(model, CLASSES, ATTRIBUTES)
    assert "unreadable" in caplog.text and str(path) in caplog.text
    assert_same_bank(expected, again)
    assert BankCache(tmp_path).load(path.stem, len(CLASSES)) is not None  # rewritten


def test_chunked_encoding_equals_one_pass(model):
    whole = encode_bank(model, CLASSES, ATTRIBUTES, chunk=len(CLASSES))
    chunked = encode_bank(model, CLASSES, ATTRIBUTES, chunk=2)
    assert chunked.words.shape[1] == max(whole.words.shape[1], chunked.words.shape[1])
    assert_same_bank(whole, chunked)
    assert not chunked.word_mask[:, whole.word_mask.shape[1]:].any()  # padding is masked out
    with pytest.raises(ValueError, match="no banks"):
        concat_banks([])
    direct = class_bank(model, CLASSES, ATTRIBUTES, cache=False)
    assert_same_bank(whole, direct)
