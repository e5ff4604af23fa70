"""The interface every keyword extractor implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple


class ExtractionError(RuntimeError):
    """Extraction failed for one or more classes (what was fetched before is kept in the cache)."""


@dataclass
class Extraction:
    """What an extractor returned for one class: ranked raw keywords, and the raw answer if any."""

    keywords: List[str]
    raw: Optional[str] = None
    info: Dict[str, object] = field(default_factory=dict)


class Extractor(ABC):
    """Turns ``(class name, description)`` into a ranked list of raw keywords.

    ``name``, ``model`` and ``prompt`` identify the extractor: together with the class and its
    description they key the cache and go into the header of the attributes file. For offline
    extractors ``prompt`` holds their settings, so changing a setting never reuses stale results.
    """

    name: str = "base"
    model: str = ""
    #: classes processed at the same time (threads); offline extractors run one at a time.
    concurrency: int = 1
    #: re-rank keywords by how few classes use them (see :func:`stzsar.attributes.postprocess.prefer_distinctive`):
    #: on for offline extractors, whose per-description ranking cannot see the other classes.
    distinctive: bool = False

    @property
    @abstractmethod
    def prompt(self) -> str:
        """The prompt template (LLM) or a description of the settings (offline)."""

    def prepare(self, items: Sequence[Tuple[str, str]]) -> None:
        """Called once with every ``(class, text)`` of the run before any :meth:`extract`.

        Offline extractors use it to batch their work; the default does nothing.
        """

    @abstractmethod
    def extract(self, class_name: str, text: str) -> Extraction:
        """Ranked keywords for one class; ``text`` is its description (or its name when it has none)."""

    def identity(self) -> Dict[str, str]:
        return {"extractor": self.name, "model": self.model, "prompt": self.prompt}

    def close(self) -> None:
        """Release resources (network clients)."""
