"""Backend dispatch (``stzsar.ops.dispatch``): availability probes that say why, the environment
switch that disables backends, ``require_backends``, and the ``auto`` orders."""

from __future__ import annotations

import pytest
import torch

from stzsar import _extension
from stzsar.ops import dispatch
from stzsar.ops import spatial_maxsim, temporal_saliency

KERNEL_BACKENDS = ("cpu", "cuda", "triton")


def test_torch_always_runs_and_unknown_names_are_errors():
    for op in dispatch.OPS:
        assert dispatch.probe("torch", "cpu", op) is None
        assert "torch" in dispatch.available_backends("cpu", op)
    with pytest.raises(ValueError, match="unknown backend"):
        dispatch.probe("opencl", "cpu", "spatial_maxsim")
    with pytest.raises(ValueError, match="unknown op"):
        dispatch.probe("torch", "cpu", "attention")


def test_wrong_device_type_is_named():
    assert dispatch.probe("cpu", "meta", "spatial_maxsim") == "the cpu backend runs on CPU tensors, not meta"
    assert dispatch.probe("triton", "meta", "sti_similarity") == "the triton backend runs on CUDA tensors, not meta"


def test_disable_env_removes_backends_with_the_reason(monkeypatch):
    if not _extension.has_cpu_kernels():
        pytest.skip("stzsar._C is not built: the cpu backend is missing anyway")
    assert dispatch.resolve_backend("auto", "cpu", "spatial_maxsim") == "cpu"
    monkeypatch.setenv("STZSAR_DISABLE_BACKENDS", " triton, cpu ")
    for op in dispatch.OPS:
        assert dispatch.probe("cpu", "cpu", op) == "disabled by STZSAR_DISABLE_BACKENDS"
        assert dispatch.probe("triton", "cpu", op) == "disabled by STZSAR_DISABLE_BACKENDS"
        assert dispatch.available_backends("cpu", op) == ("torch",)
    # auto falls back to the reference; naming the backend is an error that says why.
    assert dispatch.resolve_backend("auto", "cpu", "temporal_saliency") == "torch"
    patches, words = torch.randn(1, 2, 3, 8), torch.randn(2, 2, 8)
    mask = torch.ones(2, 2, dtype=torch.bool)
    with pytest.raises(RuntimeError, match="'cpu' is not available.*disabled by STZSAR_DISABLE_BACKENDS"):
        spatial_maxsim(patches, words, mask, backend="cpu")
    s_sp, frames = torch.rand(1, 2, 2), torch.randn(1, 2, 8)
    with pytest.raises(RuntimeError, match="disabled by STZSAR_DISABLE_BACKENDS"):
        temporal_saliency(s_sp, frames, words, mask, 0.1, backend="cpu")


def test_disable_env_rejects_names_it_cannot_disable(monkeypatch):
    monkeypatch.setenv("STZSAR_DISABLE_BACKENDS", "torch")
    with pytest.raises(ValueError, match="'torch' cannot be disabled"):
        dispatch.available_backends("cpu")
    monkeypatch.setenv("STZSAR_DISABLE_BACKENDS", "trition")
    with pytest.raises(ValueError, match="'trition' cannot be disabled.*cpu, cuda, triton"):
        dispatch.probe("cpu", "cpu", "spatial_maxsim")


def test_require_backends_lists_every_missing_pair(monkeypatch):
    monkeypatch.setenv("STZSAR_DISABLE_BACKENDS", "cpu")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError) as caught:
        dispatch.require_backends("cpu", ("torch", "cpu", "triton"))
    lines = str(caught.value).splitlines()
    assert lines[0] == "backends missing on cpu:"
    assert len(lines) == 1 + 2 * len(dispatch.OPS)  # torch runs everywhere
    for op in dispatch.OPS:
        assert f"  {op} / cpu: disabled by STZSAR_DISABLE_BACKENDS" in lines
        assert any(line.startswith(f"  {op} / triton: Triton runs on CPU tensors only in its interpreter")
                   for line in lines)
    dispatch.require_backends("cpu", ("torch",))  # nothing missing: no error
    with pytest.raises(RuntimeError, match="temporal_saliency / cpu: disabled"):
        dispatch.require_backends("cpu", ("cpu",), ops=("temporal_saliency",))


def test_triton_import_errors_are_reported_not_swallowed(monkeypatch):
    """A kernel module that fails to import makes triton unavailable with the exception named."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setitem(dispatch.TRITON_KERNELS, "sti_similarity", "no_such_kernel_module")
    reason = dispatch.probe("triton", "cpu", "sti_similarity")
    assert reason.startswith("import ")
    assert "failed: ModuleNotFoundError" in reason and "no_such_kernel_module" in reason
    assert "triton" not in dispatch.available_backends("cpu", "sti_similarity")


def test_cuda_reasons(monkeypatch):
    """Without a GPU, or with an extension built for CPU only, the cuda backend says so."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for backend in ("cuda", "triton"):
        assert "no CUDA device" in dispatch.probe(backend, "cuda", "spatial_maxsim")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(dispatch, "extension_error", lambda: None)
    monkeypatch.setattr(dispatch, "has_cuda_kernels", lambda: False)
    assert dispatch.probe("cuda", "cuda", "temporal_saliency") == "stzsar._C was built without CUDA kernels"
    monkeypatch.setattr(dispatch, "extension_error", lambda: "ImportError: libc10.so: cannot open")
    assert dispatch.probe("cuda", "cuda", "temporal_saliency") == (
        "stzsar._C did not load: ImportError: libc10.so: cannot open"
    )
    assert dispatch.probe("cpu", "cpu", "temporal_saliency").startswith("stzsar._C did not load")


def test_auto_orders(monkeypatch):
    """``auto`` on CUDA tensors: the spatial ops prefer the CUDA kernel in fp32 and Triton in
    fp16/bf16, the temporal ops Triton; each falls back along its order (docs/kernels.md)."""
    everything = ("torch", "cuda", "triton")
    monkeypatch.setattr(dispatch, "available_backends", lambda device, kernel="spatial_maxsim": everything)
    resolve = dispatch.resolve_backend
    for op in ("spatial_maxsim", "projected_spatial_maxsim"):
        assert resolve("auto", "cuda", op, torch.float32) == "cuda"
        assert resolve("auto", "cuda", op, torch.bfloat16) == "triton"
        assert resolve("auto", "cuda", op, torch.float16) == "triton"
    for op in ("temporal_saliency", "sti_similarity", "sti_temporal"):
        assert resolve("auto", "cuda", op, torch.float32) == "triton"
    monkeypatch.setattr(dispatch, "available_backends", lambda device, kernel="spatial_maxsim": ("torch", "cuda"))
    assert resolve("auto", "cuda", "spatial_maxsim", torch.bfloat16) == "cuda"
    assert resolve("auto", "mps", "spatial_maxsim", torch.float32) == "torch"
    assert dispatch.auto_order("temporal_saliency", "cpu") == ("cpu", "torch")
