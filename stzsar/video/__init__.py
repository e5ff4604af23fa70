"""Video side: the CLIP image encoder over frames and the optional temporal transformer."""

from stzsar.video.encoder import VideoEncoder
from stzsar.video.temporal import TemporalTransformer

__all__ = ["VideoEncoder", "TemporalTransformer"]
