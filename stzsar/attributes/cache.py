"""A JSON cache of extractions, keyed by (class, description, extractor, model, prompt).

The file is rewritten atomically (temporary file in the same folder, then ``os.replace``) after
every new entry, so an interrupted run loses nothing it fetched and a reader never sees half a
file. Entries store the raw keywords before post-processing, so changing ``num`` or the
post-processing never needs a new request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Dict, Optional, Union

from stzsar.attributes.base import Extraction
from stzsar.classes import canonical_name

logger = logging.getLogger(__name__)

CACHE_FORMAT = "stzsar-attribute-cache/1"


def cache_key(class_name: str, description: str, extractor: str, model: str, prompt: str) -> str:
    """A stable hash of everything an extraction depends on (class name in any naming style)."""
    payload = json.dumps(
        [canonical_name(class_name), description, extractor, model, prompt], ensure_ascii=False
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def atomic_write_text(path: Union[str, Path], text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never a mix."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class AttributeCache:
    """Thread-safe cache of :class:`Extraction` results, in memory and (with a path) on disk."""

    def __init__(self, path: Optional[Union[str, Path]] = None):
        self.path = Path(path) if path is not None else None
        self._entries: Dict[str, dict] = {}
        self._lock = threading.Lock()
        if self.path is not None and self.path.exists():
            self._load()

    def _load(self) -> None:
        assert self.path is not None
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(
                f"cannot read the attribute cache {self.path} ({error}); delete it to start afresh"
            ) from None
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("entries"), dict):
            raise ValueError(
                f"{self.path} is not an stzsar attribute cache (expected format {CACHE_FORMAT!r}); "
                "pass another --cache path or delete the file"
            )
        self._entries = data["entries"]

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Optional[Extraction]:
        with self._lock:
            entry = self._entries.get(key)
        if entry is None:
            return None
        return Extraction(keywords=list(entry["keywords"]), raw=entry.get("raw"), info=dict(entry.get("info", {})))

    def put(self, key: str, extraction: Extraction, **context: object) -> None:
        """Store one extraction and write the file (when the cache has one) before returning."""
        entry = {"keywords": list(extraction.keywords)}
        if extraction.raw is not None:
            entry["raw"] = extraction.raw
        if extraction.info:
            entry["info"] = dict(extraction.info)
        entry.update(context)  # class name, extractor, model: for a human reading the file
        with self._lock:
            self._entries[key] = entry
            if self.path is not None:
                text = json.dumps(
                    {"format": CACHE_FORMAT, "entries": self._entries},
                    ensure_ascii=False, indent=1, sort_keys=True,
                )
                atomic_write_text(self.path, text + "\n")
