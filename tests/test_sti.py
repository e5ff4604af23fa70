"""STIModule against a float64 loop implementation of SPEC section 4."""

import pytest
import torch

from stzsar import STIModule
from tests.sti_reference import sti_loops


def _inputs(B=2, T=3, Np=5, C=3, Nw=4, D=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(B, T, D, generator=g, dtype=dtype)
    patches = torch.randn(B, T, Np, D, generator=g, dtype=dtype)
    words = torch.randn(C, Nw, D, generator=g, dtype=dtype)
    class_emb = torch.randn(C, D, generator=g, dtype=dtype)
    mask = torch.rand(C, Nw, generator=g) > 0.4
    mask[:, 0] = True
    return frames, patches, words, mask, class_emb


def _module(D, normalize=True, seed=1, tau=0.01, fused=True, dtype=torch.float64):
    torch.manual_seed(seed)
    module = STIModule(D, temperature=tau, normalize=normalize, fused=fused).to(dtype)
    with torch.no_grad():  # move away from the identity start so the projections matter
        for layer in (module.patch_proj, module.word_proj):
            layer.weight.add_(0.3 * torch.randn_like(layer.weight))
            layer.bias.add_(0.05 * torch.randn_like(layer.bias))
    return module


def _reference(module, frames, patches, words, mask, class_emb):
    return sti_loops(
        frames, patches, words, mask, class_emb,
        module.patch_proj.weight.detach(), module.patch_proj.bias.detach(),
        module.word_proj.weight.detach(), module.word_proj.bias.detach(),
        module.temperature, module.normalize,
    )


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("tau", [0.01, 0.5])
def test_forward_and_similarity_match_loops(normalize, fused, tau):
    frames, patches, words, mask, class_emb = _inputs(seed=int(tau * 100) + normalize)
    module = _module(frames.shape[-1], normalize=normalize, tau=tau, fused=fused)
    s_sp, s_temp, f_st, cos = _reference(module, frames, patches, words, mask, class_emb)
    got_sp, got_temp, _ = module.saliency(frames, patches, words, mask)
    torch.testing.assert_close(got_sp, s_sp, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got_temp, s_temp, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(module(frames, patches, words, mask), f_st, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(
        module.similarity(frames, patches, words, mask, class_emb), cos, rtol=1e-9, atol=1e-12
    )


def test_float32_matches_float64_loops():
    frames, patches, words, mask, class_emb = _inputs(B=3, T=4, Np=7, C=5, Nw=6, D=16, seed=3)
    module = _module(16, dtype=torch.float64)
    *_, cos = _reference(module, frames, patches, words, mask, class_emb)
    got = module.float().similarity(frames.float(), patches.float(), words.float(), mask, class_emb.float())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), cos, rtol=1e-4, atol=1e-5)


def test_masked_words_never_win_nor_count():
    frames, patches, words, mask, class_emb = _inputs(seed=5)
    module = _module(frames.shape[-1], normalize=False)
    poisoned = words.clone()
    poisoned[~mask] = 1e3  # would dominate both the max and the mean if they leaked in
    expected = _reference(module, frames, patches, words, mask, class_emb)[3]
    got = module.similarity(frames, patches, poisoned, mask, class_emb)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_class_without_valid_word_is_an_error_naming_it():
    frames, patches, words, mask, class_emb = _inputs(C=4)
    mask[2] = False
    module = _module(frames.shape[-1])
    with pytest.raises(ValueError, match="class 2"):
        module.similarity(frames, patches, words, mask, class_emb)


def _count_mask_reads(monkeypatch):
    """Count the reads of a mask's values (the host synchronisation of the word-mask check)."""
    from stzsar.ops import dispatch

    reads = []
    real = dispatch._first_class_without_word

    def spy(mask):
        reads.append(tuple(mask.shape))
        return real(mask)

    monkeypatch.setattr(dispatch, "_first_class_without_word", spy)
    return reads


@pytest.mark.parametrize("fused", [True, False])
def test_word_mask_is_read_once_per_mask(monkeypatch, fused):
    """The first forward with a mask reads it once (not once per op); later forwards, and class
    chunks sliced from it, do not read it again; an in-place change makes it read again."""
    reads = _count_mask_reads(monkeypatch)
    frames, patches, words, mask, class_emb = _inputs(C=5)
    module = _module(frames.shape[-1], fused=fused)
    first = module.similarity(frames, patches, words, mask, class_emb)
    assert reads == [(5, 4)]
    again = module.similarity(frames, patches, words, mask, class_emb)
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    module.similarity(frames, patches, words[1:4], mask[1:4], class_emb[1:4])  # a class chunk
    module(frames, patches, words, mask)
    assert reads == [(5, 4)]
    mask[3, 1:] = False  # in place: still valid, but read again
    module.similarity(frames, patches, words, mask, class_emb)
    assert reads == [(5, 4), (5, 4)]
    mask[3] = False
    with pytest.raises(ValueError, match="class 3 has no valid word"):
        module.similarity(frames, patches, words, mask, class_emb)
    with pytest.raises(ValueError, match="class 2 has no valid word"):  # class 3 of the mask
        module.similarity(frames, patches, words[1:], mask[1:], class_emb[1:])


def test_masks_made_of_checked_rows_need_no_read(monkeypatch):
    """``mark_word_mask_checked`` (a bank's ``select``): the bank's mask is read once, the rows
    selected from it never; a bank with a class without a valid word raises there."""
    from stzsar.ops.dispatch import mark_word_mask_checked

    reads = _count_mask_reads(monkeypatch)
    frames, patches, words, mask, class_emb = _inputs(C=5)
    module = _module(frames.shape[-1])
    for step, labels in enumerate((torch.tensor([4, 0, 4]), torch.tensor([1, 2, 3]))):
        selected = mask[labels]
        mark_word_mask_checked(selected, rows_of=mask)
        module.similarity(frames, patches, words[labels], selected, class_emb[labels])
        assert reads == [(5, 4)], step
    bank_mask = torch.ones(3, 4, dtype=torch.bool)
    bank_mask[1] = False
    with pytest.raises(ValueError, match="class 1 has no valid word"):
        mark_word_mask_checked(bank_mask[torch.tensor([2, 0])], rows_of=bank_mask)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host synchronisations exist only with a GPU")
def test_forward_with_a_checked_mask_does_not_synchronise():
    """On CUDA tensors, once the mask has been checked, the module's forward makes no host sync
    (``torch.cuda.set_sync_debug_mode("error")`` raises on any)."""
    frames, patches, words, mask, class_emb = (t.cuda() for t in _inputs(C=5, dtype=torch.float32))
    module = _module(frames.shape[-1], dtype=torch.float32).cuda()
    with torch.no_grad():
        module.similarity(frames, patches, words, mask, class_emb)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            module.similarity(frames, patches, words, mask, class_emb)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_bad_shapes_raise_clear_errors():
    frames, patches, words, mask, class_emb = _inputs()
    module = _module(frames.shape[-1])
    with pytest.raises(ValueError, match="disagree"):
        module(frames[:, :2], patches, words, mask)
    with pytest.raises(ValueError, match="feature size"):
        STIModule(4).double()(frames, patches, words, mask)
    with pytest.raises(ValueError, match="class_emb"):
        module.similarity(frames, patches, words, mask, class_emb[:2])


@pytest.mark.parametrize("fused", [True, False])
def test_gradcheck_float64(fused):
    frames, patches, words, mask, class_emb = _inputs(B=2, T=3, Np=4, C=2, Nw=3, D=5, seed=7)
    module = _module(5, fused=fused, tau=0.3)
    args = [t.clone().requires_grad_(True) for t in (frames, patches, words, class_emb)]

    def fn(f, p, w, z):
        return module.similarity(f, p, w, mask, z)

    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-6)


def test_parameters_receive_gradients():
    frames, patches, words, mask, class_emb = _inputs(seed=9)
    module = _module(frames.shape[-1], tau=0.3)
    module.similarity(frames, patches, words, mask, class_emb).sum().backward()
    for name, param in module.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_torch_compile_fullgraph_matches_eager():
    frames, patches, words, mask, class_emb = (
        t.float() if t.is_floating_point() else t for t in _inputs(seed=11)
    )
    module = _module(frames.shape[-1], dtype=torch.float32, tau=0.3)
    eager = module.similarity(frames, patches, words, mask, class_emb)
    compiled = torch.compile(module.similarity, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(frames, patches, words, mask, class_emb), eager,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("normalize", [True, False])
def test_no_grad_path_matches_loops(normalize):
    # without autograd the patch projection runs in one buffer; results must not change
    frames, patches, words, mask, class_emb = _inputs(seed=13)
    module = _module(frames.shape[-1], normalize=normalize, tau=0.2)
    *_, cos = _reference(module, frames, patches, words, mask, class_emb)
    with torch.no_grad():
        got = module.similarity(frames, patches, words, mask, class_emb)
    torch.testing.assert_close(got, cos, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# The ablations of SPEC section 4 (the paper's Table 4) as switches of the module

VARIANTS = [(True, True), (True, False), (False, True), (False, False)]  # (spatial, temporal)


def _variant(full: STIModule, spatial: bool, temporal: bool, fused=True, backend="auto", dtype=None):
    """A module of the variant holding ``full``'s projection weights where it has them."""
    module = STIModule(full.dim, temperature=full.temperature, normalize=full.normalize, fused=fused,
                       backend=backend, spatial=spatial, temporal=temporal)
    module = module.to(dtype or full.patch_proj.weight.dtype)
    own = module.state_dict()
    module.load_state_dict({k: v for k, v in full.state_dict().items() if k in own})
    return module


def _variant_reference(full, spatial, temporal, *inputs):
    return sti_loops(
        *inputs,
        full.patch_proj.weight.detach(), full.patch_proj.bias.detach(),
        full.word_proj.weight.detach(), full.word_proj.bias.detach(),
        full.temperature, full.normalize, spatial=spatial, temporal=temporal,
    )


def test_reference_variants_are_what_the_ablations_say():
    # The loops' variants against the closed forms of the ablations (both derived from the SPEC).
    inputs = _inputs(seed=17)
    frames, patches, words, mask, class_emb = inputs
    full = _module(frames.shape[-1])
    s_sp, *_ = _variant_reference(full, True, True, *inputs)
    _, w, f, cos = _variant_reference(full, True, False, *inputs)
    torch.testing.assert_close(w, s_sp)
    v = frames / frames.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(f, torch.einsum("bct,btd->bcd", s_sp, v))
    _, w, f, cos = _variant_reference(full, False, False, *inputs)
    z = class_emb / class_emb.norm(dim=-1, keepdim=True)
    mean = v.mean(1)
    expected = (mean @ z.t()) / mean.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(cos, expected)
    s_no_sp, *_ = _variant_reference(full, False, True, *inputs)
    assert torch.all(s_no_sp == 1)


@pytest.mark.parametrize("spatial,temporal", VARIANTS)
@pytest.mark.parametrize("fused", [True, False])
def test_variants_match_loops_float64(spatial, temporal, fused):
    inputs = _inputs(seed=19)
    full = _module(inputs[0].shape[-1], tau=0.05)
    module = _variant(full, spatial, temporal, fused=fused)
    s_sp, s_temp, f_st, cos = _variant_reference(full, spatial, temporal, *inputs)
    frames, patches, words, mask, class_emb = inputs
    got_sp, got_temp, _ = module.saliency(frames, patches, words, mask)
    torch.testing.assert_close(got_sp, s_sp, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got_temp, s_temp, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(module(frames, patches, words, mask), f_st, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(module.similarity(*inputs), cos, rtol=1e-9, atol=1e-12)


def _backends():
    from stzsar.ops.spatial_maxsim import available_backends

    found = set(available_backends("cpu")) & set(available_backends("cpu", kernel="sti_temporal"))
    return [b for b in ("torch", "cpu", "triton") if b in found]


@pytest.mark.parametrize("spatial,temporal", VARIANTS)
@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
def test_variants_on_every_backend_float32(spatial, temporal, backend):
    if backend not in _backends():
        pytest.skip(f"backend {backend!r} not available here (Triton needs TRITON_INTERPRET=1 on CPU)")
    inputs = _inputs(B=2, T=4, Np=6, C=3, Nw=5, D=16, seed=23)
    full = _module(16, tau=0.05)
    *_, cos = _variant_reference(full, spatial, temporal, *inputs)
    module = _variant(full, spatial, temporal, backend=backend, dtype=torch.float32)
    as32 = [t.float() if t.is_floating_point() else t for t in inputs]
    as32[0].requires_grad_(True)
    got = module.similarity(*as32)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), cos, rtol=1e-4, atol=1e-5)
    got.sum().backward()  # the frames and every parameter the variant has get a gradient
    for name, param in [("frames", as32[0]), *module.named_parameters()]:
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


def test_variants_hold_only_the_projections_they_use():
    assert STIModule(8).patch_proj is not None and STIModule(8).word_proj is not None
    assert STIModule(8, spatial=False).patch_proj is None
    assert STIModule(8, spatial=False).word_proj is not None
    assert STIModule(8, temporal=False).word_proj is not None
    assert list(STIModule(8, spatial=False, temporal=False).parameters()) == []
