"""``stzsar.ops.spatial_maxsim`` (SPEC section 4, the spatial double max) in every backend.

Every backend that can run here (the torch reference, the C++/OpenMP kernel, the CUDA kernel when a
GPU is present, Triton on GPU or in its interpreter) is compared with an independent float64
reference written below from the definition: the full similarity tensor by ``einsum``, the winner as
the lowest flat index ``k * Nw + l`` among the maxima, and the gradients as sums over one-hot winners.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from stzsar.ops.spatial_maxsim import (
    available_backends,
    maxsim_flops,
    spatial_maxsim,
    spatial_maxsim_with_index,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
KERNEL_BACKEND = {"cpu": "cpu", "cuda": "cuda"}
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def backend_cases():
    """(device, backend) for every backend of every device here; absent ones skip with a reason."""
    cases = []
    for device in DEVICES:
        for backend in ("torch", KERNEL_BACKEND[device], "triton"):
            cases.append(pytest.param(device, backend, id=f"{device}-{backend}"))
    return cases


def require(device: str, backend: str) -> None:
    found = available_backends(device)
    if backend not in found:
        why = {
            "cpu": "the compiled extension stzsar._C is not built",
            "cuda": "stzsar._C was built without its CUDA kernels",
            "triton": "Triton or stzsar.kernels does not import (install with `pip install -e .`), "
            "or CPU tensors without TRITON_INTERPRET=1",
        }.get(backend, "not available")
        pytest.skip(f"backend {backend!r} cannot run on {device} tensors here: {why} (available: {found})")


def interpreted(device: str, backend: str) -> bool:
    """Triton on CPU tensors runs in its interpreter, which is slow: such cases use tiny shapes."""
    return backend == "triton" and device == "cpu"


# --------------------------------------------------------------------------------------------
# float64 reference
# --------------------------------------------------------------------------------------------


def reference_forward(patches, words, word_mask):
    """(S_sp [B, C, T] float64, winner [B, C, T] int64) from the full similarity tensor."""
    B, T, Np, _ = patches.shape
    C, Nw, _ = words.shape
    sim = torch.einsum("btkd,cld->bctkl", patches.double().cpu(), words.double().cpu())
    sim = sim.masked_fill(~word_mask.cpu().view(1, C, 1, 1, Nw), float("-inf")).reshape(B, C, T, Np * Nw)
    best = sim.max(dim=-1).values
    flat = torch.arange(Np * Nw).expand_as(sim)
    # The lowest flat index among all entries equal to the maximum.
    winner = torch.where(sim == best.unsqueeze(-1), flat, Np * Nw).min(dim=-1).values
    return best, winner, sim


def reference_grads(grad, patches, words, winner):
    """dP[b,t,k] = sum_c g[b,c,t] W[c,l*] [k == k*]; dW[c,l] = sum_{b,t} g[b,c,t] P[b,t,k*] [l == l*]."""
    B, T, Np, _ = patches.shape
    C, Nw, _ = words.shape
    onehot = torch.nn.functional.one_hot(winner, Np * Nw).double().view(B, C, T, Np, Nw)
    g = grad.double().cpu()
    grad_p = torch.einsum("bctkl,bct,cld->btkd", onehot, g, words.double().cpu())
    grad_w = torch.einsum("bctkl,bct,btkd->cld", onehot, g, patches.double().cpu())
    return grad_p, grad_w


def rel_error(actual, expected) -> float:
    """max |actual - expected| / max |expected| (norm-wise relative error, in float64)."""
    actual, expected = actual.double().cpu(), expected.double().cpu()
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30))


def make_inputs(B, T, Np, C, Nw, D, dtype, device, mask="ragged", seed=0):
    gen = torch.Generator().manual_seed(seed)
    patches = torch.randn(B, T, Np, D, generator=gen).to(dtype)
    words = torch.randn(C, Nw, D, generator=gen).to(dtype)
    if mask == "full":
        word_mask = torch.ones(C, Nw, dtype=torch.bool)
    elif mask == "one":  # every class keeps only one word, not always the first
        word_mask = torch.zeros(C, Nw, dtype=torch.bool)
        word_mask[torch.arange(C), torch.randint(0, Nw, (C,), generator=gen)] = True
    else:  # ragged: random valid words, at least one per class
        word_mask = torch.rand(C, Nw, generator=gen) < 0.6
        word_mask[torch.arange(C), torch.randint(0, Nw, (C,), generator=gen)] = True
    return patches.to(device), words.to(device), word_mask.to(device)


# (B, T, Np, C, Nw, D, mask): odd Np and D, a single word, all-but-one word masked, ragged masks.
TINY_SHAPES = [
    (2, 3, 5, 3, 4, 8, "ragged"),
    (1, 2, 3, 2, 1, 40, "full"),
    (2, 2, 6, 3, 5, 16, "one"),
]
SHAPES = TINY_SHAPES + [
    (2, 3, 50, 5, 7, 40, "ragged"),
    (1, 2, 49, 4, 1, 64, "full"),
    (2, 2, 17, 6, 9, 24, "one"),
    (1, 2, 196, 7, 32, 64, "ragged"),
    (2, 1, 13, 120, 3, 12, "ragged"),  # many classes: several class chunks / class groups
    (3, 4, 49, 5, 6, 16, "ragged"),  # several frame blocks, the last one partial
    (1, 1, 7, 3, 170, 8, "ragged"),  # one class wider than a class chunk / a 64-column tile
]


def shape_id(shape):
    B, T, Np, C, Nw, D, mask = shape
    return f"B{B}T{T}Np{Np}C{C}Nw{Nw}D{D}-{mask}"


# --------------------------------------------------------------------------------------------
# Forward and backward against the reference
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("device,backend", backend_cases())
def test_forward_backward_match_reference(device, backend, dtype, shape):
    require(device, backend)
    if interpreted(device, backend) and shape not in TINY_SHAPES:
        pytest.skip("the Triton interpreter is slow: it runs the tiny shapes only")
    B, T, Np, C, Nw, D, mask = shape
    patches, words, word_mask = make_inputs(B, T, Np, C, Nw, D, dtype, device, mask, seed=sum(shape[:6]))
    patches.requires_grad_(True)
    words.requires_grad_(True)

    out, index = spatial_maxsim_with_index(patches, words, word_mask, backend=backend)
    assert out.shape == (B, C, T) and out.dtype == torch.float32 and out.device.type == device
    assert index.shape == (B, C, T) and index.dtype == torch.int32

    expected, winner, sim = reference_forward(patches.detach(), words.detach(), word_mask)
    tol = TOLERANCE[dtype]
    assert rel_error(out.detach(), expected) < tol
    # The winner must score the maximum (exactly the same index unless two scores tie within rounding).
    got = index.long().cpu()
    assert bool(((got >= 0) & (got < Np * Nw)).all())
    assert rel_error(sim.gather(-1, got.unsqueeze(-1)).squeeze(-1), expected) < tol
    assert bool(word_mask.cpu().view(-1)[(torch.arange(C).view(1, C, 1) * Nw + got % Nw).view(-1)].all())
    assert (got == winner).float().mean() > 0.99

    grad = torch.randn(B, C, T, generator=torch.Generator().manual_seed(1)).to(device)
    (out * grad).sum().backward()
    expected_p, expected_w = reference_grads(grad, patches.detach(), words.detach(), winner)
    assert patches.grad.dtype == dtype and words.grad.dtype == dtype
    assert rel_error(patches.grad, expected_p) < tol
    assert rel_error(words.grad, expected_w) < tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("device,backend", backend_cases())
def test_ties_pick_lowest_flat_index(device, backend, dtype):
    """Small integer inputs make scores exact in every dtype; duplicated patches and words make
    exact ties between different (k, l), and every backend must pick the lowest k * Nw + l."""
    require(device, backend)
    gen = torch.Generator().manual_seed(7)
    B, T, Np, C, Nw, D = 2, 3, 6, 4, 5, 8
    patches = torch.randint(-1, 2, (B, T, Np, D), generator=gen).float()
    words = torch.randint(-1, 2, (C, Nw, D), generator=gen).float()
    patches[:, :, 4] = patches[:, :, 1]  # duplicated patches: ties across k
    words[:, 3] = words[:, 0]  # duplicated words: ties across l
    words[2] = words[1]  # duplicated classes: the same winner in both
    word_mask = torch.ones(C, Nw, dtype=torch.bool)
    word_mask[1, 0] = False  # class 1: the duplicate word 3 must win where word 0 does in class 2
    word_mask[3, 1:] = False  # class 3: one valid word, ties across k only
    patches, words, word_mask = patches.to(dtype).to(device), words.to(dtype).to(device), word_mask.to(device)

    out, index = spatial_maxsim_with_index(patches, words, word_mask, backend=backend)
    expected, winner, sim = reference_forward(patches, words, word_mask)
    n_ties = int(((sim == expected.unsqueeze(-1)).sum(-1) > 1).sum())
    assert n_ties > B * T  # the construction does produce ties
    assert torch.equal(out.double().cpu(), expected)
    assert torch.equal(index.long().cpu(), winner)


@pytest.mark.parametrize("device,backend", backend_cases())
def test_deterministic(device, backend):
    """Two runs give bit-identical scores, indices and gradients under
    ``torch.use_deterministic_algorithms(True)`` (what ``train.deterministic`` sets): the kernels'
    backward passes have no atomics, and the reference's ``scatter_add_`` is deterministic there."""
    require(device, backend)
    shape = (2, 2, 6, 3, 5, 16) if interpreted(device, backend) else (2, 3, 50, 9, 7, 40)
    patches, words, word_mask = make_inputs(*shape, torch.float32, device, "ragged", seed=3)
    results = []
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)  # as the trainer (cuBLAS only warns)
    try:
        for _ in range(2):
            p = patches.clone().requires_grad_(True)
            w = words.clone().requires_grad_(True)
            out, index = spatial_maxsim_with_index(p, w, word_mask, backend=backend)
            out.sum().backward()
            results.append((out, index, p.grad, w.grad))
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
    for first, second in zip(*results):
        assert torch.equal(first, second)


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_empty_class_gives_neg_inf(device):
    """A class with no valid word scores -inf with index 0 in the fused kernels, like the reference
    (the STI module rejects such masks before; the kernels must still not read masked words)."""
    backend = KERNEL_BACKEND[device]
    require(device, backend)
    patches, words, word_mask = make_inputs(1, 2, 5, 3, 4, 8, torch.float32, device, "full")
    word_mask[1] = False
    out, index = torch.ops.stzsar.spatial_maxsim_fused_fwd(patches, words, word_mask)
    assert bool(torch.isneginf(out[:, 1]).all()) and bool((index[:, 1] == 0).all())
    expected, winner, _ = reference_forward(patches, words, word_mask)
    assert rel_error(out[:, [0, 2]], expected[:, [0, 2]]) < 1e-5
    assert torch.equal(index.long().cpu()[:, [0, 2]], winner[:, [0, 2]])


# --------------------------------------------------------------------------------------------
# torch.library integration: opcheck, torch.compile, FlopCounterMode
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device,backend", backend_cases())
def test_opcheck(device, backend):
    require(device, backend)
    patches, words, word_mask = make_inputs(1, 2, 3, 2, 3, 8, torch.float32, device, "ragged")
    args = (patches.requires_grad_(True), words.requires_grad_(True), word_mask, backend)
    torch.library.opcheck(torch.ops.stzsar.spatial_maxsim.default, args)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_fused_ops(device):
    """The compiled ops themselves: schema, Meta kernels (fake tensors) and dynamic shapes."""
    backend = KERNEL_BACKEND[device]
    require(device, backend)
    patches, words, word_mask = make_inputs(2, 2, 5, 3, 4, 8, torch.float32, device, "ragged")
    out, index = torch.ops.stzsar.spatial_maxsim_fused_fwd(patches, words, word_mask)
    torch.library.opcheck(torch.ops.stzsar.spatial_maxsim_fused_fwd.default, (patches, words, word_mask))
    grad = torch.randn_like(out)
    torch.library.opcheck(torch.ops.stzsar.spatial_maxsim_fused_bwd.default, (grad, patches, words, index))


@pytest.mark.parametrize("device,backend", backend_cases())
def test_torch_compile_fullgraph_matches_eager(device, backend):
    require(device, backend)
    torch._dynamo.reset()
    patches, words, word_mask = make_inputs(1, 2, 4, 3, 3, 8, torch.float32, device, "ragged", seed=5)

    def score(p, w, m):
        return (spatial_maxsim(p, w, m, backend=backend) * 2.0).sum(dim=-1)

    results = []
    for fn in (score, torch.compile(score, fullgraph=True)):
        p = patches.clone().requires_grad_(True)
        w = words.clone().requires_grad_(True)
        y = fn(p, w, word_mask)
        y.sum().backward()
        results.append((y.detach(), p.grad, w.grad))
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device,backend", backend_cases())
def test_flop_counter(device, backend):
    require(device, backend)
    B, T, Np, C, Nw, D = 2, 2, 3, 4, 5, 8
    patches, words, word_mask = make_inputs(B, T, Np, C, Nw, D, torch.float32, device, "ragged")
    patches.requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        out = spatial_maxsim(patches, words, word_mask, backend=backend)
    assert counter.get_total_flops() == 2 * B * T * Np * C * Nw * D == maxsim_flops(B, T, Np, C, Nw, D)
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    assert counter.get_total_flops() == 2 * 2 * B * C * T * D  # only the winners: two length-D axpys


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_front_rejects_bad_input():
    p = torch.randn(1, 2, 3, 8)
    w = torch.randn(4, 5, 8)
    m = torch.ones(4, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"patches must be \[B, T, Np, D\]"):
        spatial_maxsim(p[0], w, m)
    with pytest.raises(ValueError, match=r"words must be \[C, Nw, D\]"):
        spatial_maxsim(p, w[0], m)
    with pytest.raises(ValueError, match="share the feature size D"):
        spatial_maxsim(p, torch.randn(4, 5, 7), m)
    with pytest.raises(ValueError, match=r"word_mask must be \[C, Nw\]"):
        spatial_maxsim(p, w, m[:, :4])
    with pytest.raises(TypeError, match="word_mask must be a bool tensor"):
        spatial_maxsim(p, w, m.float())
    with pytest.raises(TypeError, match="patches must be float32, float16 or bfloat16"):
        spatial_maxsim(p.long(), w.long(), m)
    with pytest.raises(ValueError, match="unknown backend"):
        spatial_maxsim(p, w, m, backend="fortran")
    with pytest.raises(RuntimeError, match="not available for cpu tensors"):
        spatial_maxsim(p, w, m, backend="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device for a cross-device input")
def test_front_rejects_mixed_devices():
    with pytest.raises(ValueError, match="one device"):
        spatial_maxsim(torch.randn(1, 2, 3, 8, device="cuda"), torch.randn(4, 5, 8), torch.ones(4, 5, dtype=torch.bool))


@pytest.mark.parametrize("device", DEVICES)
def test_fused_ops_reject_bad_input(device):
    require(device, KERNEL_BACKEND[device])
    fwd, bwd = torch.ops.stzsar.spatial_maxsim_fused_fwd, torch.ops.stzsar.spatial_maxsim_fused_bwd
    p, w, m = make_inputs(1, 2, 3, 4, 5, 8, torch.float32, device, "full")
    with pytest.raises(RuntimeError, match="must be float32, float16 or bfloat16"):
        fwd(p.double(), w.double(), m)
    with pytest.raises(RuntimeError, match=r"words \(Half\) must have the dtype of patches \(Float\)"):
        fwd(p, w.half(), m)
    with pytest.raises(RuntimeError, match="must share D"):
        fwd(p, w[..., :4].contiguous(), m)
    with pytest.raises(RuntimeError, match="must be contiguous"):
        fwd(p.transpose(1, 2), w, m)
    with pytest.raises(RuntimeError, match="word_mask must be bool"):
        fwd(p, w, m.to(torch.uint8))
    out, index = fwd(p, w, m)
    with pytest.raises(RuntimeError, match=r"index must be \[B, C, T\]"):
        bwd(out, p, w, index[:, :2].contiguous())
    with pytest.raises(RuntimeError, match="index must be int32"):
        bwd(out, p, w, index.long())
    if device == "cpu":  # the CUDA kernel cannot raise from inside; the CPU one checks every index
        with pytest.raises(RuntimeError, match="out of range"):
            bwd(out, p, w, torch.full_like(index, 3 * 5))
    if device == "cuda":
        with pytest.raises(RuntimeError, match="must be a cuda tensor"):
            fwd(p.cpu(), w.cpu(), m)


# --------------------------------------------------------------------------------------------
# Memory: the fused CPU forward never forms the similarity tensor
# --------------------------------------------------------------------------------------------

_MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    import torch
    from stzsar.ops.spatial_maxsim import spatial_maxsim_with_index

    B, T, Np, C, Nw, D = 4, 10, 196, 400, 32, 16
    gen = torch.Generator().manual_seed(0)
    patches = torch.randn(B, T, Np, D, generator=gen)
    words = torch.randn(C, Nw, D, generator=gen)
    mask = torch.ones(C, Nw, dtype=torch.bool)
    mask[::3, 20:] = False
    # A small call first, so that one-off allocations (thread pools, BLAS buffers) are not counted.
    spatial_maxsim_with_index(patches[:1, :1], words[:2], mask[:2], backend="cpu")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        out, index = spatial_maxsim_with_index(patches, words, mask, backend="cpu")
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Spot check one frame of every class against float64 (the full tensor would not fit the budget).
    sim = torch.einsum("kd,cld->ckl", patches[1, 3].double(), words.double())
    sim = sim.masked_fill(~mask.unsqueeze(1), float("-inf")).reshape(C, -1)
    error = float((out[1, :, 3].double() - sim.max(-1).values).abs().max())
    full_bytes = B * C * T * Np * Nw * 4
    print((after - before) * 1024, full_bytes, error)
    """
)


def test_fused_cpu_forward_peak_memory():
    require("cpu", "cpu")
    result = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    grown, full_bytes, error = result.stdout.split()[-3:]
    grown, full_bytes, error = int(grown), int(full_bytes), float(error)
    assert full_bytes >= 400e6  # the naive similarity tensor would take this much
    assert grown < full_bytes / 10, f"peak RSS grew by {grown / 1e6:.1f} MB (limit {full_bytes / 10e6:.1f} MB)"
    assert error < 1e-4
