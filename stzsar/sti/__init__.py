"""The spatio-temporal interaction module (SPEC section 4)."""

from stzsar.sti.module import STIModule, sti_similarity_reference, temporal_saliency_reference

__all__ = ["STIModule", "sti_similarity_reference", "temporal_saliency_reference"]
