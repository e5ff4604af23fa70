"""Class lists and class-name matching shared by the attribute pipeline, the data and the evaluation.

Class lists come in several formats; :func:`read_class_list` reads them all and keeps the order
(the class index is the position in the list):

- plain text, one name a line;
- the ``id,name`` CSV of BIKE/Text4Vis (header optional, ``id`` 0-based);
- UCF-101 ``classInd.txt`` (``1 ApplyEyeMakeup``, 1-based);
- a JSON list of names (or of objects with a ``name`` or ``word`` key).

Names are matched across naming styles with :func:`canonical_name`: ``ApplyEyeMakeup``,
``apply eye makeup`` and ``apply_eye_makeup`` all become ``apply eye makeup``.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Union

PathLike = Union[str, Path]

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SEPARATORS = re.compile(r"[\s_\-/]+")
_DROP = re.compile(r"[^a-z0-9' ]+")


def canonical_name(name: str) -> str:
    """Lower-case, space-separated form of a class name, for matching across naming styles."""
    text = _CAMEL_BOUNDARY.sub(" ", name.strip())
    text = _SEPARATORS.sub(" ", text).lower()
    text = _DROP.sub(" ", text)
    return " ".join(text.replace("'", "").split())


def display_name(name: str) -> str:
    """The name as it goes into a prompt: canonical words (``ApplyEyeMakeup`` -> ``apply eye makeup``)."""
    return canonical_name(name)


class ClassListError(ValueError):
    """A class list that cannot be read; the message names the file and the line."""


def _read_csv(path: Path, lines: List[str]) -> List[str]:
    rows = list(csv.reader(lines))
    if not rows:
        raise ClassListError(f"{path}: empty class list")
    start = 1 if [c.strip().lower() for c in rows[0][:2]] == ["id", "name"] else 0
    by_id: Dict[int, str] = {}
    for number, row in enumerate(rows[start:], start=start + 1):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2:
            raise ClassListError(f"{path}:{number}: expected 'id,name', got {','.join(row)!r}")
        try:
            index = int(row[0])
        except ValueError:
            raise ClassListError(f"{path}:{number}: class id {row[0]!r} is not an integer") from None
        if index in by_id:
            raise ClassListError(f"{path}:{number}: class id {index} appears twice")
        by_id[index] = ",".join(row[1:]).strip()
    return _ordered(path, by_id, base=0)


def _ordered(path: Path, by_id: Dict[int, str], base: int) -> List[str]:
    expected = list(range(base, base + len(by_id)))
    if sorted(by_id) != expected:
        missing = sorted(set(expected) - set(by_id))
        raise ClassListError(
            f"{path}: class ids must run {base}..{base + len(by_id) - 1} without gaps "
            f"(missing {missing[:5]})"
        )
    return [by_id[i] for i in expected]


def _read_class_ind(path: Path, lines: List[str]) -> List[str]:
    by_id: Dict[int, str] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise ClassListError(f"{path}:{number}: expected '<index> <ClassName>', got {line!r}")
        by_id[int(parts[0])] = parts[1].strip()
    return _ordered(path, by_id, base=1)


def _read_json(path: Path, text: str) -> List[str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ClassListError(f"{path}: invalid JSON ({error})") from None
    if isinstance(data, dict) and "classes" in data:
        data = data["classes"]
    if not isinstance(data, list):
        raise ClassListError(f"{path}: a JSON class list must be a list of names")
    names = []
    for position, item in enumerate(data):
        if isinstance(item, str):
            names.append(item)
        elif isinstance(item, dict) and isinstance(item.get("name", item.get("word")), str):
            names.append(item.get("name", item.get("word")))
        else:
            raise ClassListError(f"{path}: item {position} is not a class name: {item!r}")
    return names


def read_class_list(path: PathLike) -> List[str]:
    """Read a class list in any supported format; the list index is the class index.

    ``path`` may also be a built-in name (``ucf101``, ``k600-split1``, ...: :mod:`stzsar.resources`);
    a file of that name wins.
    """
    from stzsar.resources import resolve_class_list

    path = resolve_class_list(path)
    if not path.is_file():
        raise FileNotFoundError(f"class list not found: {path}")
    text = path.read_text(encoding="utf-8-sig")
    lines = text.splitlines()
    content = [line for line in lines if line.strip()]
    if not content:
        raise ClassListError(f"{path}: empty class list")
    if path.suffix.lower() == ".json" or text.lstrip().startswith("["):
        names = _read_json(path, text)
    elif path.suffix.lower() == ".csv" or "," in content[0]:
        names = _read_csv(path, lines)
    elif all(re.match(r"^\d+\s+\S", line) for line in content):
        names = _read_class_ind(path, lines)
    else:
        names = [line.strip() for line in content]
    duplicates = _duplicates(names)
    if duplicates:
        raise ClassListError(f"{path}: class names appear more than once: {duplicates[:5]}")
    return names


def _duplicates(names: Iterable[str]) -> List[str]:
    seen, repeated = set(), []
    for name in names:
        key = canonical_name(name)
        if key in seen:
            repeated.append(name)
        seen.add(key)
    return repeated


class ClassIndex:
    """Maps class names in any naming style to their index in a class list."""

    def __init__(self, names: Sequence[str]):
        self.names = list(names)
        self._index = {canonical_name(name): i for i, name in enumerate(self.names)}
        # Letters only: BIKE's HandstandPushups is ER-ZSAR's "hand stand pushups".
        self._letters = {canonical_name(name).replace(" ", ""): i for i, name in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.names)

    def find(self, name: str) -> Optional[int]:
        key = canonical_name(name)
        found = self._index.get(key)
        return found if found is not None else self._letters.get(key.replace(" ", ""))

    def index(self, name: str) -> int:
        found = self.find(name)
        if found is None:
            close = [n for n in self.names if canonical_name(n).startswith(canonical_name(name)[:4])]
            hint = f"; similar: {close[:3]}" if close else ""
            raise KeyError(f"unknown class name {name!r} (not among {len(self.names)} classes{hint})")
        return found
