"""The fused temporal saliency and STI similarity ops against float64 references of SPEC section 4.

The references below are written from the SPEC equations (loops over videos, classes and words,
the weighted frame sum ``f_st`` formed explicitly), independently of ``stzsar.ops.temporal``;
their gradients come from autograd on those loops.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from stzsar.ops.spatial_maxsim import available_backends
from stzsar.ops.temporal import sti_similarity, temporal_saliency

EPS = 1e-8  # the documented floor of |z| |f_st| in the cosine


# --------------------------------------------------------------------------------------------
# float64 references (SPEC section 4)
# --------------------------------------------------------------------------------------------


def reference_temporal(s_sp, frames, words, word_mask, tau):
    """S_temp[b,c,t] = mean over valid l of softmax_t(S_sp[b,c,t] <v[b,t], A[c,l]> / tau)."""
    s_sp, frames, words = s_sp.double(), frames.double(), words.double()
    B, C, T = s_sp.shape
    rows = []
    for b in range(B):
        per_class = []
        for c in range(C):
            valid = [l for l in range(words.shape[1]) if bool(word_mask[c, l])]
            acc = torch.zeros(T, dtype=torch.float64)
            for l in valid:
                logits = s_sp[b, c] * (frames[b] @ words[c, l]) / tau  # [T]
                shifted = torch.exp(logits - logits.max())
                acc = acc + shifted / shifted.sum()
            per_class.append(acc / len(valid))
        rows.append(torch.stack(per_class))
    return torch.stack(rows)


def reference_similarity(s_temp, frames, class_emb):
    """cos(z_c, f_st[b,c]) with f_st[b,c] = sum_t s_temp[b,c,t] v[b,t], formed explicitly."""
    s_temp, frames, class_emb = s_temp.double(), frames.double(), class_emb.double()
    B, C, T = s_temp.shape
    out = []
    for b in range(B):
        row = []
        for c in range(C):
            f_st = sum(s_temp[b, c, t] * frames[b, t] for t in range(T))
            z = class_emb[c]
            row.append((f_st @ z) / torch.clamp(f_st.norm() * z.norm(), min=EPS))
        out.append(torch.stack(row))
    return torch.stack(out)


def reference_grads(fn, inputs, grad_out):
    leaves = [x.detach().double().cpu().requires_grad_(True) for x in inputs]  # references run on CPU
    out = fn(*leaves)
    return out.detach(), torch.autograd.grad(out, leaves, grad_out.double().cpu())


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# Triton runs on CPU only through its (slow) interpreter: keep its shapes tiny.
TINY = ((2, 3, 1, 4, 8), (1, 2, 3, 1, 40), (2, 3, 3, 5, 40))


def backend_cases():
    cases = []
    for device in DEVICES:
        for backend in available_backends(device, kernel="sti_temporal"):
            cases.append(pytest.param(device, backend, id=f"{device}-{backend}"))
    return cases


BACKENDS = backend_cases()
# Only the fused backends: the reference backend is ``torch``.
FUSED = [case for case in BACKENDS if case.values[1] != "torch"]


def max_rel_error(actual, expected, floor=1e-30):
    """max |actual - expected| / max |expected| (norm-relative, so tiny entries do not dominate).

    ``floor`` bounds the scale from below where the exact result is zero by symmetry."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    scale = expected.abs().max().clamp_min(floor)
    return float((actual - expected).abs().max() / scale)


def make_inputs(B, C, T, Nw, D, dtype=torch.float32, device="cpu", seed=0, ragged=True):
    """Normalised frames (as the module feeds them), ReLU-projected words, scores in [0, 1)."""
    g = torch.Generator().manual_seed(seed)
    frames = torch.nn.functional.normalize(torch.randn(B, T, D, generator=g), dim=-1)
    words = torch.relu(torch.randn(C, Nw, D, generator=g)) / math.sqrt(D / 2)
    s_sp = torch.rand(B, C, T, generator=g)
    class_emb = torch.randn(C, D, generator=g)
    mask = torch.rand(C, Nw, generator=g) > 0.4 if ragged else torch.ones(C, Nw, dtype=torch.bool)
    mask[torch.arange(C), torch.randint(0, Nw, (C,), generator=g)] = True  # >= 1 valid word
    cast = lambda x: x.to(device=device, dtype=dtype)  # noqa: E731
    return s_sp.to(device), cast(frames), cast(words), mask.to(device), cast(class_emb)


def shapes_for(backend):
    if backend == "triton" and not torch.cuda.is_available():
        return TINY
    return TINY + ((3, 7, 5, 9, 40), (2, 13, 4, 33, 24))  # the last spans several class blocks


TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


# --------------------------------------------------------------------------------------------
# Forward and gradients against the references
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("device,backend", BACKENDS)
def test_temporal_saliency_matches_reference(device, backend, dtype):
    tau = 0.01
    for i, (B, C, T, Nw, D) in enumerate(shapes_for(backend)):
        s_sp, frames, words, mask, _ = make_inputs(B, C, T, Nw, D, dtype, device, seed=i)
        grad_out = torch.randn(B, C, T, generator=torch.Generator().manual_seed(100 + i))
        expected, ref_grads = reference_grads(
            lambda s, v, a: reference_temporal(s, v, a, mask.cpu(), tau), (s_sp, frames, words), grad_out
        )
        inputs = [x.detach().clone().requires_grad_(True) for x in (s_sp, frames, words)]
        out = temporal_saliency(*inputs[:1], inputs[1], inputs[2], mask, tau, backend=backend)
        assert out.dtype == torch.float32 and out.shape == (B, C, T)
        out.backward(grad_out.to(device))
        shape = (B, C, T, Nw, D)
        assert max_rel_error(out, expected) < TOL[dtype], (shape, "S_temp")
        for name, x, ref in zip(("s_sp", "frames", "words"), inputs, ref_grads):
            assert x.grad.dtype == x.dtype
            assert max_rel_error(x.grad, ref) < TOL[dtype], (shape, f"d{name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("device,backend", BACKENDS)
def test_sti_similarity_matches_reference(device, backend, dtype):
    for i, (B, C, T, Nw, D) in enumerate(shapes_for(backend)):
        _, frames, words, mask, class_emb = make_inputs(B, C, T, Nw, D, dtype, device, seed=10 + i)
        s_temp = torch.softmax(torch.randn(B, C, T, generator=torch.Generator().manual_seed(i)), -1)
        s_temp = s_temp.to(device)
        grad_out = torch.randn(B, C, generator=torch.Generator().manual_seed(200 + i))
        expected, ref_grads = reference_grads(reference_similarity, (s_temp, frames, class_emb), grad_out)
        inputs = [x.detach().clone().requires_grad_(True) for x in (s_temp, frames, class_emb)]
        out = sti_similarity(*inputs, backend=backend)
        assert out.dtype == torch.float32 and out.shape == (B, C)
        out.backward(grad_out.to(device))
        shape = (B, C, T, D)
        assert max_rel_error(out, expected) < TOL[dtype], (shape, "cos")
        for name, x, ref in zip(("s_temp", "frames", "class_emb"), inputs, ref_grads):
            assert x.grad.dtype == x.dtype
            # With T = 1 the cosine does not depend on the scale of s_temp: its gradient is 0 up
            # to the cancellation of O(|grad_out|) terms, so measure it against those.
            floor = float(grad_out.abs().max()) if name == "s_temp" and T == 1 else 1e-30
            assert max_rel_error(x.grad, ref, floor) < TOL[dtype], (shape, f"d{name}")


def test_torch_backend_gradcheck_float64():
    s_sp, frames, words, mask, class_emb = (
        x.double() if x.is_floating_point() else x for x in make_inputs(2, 2, 3, 3, 4, seed=3)
    )
    args = [x.clone().requires_grad_(True) for x in (s_sp, frames, words, class_emb)]

    def fn(s, v, a, z):
        s_temp = temporal_saliency(s, v, a, mask, 0.3, backend="torch")
        return sti_similarity(s_temp, v, z, backend="torch")

    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_only_the_requested_gradients_are_computed(device, backend):
    """Inputs that do not require grad get none; the others still match the reference."""
    s_sp, frames, words, mask, class_emb = make_inputs(2, 3, 4, 5, 16, device=device, seed=21)
    grad_out = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(22))
    _, ref_grads = reference_grads(
        lambda s, v, a: reference_temporal(s, v, a, mask.cpu(), 0.05), (s_sp, frames, words), grad_out
    )
    for wanted in ((1,), (0, 2), (2,)):
        inputs = [x.clone().requires_grad_(i in wanted) for i, x in enumerate((s_sp, frames, words))]
        temporal_saliency(*inputs, mask, 0.05, backend=backend).backward(grad_out.to(device))
        for i, (x, ref) in enumerate(zip(inputs, ref_grads)):
            if i in wanted:
                assert max_rel_error(x.grad, ref) < 1e-5, (wanted, i)
            else:
                assert x.grad is None
    s_temp = torch.rand(2, 3, 4, device=device)
    grad_cos = torch.randn(2, 3, generator=torch.Generator().manual_seed(23))
    _, ref_grads = reference_grads(reference_similarity, (s_temp, frames, class_emb), grad_cos)
    for wanted in ((1,), (0, 2)):
        inputs = [x.clone().requires_grad_(i in wanted) for i, x in enumerate((s_temp, frames, class_emb))]
        sti_similarity(*inputs, backend=backend).backward(grad_cos.to(device))
        for i, (x, ref) in enumerate(zip(inputs, ref_grads)):
            assert (x.grad is None) != (i in wanted)
            if i in wanted:
                assert max_rel_error(x.grad, ref) < 1e-5, (wanted, i)


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_backward_is_deterministic(device, backend):
    """Under ``torch.use_deterministic_algorithms(True, warn_only=True)`` (``train.deterministic``)
    two runs of both ops give bitwise equal outputs and gradients (their backward passes reduce
    over videos and classes with GEMMs, without atomics)."""
    shape = (2, 3, 3, 5, 40) if backend == "triton" and device == "cpu" else (3, 13, 4, 33, 24)
    s_sp, frames, words, mask, class_emb = make_inputs(*shape, device=device, seed=41)
    grad_out = torch.randn(shape[0], shape[1], generator=torch.Generator().manual_seed(42)).to(device)
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    runs = []
    try:
        for _ in range(2):
            leaves = [x.detach().clone().requires_grad_(True) for x in (s_sp, frames, words, class_emb)]
            s_temp = temporal_saliency(leaves[0], leaves[1], leaves[2], mask, 0.05, backend=backend)
            cos = sti_similarity(s_temp, leaves[1], leaves[3], backend=backend)
            cos.backward(grad_out)
            runs.append([cos] + [x.grad for x in leaves])
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
    for first, second in zip(*runs):
        assert torch.equal(first, second)


# --------------------------------------------------------------------------------------------
# Large logits: the softmax over time must subtract its maximum
# --------------------------------------------------------------------------------------------


def _exact_large_logit_inputs(device, seed=0):
    """Inputs whose logits are exact in float32 yet around 1e4 with O(1) gaps over time.

    Entries are multiples of 1/4 (words) and 1/64 (frames), tau = 2^-7: every dot product,
    logit and score product is exactly representable, so float32 kernels must agree with float64
    to rounding of the softmax itself. exp() of these logits overflows without the max shift.
    """
    g = torch.Generator().manual_seed(seed)
    B, C, T, Nw, D = 2, 3, 5, 6, 40
    words = torch.randint(0, 5, (C, Nw, D), generator=g).float() / 4  # nonnegative (ReLU'd)
    base = torch.randint(-4, 9, (B, 1, D), generator=g).float()
    jitter = (torch.rand(B, T, D, generator=g) < 0.05).float() / 64
    frames = base + jitter  # frames share a large component: logits ~1e4 apart by O(1)
    s_sp = torch.tensor([0.5, 1.0, 2.0])[torch.randint(0, 3, (B, C, 1), generator=g)].expand(B, C, T)
    mask = torch.rand(C, Nw, generator=g) > 0.3
    mask[:, 0] = True
    return s_sp.contiguous().to(device), frames.to(device), words.to(device), mask.to(device)


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_large_logits_are_finite_and_exact(device, backend):
    tau = 2.0**-7
    s_sp, frames, words, mask = _exact_large_logit_inputs(device)
    logits = s_sp.double().cpu()[..., None] * torch.einsum("btd,cld->bctl", frames.double().cpu(), words.double().cpu()) / tau
    assert logits.abs().max() > 1e3  # naive exp() would overflow float32 (and float64 beyond ~710)
    grad_out = torch.randn(s_sp.shape, generator=torch.Generator().manual_seed(5))
    expected, ref_grads = reference_grads(
        lambda s, v, a: reference_temporal(s, v, a, mask.cpu(), tau), (s_sp, frames, words), grad_out
    )
    # Not saturated: the softmax has several non-negligible entries somewhere.
    assert ((expected > 0.05) & (expected < 0.95)).any()
    inputs = [x.clone().requires_grad_(True) for x in (s_sp, frames, words)]
    out = temporal_saliency(*inputs, mask, tau, backend=backend)
    out.backward(grad_out.to(device))
    assert torch.isfinite(out).all()
    assert max_rel_error(out, expected) < 1e-5
    for x, ref in zip(inputs, ref_grads):
        assert torch.isfinite(x.grad).all()
        # The softmax is shift-invariant over t, so the frames' shared ~1e4 logit component
        # cancels in the gradients: float32 keeps ~1e-4 of the result there, whatever the code.
        assert max_rel_error(x.grad, ref) < 1e-3


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_tau_001_unnormalised_inputs_stay_finite(device, backend):
    g = torch.Generator().manual_seed(7)
    B, C, T, Nw, D = 2, 3, 4, 5, 40
    frames = (3 * torch.randn(B, T, D, generator=g)).to(device)
    words = (3 * torch.relu(torch.randn(C, Nw, D, generator=g))).to(device)
    s_sp = (5 * torch.rand(B, C, T, generator=g)).to(device)
    mask = torch.ones(C, Nw, dtype=torch.bool, device=device)
    inputs = [x.clone().requires_grad_(True) for x in (s_sp, frames, words)]
    out = temporal_saliency(*inputs, mask, 0.01, backend=backend)
    out.sum().backward()
    expected = reference_temporal(s_sp.cpu(), frames.cpu(), words.cpu(), mask.cpu(), 0.01)
    assert torch.isfinite(out).all() and all(torch.isfinite(x.grad).all() for x in inputs)
    # Logits reach ~1e4, so float32 rounding of the logits alone is ~1e-3 absolute.
    assert max_rel_error(out, expected) < 1e-3
    torch.testing.assert_close(out.sum(-1).double().cpu(), torch.ones(B, C, dtype=torch.float64))


# --------------------------------------------------------------------------------------------
# Edge cases and errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_masked_words_never_count(device, backend):
    s_sp, frames, words, mask, _ = make_inputs(2, 3, 4, 5, 8, device=device, seed=4)
    poisoned = words.clone()
    poisoned[~mask] = 1e4
    clean = temporal_saliency(s_sp, frames, words, mask, 0.05, backend=backend)
    torch.testing.assert_close(
        temporal_saliency(s_sp, frames, poisoned, mask, 0.05, backend=backend), clean, rtol=0, atol=0
    )
    inputs = poisoned.clone().requires_grad_(True)
    temporal_saliency(s_sp, frames, inputs, mask, 0.05, backend=backend).sum().backward()
    assert (inputs.grad[~mask] == 0).all()


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_zero_video_gives_zero_cosine_and_finite_gradients(device, backend):
    s_temp = torch.full((2, 3, 4), 0.25, device=device)
    frames = torch.randn(2, 4, 8, device=device)
    frames[1] = 0  # f_st = 0 for every class of video 1: the eps floor applies
    class_emb = torch.randn(3, 8, device=device)
    inputs = [x.clone().requires_grad_(True) for x in (s_temp, frames, class_emb)]
    out = sti_similarity(*inputs, backend=backend)
    out.sum().backward()
    assert (out[1] == 0).all()
    for x in inputs:
        assert torch.isfinite(x.grad).all()
    expected = reference_similarity(s_temp.cpu(), frames.cpu(), class_emb.cpu())
    assert max_rel_error(out, expected) < 1e-5


def test_class_without_valid_word_is_an_error_naming_it():
    s_sp, frames, words, mask, _ = make_inputs(2, 4, 3, 5, 8)
    mask[2] = False
    with pytest.raises(ValueError, match="class 2"):
        temporal_saliency(s_sp, frames, words, mask, 0.01)


def test_bad_inputs_raise_clear_errors():
    s_sp, frames, words, mask, class_emb = make_inputs(2, 3, 4, 5, 8)
    with pytest.raises(ValueError, match=r"frames must be \[B, T, D\]"):
        temporal_saliency(s_sp, frames[:, :3], words, mask, 0.01)
    with pytest.raises(ValueError, match="words must be"):
        temporal_saliency(s_sp, frames, words[:2], mask, 0.01)
    with pytest.raises(ValueError, match="word_mask must be"):
        temporal_saliency(s_sp, frames, words, mask[:, :3], 0.01)
    with pytest.raises(TypeError, match="word_mask must be a bool"):
        temporal_saliency(s_sp, frames, words, mask.float(), 0.01)
    with pytest.raises(ValueError, match="temperature must be positive"):
        temporal_saliency(s_sp, frames, words, mask, 0.0)
    with pytest.raises(TypeError, match="frames must be float"):
        temporal_saliency(s_sp, frames.int(), words, mask, 0.01)
    with pytest.raises(ValueError, match="class_emb must be"):
        sti_similarity(s_sp, frames, class_emb[:, :4])
    with pytest.raises(ValueError, match="unknown backend"):
        sti_similarity(s_sp, frames, class_emb, backend="opencl")
    with pytest.raises(ValueError, match="one device"):
        sti_similarity(s_sp, frames.to("meta"), class_emb)
    if "cuda" not in available_backends("cpu", kernel="sti_temporal"):
        with pytest.raises(RuntimeError, match="not available"):
            sti_similarity(s_sp, frames, class_emb, backend="cuda")


# --------------------------------------------------------------------------------------------
# Registration: opcheck, torch.compile, flop formulas
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_opcheck(device, backend):
    s_sp, frames, words, mask, class_emb = make_inputs(2, 3, 3, 4, 16, device=device, seed=8)
    args = [x.requires_grad_(True) for x in (s_sp, frames, words)]
    torch.library.opcheck(torch.ops.stzsar.temporal_saliency, (*args, mask, 0.1, backend))
    s_temp = torch.rand(2, 3, 3, device=device, requires_grad=True)
    torch.library.opcheck(
        torch.ops.stzsar.sti_similarity, (s_temp, frames, class_emb.requires_grad_(True), backend)
    )


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_torch_compile_fullgraph_matches_eager(device, backend):
    torch._dynamo.reset()
    s_sp, frames, words, mask, class_emb = make_inputs(2, 3, 3, 4, 16, device=device, seed=9)

    def step(s, v, a, z):
        return sti_similarity(temporal_saliency(s, v, a, mask, 0.05, backend=backend), v, z, backend=backend)

    leaves = lambda: [x.detach().clone().requires_grad_(True) for x in (s_sp, frames, words, class_emb)]  # noqa: E731
    eager_in, compiled_in = leaves(), leaves()
    eager = step(*eager_in)
    eager.sum().backward()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(*compiled_in)
    compiled.sum().backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6)
    for x, y in zip(compiled_in, eager_in):
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-6, atol=1e-6)


def test_flop_counter_reports_the_formulas():
    B, C, T, Nw, D = 2, 3, 4, 5, 8
    s_sp, frames, words, mask, class_emb = make_inputs(B, C, T, Nw, D, seed=12)
    leaves = [x.requires_grad_(True) for x in (s_sp, frames, words)]
    with FlopCounterMode(display=False) as counter:
        temporal_saliency(*leaves, mask, 0.1, backend="torch").sum().backward()
    counts = counter.get_flop_counts()["Global"]
    assert counts[torch.ops.stzsar.temporal_saliency] == 2 * B * C * T * Nw * D
    assert counts[torch.ops.stzsar.temporal_saliency_backward] == 6 * B * C * T * Nw * D

    s_temp = torch.rand(B, C, T, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        sti_similarity(s_temp, frames.detach(), class_emb, backend="torch").sum().backward()
    counts = counter.get_flop_counts()["Global"]
    forward = 2 * B * T * C * D + 2 * B * T * T * D + 2 * B * C * T * T + 2 * B * C * T + 2 * C * D
    assert counts[torch.ops.stzsar.sti_similarity] == forward
    backward = forward + 4 * B * T * C * D + 2 * B * T * T * D + 2 * B * C * T * T
    assert counts[torch.ops.stzsar.sti_similarity_backward] == backward


# --------------------------------------------------------------------------------------------
# Shapes the GPU kernels cannot take, and the tensors' device
# --------------------------------------------------------------------------------------------


def _gpu_backends(monkeypatch, found=("torch", "cuda", "triton")):
    """Pretend that the CUDA and Triton backends are available for CUDA tensors: the choice of
    backend depends only on the device type and the shape, so it is checked without a GPU."""
    import stzsar.ops.temporal as temporal_ops
    from stzsar import _C

    if not _C.with_cuda():
        pytest.skip("the extension was built without CUDA: its shared-memory limits are not compiled in")
    pytest.importorskip("stzsar.kernels.sti_temporal", reason="Triton is not installed")
    monkeypatch.setattr(
        temporal_ops, "available_backends",
        lambda device, kernel: found if torch.device(device).type == "cuda" else ("torch", "cpu"),
    )
    preferred = {"cuda": "triton", "cpu": "cpu"}
    monkeypatch.setattr(
        temporal_ops, "resolve_backend",
        lambda backend, device, kernel: preferred[torch.device(device).type] if backend == "auto" else backend,
    )
    return temporal_ops


def test_auto_picks_a_backend_that_runs_the_shape(monkeypatch, caplog):
    ops = _gpu_backends(monkeypatch)
    cuda = torch.device("cuda")
    # The Kinetics-400 shape runs on the Triton kernels.
    assert ops._resolve("auto", cuda, torch.bfloat16, "temporal_saliency", 16, 32) == "triton"
    assert ops._resolve("auto", cuda, torch.bfloat16, "sti_similarity", 16) == "triton"
    # Nw = 300 exceeds the Triton kernel's word limit (256) but fits the CUDA kernel's 48 KB.
    with caplog.at_level("DEBUG", logger="stzsar.ops.temporal"):
        assert ops._resolve("auto", cuda, torch.float32, "temporal_saliency", 4, 280) == "cuda"
    assert "skips triton" in caplog.text and "runs cuda" in caplog.text
    # T = 64, Nw = 300 fits neither GPU kernel: the plain PyTorch formulation runs it.
    assert ops._resolve("auto", cuda, torch.float32, "temporal_saliency", 64, 300) == "torch"
    assert ops._resolve("auto", cuda, torch.float32, "sti_similarity", 256) == "torch"
    # CPU tensors: no limits.
    assert ops._resolve("auto", torch.device("cpu"), torch.float32, "temporal_saliency", 64, 300) == "cpu"


def test_explicit_backend_that_cannot_run_the_shape_names_the_limit(monkeypatch):
    ops = _gpu_backends(monkeypatch)
    cuda = torch.device("cuda")
    with pytest.raises(ValueError, match=r"backend='triton' cannot run T=64, Nw=300.*Nw <= 256.*\['torch'\]"):
        ops._resolve("triton", cuda, torch.float32, "temporal_saliency", 64, 300)
    with pytest.raises(ValueError, match=r"backend='cuda' cannot run T=64, Nw=300.*48 KB.*\['torch'\]"):
        ops._resolve("cuda", cuda, torch.float32, "temporal_saliency", 64, 300)
    with pytest.raises(ValueError, match=r"backend='triton' cannot run T=256.*T <= 128.*\['torch'\]"):
        ops._resolve("triton", cuda, torch.float32, "sti_similarity", 256)
    assert ops._resolve("triton", cuda, torch.float32, "temporal_saliency", 64, 256) == "triton"


def test_triton_limits_follow_the_tile():
    K = pytest.importorskip("stzsar.kernels.sti_temporal", reason="Triton is not installed")
    for T, Nw, fits in ((64, 256, True), (64, 257, False), (65, 1, False), (16, 256, True), (1, 1, True)):
        assert K.temporal_fits(T, Nw) is fits, (T, Nw)
    assert K.similarity_fits(128) and not K.similarity_fits(129)


def test_triton_launchers_run_under_the_tensors_device(monkeypatch):
    """Each launcher enters ``torch.cuda.device_of(first input)`` (the current CUDA device need not
    be the tensors'); on a machine with two GPUs the kernels also run on cuda:1 while cuda:0 is
    current (benchmarks/gpu_check.sh)."""
    K = pytest.importorskip("stzsar.kernels.sti_temporal", reason="Triton is not installed")
    entered = []
    real = torch.cuda.device_of

    def spy(obj):
        entered.append(obj.device)
        return real(obj)

    monkeypatch.setattr(torch.cuda, "device_of", spy)
    if torch.cuda.device_count() >= 2:
        device = torch.device("cuda", 1)
    elif not torch.cuda.is_available() and K._INTERPRET:
        device = torch.device("cpu")
    else:
        pytest.skip("needs two GPUs, or the Triton interpreter on CPU tensors")
    s_sp, frames, words, mask, class_emb = make_inputs(1, 2, 3, 2, 16, device=device)
    with torch.cuda.device(0) if device.type == "cuda" else contextlib.nullcontext():
        out = K.temporal_saliency_fwd(s_sp, frames, words, mask, 0.1)
        cos = K.sti_similarity_fwd(out, frames, class_emb, EPS)
    assert entered == [device, device]
    expected = reference_similarity(reference_temporal(s_sp.cpu(), frames.cpu(), words.cpu(), mask.cpu(), 0.1),
                                    frames.cpu(), class_emb.cpu())
    assert max_rel_error(cos, expected) < 1e-5


# --------------------------------------------------------------------------------------------
# Ahead-of-time compilation of the GPU kernels (no GPU needed)
# --------------------------------------------------------------------------------------------

# Compiles the four temporal kernels for sm_90 and sm_80 down to a cubin in a fresh interpreter
# (Triton picks the interpreter at import, so this cannot run in the test process), with the
# arguments their launchers pass at "B,C,T,Nw,D,dtype" and so with the specialisation Triton gives
# them at run time (stzsar.kernels.aot). Prints the shared memory of each kernel.
_AOT_SCRIPT = r"""
import sys
import torch
import stzsar.kernels.sti_temporal as k
from stzsar.kernels.aot import GPUTarget, compile_like_launch

SMEM = {90: 232448, 80: 166912}  # bytes of shared memory one block may use (H100/H200, A100)
f32, u8 = torch.float32, torch.uint8

for spec in sys.argv[1:]:
    *sizes, dtype = spec.split(",")
    B, C, T, Nw, D = (int(x) for x in sizes)
    x = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    dots = dict(UPCAST=False, IEEE=x == torch.float32)
    temporal = dict(k._temporal_blocks(T, Nw, D), **dots)
    per_chunk = k.backward_chunk(B, C, T, Nw, temporal["CB"])
    similarity = dict(k._similarity_blocks(T, D), **dots)
    launches = [  # the arguments of each launcher's kernel[grid](...) call
        (k._temporal_fwd_kernel, (f32, x, x, u8, f32, B, C, T, Nw, D, 0.01), temporal),
        (k._temporal_bwd_kernel, (f32, f32, x, x, u8, f32, f32, B, C, T, Nw, D, 0.01, 0, min(C, per_chunk),
                                  per_chunk * Nw), temporal),
        (k._similarity_fwd_kernel, (f32, x, x, f32, B, C, T, D, 1e-8), similarity),
        (k._similarity_bwd_kernel, (f32, f32, x, x, f32, f32, B, C, T, D, 1e-8), similarity),
    ]
    for cc, ptx in ((90, 64), (80, 32)):
        for fn, args, consts in launches:
            compiled = compile_like_launch(fn, GPUTarget("cuda", cc, ptx), *args, **consts, num_warps=4)
            assert "cubin" in compiled.asm, (spec, cc, fn.__name__)
            shared = compiled.metadata.shared
            assert shared <= SMEM[cc], f"{fn.__name__} at {spec} needs {shared} B of shared memory on sm_{cc}"
            print(spec, f"sm{cc}", fn.__name__, "shared", shared)
"""


def _compile_ahead_of_time(*shapes: str) -> str:
    import subprocess

    try:
        import triton.backends.nvidia  # noqa: F401
    except ImportError:
        pytest.skip("this Triton build has no NVIDIA backend to compile for")
    pytest.importorskip("stzsar.kernels.sti_temporal", reason="Triton is not installed")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", _AOT_SCRIPT, *shapes], capture_output=True, text=True, env=env, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_kernels_compile_for_sm90_and_sm80():
    """The compiled (non-interpreted) temporal kernels build for H100/H200 and A100 with the
    run-time specialisation at the K400 evaluation and training shapes (B=32, C=400 and B=8,
    C=64; T=16, Nw=32, D=512; bf16 and fp32) and at odd ones (B=3, C=7; T=1, Nw=1, Nw=77,
    D=1024), within each architecture's shared memory: catches GPU-only errors without a GPU."""
    shapes = ["32,400,16,32,512,bf16", "8,64,16,32,512,fp32", "3,7,1,32,512,fp32", "3,7,16,1,512,fp32",
              "32,400,16,77,512,bf16", "3,7,16,32,1024,fp32"]
    out = _compile_ahead_of_time(*shapes)
    for shape in shapes:
        for cc in ("sm90", "sm80"):
            assert out.count(f"{shape} {cc} ") == 4, out


@pytest.mark.skipif(
    os.environ.get("STZSAR_AOT_LIMITS") != "1",
    reason="compiling the largest tiles takes minutes on a CPU; STZSAR_AOT_LIMITS=1 runs it (gpu_check.sh does)",
)
def test_largest_accepted_shapes_fit_shared_memory():
    """At the limits of ``temporal_fits`` / ``similarity_fits`` (fp32, the largest tiles) the
    kernels still fit an A100's and an H200's shared memory."""
    K = pytest.importorskip("stzsar.kernels.sti_temporal", reason="Triton is not installed")
    assert K.temporal_fits(64, 256) and K.similarity_fits(128)
    out = _compile_ahead_of_time("3,7,64,256,1024,fp32", "3,7,128,1,1024,fp32")
    assert out.count("sm80") == 8 and out.count("sm90") == 8, out
