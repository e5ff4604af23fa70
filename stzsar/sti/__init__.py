"""The spatio-temporal interaction module (docs/method.md section 4)."""

from stzsar.sti.module import STIModule, sti_similarity_reference, temporal_saliency_reference

__all__ = ["STIModule", "sti_similarity_reference", "temporal_saliency_reference"]
