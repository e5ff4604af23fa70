"""``stzsar.ops.projected_spatial_maxsim``: the patch projection folded into the spatial double max.

The reference is written here from SPEC section 4 in float64 with autograd:
``P~ = ReLU(W normalize(P) + b)``, the full similarity tensor by ``einsum`` and the score of the
winning (patch, word). Gradients of the patches, ``W``, ``b`` and the words come from autograd
through that formulation, so the op's hand-written backward (ReLU, linear map, L2 normalisation,
winners only) is checked against an independent derivation.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from stzsar.ops import maxsim_flops, projected_spatial_maxsim, projected_spatial_maxsim_with_index
from test_spatial_maxsim import TOLERANCE, backend_cases, interpreted, rel_error, require


def make_inputs(B, T, Np, C, Nw, D, dtype, device, seed=0, bias=True):
    gen = torch.Generator().manual_seed(seed)
    patches = torch.randn(B, T, Np, D, generator=gen)
    if dtype != torch.float16:  # F.normalize's eps (1e-12) underflows to 0 in fp16: 0/0 there
        patches[0, 0, 0] = 0.0  # a zero patch: normalize() divides by eps instead of |x|
    weight = torch.eye(D) + torch.randn(D, D, generator=gen) / D**0.5
    b = 0.1 * torch.randn(D, generator=gen) if bias else None
    words = torch.relu(torch.randn(C, Nw, D, generator=gen))
    mask = torch.rand(C, Nw, generator=gen) < 0.6
    mask[torch.arange(C), torch.randint(0, Nw, (C,), generator=gen)] = True
    cast = lambda x: None if x is None else x.to(dtype=dtype, device=device)  # noqa: E731
    return cast(patches), cast(weight), cast(b), cast(words), mask.to(device)


def reference(patches, weight, bias, words, mask, normalize=True, winner=None):
    """(S_sp, winner, autograd leaves) in float64; ``winner`` forces the winning flat index."""
    leaves = [t.detach().double().cpu().requires_grad_(True) if t is not None else None
              for t in (patches, weight, bias, words)]
    p, w, b, a = leaves
    unit = p / p.norm(dim=-1, keepdim=True).clamp_min(1e-12) if normalize else p
    projected = torch.relu(unit @ w.t() + (b if b is not None else 0))
    B, T, Np, _ = projected.shape
    C, Nw, _ = a.shape
    sim = torch.einsum("btkd,cld->bctkl", projected, a)
    sim = sim.masked_fill(~mask.cpu().view(1, C, 1, 1, Nw), float("-inf")).reshape(B, C, T, Np * Nw)
    if winner is None:
        winner = sim.detach().argmax(dim=-1)
    return sim.gather(-1, winner.long().cpu().unsqueeze(-1)).squeeze(-1), winner, leaves


# (B, T, Np, C, Nw, D): odd sizes, one word, one frame per video, chunks straddling videos.
SHAPES = [(2, 3, 5, 3, 4, 8), (1, 1, 7, 2, 1, 40), (3, 2, 50, 5, 7, 24)]
TINY = SHAPES[:2]


@pytest.mark.parametrize("chunk_frames", [1, 4, None], ids=lambda c: f"chunk{c}")
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("device,backend", backend_cases())
def test_forward_backward_match_reference(device, backend, dtype, shape, chunk_frames):
    require(device, backend)
    if interpreted(device, backend) and (shape not in TINY or chunk_frames == 4):
        pytest.skip("the Triton interpreter is slow: it runs the tiny shapes only")
    patches, weight, bias, words, mask = make_inputs(*shape, dtype, device, seed=sum(shape))
    leaves = [t.requires_grad_(True) for t in (patches, weight, bias, words)]

    out, index = projected_spatial_maxsim_with_index(
        patches, weight, bias, words, mask, backend=backend, chunk_frames=chunk_frames
    )
    B, T, Np, C, Nw, D = shape
    assert out.shape == (B, C, T) and out.dtype == torch.float32 and index.dtype == torch.int32

    expected, winner, _ = reference(patches, weight, bias, words, mask)
    tol = TOLERANCE[dtype]
    assert rel_error(out.detach(), expected.detach()) < tol
    if dtype == torch.float32:
        assert (index.long().cpu() == winner).float().mean() > 0.99
    # Gradients against autograd through the reference at the op's own winners (in fp16/bf16 a
    # near-tie may go the other way after rounding; the gradient formula is what is checked).
    expected, _, ref_leaves = reference(patches, weight, bias, words, mask, winner=index)
    grad = torch.randn(B, C, T, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (out * grad.to(device)).sum().backward()
    (expected * grad).sum().backward()
    for name, got, ref in zip(("patches", "weight", "bias", "words"), leaves, ref_leaves):
        assert got.grad.dtype == dtype, name
        assert rel_error(got.grad, ref.grad) < tol, name


@pytest.mark.parametrize("device,backend", backend_cases())
def test_without_normalization_and_bias(device, backend):
    require(device, backend)
    patches, weight, _, words, mask = make_inputs(2, 2, 6, 3, 4, 8, torch.float64, device, seed=4, bias=False)
    patches, weight, words = (t.float().requires_grad_(True) for t in (patches, weight, words))
    out, index = projected_spatial_maxsim_with_index(
        patches, weight, None, words, mask, normalize=False, backend=backend, chunk_frames=3
    )
    expected, winner, ref_leaves = reference(patches, weight, None, words, mask, normalize=False)
    assert rel_error(out.detach(), expected.detach()) < 1e-5
    out.sum().backward()
    expected.sum().backward()
    for got, ref in zip((patches, weight, words), (ref_leaves[0], ref_leaves[1], ref_leaves[3])):
        assert rel_error(got.grad, ref.grad) < 1e-5


@pytest.mark.parametrize("device,backend", backend_cases())
def test_chunking_does_not_change_results(device, backend):
    """Every chunk size gives the same winners and scores (chunks only bound the memory; the
    projection GEMM may round differently for a different number of rows)."""
    require(device, backend)
    patches, weight, bias, words, mask = make_inputs(2, 3, 5, 4, 3, 8, torch.float32, device, seed=6)
    results = [
        projected_spatial_maxsim_with_index(patches, weight, bias, words, mask, backend=backend, chunk_frames=n)
        for n in (1, 2, 5, 6, 100)
    ]
    expected, winner, _ = reference(patches, weight, bias, words, mask)
    assert rel_error(results[0][0], expected.detach()) < 1e-5 and torch.equal(results[0][1].long(), winner)
    for out, index in results[1:]:
        torch.testing.assert_close(out, results[0][0], rtol=1e-6, atol=1e-6)
        assert torch.equal(index, results[0][1])


def test_gradcheck_float64():
    patches, weight, bias, words, mask = make_inputs(1, 2, 4, 2, 3, 6, torch.float64, "cpu", seed=8)
    args = tuple(t.requires_grad_(True) for t in (patches[:, :, 1:], weight, bias, words))  # no zero row

    def fn(p, w, b, a):
        return projected_spatial_maxsim(p, w, b, a, mask, backend="torch", chunk_frames=1)

    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("device,backend", backend_cases())
def test_opcheck(device, backend):
    require(device, backend)
    patches, weight, bias, words, mask = make_inputs(1, 2, 3, 2, 3, 8, torch.float32, device)
    args = (patches.requires_grad_(True), weight.requires_grad_(True), bias, words.requires_grad_(True),
            mask, True, 1, backend)
    torch.library.opcheck(torch.ops.stzsar.projected_spatial_maxsim.default, args)


def test_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    patches, weight, bias, words, mask = make_inputs(1, 2, 4, 3, 3, 8, torch.float32, "cpu", seed=5)

    def score(p, w, b, a):
        return (projected_spatial_maxsim(p, w, b, a, mask, chunk_frames=1) * 2.0).sum(dim=-1)

    results = []
    for fn in (score, torch.compile(score, fullgraph=True, backend="aot_eager")):
        leaves = [t.clone().requires_grad_(True) for t in (patches, weight, bias, words)]
        y = fn(*leaves)
        y.sum().backward()
        results.append([y.detach()] + [t.grad for t in leaves])
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6)


def test_flop_counter():
    B, T, Np, C, Nw, D = 2, 2, 3, 4, 5, 8
    patches, weight, bias, words, mask = make_inputs(B, T, Np, C, Nw, D, torch.float32, "cpu")
    patches.requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        out = projected_spatial_maxsim(patches, weight, bias, words, mask)
    projection = 2 * B * T * Np * D * D
    assert counter.get_total_flops() == projection + maxsim_flops(B, T, Np, C, Nw, D)
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    assert counter.get_total_flops() == 3 * projection + 2 * 2 * B * C * T * D


def test_autocast_computes_like_f_linear():
    """Under CPU autocast (bf16) the projection runs in bf16, as F.linear would."""
    patches, weight, bias, words, mask = make_inputs(1, 2, 5, 3, 4, 16, torch.float32, "cpu", seed=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = projected_spatial_maxsim(patches, weight, bias, words.bfloat16(), mask, chunk_frames=1)
    projected = F.relu(F.linear(F.normalize(patches.bfloat16(), dim=-1), weight.bfloat16(), bias.bfloat16()))
    expected, _, _ = reference(projected, torch.eye(16), None, words.bfloat16(), mask, normalize=False)
    assert out.dtype == torch.float32
    assert rel_error(out, expected.detach()) < 1e-2


def test_rejects_bad_input():
    patches, weight, bias, words, mask = make_inputs(1, 2, 3, 2, 3, 8, torch.float32, "cpu")
    with pytest.raises(ValueError, match=r"weight must be \[D, D\]"):
        projected_spatial_maxsim(patches, weight[:4], bias, words, mask)
    with pytest.raises(ValueError, match=r"bias \[D\]"):
        projected_spatial_maxsim(patches, weight, bias[:3], words, mask)
    with pytest.raises(TypeError, match="must share one dtype"):
        projected_spatial_maxsim(patches, weight.double(), bias, words, mask)
    with pytest.raises(ValueError, match="chunk_frames must be positive"):
        projected_spatial_maxsim(patches, weight, bias, words, mask, chunk_frames=0)
    with pytest.raises(ValueError, match=r"word_mask must be \[C, Nw\]"):
        projected_spatial_maxsim(patches, weight, bias, words, mask[:, :2])


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource
    import torch
    from stzsar.ops import projected_spatial_maxsim

    B, T, Np, C, Nw, D = 4, 16, 196, 8, 4, 512
    gen = torch.Generator().manual_seed(0)
    patches = torch.randn(B, T, Np, D, generator=gen)
    weight, bias = torch.eye(D), torch.zeros(D)
    words = torch.randn(C, Nw, D, generator=gen).relu()
    mask = torch.ones(C, Nw, dtype=torch.bool)
    # A small call first, so that one-off allocations (thread pools, BLAS buffers) are not counted.
    projected_spatial_maxsim(patches[:1, :1], weight, bias, words, mask, backend="cpu")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        out = projected_spatial_maxsim(patches, weight, bias, words, mask, backend="cpu")
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) * 1024, patches.numel() * 4)
    """
)


def test_projected_patches_are_never_held_whole():
    """The projected patches (here 25.7 MB) exist one chunk (1 MB) at a time."""
    require("cpu", "cpu")
    result = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    grown, projected_bytes = (int(x) for x in result.stdout.split()[-2:])
    assert grown < projected_bytes / 4, f"peak RSS grew by {grown / 1e6:.1f} MB of {projected_bytes / 1e6:.1f} MB"


def test_small_budget_splits_the_backward_by_classes(monkeypatch):
    """With a tiny chunk budget the backward gathers the winners a few classes at a time."""
    import stzsar.ops.projected_maxsim as module

    monkeypatch.setitem(module.CHUNK_BYTES, "cpu", 2 * 8 * 4 * 2)  # two classes per block of 2 frames
    patches, weight, bias, words, mask = make_inputs(2, 2, 5, 5, 3, 8, torch.float64, "cpu", seed=12)
    leaves = [t.requires_grad_(True) for t in (patches, weight, bias, words)]
    out = projected_spatial_maxsim(*leaves[:4], mask, backend="torch", chunk_frames=2)
    expected, _, ref_leaves = reference(patches, weight, bias, words, mask)
    out.sum().backward()
    expected.sum().backward()
    for got, ref in zip(leaves, ref_leaves):
        assert rel_error(got.grad, ref.grad) < 1e-12


def test_patch_tokens_sliced_from_the_encoder_output():
    """Patches as the video encoder returns them (``x[:, 1:]``, not contiguous) give the same
    result and gradient as a contiguous copy."""
    patches, weight, bias, words, mask = make_inputs(2, 3, 6, 4, 3, 8, torch.float32, "cpu", seed=14)
    tokens = torch.cat([torch.randn(6, 1, 8), patches.reshape(6, 6, 8)], dim=1)  # [B*T, 1 + Np, D]
    leaf = tokens.clone().requires_grad_(True)
    view = leaf[:, 1:].unflatten(0, (2, 3))
    assert not view.is_contiguous()
    out = projected_spatial_maxsim(view, weight, bias, words, mask, backend="torch", chunk_frames=4)
    copy = patches.clone().requires_grad_(True)
    expected = projected_spatial_maxsim(copy, weight, bias, words, mask, backend="torch", chunk_frames=4)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    reference_out, _, ref_leaves = reference(patches, weight, bias, words, mask)
    assert rel_error(out.detach(), reference_out.detach()) < 1e-5
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    reference_out.backward(grad.double())
    assert leaf.grad[:, 0].abs().max() == 0
    torch.testing.assert_close(leaf.grad[:, 1:].reshape(copy.shape), copy.grad, rtol=1e-6, atol=1e-6)
    assert rel_error(leaf.grad[:, 1:].reshape(copy.shape), ref_leaves[0].grad) < 1e-5


# --------------------------------------------------------------------------------------------
# torch.use_deterministic_algorithms (train.deterministic): a fixed summation order
# --------------------------------------------------------------------------------------------


@pytest.fixture
def deterministic_algorithms():
    """``torch.use_deterministic_algorithms(True, warn_only=True)`` for one test, as
    ``train.deterministic`` sets it (warn_only: cuBLAS GEMMs without CUBLAS_WORKSPACE_CONFIG warn)."""
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def _shared_winner_inputs(device):
    """Words that all point the same way, so most classes pick the same patch of a frame: the
    backward adds many winners into the same rows (the case where the order of the sum matters)."""
    patches, weight, bias, words, mask = make_inputs(2, 3, 5, 9, 4, 8, torch.float32, "cpu", seed=31)
    words = words + 2.0 * torch.rand(9, 1, 1, generator=torch.Generator().manual_seed(2)) * torch.ones(8)
    return [t.to(device) for t in (patches, weight, bias, words)] + [mask.to(device)]


def _run_projected(inputs, backend, grad):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs[:4]]
    out, index = projected_spatial_maxsim_with_index(*leaves, inputs[4], backend=backend, chunk_frames=4)
    out.backward(grad)
    return out, index, [t.grad for t in leaves]


@pytest.mark.parametrize("device,backend", backend_cases())
def test_deterministic_backward_is_bitwise_repeatable(device, backend, deterministic_algorithms, monkeypatch):
    """Under the flag: three runs give bitwise equal gradients, equal to the float64 reference."""
    require(device, backend)
    import stzsar.ops.projected_maxsim as module

    monkeypatch.setitem(module.CHUNK_BYTES, torch.device(device).type, 3 * 4 * 8 * 4)  # 3 classes a block
    inputs = _shared_winner_inputs(device)
    grad = torch.randn(2, 9, 3, generator=torch.Generator().manual_seed(3)).to(device)
    runs = [_run_projected(inputs, backend, grad) for _ in range(3)]
    out, index, grads = runs[0]
    _, collisions = torch.unique(index.long().cpu() // inputs[3].shape[1], return_counts=True)
    assert collisions.max() >= 3  # several winners share a patch row
    for other_out, other_index, other_grads in runs[1:]:
        assert torch.equal(out, other_out) and torch.equal(index, other_index)
        for first, again in zip(grads, other_grads):
            assert torch.equal(first, again)
    expected, _, ref_leaves = reference(*inputs, winner=index)
    (expected * grad.double().cpu()).sum().backward()
    for name, got, ref in zip(("patches", "weight", "bias", "words"), grads, ref_leaves):
        assert rel_error(got, ref.grad) < 1e-5, name


def test_deterministic_flag_selects_the_sorted_sums(monkeypatch):
    """With the flag on, the backward never reaches ``index_add_``; with it off, it never sorts
    (the fast path stays the default)."""
    import stzsar.ops.projected_maxsim as module

    calls = {"index_add": 0, "segment": 0}

    def spy(name, real):
        def wrapped(*args):
            calls[name] += 1
            return real(*args)
        return wrapped

    monkeypatch.setattr(module, "index_add_rows", spy("index_add", module.index_add_rows))
    monkeypatch.setattr(module, "segment_add_rows", spy("segment", module.segment_add_rows))
    inputs = _shared_winner_inputs("cpu")
    grad = torch.randn(2, 9, 3, generator=torch.Generator().manual_seed(4))
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        torch.use_deterministic_algorithms(True, warn_only=True)  # the trainer's setting
        _, _, sorted_grads = _run_projected(inputs, "torch", grad)
        assert calls["segment"] > 0 and calls["index_add"] == 0
        torch.use_deterministic_algorithms(False)
        _, _, fast_grads = _run_projected(inputs, "torch", grad)
        assert calls["index_add"] > 0
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
    for a, b in zip(sorted_grads, fast_grads):
        assert rel_error(a, b.double()) < 1e-6


def test_segment_add_rows_against_a_loop():
    """Unsorted rows, repeated rows and rows nobody adds to, against a float64 loop."""
    from stzsar.ops.projected_maxsim import segment_add_rows

    gen = torch.Generator().manual_seed(5)
    rows = torch.tensor([4, 0, 4, 6, 4, 0, 2, 4])
    values = torch.randn(len(rows), 3, generator=gen)
    out = torch.randn(8, 3, generator=gen)
    expected = out.double().clone()
    for i, r in enumerate(rows.tolist()):
        expected[r] += values[i].double()
    segment_add_rows(out, rows, values)
    assert rel_error(out, expected) < 1e-6
    assert torch.equal(out[[1, 3, 5, 7]].double(), expected[[1, 3, 5, 7]])  # untouched rows
