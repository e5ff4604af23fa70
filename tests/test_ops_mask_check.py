"""The word-mask check on the training path: the class bank's mask is read once, not the prompts
selected from it at every step (each read is a host synchronisation on a GPU)."""

from __future__ import annotations

import pytest
import torch

from stzsar import STIModule
from stzsar.ops import dispatch
from stzsar.text import ClassBank
from stzsar.train.loss import in_batch_loss


def test_training_steps_read_the_bank_mask_once(monkeypatch):
    reads = []
    real = dispatch._first_class_without_word
    monkeypatch.setattr(dispatch, "_first_class_without_word", lambda mask: reads.append(tuple(mask.shape)) or real(mask))
    gen = torch.Generator().manual_seed(0)
    C, Nw, D, T, Np = 6, 4, 8, 3, 5
    mask = torch.rand(C, Nw, generator=gen) > 0.5
    mask[:, 0] = True
    bank = ClassBank(torch.randn(C, D, generator=gen), torch.randn(C, Nw, D, generator=gen), mask)
    sti = STIModule(D)
    frames, patches = torch.randn(2, T, D, generator=gen), torch.randn(2, T, Np, D, generator=gen)

    def forward(video, prompts):
        return sti.similarity(frames, patches, prompts.words, prompts.word_mask, prompts.class_emb)

    for labels in (torch.tensor([3, 1]), torch.tensor([0, 5]), torch.tensor([2, 2])):
        loss = in_batch_loss(forward, torch.zeros(2, 1), labels, bank).loss
        assert torch.isfinite(loss)
    assert reads == [(C, Nw)]  # the bank's mask, once; never a step's prompts

    mask[4] = False  # in place: read again at the next step, and the class is named
    with pytest.raises(ValueError, match="class 4 has no valid word"):
        in_batch_loss(forward, torch.zeros(2, 1), torch.tensor([0, 1]), bank)
