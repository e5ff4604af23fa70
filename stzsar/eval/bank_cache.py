"""Class banks (the text side of docs/method.md section 2) computed once and cached on disk.

The text encoder is frozen, so the features of a class list depend only on the text tower's weights,
the prompt settings, the class list and the attributes of those classes. The cache key is a SHA-256
over exactly those: the model's prompt configuration, a fingerprint of every text-tower tensor, the
class names in order and, for each class, the attributes the prompt builder will use (entries of
the attribute file for other classes do not change the key). A changed attribute, template or
checkpoint gives a new key; nothing stale is ever returned.

Files are written atomically (temporary file, then rename), so concurrent ranks or an interrupted
run never leave a half-written bank; an unreadable file is reported, recomputed and replaced.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import torch

from stzsar.classes import canonical_name
from stzsar.text import ClassBank

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

#: Bump when the stored layout or the meaning of a bank changes.
CACHE_FORMAT = 1

#: Prompts encoded per text-encoder call (bounds memory for long class lists).
DEFAULT_TEXT_CHUNK = 256


def default_cache_dir() -> Path:
    """``$STZSAR_CACHE_DIR/class_banks``, else ``$XDG_CACHE_HOME/stzsar/class_banks`` (``~/.cache``)."""
    root = os.environ.get("STZSAR_CACHE_DIR")
    if root:
        return Path(root) / "class_banks"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "stzsar" / "class_banks"


def text_tower_fingerprint(model) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of every text-tower tensor."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.text.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        # Raw bytes through a uint8 view: works for bfloat16, which numpy cannot hold.
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _attributes_for(class_names: Sequence[str], attributes: Optional[Dict[str, List[str]]]) -> List[List[str]]:
    # The same canonical-name matching the prompt builder uses, so the key sees what the prompts see.
    by_key = {canonical_name(k): list(v) for k, v in (attributes or {}).items()}
    return [by_key.get(canonical_name(name), []) for name in class_names]


def bank_key(model, class_names: Sequence[str], attributes: Optional[Dict[str, List[str]]] = None,
             fingerprint: Optional[str] = None) -> str:
    """The cache key of ``model``'s bank for these classes and attributes."""
    config = model.config
    payload = {
        "format": CACHE_FORMAT,
        "model": config.name,
        "template": config.template,
        "word_tokens": config.word_tokens,
        "context_length": model.text.context_length,
        "text_tower": fingerprint or text_tower_fingerprint(model),
        "classes": list(class_names),
        "attributes": _attributes_for(class_names, attributes),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def concat_banks(banks: Sequence[ClassBank]) -> ClassBank:
    """One bank from several (class order kept); word axes are padded to the longest (masked out)."""
    if not banks:
        raise ValueError("no banks to concatenate")
    if len(banks) == 1:
        return banks[0]
    width = max(b.words.shape[1] for b in banks)
    words, masks = [], []
    for bank in banks:
        pad = width - bank.words.shape[1]
        words.append(torch.nn.functional.pad(bank.words, (0, 0, 0, pad)))
        masks.append(torch.nn.functional.pad(bank.word_mask, (0, pad), value=False))
    prompts = [p for b in banks for p in b.prompts]
    return ClassBank(torch.cat([b.class_emb for b in banks]), torch.cat(words), torch.cat(masks), prompts)


def encode_bank(model, class_names: Sequence[str], attributes: Optional[Dict[str, List[str]]] = None,
                chunk: int = DEFAULT_TEXT_CHUNK) -> ClassBank:
    """``model.encode_classes`` over ``chunk`` classes at a time."""
    if not class_names:
        raise ValueError("empty class list")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    with torch.no_grad():
        banks = [model.encode_classes(list(class_names[i:i + chunk]), attributes)
                 for i in range(0, len(class_names), chunk)]
    return concat_banks(banks)


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(obj, stream)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


class BankCache:
    """On-disk cache of class banks.

    Args:
        directory: where banks live (``default_cache_dir()`` when ``None``).
        text_chunk: prompts per text-encoder call when a bank must be computed.

    ``get(model, class_names, attributes)`` returns the bank on ``model``'s device; ``hits`` and
    ``misses`` count how each request was served.
    """

    def __init__(self, directory: Optional[PathLike] = None, text_chunk: int = DEFAULT_TEXT_CHUNK):
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.text_chunk = text_chunk
        self.hits = 0
        self.misses = 0
        self._fingerprints: Dict[int, str] = {}

    def path_for(self, key: str) -> Path:
        return self.directory / f"{key}.pt"

    def _fingerprint(self, model) -> str:
        # Hashing a ViT-B text tower takes a moment; the tower is frozen, so once per model object.
        ident = id(model.text)
        if ident not in self._fingerprints:
            self._fingerprints[ident] = text_tower_fingerprint(model)
        return self._fingerprints[ident]

    def key(self, model, class_names: Sequence[str], attributes: Optional[Dict[str, List[str]]] = None) -> str:
        return bank_key(model, class_names, attributes, fingerprint=self._fingerprint(model))

    def load(self, key: str, num_classes: int) -> Optional[ClassBank]:
        path = self.path_for(key)
        if not path.is_file():
            return None
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            if stored.get("key") != key:
                raise ValueError("stored key does not match the file name")
            bank = ClassBank.from_state_dict(stored["bank"])
            if len(bank) != num_classes:
                raise ValueError(f"{len(bank)} classes stored, {num_classes} expected")
            return bank
        except Exception as error:  # a damaged cache file costs a recomputation, never a wrong bank
            logger.warning("class-bank cache %s is unreadable (%s); recomputing it", path, error)
            return None

    def get(self, model, class_names: Sequence[str], attributes: Optional[Dict[str, List[str]]] = None) -> ClassBank:
        """The bank for these classes, from disk when cached, else computed and stored."""
        device = next(model.text.parameters()).device
        key = self.key(model, class_names, attributes)
        bank = self.load(key, len(class_names))
        if bank is not None:
            self.hits += 1
            logger.info("class bank for %d classes read from %s", len(class_names), self.path_for(key))
            return bank.to(device)
        self.misses += 1
        bank = encode_bank(model, class_names, attributes, chunk=self.text_chunk)
        meta = {"model": model.config.name, "num_classes": len(class_names), "template": model.config.template}
        try:
            _atomic_save({"key": key, "meta": meta, "bank": bank.state_dict()}, self.path_for(key))
        except OSError as error:  # a read-only cache is no reason to stop an evaluation
            logger.warning("could not write the class-bank cache %s (%s)", self.path_for(key), error)
        return bank.to(device)


def class_bank(model, class_names: Sequence[str], attributes: Optional[Dict[str, List[str]]] = None,
               cache: Union[BankCache, PathLike, None, bool] = None) -> ClassBank:
    """The bank for ``class_names``: through ``cache`` (a :class:`BankCache`, a directory, ``None``
    for the default directory) or computed directly when ``cache is False``."""
    if cache is False:
        return encode_bank(model, class_names, attributes)
    if not isinstance(cache, BankCache):
        cache = BankCache(cache)
    return cache.get(model, class_names, attributes)
