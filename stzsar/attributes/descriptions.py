"""Class descriptions: reading them and matching them to a class list.

Supported files:

- the ER-ZSAR JSON (``*_label_defn.json``): a list of objects with ``word`` (class name) and
  ``defn`` (description), optionally ``cleaned_word`` / ``cleaned_defn`` (the same text tokenised
  with spaces; used only when ``defn`` is missing);
- a JSON object ``{class: description}``;
- a JSON list of ``{"name"|"class": ..., "description": ...}`` objects;
- a CSV with two columns ``class,description`` (a header row naming them is optional).

Names are matched with :func:`stzsar.classes.canonical_name`, and, when that fails, with the
name's letters alone (so ``HandstandPushups`` finds ``hand stand pushups``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

from stzsar.classes import canonical_name

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

_NAME_KEYS = ("word", "name", "class", "label", "cleaned_word")
_TEXT_KEYS = ("defn", "description", "text", "cleaned_defn")


class DescriptionError(ValueError):
    """A description file that cannot be read; the message names the file and the entry."""


def _pick(item: Mapping, keys: Sequence[str]) -> Optional[str]:
    for key in keys:
        value = item.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return None


def _add(out: Dict[str, str], path: Path, where: str, name: object, text: object) -> None:
    if not isinstance(name, str) or not name.strip():
        raise DescriptionError(f"{path}: {where}: missing or empty class name")
    if not isinstance(text, str):
        raise DescriptionError(f"{path}: {where} ({name!r}): the description must be a string, got {type(text).__name__}")
    if name in out:
        raise DescriptionError(f"{path}: {where}: class {name!r} has two descriptions")
    out[name] = " ".join(text.split())


def _from_json(path: Path, text: str) -> Dict[str, str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DescriptionError(f"{path}: invalid JSON ({error})") from None
    out: Dict[str, str] = {}
    if isinstance(data, dict):
        if isinstance(data.get("descriptions"), (dict, list)):
            data = data["descriptions"]
    if isinstance(data, dict):
        for name, value in data.items():
            if isinstance(value, Mapping):
                value = _pick(value, _TEXT_KEYS)
            _add(out, path, f"key {name!r}", name, value)
        return out
    if isinstance(data, list):
        for position, item in enumerate(data):
            if not isinstance(item, Mapping):
                raise DescriptionError(
                    f"{path}: item {position}: expected an object with 'word' and 'defn' "
                    f"(ER-ZSAR) or 'name' and 'description', got {type(item).__name__}"
                )
            name = _pick(item, _NAME_KEYS)
            description = _pick(item, _TEXT_KEYS)
            if description is None:
                raise DescriptionError(f"{path}: item {position} ({name!r}): no 'defn' or 'description'")
            _add(out, path, f"item {position}", name, description)
        return out
    raise DescriptionError(f"{path}: expected a JSON list or object of descriptions, got {type(data).__name__}")


def _from_csv(path: Path, text: str) -> Dict[str, str]:
    rows = [row for row in csv.reader(io.StringIO(text)) if row and "".join(row).strip()]
    if not rows:
        raise DescriptionError(f"{path}: no descriptions")
    header = [cell.strip().lower() for cell in rows[0]]
    start = 1 if header and header[0] in _NAME_KEYS + ("id",) else 0
    out: Dict[str, str] = {}
    for number, row in enumerate(rows[start:], start=start + 1):
        if len(row) < 2:
            raise DescriptionError(f"{path}: row {number}: expected 'class,description', got {row!r}")
        # A description may hold unquoted commas: everything after the first column is the text.
        _add(out, path, f"row {number}", row[0].strip(), ",".join(row[1:]).strip())
    return out


def read_descriptions(path: PathLike) -> Dict[str, str]:
    """Read a description file into ``{class name as written in the file: description}`` (file order)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"description file not found: {path}")
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():
        raise DescriptionError(f"{path}: empty file")
    if path.suffix.lower() == ".json" or text.lstrip()[:1] in "[{":
        return _from_json(path, text)
    return _from_csv(path, text)


def _letters(name: str) -> str:
    return canonical_name(name).replace(" ", "")


@dataclass
class MatchedDescriptions:
    """Descriptions aligned to a class list."""

    classes: List[str]
    descriptions: List[Optional[str]]
    missing: List[str] = field(default_factory=list)  # classes with no description
    unused: List[str] = field(default_factory=list)  # descriptions of classes not in the list

    def as_dict(self) -> Dict[str, Optional[str]]:
        return dict(zip(self.classes, self.descriptions))


def match_descriptions(
    classes: Sequence[str], descriptions: Optional[Mapping[str, str]]
) -> MatchedDescriptions:
    """Align ``descriptions`` (any naming style) to ``classes``; classes without one get ``None``.

    Matching is by canonical name first, then by the name's letters alone (``handstand pushups``
    and ``hand stand pushups``). A letters-only key that two descriptions share is not used.
    """
    descriptions = dict(descriptions or {})
    by_name: Dict[str, str] = {}
    by_letters: Dict[str, Optional[str]] = {}
    for name in descriptions:
        by_name.setdefault(canonical_name(name), name)
        key = _letters(name)
        by_letters[key] = None if key in by_letters else name  # ambiguous -> None
    used = set()
    found: List[Optional[str]] = []
    missing: List[str] = []
    for cls in classes:
        source = by_name.get(canonical_name(cls)) or by_letters.get(_letters(cls))
        if source is None or not descriptions[source].strip():
            found.append(None)
            missing.append(cls)
        else:
            found.append(descriptions[source])
            used.add(source)
    unused = [name for name in descriptions if name not in used]
    return MatchedDescriptions(list(classes), found, missing, unused)
