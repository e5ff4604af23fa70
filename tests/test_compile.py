"""``torch.compile`` of the STI head and of the training step's model call (issue 15).

The fused ops must trace without graph breaks, so ``fullgraph=True`` compiles (inductor, on the
CPU) of ``STIModule`` and of ``STZSARModel.forward`` (the call ``in_batch_loss`` makes in the
trainer) must succeed, forward and backward, and agree with eager mode and with float64. The
float64 reference of the STI is written from the equations of docs/method.md section 4 with plain
tensor ops; it never calls the code under test. Shapes are tiny: each inductor compile takes
seconds on a CPU.

Also here: ``train.compile`` / ``EvalSettings.compile`` resolution (``auto``: on for CUDA, off on
the CPU) and the trainer's in-place compile (parameter names unchanged, same first step as eager).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stzsar import STIModule
from stzsar.losses import multi_positive_contrastive_loss
from stzsar.train.trainer import compile_model, resolve_compile

BACKENDS = ["torch", "cpu"]
TAU = 0.05


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _backend_or_skip(backend):
    from stzsar.ops import available_backends

    if backend not in available_backends("cpu", kernel="sti_temporal"):
        pytest.skip(f"backend {backend!r} is not available here (extension not built)")


def _rel(actual, expected):
    actual, expected = actual.detach().double(), expected.detach().double()
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30))


# --------------------------------------------------------------------------------------------
# float64 reference of the STI (docs/method.md section 4)
# --------------------------------------------------------------------------------------------


def ref_sti(frames, patches, words, mask, class_emb, wp, bp, ww, bw, tau=TAU):
    """``(f_st [B, C, D], cos [B, C])`` in plain tensor ops."""
    v = F.normalize(frames, dim=-1)
    p = torch.relu(F.normalize(patches, dim=-1) @ wp.t() + bp)  # [B, T, Np, D]
    a = torch.relu(F.normalize(words, dim=-1) @ ww.t() + bw)  # [C, Nw, D]
    sim = torch.einsum("btkd,cld->bctkl", p, a).masked_fill(~mask[None, :, None, None, :], float("-inf"))
    s_sp = sim.flatten(-2).max(-1).values  # [B, C, T]
    g = s_sp[..., None] * torch.einsum("btd,cld->bctl", v, a) / tau
    probs = g.softmax(dim=2) * mask[None, :, None, :]
    s_temp = probs.sum(-1) / mask.sum(-1)[None, :, None]
    f_st = torch.einsum("bct,btd->bcd", s_temp, v)
    z = F.normalize(class_emb, dim=-1)
    return f_st, (f_st * z).sum(-1) / f_st.norm(dim=-1)


def _sti_case(seed=0):
    g = torch.Generator().manual_seed(seed)
    B, T, Np, C, Nw, D = 2, 3, 4, 3, 2, 16
    inputs = [torch.randn(B, T, D, generator=g), torch.randn(B, T, Np, D, generator=g),
              torch.randn(C, Nw, D, generator=g), None, torch.randn(C, D, generator=g)]
    mask = torch.ones(C, Nw, dtype=torch.bool)
    mask[1, 1] = False
    inputs[3] = mask
    return inputs


def _perturbed_module(backend):
    torch.manual_seed(1)
    module = STIModule(16, temperature=TAU, backend=backend)
    with torch.no_grad():
        for layer in (module.patch_proj, module.word_proj):
            layer.weight.add_(0.3 * torch.randn_like(layer.weight))
            layer.bias.add_(0.05 * torch.randn_like(layer.bias))
    return module


@pytest.mark.parametrize("backend", BACKENDS)
def test_sti_module_compiles_fullgraph_forward_and_backward(backend):
    """``forward`` (f_st) and ``similarity`` in one ``fullgraph=True`` inductor graph; outputs and
    the gradients of every input and parameter match eager mode (1e-5) and float64 (1e-4)."""
    _backend_or_skip(backend)
    module = _perturbed_module(backend)
    frames, patches, words, mask, class_emb = _sti_case()

    def both(f, p, w, z):
        return module(f, p, w, mask), module.similarity(f, p, w, mask, z)

    g = torch.Generator().manual_seed(5)
    grad_fst = torch.randn(2, 3, 16, generator=g)
    grad_cos = torch.randn(2, 3, generator=g)

    def run(fn, dtype=torch.float32, params=None):
        leaves = [x.detach().to(dtype).requires_grad_(True) for x in (frames, patches, words, class_emb)]
        f_st, cos = fn(*leaves)
        params = list(module.parameters()) if params is None else params
        grads = torch.autograd.grad([f_st, cos], leaves + params, [grad_fst.to(dtype), grad_cos.to(dtype)])
        return f_st, cos, grads

    compiled = torch.compile(both, fullgraph=True, backend="inductor")
    got = run(compiled)
    eager = run(both)
    params64 = [p.detach().double().requires_grad_(True) for p in module.parameters()]
    wp, bp, ww, bw = params64  # patch_proj.weight, .bias, word_proj.weight, .bias
    names = [n for n, _ in module.named_parameters()]
    assert names == ["patch_proj.weight", "patch_proj.bias", "word_proj.weight", "word_proj.bias"], names
    ref = run(lambda f, p, w, z: ref_sti(f, p, w, mask, z, wp, bp, ww, bw), torch.float64, params64)

    for name, a, e, r in (("f_st", got[0], eager[0], ref[0]), ("cos", got[1], eager[1], ref[1])):
        assert a.dtype == torch.float32, name
        assert _rel(a, e) < 1e-5, name
        assert _rel(a, r) < 1e-4, name
    for i, (a, e, r) in enumerate(zip(got[2], eager[2], ref[2])):
        assert _rel(a, e) < 1e-5, f"gradient {i} vs eager"
        assert _rel(a, r) < 1e-4, f"gradient {i} vs float64"


# --------------------------------------------------------------------------------------------
# The training step's model call
# --------------------------------------------------------------------------------------------


def _tiny_model(backend):
    from stzsar.model import build_model

    torch.manual_seed(0)
    model = build_model("stzsar-tiny", None, frozen_blocks=1, backend=backend)
    model.train()
    model.text.eval()  # as the trainer does: the frozen tower has no dropout either
    return model


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_model_call_compiles_fullgraph(backend):
    """``STZSARModel.forward(video, prompts)`` as the trainer calls it (train mode, prompts of the
    batch's labels), compiled whole with ``fullgraph=True``: the logits, the loss and the
    gradients of every trainable parameter match eager mode, and eager float64 within 1e-3."""
    _backend_or_skip(backend)
    model = _tiny_model(backend)
    with torch.no_grad():
        bank = model.encode_classes(["red square", "blue disc", "green bar"])
    labels = torch.tensor([0, 2])
    prompts = bank.select(labels)
    video = torch.randn(2, 2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable

    def step(call, dtype=torch.float32):
        logits = call(video.to(dtype), prompts.to(dtype))
        loss = multi_positive_contrastive_loss(logits, labels)
        return logits, loss, torch.autograd.grad(loss, trainable)

    compiled = torch.compile(model, fullgraph=True, backend="inductor")
    got = step(compiled)
    eager = step(model)
    assert got[0].shape == (2, 2) and got[0].dtype == torch.float32
    assert _rel(got[0], eager[0]) < 1e-4 and _rel(got[1], eager[1]) < 1e-4
    for i, (a, e) in enumerate(zip(got[2], eager[2])):
        assert _rel(a, e) < 1e-3, f"gradient {i}"
    model.double()
    try:
        ref = step(model, torch.float64)
    finally:
        model.float()
    assert _rel(got[0], ref[0]) < 1e-3 and _rel(got[1], ref[1]) < 1e-3
    for i, (a, r) in enumerate(zip(got[2], ref[2])):
        assert _rel(a, r) < 1e-2, f"gradient {i} vs float64"


# --------------------------------------------------------------------------------------------
# The switch
# --------------------------------------------------------------------------------------------


def test_compile_setting_resolution(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_compile("auto", cpu) is False
    assert resolve_compile(True, cpu) is True and resolve_compile("true", cpu) is True
    assert resolve_compile(False, cuda) is False and resolve_compile("false", cuda) is False
    pytest.importorskip("triton", reason="auto on CUDA needs Triton")
    assert resolve_compile("auto", cuda) is True
    with pytest.raises(ValueError, match="auto, true or false"):
        resolve_compile("maybe", cpu)


def test_config_default_is_auto_and_old_values_load():
    from stzsar.config import ConfigError, load_config

    assert load_config(None, []).train.compile == "auto"
    assert load_config(None, ["train.compile=true"]).train.compile is True
    assert load_config(None, ["train.compile=false"]).train.compile is False
    with pytest.raises(ConfigError, match="train.compile"):
        load_config(None, ["train.compile=sometimes"])


def test_evaluate_takes_the_switch(monkeypatch):
    """``EvalSettings.compile`` reaches :func:`compile_model` (``auto`` on the CPU does not)."""
    import stzsar.train.trainer as trainer_module
    from stzsar.eval.engine import EvalSettings, evaluate
    from stzsar.text import ClassBank

    calls = []
    monkeypatch.setattr(trainer_module, "compile_model", lambda model: calls.append(model) or model)

    class Model(torch.nn.Module):
        def encode_video(self, clips):
            return clips.mean((2, 3, 4))[..., None].expand(-1, -1, 4), clips[:, :, :1, :2, :2].flatten(2)

        def logits_from_features(self, frames, patches, bank):
            return frames.sum((1, 2))[:, None] * bank.class_emb.sum(-1)[None]

    bank = ClassBank(torch.eye(2, 4), torch.ones(2, 1, 4), torch.ones(2, 1, dtype=torch.bool), ["a", "b"])
    data = [{"video": torch.full((2, 3, 4, 4), float(i)), "label": i % 2, "index": i} for i in range(2)]
    model = Model()
    for setting, expected in (("auto", 0), (False, 0), ("true", 1), (True, 2)):
        settings = EvalSettings(batch_size=2, num_workers=0, device="cpu", progress=False, compile=setting)
        evaluate(model, data, bank, ["a", "b"], settings=settings, topk=(1, 2))
        assert len(calls) == expected, setting
    with pytest.raises(ValueError, match="compile"):
        EvalSettings(compile="sometimes")


def test_compile_model_keeps_names_and_matches_eager():
    """In place and once: the state-dict names do not change, the video encoder and the STI head
    are compiled, and a training forward+backward gives eager's loss and gradients (no
    ``fullgraph``: what ``train.compile`` runs)."""
    eager = _tiny_model("cpu")
    compiled = _tiny_model("cpu")
    names = list(compiled.state_dict())
    assert compile_model(compiled) is compiled and compile_model(compiled) is compiled
    assert list(compiled.state_dict()) == names
    assert compiled.video._compiled_call_impl is not None and compiled.sti._compiled_call_impl is not None
    assert "similarity" in vars(compiled.sti)  # the compiled bound method shadows the class's
    with torch.no_grad():
        bank = eager.encode_classes(["red square", "blue disc"])
    labels = torch.tensor([1, 0])
    video = torch.randn(2, 2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    results = []
    for model in (compiled, eager):
        loss = multi_positive_contrastive_loss(model(video, bank.select(labels)), labels)
        params = [p for p in model.parameters() if p.requires_grad]
        results.append((loss, torch.autograd.grad(loss, params)))
    assert _rel(results[0][0], results[1][0]) < 1e-4
    for i, (a, e) in enumerate(zip(results[0][1], results[1][1])):
        assert _rel(a, e) < 1e-3, f"gradient {i}"
