"""ER-ZSAR's class descriptions, fetched from their public source into the user cache.

The description sentences are not part of the package: ``stzsar resources fetch descriptions``
(or ``stzsar attributes --dataset NAME``) downloads the files from DeLightCMU/ElaborativeRehearsal
at commit e3130fd and keeps them only when their SHA-256 is the pinned one. The URL base can be
changed with ``$STZSAR_DESCRIPTIONS_URL`` (a mirror, or a local server in tests).
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

logger = logging.getLogger(__name__)

COMMIT = "e3130fd"
DEFAULT_URL_BASE = f"https://raw.githubusercontent.com/DeLightCMU/ElaborativeRehearsal/{COMMIT}"
URL_BASE_VARIABLE = "STZSAR_DESCRIPTIONS_URL"


@dataclass(frozen=True)
class DescriptionFile:
    """One public description file: its path in the repository and the SHA-256 of its bytes."""

    key: str
    path: str
    sha256: str
    classes: int

    def url(self, base: Optional[str] = None) -> str:
        return f"{(base or url_base()).rstrip('/')}/{self.path}"

    @property
    def origin(self) -> str:
        return f"DeLightCMU/ElaborativeRehearsal {self.path} at {COMMIT} (sha256 {self.sha256[:12]})"


DESCRIPTION_FILES: Dict[str, DescriptionFile] = {
    f.key: f
    for f in (
        DescriptionFile("ucf101", "datasets/UCF101/classes_label_defn.json",
                        "ed9139113337b79e70db8975983434d6607d2787ae50c239f22a61d70019df73", 101),
        DescriptionFile("hmdb51", "datasets/HMDB51/classes_label_defn.json",
                        "61b88c0344ffc17e636e2f9ac8b7934f04553c862fe35fc13e3c1ef2c99b1411", 51),
        DescriptionFile("kinetics620", "datasets/Kinetics/zsl220/classes620_label_defn.json",
                        "901c06d484f3397bacbbd0b033e579ee9855fe207786a983f505e04c6afd6616", 620),
    )
}


class DescriptionFetchError(RuntimeError):
    """A description file that could not be fetched, or whose checksum is not the pinned one."""


def url_base() -> str:
    return os.environ.get(URL_BASE_VARIABLE) or DEFAULT_URL_BASE


def cache_dir() -> Path:
    from stzsar.attributes.offline import default_cache_dir

    return default_cache_dir() / "descriptions"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def description_file(name: str) -> DescriptionFile:
    """The description file of a description key or of a built-in class list (``k600-split1``)."""
    if name in DESCRIPTION_FILES:
        return DESCRIPTION_FILES[name]
    from stzsar.resources import get

    return DESCRIPTION_FILES[get(name).descriptions]


def fetch_descriptions(name: str, base: Optional[str] = None, timeout: float = 60.0, refresh: bool = False) -> Path:
    """The cached copy of a description file, downloaded first when missing (or ``refresh``).

    The download is checked against the pinned SHA-256 before it is written; a file that
    differs is refused (nothing is written) with both checksums in the message. A cached copy
    is checked too, and fetched again when it no longer matches.
    """
    from stzsar.attributes.cache import atomic_write_bytes

    entry = description_file(name)
    target = cache_dir() / f"{entry.key}_label_defn.json"
    if target.is_file() and not refresh:
        if _sha256(target.read_bytes()) == entry.sha256:
            return target
        logger.warning("%s does not match the pinned checksum any more; fetching it again", target)
    url = entry.url(base)
    logger.info("fetching %s", url)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = response.read()
    except (urllib.error.URLError, OSError) as error:
        raise DescriptionFetchError(
            f"cannot fetch {url} ({error}); download it by hand and pass --descriptions FILE, "
            f"or point ${URL_BASE_VARIABLE} to a mirror"
        ) from None
    digest = _sha256(data)
    if digest != entry.sha256:
        raise DescriptionFetchError(
            f"refusing {url}: its SHA-256 is {digest}, expected {entry.sha256} (pinned for {entry.origin}); "
            "nothing was written"
        )
    atomic_write_bytes(target, data)
    return target


def identify(path) -> Optional[DescriptionFile]:
    """The pinned public file whose bytes ``path`` holds, if any (so a header can name the origin)."""
    digest = _sha256(Path(path).read_bytes())
    return next((f for f in DESCRIPTION_FILES.values() if f.sha256 == digest), None)


def describe_source(path) -> str:
    """What a header says about a description file: the public origin when it is a pinned file."""
    known = identify(path)
    return known.origin if known is not None else str(path)
