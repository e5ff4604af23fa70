"""Backend dispatch of the ops of :mod:`stzsar.ops`: which backends can run an op here, which one
``backend="auto"`` takes, the autocast guard and the input checks the ops share.

Backends (``backend=`` of every op):

- ``"torch"``: the plain PyTorch formulation (any device; also the reference of the tests);
- ``"cpu"``: the C++/OpenMP kernels of ``stzsar._C`` (CPU tensors);
- ``"cuda"``: the CUDA kernels of ``stzsar._C`` (CUDA tensors);
- ``"triton"``: the Triton kernels of ``stzsar.kernels`` (CUDA tensors, or CPU tensors under
  ``TRITON_INTERPRET=1``);
- ``"auto"``: the first available backend of :data:`AUTO_ORDER` for the op, device and dtype.

:func:`probe` says why a backend cannot run an op on a device (``None`` when it can);
:func:`require_backends` raises with every missing (op, backend, reason) at once, so a GPU check
fails loudly instead of silently testing fewer backends. ``STZSAR_DISABLE_BACKENDS=triton,cuda``
(a comma list of ``cpu``, ``cuda``, ``triton``) makes those backends unavailable, e.g. to show
that such a check fails when one is missing.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from stzsar._extension import extension_error, has_cuda_kernels

__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "DISABLE_ENV",
    "OPS",
    "available_backends",
    "check_float",
    "check_maxsim_inputs",
    "check_same_device",
    "check_word_mask",
    "mark_word_mask_checked",
    "no_autocast",
    "output_dtype",
    "probe",
    "require_backends",
    "resolve_backend",
]

BACKENDS = ("auto", "torch", "cpu", "cuda", "triton")
OPS = ("spatial_maxsim", "projected_spatial_maxsim", "temporal_saliency", "sti_similarity")
DISABLE_ENV = "STZSAR_DISABLE_BACKENDS"

# The Triton module (``stzsar.kernels.<name>``) each op needs. ``available_backends`` and
# ``resolve_backend`` also accept these module names in place of an op (their older callers do).
TRITON_KERNELS = {
    "spatial_maxsim": "spatial_maxsim",
    "projected_spatial_maxsim": "spatial_maxsim",
    "temporal_saliency": "sti_temporal",
    "sti_similarity": "sti_temporal",
}
_OP_OF_KERNEL = {"spatial_maxsim": "spatial_maxsim", "sti_temporal": "temporal_saliency"}

_SPATIAL_CUDA_FP32 = ("cuda", "triton", "torch")
_SPATIAL_CUDA = ("triton", "cuda", "torch")
_TEMPORAL_CUDA = ("triton", "cuda", "torch")

# backend="auto": the first available backend of this order, looked up by (op, device type,
# dtype) and then (op, device type, None); other device types run "torch". The GPU orders are
# provisional until measured on a GPU (`python -m benchmarks.kernels`, docs/kernels.md): the
# spatial op prefers the CUDA kernel in fp32 (exact fp32 FMAs) and Triton in fp16/bf16
# (software-pipelined tensor-core tiles); this table is where the measurements will set them.
AUTO_ORDER: Dict[Tuple[str, str, Optional[torch.dtype]], Tuple[str, ...]] = {
    ("spatial_maxsim", "cpu", None): ("cpu", "torch"),
    ("spatial_maxsim", "cuda", torch.float32): _SPATIAL_CUDA_FP32,
    ("spatial_maxsim", "cuda", None): _SPATIAL_CUDA,
    ("projected_spatial_maxsim", "cpu", None): ("cpu", "torch"),
    ("projected_spatial_maxsim", "cuda", torch.float32): _SPATIAL_CUDA_FP32,
    ("projected_spatial_maxsim", "cuda", None): _SPATIAL_CUDA,
    ("temporal_saliency", "cpu", None): ("cpu", "torch"),
    ("temporal_saliency", "cuda", None): _TEMPORAL_CUDA,
    ("sti_similarity", "cpu", None): ("cpu", "torch"),
    ("sti_similarity", "cuda", None): _TEMPORAL_CUDA,
}


def _op_name(kernel_or_op: str) -> str:
    if kernel_or_op in TRITON_KERNELS:
        return kernel_or_op
    if kernel_or_op in _OP_OF_KERNEL:
        return _OP_OF_KERNEL[kernel_or_op]
    raise ValueError(f"unknown op {kernel_or_op!r}; choose one of {OPS}")


def auto_order(op: str, device_type: str, dtype: Optional[torch.dtype] = None) -> Tuple[str, ...]:
    """The preference order of ``backend="auto"`` for ``op`` (see :data:`AUTO_ORDER`)."""
    op = _op_name(op)
    return AUTO_ORDER.get((op, device_type, dtype)) or AUTO_ORDER.get((op, device_type, None)) or ("torch",)


# --------------------------------------------------------------------------------------------
# Availability probes
# --------------------------------------------------------------------------------------------


def disabled_backends() -> Tuple[str, ...]:
    """The backends that ``STZSAR_DISABLE_BACKENDS`` switches off (read at every call)."""
    names = tuple(n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip())
    for name in names:
        if name not in ("cpu", "cuda", "triton"):
            raise ValueError(
                f"{DISABLE_ENV}={os.environ[DISABLE_ENV]!r}: {name!r} cannot be disabled; list any of "
                "cpu, cuda, triton (the torch backend is the fallback of every op)"
            )
    return names


@functools.lru_cache(maxsize=None)
def _triton_import_error(kernel: str) -> Optional[str]:
    """Why ``stzsar.kernels.<kernel>`` (and Triton) does not import here, or None when it does.
    Cached: an import is tried once per process."""
    for module in ("triton", f"stzsar.kernels.{kernel}"):
        try:
            importlib.import_module(module)
        except Exception as error:  # any failure of the import is a reason, and is reported
            return f"import {module} failed: {type(error).__name__}: {error}"
    return None


def _triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def probe(backend: str, device: torch.device | str, op: str) -> Optional[str]:
    """``None`` when ``backend`` can run ``op`` on tensors of ``device`` here, else why not (one line).

    ``op`` is one of :data:`OPS`; ``backend`` one of ``torch``, ``cpu``, ``cuda``, ``triton``.
    Shape limits of the GPU kernels (``temporal_saliency``'s tiles) are not probed here: the ops
    check them per call."""
    if backend not in BACKENDS or backend == "auto":
        raise ValueError(f"unknown backend {backend!r}; probe one of {BACKENDS[1:]}")
    op = _op_name(op)
    device = torch.device(device)
    if backend == "torch":
        return None
    if backend in disabled_backends():
        return f"disabled by {DISABLE_ENV}"
    if device.type == "cuda" and not torch.cuda.is_available():
        return "no CUDA device here (torch.cuda.is_available() is False)"
    if backend == "cpu":
        if device.type != "cpu":
            return f"the cpu backend runs on CPU tensors, not {device.type}"
        error = extension_error()
        return None if error is None else f"stzsar._C did not load: {error}"
    if backend == "cuda":
        if device.type != "cuda":
            return f"the cuda backend runs on CUDA tensors, not {device.type}"
        error = extension_error()
        if error is not None:
            return f"stzsar._C did not load: {error}"
        return None if has_cuda_kernels() else "stzsar._C was built without CUDA kernels"
    # triton
    if device.type == "cpu" and not _triton_interpreting():
        return "Triton runs on CPU tensors only in its interpreter (TRITON_INTERPRET=1 before importing stzsar)"
    if device.type == "cuda" and _triton_interpreting():
        return "TRITON_INTERPRET=1: the Triton kernels run in the interpreter, on CPU tensors only"
    if device.type not in ("cpu", "cuda"):
        return f"the triton backend runs on CUDA tensors, not {device.type}"
    return _triton_import_error(TRITON_KERNELS[op])


def available_backends(device: torch.device | str, kernel: str = "spatial_maxsim") -> Tuple[str, ...]:
    """Backends that can run on tensors of ``device`` here (``"torch"`` always can); ``kernel`` is
    an op of :data:`OPS` or the name of its Triton module (``"spatial_maxsim"``, ``"sti_temporal"``)."""
    op = _op_name(kernel)
    return tuple(name for name in BACKENDS[1:] if probe(name, device, op) is None)


def require_backends(
    device: torch.device | str, backends: Sequence[str], ops: Sequence[str] = OPS
) -> None:
    """Raise ``RuntimeError`` listing every (op, backend, reason) of ``ops`` x ``backends`` that
    cannot run on ``device`` here; return quietly when all can."""
    missing: List[str] = []
    for op in ops:
        for backend in backends:
            reason = probe(backend, device, op)
            if reason is not None:
                missing.append(f"  {op} / {backend}: {reason}")
    if missing:
        raise RuntimeError(
            f"backends missing on {torch.device(device)}:\n" + "\n".join(missing)
        )


@torch.compiler.assume_constant_result
def resolve_backend(
    backend: str,
    device: torch.device | str,
    kernel: str = "spatial_maxsim",
    dtype: Optional[torch.dtype] = None,
) -> str:
    """Turn ``backend`` (possibly ``"auto"``) into a concrete backend for ``device`` and ``dtype``,
    or raise: ``auto`` takes the first available backend of :func:`auto_order`; a named backend
    that cannot run here is a ``RuntimeError`` that says why."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    device = torch.device(device)
    found = available_backends(device, kernel)
    if backend == "auto":
        return next((name for name in auto_order(kernel, device.type, dtype) if name in found), "torch")
    if backend not in found:
        reason = probe(backend, device, _op_name(kernel))
        raise RuntimeError(
            f"backend {backend!r} is not available for {device.type} tensors here ({reason}; "
            f"available: {', '.join(found)})"
        )
    return backend


def for_dtype(resolved: str, dtype: torch.dtype) -> str:
    """float64 runs the torch backend: the kernels take fp32/fp16/bf16, float64 is for reference
    checks."""
    return "torch" if dtype == torch.float64 else resolved


# --------------------------------------------------------------------------------------------
# Dtype rule and autocast guard
# --------------------------------------------------------------------------------------------


def output_dtype(input_dtype: torch.dtype) -> torch.dtype:
    """Scores are float32 (float64 only for float64 inputs, which reference checks use)."""
    return torch.float64 if input_dtype == torch.float64 else torch.float32


def no_autocast(tensor: Tensor):
    """Autocast off for ``tensor``'s device type. The ops of :mod:`stzsar.ops` choose their compute
    dtypes themselves (inputs read in their dtype, float32 accumulation and results), the same on
    every backend; their bodies run under this, so autocast never recasts the GEMMs inside them."""
    if not torch.amp.is_autocast_available(tensor.device.type):
        return contextlib.nullcontext()
    return torch.autocast(tensor.device.type, enabled=False)


# --------------------------------------------------------------------------------------------
# Input checks shared by the ops
# --------------------------------------------------------------------------------------------

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_float(name: str, tensor: Tensor) -> None:
    if tensor.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16, bfloat16 or float64, got {tensor.dtype}")


def check_same_device(**tensors: Tensor) -> torch.device:
    """The one device of ``tensors``, or a ``ValueError`` naming where each is."""
    devices = {name: t.device for name, t in tensors.items()}
    first = next(iter(devices.values()))
    if any(d != first for d in devices.values()):
        found = ", ".join(f"{name} on {d}" for name, d in devices.items())
        raise ValueError(f"all inputs must be on one device, got {found}")
    return first


def check_word_mask_shape(word_mask: Tensor, words: Tensor) -> None:
    if word_mask.shape != words.shape[:2]:
        raise ValueError(
            f"word_mask must be [C, Nw] = {tuple(words.shape[:2])}, got {tuple(word_mask.shape)}"
        )
    if word_mask.dtype != torch.bool:
        raise TypeError(f"word_mask must be a bool tensor, got {word_mask.dtype}")


def check_maxsim_inputs(patches: Tensor, words: Tensor, word_mask: Tensor) -> None:
    """Shapes, dtypes and device of the spatial ops' ``patches [B, T, Np, D]``, ``words [C, Nw, D]``
    and ``word_mask [C, Nw]``."""
    if patches.dim() != 4:
        raise ValueError(f"patches must be [B, T, Np, D], got shape {tuple(patches.shape)}")
    if words.dim() != 3:
        raise ValueError(f"words must be [C, Nw, D], got shape {tuple(words.shape)}")
    if patches.shape[-1] != words.shape[-1]:
        raise ValueError(
            f"patches and words must share the feature size D, got {patches.shape[-1]} and {words.shape[-1]}"
        )
    check_word_mask_shape(word_mask, words)
    if patches.device != words.device or patches.device != word_mask.device:
        raise ValueError("patches, words and word_mask must be on one device")
    for name, tensor in (("patches", patches), ("words", words)):
        if tensor.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be float32, float16 or bfloat16, got {tensor.dtype}")


# The word-mask check reads the mask's values: on a GPU that is a host synchronisation. A mask
# belongs to a class bank that changes once per class list, so the check runs once per mask
# tensor (again only after an in-place change: the key holds the version counter) and is
# remembered on the tensor itself; row slices of a checked mask (the class chunks of an
# evaluation) and masks marked by ``mark_word_mask_checked`` need no check of their own.
_CHECKED = "_stzsar_word_mask_checked"


def _check_key(mask: Tensor) -> Optional[tuple]:
    if mask.is_inference():
        return None  # no version counter: an in-place change could not be seen, so never cached
    return (mask._version, mask.data_ptr(), tuple(mask.shape), mask.stride(), mask.device)


def _marked(mask: Tensor) -> bool:
    key = _check_key(mask)
    return key is not None and getattr(mask, _CHECKED, None) == key


def word_mask_checked(word_mask: Tensor) -> bool:
    """Whether ``word_mask`` is known to give every class a valid word without reading it: it was
    checked (or marked) as it is now, or it is a row slice of such a mask."""
    if _marked(word_mask):
        return True
    base = word_mask._base
    return (
        base is not None
        and word_mask.dim() == 2
        and base.dim() == 2
        and word_mask.shape[1] == base.shape[1]
        and word_mask.stride() == base.stride()  # whole rows of the base, in order
        and _marked(base)
    )


def mark_word_mask_checked(word_mask: Tensor, rows_of: Tensor) -> None:
    """``word_mask`` is made of rows of ``rows_of`` (a class bank's ``select``): check ``rows_of``
    (once per mask tensor, raising for a class without a valid word) and record that
    ``word_mask`` needs no check of its own."""
    check_word_mask(rows_of)
    key = _check_key(word_mask)
    if key is not None and word_mask_checked(rows_of):
        setattr(word_mask, _CHECKED, key)


def _first_class_without_word(word_mask: Tensor) -> Optional[int]:
    """The first class with no valid word, or None (reads the mask: a sync on a GPU)."""
    empty = (~word_mask.any(dim=1)).nonzero()
    return int(empty[0, 0]) if empty.numel() else None


def check_word_mask(word_mask: Tensor) -> None:
    """Raise ``ValueError`` naming the first class that has no valid word (eager mode only). Once
    per mask tensor: see :func:`word_mask_checked`."""
    if torch.compiler.is_compiling() or word_mask.device.type == "meta":
        return  # the check needs the mask's values (FLOP counting on meta has none)
    if word_mask_checked(word_mask):
        return
    empty = _first_class_without_word(word_mask)
    if empty is not None:
        raise ValueError(f"class {empty} has no valid word in word_mask")
    key = _check_key(word_mask)
    if key is not None:
        setattr(word_mask, _CHECKED, key)
