"""The ops of ``stzsar.ops`` and ``STIModule`` under ``torch.autocast``: forward and backward on
every backend that runs here, fp32/bf16/fp16 inputs, autocast off/bf16/fp16, against float64.

Each op decides its compute dtypes itself (docs/kernels.md, "Dtypes and autocast"): the features
are read in their dtype, the math accumulates in float32, the results are float32 and the
gradients come back in the inputs' dtypes, whether autocast is on or not. So the tolerances below
depend on the input dtype only; autocast recasting a GEMM inside an op to bf16 would show as a
bf16-sized error on fp32 inputs (and is also caught directly by recording the GEMMs' dtypes).
``projected_spatial_maxsim`` is the one exception by design: like ``F.linear``, it projects in the
autocast dtype, so its inputs count as autocast-dtype inputs.

The float64 references are written from the equations of docs/method.md section 4 with plain
tensor ops and differentiated by autograd; they never call the code under test.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import stzsar  # noqa: F401  (loads the extension)
from stzsar.ops import (
    available_backends,
    projected_spatial_maxsim,
    projected_spatial_maxsim_with_index,
    spatial_maxsim,
    sti_similarity,
    temporal_saliency,
)

BACKENDS = available_backends("cpu", kernel="sti_temporal")


def _device_backends():
    """(device, backend) pairs: every CPU backend here; on a GPU machine every CUDA backend
    (benchmarks/gpu_check.sh runs them), else one CUDA case skipped with the reason."""
    params = [pytest.param("cpu", b, id=f"cpu-{b}") for b in BACKENDS]
    if torch.cuda.is_available():
        params += [pytest.param("cuda", b, id=f"cuda-{b}") for b in available_backends("cuda", kernel="sti_temporal")]
    else:
        params.append(pytest.param("cuda", "auto", id="cuda", marks=pytest.mark.skip(reason="no CUDA device here")))
    return params


DEVICE_BACKENDS = _device_backends()
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
AUTOCAST = [None, torch.bfloat16, torch.float16]
TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}
TAU = 0.1


def _autocast(dtype, device="cpu"):
    return contextlib.nullcontext() if dtype is None else torch.autocast(device, dtype=dtype)


def _rel(actual, expected):
    actual, expected = actual.detach().double(), expected.detach().double()
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30))


def _leaves(tensors, dtype, device="cpu"):
    return [t.detach().to(device=device, dtype=dtype).requires_grad_(True) for t in tensors]


def _check(run, reference, inputs, dtype, autocast_dtype, tol_dtype=None, out_dtype=torch.float32, device="cpu"):
    """Run ``run`` on ``inputs`` cast to ``dtype`` (on ``device``) under ``autocast_dtype``,
    backward with a fixed upstream gradient, and compare output and gradients to ``reference``
    in float64 on the CPU (fed the same rounded inputs)."""
    tol = TOL[tol_dtype or dtype]
    leaves = _leaves(inputs, dtype, device)
    with _autocast(autocast_dtype, device):
        out = run(*leaves)
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
        out.backward(grad_out.to(device=device, dtype=out.dtype))
    assert out.dtype == out_dtype
    ref_leaves = _leaves([x.detach().cpu().to(tol_dtype or dtype) for x in leaves], torch.float64)
    expected = reference(*ref_leaves)
    ref_grads = torch.autograd.grad(expected, ref_leaves, grad_out.double())
    assert _rel(out, expected) < tol, "output"
    for i, (x, ref) in enumerate(zip(leaves, ref_grads)):
        assert x.grad is not None and x.grad.dtype == x.dtype, i
        assert torch.isfinite(x.grad.float()).all(), i
        assert _rel(x.grad, ref) < tol, f"gradient {i}"


# --------------------------------------------------------------------------------------------
# float64 references (docs/method.md section 4)
# --------------------------------------------------------------------------------------------


def ref_spatial(patches, words, mask):
    sim = torch.einsum("btkd,cld->bctkl", patches, words)
    sim = sim.masked_fill(~mask[None, :, None, None, :], float("-inf"))
    return sim.flatten(-2).max(-1).values


def ref_projected(patches, weight, bias, words, mask):
    projected = torch.relu(F.normalize(patches, dim=-1) @ weight.t() + bias)
    return ref_spatial(projected, words, mask)


def ref_temporal(mask):
    def run(s_sp, frames, words):
        logits = s_sp[..., None] * torch.einsum("btd,cld->bctl", frames, words) / TAU
        probs = logits.softmax(dim=2) * mask[None, :, None, :]
        return probs.sum(-1) / mask.sum(-1)[None, :, None]

    return run


def ref_similarity(s_temp, frames, class_emb):
    f_st = torch.einsum("bct,btd->bcd", s_temp, frames)
    return (f_st * class_emb).sum(-1) / (f_st.norm(dim=-1) * class_emb.norm(dim=-1))


# --------------------------------------------------------------------------------------------
# Inputs: the spatial winners are separated by a margin well above bf16 rounding, so the
# gradients (which go to the winners only) are comparable across dtypes.
# --------------------------------------------------------------------------------------------


def _spatial_inputs(B=2, T=2, Np=3, C=3, Nw=2, D=16, seed=90):
    g = torch.Generator().manual_seed(seed)
    patches = torch.randn(B, T, Np, D, generator=g)
    words = torch.randn(C, Nw, D, generator=g)
    mask = torch.ones(C, Nw, dtype=torch.bool)
    return patches, words, mask


def _margin(sim_flat):
    top = sim_flat.topk(2, dim=-1).values
    return float((top[..., 0] - top[..., 1]).min() / top[..., 0].abs().max())


def test_spatial_inputs_have_a_margin():
    """Precondition of the spatial tests below (fails if the seeds stop giving separated winners)."""
    patches, words, mask = _spatial_inputs()
    sim = torch.einsum("btkd,cld->bctkl", patches.double(), words.double()).flatten(-2)
    assert _margin(sim) > 0.03
    weight, bias = _projection(16)
    projected = torch.relu(F.normalize(patches.double(), dim=-1) @ weight.double().t() + bias.double())
    sim = torch.einsum("btkd,cld->bctkl", projected, words.double()).flatten(-2)
    assert _margin(sim) > 0.03


def _projection(D, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.eye(D) + 0.3 * torch.randn(D, D, generator=g), 0.05 * torch.randn(D, generator=g)


def _temporal_inputs(B=2, C=3, T=3, Nw=4, D=16, seed=2):
    g = torch.Generator().manual_seed(seed)
    s_sp = torch.rand(B, C, T, generator=g)
    frames = F.normalize(torch.randn(B, T, D, generator=g), dim=-1)
    words = torch.relu(torch.randn(C, Nw, D, generator=g)) / 3
    mask = torch.rand(C, Nw, generator=g) > 0.3
    mask[:, 0] = True
    class_emb = torch.randn(C, D, generator=g)
    s_temp = torch.softmax(torch.randn(B, C, T, generator=g), -1)
    return s_sp, frames, words, mask, class_emb, s_temp


# --------------------------------------------------------------------------------------------
# The ops
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("autocast_dtype", AUTOCAST, ids=["off", "bf16", "fp16"])
@pytest.mark.parametrize("device, backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16", "fp16"])
def test_spatial_maxsim(device, backend, dtype, autocast_dtype):
    patches, words, mask = _spatial_inputs()
    _check(
        lambda p, w: spatial_maxsim(p, w, mask.to(device), backend=backend),
        lambda p, w: ref_spatial(p, w, mask),
        [patches, words], dtype, autocast_dtype, device=device,
    )


@pytest.mark.parametrize("autocast_dtype", AUTOCAST, ids=["off", "bf16", "fp16"])
@pytest.mark.parametrize("device, backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16", "fp16"])
def test_projected_spatial_maxsim(device, backend, dtype, autocast_dtype):
    patches, words, mask = _spatial_inputs()
    weight, bias = _projection(patches.shape[-1])
    # Under autocast the op projects in the autocast dtype (as F.linear would), so the inputs are
    # effectively of that dtype; the gradient GEMMs still run in float32.
    effective = autocast_dtype if autocast_dtype is not None else dtype
    _check(
        lambda p, W, b, w: projected_spatial_maxsim(p, W, b, w, mask.to(device), backend=backend, chunk_frames=3),
        lambda p, W, b, w: ref_projected(p, W, b, w, mask),
        [patches, weight, bias, words], dtype, autocast_dtype, tol_dtype=effective, device=device,
    )


@pytest.mark.parametrize("autocast_dtype", AUTOCAST, ids=["off", "bf16", "fp16"])
@pytest.mark.parametrize("device, backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16", "fp16"])
def test_temporal_saliency(device, backend, dtype, autocast_dtype):
    s_sp, frames, words, mask, _, _ = _temporal_inputs()
    _check(
        lambda s, v, a: temporal_saliency(s.float(), v, a, mask.to(device), TAU, backend=backend),
        ref_temporal(mask),
        [s_sp, frames, words], dtype, autocast_dtype, device=device,
    )


@pytest.mark.parametrize("autocast_dtype", AUTOCAST, ids=["off", "bf16", "fp16"])
@pytest.mark.parametrize("device, backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16", "fp16"])
def test_sti_similarity(device, backend, dtype, autocast_dtype):
    _, frames, _, _, class_emb, s_temp = _temporal_inputs()
    _check(
        lambda s, v, z: sti_similarity(s.float(), v, z, backend=backend),
        ref_similarity,
        [s_temp, frames, class_emb], dtype, autocast_dtype, device=device,
    )


@pytest.mark.parametrize("autocast_dtype", AUTOCAST, ids=["off", "bf16", "fp16"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device here"))])
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16", "fp16"])
def test_sti_similarity_reference_follows_the_rule(device, dtype, autocast_dtype):
    """The non-fused path (``STIModule(fused=False)``) computes as the fused op does: float32
    math with autocast off (a recast GEMM would give a bf16-sized error on fp32 inputs), a
    float32 result, gradients in the inputs' dtypes."""
    from stzsar.sti.module import sti_similarity_reference

    _, frames, _, _, class_emb, s_temp = _temporal_inputs()
    _check(
        lambda s, v, z: sti_similarity_reference(s.float(), v, z),
        ref_similarity,
        [s_temp, frames, class_emb], dtype, autocast_dtype, device=device,
    )


@pytest.mark.parametrize("autocast_dtype", AUTOCAST, ids=["off", "bf16", "fp16"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16", "fp16"])
def test_temporal_saliency_reference_follows_the_rule(dtype, autocast_dtype):
    """The plain temporal step of ``STIModule(fused=False)``, likewise (forward and backward)."""
    from stzsar.sti.module import temporal_saliency_reference

    s_sp, frames, words, mask, _, _ = _temporal_inputs()
    _check(
        lambda s, v, a: temporal_saliency_reference(s.float(), v, a, mask, TAU),
        ref_temporal(mask),
        [s_sp, frames, words], dtype, autocast_dtype,
    )


class _ProductDtypes(TorchFunctionMode):
    """Records the result dtype of every matrix product called from Python (autocast recasts them
    below this level, so a recast shows in the result's dtype)."""

    PRODUCTS = {"mm", "addmm_", "addmm", "bmm", "baddbmm_", "matmul", "__matmul__", "einsum", "linear"}

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if getattr(func, "__name__", "") in self.PRODUCTS and isinstance(out, torch.Tensor):
            self.seen.append((func.__name__, out.dtype))
        return out


def _body(op):
    """The Python function a ``torch.library.custom_op`` wraps (called here with the function mode
    active, which the op's dispatch would otherwise hide)."""
    return op._init_fn


def test_no_product_inside_the_ops_runs_in_the_autocast_dtype():
    """Under bf16 autocast the torch backend's einsums on fp32 inputs stay fp32, and so do the
    projected op's two gradient GEMMs (its recomputed projection is bf16, as in the forward)."""
    from stzsar.ops import projected_maxsim, temporal

    s_sp, frames, words, mask, class_emb, s_temp = _temporal_inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16), _ProductDtypes() as seen:
        _body(temporal._temporal_saliency_op)(s_sp, frames, words, mask, TAU, "torch")
        _body(temporal._temporal_saliency_backward_op)(
            torch.ones_like(s_sp), s_sp, frames, words, mask, TAU, "torch", [True, True, True]
        )
        _body(temporal._sti_similarity_backward_op)(
            torch.ones(s_temp.shape[:2]), s_temp, frames, class_emb, "torch", [True, True, True]
        )
    assert seen.seen and all(dtype == torch.float32 for _, dtype in seen.seen), seen.seen

    patches, pwords, pmask = (x.bfloat16() if x.is_floating_point() else x for x in _spatial_inputs())
    weight, bias = (x.bfloat16() for x in _projection(patches.shape[-1]))
    scores, index = projected_spatial_maxsim_with_index(patches, weight, bias, pwords, pmask, backend="torch")
    with torch.autocast("cpu", dtype=torch.bfloat16), _ProductDtypes() as seen:
        _body(projected_maxsim._projected_backward_op)(
            torch.ones_like(scores), index, patches, weight, bias, pwords, True, 2
        )
    names = [(name, dtype) for name, dtype in seen.seen]
    assert ("addmm_", torch.float32) in names and ("matmul", torch.float32) in names, names
    assert all(dtype == torch.float32 for name, dtype in names if name != "linear"), names


# --------------------------------------------------------------------------------------------
# STIModule
# --------------------------------------------------------------------------------------------


def _module_inputs(seed=3):
    g = torch.Generator().manual_seed(seed)
    B, T, Np, C, Nw, D = 2, 3, 3, 3, 2, 16
    return (
        torch.randn(B, T, D, generator=g),
        torch.randn(B, T, Np, D, generator=g),
        torch.randn(C, Nw, D, generator=g),
        torch.ones(C, Nw, dtype=torch.bool),
        torch.randn(C, D, generator=g),
    )


@pytest.mark.parametrize("autocast_dtype", AUTOCAST, ids=["off", "bf16", "fp16"])
@pytest.mark.parametrize("device, backend", DEVICE_BACKENDS)
def test_sti_module_similarity(device, backend, autocast_dtype):
    """fp32 module and inputs; under autocast its projections (F.linear) run in the autocast dtype,
    so it is held to that dtype's tolerance, against the float64 plain formulation."""
    from stzsar import STIModule

    frames, patches, words, mask, class_emb = _module_inputs()
    torch.manual_seed(0)
    module = STIModule(16, temperature=0.05, backend=backend)
    with torch.no_grad():
        for layer in (module.patch_proj, module.word_proj):
            layer.weight.add_(0.2 * torch.randn_like(layer.weight))
    reference = STIModule(16, temperature=0.05, fused=False, backend="torch").double()
    reference.load_state_dict(module.state_dict())
    module.to(device)
    leaves = _leaves([frames, patches, words, class_emb], torch.float32, device)
    with _autocast(autocast_dtype, device):
        out = module.similarity(leaves[0], leaves[1], leaves[2], mask.to(device), leaves[3])
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
        out.backward(grad_out.to(device))
    assert out.dtype == torch.float32
    ref_leaves = _leaves([frames, patches, words, class_emb], torch.float64)
    expected = reference.similarity(ref_leaves[0], ref_leaves[1], ref_leaves[2], mask, ref_leaves[3])
    ref_grads = torch.autograd.grad(expected, ref_leaves + list(reference.parameters()), grad_out.double())
    tol = TOL[autocast_dtype or torch.float32] * (5 if autocast_dtype else 1)
    assert _rel(out, expected) < tol
    grads = [x.grad for x in leaves] + [p.grad for p in module.parameters()]
    for i, (got, ref) in enumerate(zip(grads, ref_grads)):
        assert got is not None and got.dtype == torch.float32 and torch.isfinite(got).all(), i
        assert _rel(got, ref) < tol, f"gradient {i}"
