"""Evaluation under bf16 autocast agrees with fp32 (CPU always; CUDA with the fused kernels when present)."""

import pytest
import torch
from torch.utils.data import Dataset

from stzsar.eval.engine import EvalSettings, autocast_dtype, evaluate
from stzsar.model import build_model

CLASSES = [f"class {i}" for i in range(9)]


class RandomClips(Dataset):
    """Clips of seeded noise, ``[T, 3, 32, 32]``; labels cycle over the classes."""

    def __len__(self):
        return 5

    def __getitem__(self, index):
        generator = torch.Generator().manual_seed(index)
        return {"video": torch.randn(3, 3, 32, 32, generator=generator), "label": index % len(CLASSES),
                "index": index}


def run(model, **settings):
    bank = model.encode_classes(CLASSES)
    return evaluate(model, RandomClips(), bank, CLASSES,
                    settings=EvalSettings(num_workers=0, progress=False, batch_size=2, **settings))


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    model = build_model("stzsar-tiny", backend="torch")
    return model, run(model, device="cpu", precision="fp32")


def assert_close_probabilities(result, expected, atol):
    # Compare the full averaged distributions by class (the ranking of near-ties may differ in bf16).
    for row in range(expected.num_scored):
        got = dict(zip(result.predictions[row].tolist(), result.top_probs[row].tolist()))
        want = dict(zip(expected.predictions[row].tolist(), expected.top_probs[row].tolist()))
        for c in set(got) & set(want):
            assert got[c] == pytest.approx(want[c], abs=atol)


def test_bf16_autocast_on_cpu_matches_fp32(reference):
    model, expected = reference
    result = run(model, device="cpu", precision="bf16", class_chunk=4)
    assert result.num_scored == expected.num_scored == 5
    assert_close_probabilities(result, expected, atol=0.01)


def test_precision_choices():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype(cpu, "auto") is None and autocast_dtype(cpu, "fp32") is None
    assert autocast_dtype(cpu, "bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="fp16 autocast is for CUDA"):
        autocast_dtype(cpu, "fp16")
    assert autocast_dtype(cuda, "fp16") is torch.float16
    with pytest.raises(ValueError, match="precision"):
        EvalSettings(precision="fp8")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bf16 autocast and fused kernels)")
def test_cuda_auto_precision_and_kernels_match_fp32(reference):
    model, expected = reference
    torch.manual_seed(0)
    gpu = build_model("stzsar-tiny", backend="auto")  # the fused kernels where built, else Triton/PyTorch
    gpu.load_state_dict(model.state_dict())
    result = run(gpu, device="cuda", precision="auto", class_chunk=4)
    assert result.num_scored == 5
    assert_close_probabilities(result, expected, atol=0.01)
