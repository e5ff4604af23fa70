"""Loads the compiled extension ``stzsar._C`` once; the package works without it (PyTorch fallback)."""

from __future__ import annotations

import functools
import warnings
from typing import Optional


@functools.lru_cache(maxsize=None)
def _load():
    """``(module, None)``, or ``(None, the import error as one line)``."""
    try:
        from stzsar import _C  # noqa: F401  (registers torch.ops.stzsar.*_fused ops)
    except ImportError as error:
        return None, f"{type(error).__name__}: {error}"
    return _C, None


@functools.lru_cache(maxsize=None)
def load_extension():
    """Return the ``stzsar._C`` module, or ``None`` with a single warning when it cannot be loaded."""
    module, error = _load()
    if module is None:
        warnings.warn(
            "stzsar: the compiled extension stzsar._C is not available "
            f"({error}); the fused CPU/CUDA kernels are disabled and the PyTorch code is used "
            "instead. Rebuild with `pip install --no-build-isolation -e .`.",
            RuntimeWarning,
            stacklevel=2,
        )
    return module


def extension_error() -> Optional[str]:
    """Why ``stzsar._C`` did not load (one line), or ``None`` when it did."""
    load_extension()  # the one warning, as before
    return _load()[1]


def has_cpu_kernels() -> bool:
    return load_extension() is not None


def has_cuda_kernels() -> bool:
    ext = load_extension()
    return ext is not None and bool(getattr(ext, "with_cuda", lambda: False)())
