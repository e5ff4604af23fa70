"""Ahead-of-time compilation of the Triton kernels for a GPU target, on a machine without a GPU.

:func:`compile_like_launch` compiles a kernel as a launch with the given arguments would: the
arguments go through the same binder as ``kernel[grid](...)``, so the signature, the constexprs
and the specialisation attributes (a pointer or an integer divisible by 16 gets
``tt.divisibility = 16``; an integer equal to 1 becomes a constant; ``do_not_specialize``
arguments get neither) are the ones Triton derives at run time, for a ``GPUTarget`` given here
instead of the current device's. Pointer arguments are given as torch dtypes (an aligned tensor of
that dtype, as torch allocates them). Used by the tests (in a process without
``TRITON_INTERPRET``) to catch GPU-only compile errors without a GPU.

This follows Triton 3.8's launch path (``create_function_from_signature``, ``_pack_args``);
another Triton version may need this module to follow.
"""

from __future__ import annotations

from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import MockTensor, create_function_from_signature

__all__ = ["GPUTarget", "compile_like_launch", "unwrap"]


def unwrap(kernel):
    """The ``JITFunction`` under an ``autotune``/``heuristics`` wrapper."""
    while not hasattr(kernel, "params"):
        kernel = kernel.fn
    return kernel


def compile_like_launch(kernel, target: GPUTarget, *args: Any, **kwargs: Any):
    """``triton.compile`` of ``kernel`` for ``target`` with the specialisation that
    ``kernel[grid](*args, **kwargs)`` would get (``kwargs``: constexprs and launch options such as
    ``num_warps``, ``num_stages``)."""
    kernel = unwrap(kernel)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    args = [MockTensor.wrap_dtype(arg) for arg in args]
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args, specialization, options)
    return triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target, options=options.__dict__)
