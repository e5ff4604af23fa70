"""Custom ops of the STI module, registered with ``torch.library`` in the namespace ``stzsar``;
backend choice in :mod:`stzsar.ops.dispatch`."""

from stzsar.ops.dispatch import available_backends, resolve_backend
from stzsar.ops.projected_maxsim import projected_spatial_maxsim, projected_spatial_maxsim_with_index
from stzsar.ops.spatial_maxsim import maxsim_flops, spatial_maxsim, spatial_maxsim_with_index
from stzsar.ops.temporal import (
    SIMILARITY_EPS,
    sti_similarity,
    sti_similarity_flops,
    temporal_saliency,
    temporal_saliency_flops,
)

__all__ = [
    "SIMILARITY_EPS",
    "available_backends",
    "maxsim_flops",
    "projected_spatial_maxsim",
    "projected_spatial_maxsim_with_index",
    "resolve_backend",
    "spatial_maxsim",
    "spatial_maxsim_with_index",
    "sti_similarity",
    "sti_similarity_flops",
    "temporal_saliency",
    "temporal_saliency_flops",
]
