"""The ops of ``stzsar.ops`` on the GPU backends against float64 references, and ``STIModule``
compiled with inductor against eager mode: the correctness steps of the GPU check's stage
``kernels`` (benchmarks/gpu_check.py).

On a CUDA machine every op runs forward and backward on the ``cuda`` and ``triton`` backends at
the shapes that matter (ViT-B/16 K400 training per GPU B=8, T=16, Np=196, D=512, Nw=32, C=64;
evaluation C=400; ViT-L/14 Np=256, D=768) and at odd ones, with fp32, bf16 and fp16 inputs and
under autocast. The cases are few on purpose: Np, Nw, T and D are compile-time constants of the
Triton kernels, so every (shape, dtype) costs cold compiles (each case names its compile group
for pytest-xdist's ``--dist loadgroup``). Without CUDA the same cases run on the ``cpu`` and
``triton`` (interpreter) backends at tiny shapes: the stage's dry run (``GPU_CHECK_DRY=1``, run
by tests/test_gpu_check.py in CI). A plain test run on a CPU skips this file, which would only
repeat that dry run.

The references are the equations of docs/method.md section 4 in float64 (plain tensor ops and
autograd), fed the same rounded inputs; they never call the code under test. The spatial ops'
gradients go to the winning (patch, word) only, so outputs whose best two candidates lie closer
than the kernels' float32 rounding are left out of the gradient check (their upstream gradient is
zero) and their winners are not compared; the test asserts that they are a small minority.
"""

from __future__ import annotations

import contextlib
import os
import sys
import zlib
from dataclasses import dataclass
from typing import Optional

import pytest
import torch
import torch.nn.functional as F

from stzsar.ops import dispatch
from stzsar.ops import projected_spatial_maxsim_with_index, spatial_maxsim_with_index, sti_similarity, temporal_saliency

CUDA = torch.cuda.is_available()
DRY = os.environ.get("GPU_CHECK_DRY", "0") == "1"
DEVICE = "cuda" if CUDA else "cpu"
GPU_BACKENDS = ("cuda", "triton") if CUDA else ("cpu", "triton")
TAU = 0.05

if not CUDA and not DRY:
    pytestmark = pytest.mark.skip(
        reason="no CUDA device: these cases run on the CPU backends in the dry run of the GPU check "
        "(tests/test_gpu_check.py runs it; GPU_CHECK_DRY=1 runs this file directly)"
    )


@dataclass(frozen=True)
class Shape:
    B: int
    T: int
    Np: int
    C: int
    Nw: int
    D: int


@dataclass(frozen=True)
class Case:
    shape: str
    dtype: torch.dtype
    autocast: Optional[torch.dtype] = None
    backward: bool = True

    def id(self) -> str:
        name = f"{self.shape}-{_short(self.dtype)}"
        if self.autocast is not None:
            name += f"-autocast_{_short(self.autocast)}"
        return name + ("" if self.backward else "-fwd")


def _short(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


FP32, BF16, FP16 = torch.float32, torch.bfloat16, torch.float16

if CUDA:
    SHAPES = {
        "b16-train": Shape(B=8, T=16, Np=196, C=64, Nw=32, D=512),
        "b16-eval": Shape(B=8, T=16, Np=196, C=400, Nw=32, D=512),
        "l14-train": Shape(B=4, T=16, Np=256, C=64, Nw=32, D=768),
        "odd": Shape(B=3, T=7, Np=50, C=9, Nw=5, D=72),
        "odd-wide": Shape(B=2, T=5, Np=13, C=130, Nw=40, D=24),
    }
    CASES = [
        Case("b16-train", FP32), Case("b16-train", BF16), Case("b16-train", FP16),
        Case("b16-train", FP32, BF16), Case("b16-train", FP32, FP16),
        Case("b16-eval", BF16, backward=False),
        Case("l14-train", FP32), Case("l14-train", BF16),
        Case("odd", FP32), Case("odd", BF16), Case("odd", FP16), Case("odd", FP32, BF16),
        Case("odd-wide", FP32),
    ]
else:
    SHAPES = {
        "tiny": Shape(B=2, T=3, Np=5, C=3, Nw=4, D=16),
        "odd": Shape(B=1, T=5, Np=7, C=6, Nw=5, D=40),
    }
    CASES = [
        Case("tiny", FP32), Case("tiny", BF16), Case("tiny", FP16), Case("tiny", FP32, BF16),
        Case("odd", FP32),
    ]

# Norm-wise relative error allowed, by the dtype the op computes from (inputs rounded to it are
# also the reference's inputs, so what remains is float32 accumulation and, for 16-bit inputs,
# gradients returned in the input dtype).
TOL = {FP32: 1e-4, BF16: 3e-2, FP16: 6e-3}
# Outputs whose best two candidates differ by less than this (relative to the largest score) may
# legitimately pick either winner in float32: left out of the winner and gradient checks.
TIE = 1e-4
TIE_PROJECTED_16BIT = 1e-3  # the projection itself is rounded to 16 bits (like F.linear)
MAX_TIE_FRACTION = 0.05


def _backend_params(op: str, cases=CASES):
    """(backend, case) for every GPU backend that can run ``op`` here. A missing backend gives no
    case: ``--require-backends`` (tests/conftest.py) makes that a collection error."""
    params = []
    for backend in GPU_BACKENDS:
        if dispatch.probe(backend, DEVICE, op) is not None:
            continue
        for case in cases:
            params.append(pytest.param(backend, case, id=f"{backend}-{case.id()}",
                                       marks=pytest.mark.xdist_group(_group(op, case))))
    return params


def _group(op: str, case: Case) -> str:
    """Cases that compile the same Triton kernels (shape constants and dtype) share a worker."""
    s = SHAPES[case.shape]
    kernel_dtype = case.autocast if (op == "projected_spatial_maxsim" and case.autocast) else case.dtype
    return f"Np{s.Np}-Nw{s.Nw}-D{s.D}-T{s.T}-{_short(kernel_dtype)}"


def _autocast(dtype: Optional[torch.dtype]):
    return contextlib.nullcontext() if dtype is None else torch.autocast(DEVICE, dtype=dtype)


def _rel(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().double(), expected.detach().double().to(actual.device)
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30))


def _generator(case: Case, salt: int) -> torch.Generator:
    # crc32, not hash(): the seed must not change with PYTHONHASHSEED between runs and workers.
    return torch.Generator().manual_seed(zlib.crc32(f"{case.id()}/{salt}".encode()))


def _ragged_mask(C: int, Nw: int, g: torch.Generator) -> torch.Tensor:
    mask = torch.rand(C, Nw, generator=g) < 0.7
    mask[torch.arange(C), torch.randint(0, Nw, (C,), generator=g)] = True  # every class keeps a word
    return mask


def _leaf(x: torch.Tensor, dtype: torch.dtype, grad: bool) -> torch.Tensor:
    return x.to(device=DEVICE, dtype=dtype).requires_grad_(grad)


# --------------------------------------------------------------------------------------------
# float64 reference of the spatial double max, by class chunks
# --------------------------------------------------------------------------------------------


def reference_spatial(patches64, words64, mask, grad=None, chunk=16):
    """``(S [B, C, T], winner k*Nw+l, gap between the best two, grads)`` in float64 from the full
    similarity tensor; ``grads`` are the gradients of ``<grad, S>`` with respect to the leaves
    ``patches64`` and ``words64`` (accumulated by autograd) when ``grad`` is given."""
    C = words64.shape[0]
    values, winners, gaps = [], [], []
    for c0 in range(0, C, chunk):
        c1 = min(C, c0 + chunk)
        with torch.set_grad_enabled(grad is not None):
            sim = torch.einsum("btkd,cld->bctkl", patches64, words64[c0:c1])
            sim = sim.masked_fill(~mask[c0:c1].view(1, c1 - c0, 1, 1, -1), float("-inf")).flatten(-2)
            best = sim.max(dim=-1)
            if grad is not None:
                best.values.backward(grad[:, c0:c1].double())
        top2 = sim.detach().topk(2, dim=-1).values
        values.append(best.values.detach())
        winners.append(best.indices)
        gaps.append(top2[..., 0] - top2[..., 1])
    return torch.cat(values, 1), torch.cat(winners, 1), torch.cat(gaps, 1)


def _ties(values: torch.Tensor, gaps: torch.Tensor, tie: float) -> torch.Tensor:
    ties = gaps <= tie * float(values.abs().max())
    count = int(ties.sum())
    assert count <= max(2, MAX_TIE_FRACTION * ties.numel()), (
        f"{count} of {ties.numel()} outputs are near-ties: the inputs test too little")
    return ties


def _check_scores_then_backward(out, index, values, winners, gaps, tie: float, case: Case, g: torch.Generator):
    """Scores and winners of a spatial op against the reference; then, for a case with a backward,
    the op's backward with the near-ties' upstream gradient set to zero. Returns that gradient
    (``None`` for a forward-only case)."""
    ties = _ties(values, gaps, tie)
    assert _rel(out, values) < TOL[FP32], "scores (float32 accumulation of the rounded inputs)"
    assert torch.equal(index.long()[~ties], winners[~ties]), "winning (patch, word) index"
    if not case.backward:
        return None
    grad = torch.randn(out.shape, generator=g).to(DEVICE).masked_fill(ties, 0.0)
    with _autocast(case.autocast):
        out.backward(grad)
    return grad


# --------------------------------------------------------------------------------------------
# The ops
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend, case", _backend_params("spatial_maxsim"))
def test_spatial_maxsim(backend, case):
    s = SHAPES[case.shape]
    g = _generator(case, 1)
    patches = F.normalize(torch.randn(s.B, s.T, s.Np, s.D, generator=g), dim=-1)
    words = F.normalize(torch.randn(s.C, s.Nw, s.D, generator=g), dim=-1)
    mask = _ragged_mask(s.C, s.Nw, g).to(DEVICE)
    p, w = _leaf(patches, case.dtype, case.backward), _leaf(words, case.dtype, case.backward)
    with _autocast(case.autocast):
        out, index = spatial_maxsim_with_index(p, w, mask, backend=backend)
    assert out.dtype == torch.float32 and out.shape == (s.B, s.C, s.T)

    p64 = p.detach().double().requires_grad_(case.backward)
    w64 = w.detach().double().requires_grad_(case.backward)
    grad = _check_scores_then_backward(out, index, *reference_spatial(p64, w64, mask), TIE, case, g)
    if grad is None:
        return
    reference_spatial(p64, w64, mask, grad=grad)
    for name, leaf, ref in (("patches", p, p64.grad), ("words", w, w64.grad)):
        assert leaf.grad.dtype == leaf.dtype, name
        assert _rel(leaf.grad, ref) < TOL[case.dtype], f"gradient of {name}"


@pytest.mark.parametrize("backend, case", _backend_params("projected_spatial_maxsim"))
def test_projected_spatial_maxsim(backend, case):
    s = SHAPES[case.shape]
    g = _generator(case, 2)
    patches = torch.randn(s.B, s.T, s.Np, s.D, generator=g) * 3
    weight = torch.eye(s.D) + torch.randn(s.D, s.D, generator=g) / s.D**0.5
    bias = 0.02 * torch.randn(s.D, generator=g)
    words = F.normalize(torch.relu(torch.randn(s.C, s.Nw, s.D, generator=g)), dim=-1)
    mask = _ragged_mask(s.C, s.Nw, g).to(DEVICE)
    leaves = [_leaf(x, case.dtype, case.backward) for x in (patches, weight, bias, words)]
    with _autocast(case.autocast):
        out, index = projected_spatial_maxsim_with_index(leaves[0], leaves[1], leaves[2], leaves[3], mask, backend=backend)
    assert out.dtype == torch.float32 and out.shape == (s.B, s.C, s.T)

    # Like F.linear, the op projects in the autocast dtype (else the inputs' dtype): the winners
    # are those of the projection rounded to that dtype, computed here by torch's own ops.
    compute = case.autocast or case.dtype
    rounded = [x.detach().to(compute) for x in leaves]
    with torch.no_grad():
        projected = F.relu(F.linear(F.normalize(rounded[0], dim=-1), rounded[1], rounded[2]))
    _, winners, _ = reference = reference_spatial(projected.double(), rounded[3].double(), mask)
    grad = _check_scores_then_backward(out, index, *reference, TIE if compute == FP32 else TIE_PROJECTED_16BIT, case, g)
    if grad is None:
        return
    # Gradients: autograd through the float64 projection, at the winners found above.
    x64 = [r.double().requires_grad_(True) for r in rounded]
    projected64 = F.relu(F.linear(F.normalize(x64[0], dim=-1), x64[1], x64[2]))
    sim = torch.einsum("btkd,cld->bctkl", projected64, x64[3]).flatten(-2)
    chosen = sim.gather(-1, winners.unsqueeze(-1)).squeeze(-1)
    chosen.backward(grad.double())
    for name, leaf, ref in zip(("patches", "weight", "bias", "words"), leaves, x64):
        assert leaf.grad.dtype == leaf.dtype, name
        assert _rel(leaf.grad, ref.grad) < TOL[compute], f"gradient of {name}"


def reference_temporal(s_sp, frames, words, mask, tau=TAU):
    logits = s_sp.unsqueeze(-1) * torch.einsum("btd,cld->bctl", frames, words) / tau
    probs = logits.softmax(dim=2) * mask[None, :, None, :]
    return probs.sum(-1) / mask.sum(-1)[None, :, None]


def reference_similarity(s_temp, frames, class_emb):
    f_st = torch.einsum("bct,btd->bcd", s_temp, frames)
    return (f_st * class_emb).sum(-1) / (f_st.norm(dim=-1) * class_emb.norm(dim=-1))


def _temporal_inputs(s: Shape, g: torch.Generator):
    s_sp = torch.rand(s.B, s.C, s.T, generator=g)
    frames = F.normalize(torch.randn(s.B, s.T, s.D, generator=g), dim=-1)
    words = F.normalize(torch.relu(torch.randn(s.C, s.Nw, s.D, generator=g)), dim=-1)
    return s_sp, frames, words, _ragged_mask(s.C, s.Nw, g)


def _check_against(run, reference, inputs, case: Case, g: torch.Generator, tol: float):
    """Run forward (and backward) on ``inputs`` cast to the case's dtype under its autocast; compare
    with ``reference`` in float64 on the same rounded inputs."""
    leaves = [_leaf(x, case.dtype, case.backward) for x in inputs]
    with _autocast(case.autocast):
        out = run(*leaves)
    assert out.dtype == torch.float32
    ref_leaves = [x.detach().double().requires_grad_(case.backward) for x in leaves]
    expected = reference(*ref_leaves)
    assert _rel(out, expected) < tol, "output"
    if not case.backward:
        return
    grad = torch.randn(out.shape, generator=g).to(DEVICE)
    with _autocast(case.autocast):
        out.backward(grad)
    expected.backward(grad.double())
    for i, (leaf, ref) in enumerate(zip(leaves, ref_leaves)):
        assert leaf.grad is not None and leaf.grad.dtype == leaf.dtype, i
        assert torch.isfinite(leaf.grad.float()).all(), i
        assert _rel(leaf.grad, ref.grad) < tol, f"gradient of input {i}"


@pytest.mark.parametrize("backend, case", _backend_params("temporal_saliency"))
def test_temporal_saliency(backend, case):
    s = SHAPES[case.shape]
    g = _generator(case, 3)
    s_sp, frames, words, mask = _temporal_inputs(s, g)
    mask = mask.to(DEVICE)
    _check_against(
        lambda a, v, w: temporal_saliency(a, v, w, mask, TAU, backend=backend),
        lambda a, v, w: reference_temporal(a, v, w, mask),
        (s_sp, frames, words), case, g, TOL[case.dtype],
    )


@pytest.mark.parametrize("backend, case", _backend_params("sti_similarity"))
def test_sti_similarity(backend, case):
    s = SHAPES[case.shape]
    g = _generator(case, 4)
    s_temp = torch.softmax(torch.randn(s.B, s.C, s.T, generator=g), dim=-1)
    frames = F.normalize(torch.randn(s.B, s.T, s.D, generator=g), dim=-1)
    class_emb = torch.randn(s.C, s.D, generator=g)
    _check_against(
        lambda a, v, z: sti_similarity(a, v, z, backend=backend),
        reference_similarity,
        (s_temp, frames, class_emb), case, g, TOL[case.dtype],
    )


# --------------------------------------------------------------------------------------------
# The temporal kernels at the largest shapes they accept, and `auto` past them
# --------------------------------------------------------------------------------------------

# (op, T, Nw): the Triton kernels' accepted limits (stzsar/kernels/sti_temporal.py: T <= 64 and Nw <= 256
# for temporal_saliency, T <= 128 for sti_similarity), then shapes past every GPU kernel's limit.
LIMIT_D = 1024 if CUDA else 16
LIMITS = [("temporal_saliency", 64, 256), ("sti_similarity", 128, 4), ("temporal_saliency", 200, 8), ("sti_similarity", 300, 4)]


def _limit_params():
    params = []
    for backend in GPU_BACKENDS + ("auto",):
        for op, T, Nw in LIMITS:
            if backend != "auto" and dispatch.probe(backend, DEVICE, op) is not None:
                continue
            params.append(pytest.param(backend, op, T, Nw, id=f"{backend}-{op}-T{T}-Nw{Nw}",
                                       marks=pytest.mark.xdist_group(f"limits-{op}-T{T}-Nw{Nw}")))
    return params


@pytest.mark.parametrize("backend, op, T, Nw", _limit_params())
def test_temporal_ops_at_their_limits(backend, op, T, Nw):
    """fp32, D=1024 on a GPU (the largest tiles). A backend either runs the shape and matches the
    reference, or refuses it with a ValueError naming its limit; Triton must run its own accepted
    limits; ``auto`` must run every shape."""
    case = Case("limits", FP32)
    s = Shape(B=2, T=T, Np=1, C=4, Nw=Nw, D=LIMIT_D)
    g = _generator(case, T * 1000 + Nw)
    if op == "temporal_saliency":
        s_sp, frames, words, mask = _temporal_inputs(s, g)
        mask = mask.to(DEVICE)
        run = lambda a, v, w: temporal_saliency(a, v, w, mask, TAU, backend=backend)  # noqa: E731
        reference = lambda a, v, w: reference_temporal(a, v, w, mask)  # noqa: E731
        inputs = (s_sp, frames, words)
    else:
        inputs = (torch.softmax(torch.randn(s.B, s.C, s.T, generator=g), dim=-1),
                  F.normalize(torch.randn(s.B, s.T, s.D, generator=g), dim=-1), torch.randn(s.C, s.D, generator=g))
        run = lambda a, v, z: sti_similarity(a, v, z, backend=backend)  # noqa: E731
        reference = reference_similarity
    within_triton = (T <= 64 and Nw <= 256) if op == "temporal_saliency" else T <= 128
    must_run = backend == "auto" or (backend == "triton" and within_triton)
    try:
        _check_against(run, reference, inputs, case, g, TOL[FP32])
    except ValueError as error:
        if must_run or "cannot run" not in str(error):
            raise


# --------------------------------------------------------------------------------------------
# STIModule compiled with inductor (fullgraph) against eager
# --------------------------------------------------------------------------------------------

COMPILE_SHAPE = Shape(B=2, T=16, Np=196, C=64, Nw=32, D=512) if CUDA else Shape(B=2, T=3, Np=4, C=3, Nw=2, D=16)


def _compile_params():
    return [pytest.param(b, id=b, marks=pytest.mark.xdist_group(f"inductor-{b}")) for b in GPU_BACKENDS
            if all(dispatch.probe(b, DEVICE, op) is None for op in dispatch.OPS)]


@pytest.mark.inductor
@pytest.mark.parametrize("backend", _compile_params())
def test_sti_module_inductor_fullgraph_matches_eager(backend):
    """``forward`` (f_st) and ``similarity`` in one ``torch.compile(fullgraph=True,
    backend="inductor")`` graph on the device, forward and backward: outputs and the gradients of
    every input and parameter equal eager mode's. No open_clip: the GPU machine has none."""
    from stzsar import STIModule

    torch._dynamo.reset()
    s = COMPILE_SHAPE
    g = torch.Generator().manual_seed(11)
    module = STIModule(s.D, temperature=TAU, backend=backend)
    with torch.no_grad():
        for layer in (module.patch_proj, module.word_proj):
            layer.weight.add_(torch.randn(layer.weight.shape, generator=g) / s.D**0.5)
            layer.bias.add_(0.02 * torch.randn(layer.bias.shape, generator=g))
    module.to(DEVICE)
    mask = _ragged_mask(s.C, s.Nw, g).to(DEVICE)
    inputs = [torch.randn(s.B, s.T, s.D, generator=g), torch.randn(s.B, s.T, s.Np, s.D, generator=g),
              torch.randn(s.C, s.Nw, s.D, generator=g), torch.randn(s.C, s.D, generator=g)]
    grad_fst = torch.randn(s.B, s.C, s.D, generator=g).to(DEVICE)
    grad_cos = torch.randn(s.B, s.C, generator=g).to(DEVICE)

    def both(frames, patches, words, class_emb):
        return module(frames, patches, words, mask), module.similarity(frames, patches, words, mask, class_emb)

    def run(fn):
        leaves = [x.to(DEVICE).requires_grad_(True) for x in inputs]
        f_st, cos = fn(*leaves)
        grads = torch.autograd.grad([f_st, cos], leaves + list(module.parameters()), [grad_fst, grad_cos])
        return f_st, cos, grads

    compiled = run(torch.compile(both, fullgraph=True, backend="inductor"))
    eager = run(both)
    try:
        assert _rel(compiled[0], eager[0]) < 1e-4, "f_st"
        assert _rel(compiled[1], eager[1]) < 1e-4, "cos"
        for i, (a, e) in enumerate(zip(compiled[2], eager[2])):
            assert _rel(a, e) < 1e-4, f"gradient {i}"
    finally:
        torch._dynamo.reset()
    assert "open_clip" not in sys.modules, "the compiled STI path imported open_clip"
