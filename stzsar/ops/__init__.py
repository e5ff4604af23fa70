"""Custom ops of the STI module, registered with ``torch.library`` in the namespace ``stzsar``."""

from stzsar.ops.spatial_maxsim import (
    available_backends,
    maxsim_flops,
    resolve_backend,
    spatial_maxsim,
    spatial_maxsim_with_index,
)

__all__ = [
    "available_backends",
    "maxsim_flops",
    "resolve_backend",
    "spatial_maxsim",
    "spatial_maxsim_with_index",
]
