"""Micro-benchmarks of the STI hot paths: the spatial max-sim op and the whole STI module,
fused and naive, forward and forward+backward."""

from __future__ import annotations

import pytest
import torch

from stzsar.ops.spatial_maxsim import available_backends, spatial_maxsim
from stzsar.sti import STIModule

# One moderate shape: B videos x C classes, T frames, Np patches, Nw words, D features.
B, T, NP, C, NW, D = 4, 8, 49, 32, 24, 128


def _inputs(device, requires_grad=False):
    generator = torch.Generator().manual_seed(0)
    make = lambda *shape: torch.randn(*shape, generator=generator).to(device)  # noqa: E731
    frames, patches = make(B, T, D), make(B, T, NP, D)
    words, class_emb = make(C, NW, D), make(C, D)
    mask = torch.ones(C, NW, dtype=torch.bool)
    mask[:, NW - 4:] = False  # a few padded positions, as in a real bank
    if requires_grad:
        frames.requires_grad_(True)
        patches.requires_grad_(True)
    return frames, patches, words, mask.to(device), class_emb


def _backends(device):
    found = [b for b in available_backends(device) if not (b == "triton" and device.type == "cpu")]
    return found  # the Triton interpreter on the CPU is a correctness tool, not worth timing


@pytest.mark.parametrize("backend", ["torch", "cpu", "cuda", "triton"])
def test_spatial_maxsim_forward(run_synced, device, backend):
    if backend not in _backends(device):
        pytest.skip(f"backend {backend!r} not available for {device.type} tensors here")
    _, patches, words, mask, _ = _inputs(device)
    run_synced(lambda: spatial_maxsim(patches, words, mask, backend=backend), device)


@pytest.mark.parametrize("backend", ["torch", "cpu", "cuda", "triton"])
def test_spatial_maxsim_forward_backward(run_synced, device, backend):
    if backend not in _backends(device):
        pytest.skip(f"backend {backend!r} not available for {device.type} tensors here")
    _, patches, words, mask, _ = _inputs(device)
    patches.requires_grad_(True)
    words.requires_grad_(True)

    def step():
        spatial_maxsim(patches, words, mask, backend=backend).sum().backward()

    run_synced(step, device)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "naive"])
def test_sti_similarity_forward(run_synced, device, fused):
    sti = STIModule(D, backend="auto" if fused else "torch", fused=fused).to(device)
    frames, patches, words, mask, class_emb = _inputs(device)
    with torch.no_grad():
        run_synced(lambda: sti.similarity(frames, patches, words, mask, class_emb), device)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "naive"])
def test_sti_similarity_forward_backward(run_synced, device, fused):
    sti = STIModule(D, backend="auto" if fused else "torch", fused=fused).to(device)
    frames, patches, words, mask, class_emb = _inputs(device, requires_grad=True)

    def step():
        sti.similarity(frames, patches, words, mask, class_emb).sum().backward()

    run_synced(step, device)
