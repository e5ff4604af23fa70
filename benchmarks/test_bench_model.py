"""Micro-benchmarks of the model around the STI: the image tower over frames, the loss, and one
training step of the tiny model (random weights)."""

from __future__ import annotations

import pytest
import torch

from stzsar.losses import multi_positive_contrastive_loss
from stzsar.model import build_model

B, T = 4, 4


@pytest.fixture(scope="module")
def tiny_model():
    return build_model("stzsar-tiny")


def _video(model, device):
    size = model.image_size
    return torch.randn(B, T, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)


def test_encode_video_forward(run_synced, device, tiny_model):
    model = tiny_model.to(device).eval()
    video = _video(model, device)
    with torch.no_grad():
        run_synced(lambda: model.encode_video(video), device)


def test_loss_forward_backward(run_synced, device):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 64, generator=generator).to(device).requires_grad_(True)
    labels = (torch.arange(64) % 40).to(device)  # repeated labels: several positives per row

    def step():
        multi_positive_contrastive_loss(logits, labels).backward()

    run_synced(step, device)


def test_train_step(run_synced, device, tiny_model):
    model = tiny_model.to(device).train()
    names = [f"action {i}" for i in range(B)]
    bank = model.encode_classes(names)
    labels = torch.arange(B, device=device)
    video = _video(model, device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = multi_positive_contrastive_loss(model(video, bank.select(labels.cpu())), labels)
        loss.backward()
        optimizer.step()

    run_synced(step, device)
