"""From a class list and its descriptions to the attributes file (docs/method.md section 1).

:func:`extract_attributes` runs an extractor over every class (from the cache when it can),
post-processes the keywords and returns an :class:`AttributeSet`; :meth:`AttributeSet.save`
writes the human-editable JSON file that the model reads back with :func:`load_attributes`::

    {
      "header": {"format": "stzsar-attributes/1", "extractor": "keybert", "model": ..., "prompt": ..., "num": 8, ...},
      "attributes": {
        "ApplyEyeMakeup": ["cosmetics", "lipstick", ...],
        ...
      }
    }
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from stzsar.attributes.base import Extraction, ExtractionError, Extractor
from stzsar.attributes.cache import AttributeCache, atomic_write_text, cache_key
from stzsar.attributes.descriptions import match_descriptions
from stzsar.attributes.postprocess import postprocess_keywords, prefer_distinctive
from stzsar.classes import canonical_name, display_name

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
FILE_FORMAT = "stzsar-attributes/1"
DEFAULT_NUM = 8


@dataclass
class AttributeSet:
    """Attributes of a class list, with the header that says how they were made."""

    attributes: Dict[str, List[str]]
    header: Dict[str, object] = field(default_factory=dict)
    missing: List[str] = field(default_factory=list)  # classes that had no description
    short: List[str] = field(default_factory=list)  # classes that got fewer than num attributes
    requests: int = 0  # extractions not served by the cache

    def to_json(self) -> str:
        """The file's text: the header, then one class a line (easy to read, edit and diff)."""
        lines = ["{", f'  "header": {json.dumps(self.header, ensure_ascii=False, sort_keys=True)},', '  "attributes": {']
        items = list(self.attributes.items())
        for position, (name, keywords) in enumerate(items):
            comma = "," if position < len(items) - 1 else ""
            lines.append(f"    {json.dumps(name, ensure_ascii=False)}: {json.dumps(keywords, ensure_ascii=False)}{comma}")
        lines += ["  }", "}"]
        return "\n".join(lines) + "\n"

    def save(self, path: PathLike) -> Path:
        path = Path(path)
        atomic_write_text(path, self.to_json())
        return path


class AttributeFileError(ValueError):
    """An attributes file that cannot be read; the message names the file and the class."""


def read_attributes_file(path: PathLike) -> Tuple[Dict[str, List[str]], Dict[str, object]]:
    """``(attributes, header)`` from an attributes file; a plain ``{class: [..]}`` map has an empty header.

    A value may also be one comma-separated string (handy when editing by hand). ``path`` may be a
    built-in name (``ucf101``, ``k600-split1``, ...: :mod:`stzsar.resources`); a file of that name wins.
    """
    from stzsar.resources import resolve_attributes

    path = resolve_attributes(path)
    if not path.is_file():
        raise FileNotFoundError(f"attributes file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        raise AttributeFileError(f"{path}: invalid JSON ({error})") from None
    if not isinstance(data, dict):
        raise AttributeFileError(f"{path}: expected a JSON object, got {type(data).__name__}")
    header: Dict[str, object] = {}
    if "attributes" in data and isinstance(data["attributes"], dict):
        header = data.get("header") or {}
        if not isinstance(header, dict):
            raise AttributeFileError(f"{path}: 'header' must be an object")
        data = data["attributes"]
    attributes: Dict[str, List[str]] = {}
    seen: Dict[str, str] = {}
    for name, value in data.items():
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",")]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise AttributeFileError(
                f"{path}: class {name!r}: expected a list of keyword strings, got {json.dumps(value)[:80]}"
            )
        key = canonical_name(name)
        if key in seen:
            raise AttributeFileError(f"{path}: classes {seen[key]!r} and {name!r} are the same class")
        seen[key] = name
        attributes[name] = [v.strip() for v in value if v.strip()]
    return attributes, header


def load_attributes(path: PathLike) -> Dict[str, List[str]]:
    """``{class: [keywords]}`` from an attributes file (with header) or a plain JSON map.

    Class names are as written in the file; match them to a class list with
    :func:`stzsar.classes.canonical_name` (as :func:`stzsar.text.prompts.build_prompts` does).
    """
    return read_attributes_file(path)[0]


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="class", disable=not enabled or total == 0, leave=False)


def extract_attributes(
    classes: Sequence[str],
    descriptions: Optional[Mapping[str, str]] = None,
    extractor: Optional[Extractor] = None,
    num: int = DEFAULT_NUM,
    cache: Optional[Union[AttributeCache, PathLike]] = None,
    drop_name_words: bool = True,
    progress: bool = True,
    source: Optional[str] = None,
    distinctive: Optional[bool] = None,
) -> AttributeSet:
    """Extract, post-process and collect ``num`` keyword attributes for every class.

    Args:
        classes: class names (any naming style); the output keeps these names and this order.
        descriptions: ``{class: description}`` in any naming style (see
            :func:`stzsar.attributes.descriptions.read_descriptions`). Classes without one are
            logged by name and use their name as the text.
        extractor: an :class:`Extractor`; default the offline ``keybert`` one.
        cache: an :class:`AttributeCache` or the path of its file; results found there are not
            extracted again, new ones are written to it as they arrive.
        drop_name_words: drop keywords made only of the class name's words.
        source: where the descriptions came from, for the header.
        distinctive: re-rank each class's keywords so that words few classes of the list use come
            first (:func:`stzsar.attributes.postprocess.prefer_distinctive`); nothing is dropped.
            Default: the extractor's ``distinctive`` (on for the offline ones).

    Raises :class:`ExtractionError` when some classes fail (after retries); everything that
    succeeded is in the cache by then, so a rerun only redoes the failures.
    """
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    if not classes:
        raise ValueError("no classes")
    if extractor is None:
        from stzsar.attributes.offline import make_offline_extractor

        extractor = make_offline_extractor(exclude_name_words=drop_name_words)
    if not isinstance(cache, AttributeCache):
        cache = AttributeCache(cache)

    matched = match_descriptions(classes, descriptions)
    if descriptions is not None and matched.missing:
        logger.warning(
            "%d class(es) have no description and use their name alone: %s",
            len(matched.missing), ", ".join(matched.missing),
        )
    texts = [d if d is not None else display_name(c) for c, d in zip(classes, matched.descriptions)]
    # prepare() sees every class, cached or not, so the extractor's identity never depends on the cache.
    extractor.prepare(list(zip(classes, texts)))
    identity = extractor.identity()
    keys = [cache_key(c, t, identity["extractor"], identity["model"], identity["prompt"]) for c, t in zip(classes, texts)]

    results: Dict[int, Extraction] = {}
    todo: List[int] = []
    for i, key in enumerate(keys):
        hit = cache.get(key)
        if hit is not None:
            results[i] = hit
        else:
            todo.append(i)
    if results:
        logger.info("%d of %d classes from the cache", len(results), len(classes))

    failures: Dict[str, BaseException] = {}

    def run_one(i: int) -> None:
        extraction = extractor.extract(classes[i], texts[i])
        cache.put(keys[i], extraction, **{"class": classes[i], "extractor": identity["extractor"], "model": identity["model"]})
        results[i] = extraction

    bar = _progress(len(todo), progress, f"attributes ({identity['extractor']})")
    try:
        if extractor.concurrency <= 1:
            for i in todo:
                try:
                    run_one(i)
                except ExtractionError as error:
                    failures[classes[i]] = error
                    if _is_fatal(error):
                        break
                bar.update(1)
        else:
            with ThreadPoolExecutor(max_workers=extractor.concurrency) as pool:
                futures = {pool.submit(run_one, i): i for i in todo}
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for future in done:
                        error = future.exception()
                        if error is not None:
                            if not isinstance(error, ExtractionError):
                                for other in pending:
                                    other.cancel()
                                raise error
                            failures[classes[futures[future]]] = error
                            if _is_fatal(error):
                                for other in pending:
                                    other.cancel()
                        bar.update(1)
                    pending = {f for f in pending if not f.cancelled()}
    finally:
        bar.close()
        extractor.close()
    if failures:
        fatal = [e for e in failures.values() if _is_fatal(e)]
        if fatal:
            raise fatal[0]
        lines = "\n".join(f"  {name}: {error}" for name, error in failures.items())
        raise ExtractionError(
            f"extraction failed for {len(failures)} of {len(classes)} classes (the {len(results)} "
            f"done are cached; run again to retry the rest):\n{lines}"
        )

    if distinctive is None:
        distinctive = bool(getattr(extractor, "distinctive", False))
    # All of each class's cleaned keywords (not only the first num) take part in the re-ranking.
    cleaned = [postprocess_keywords(results[i].keywords, None, name, drop_name_words) for i, name in enumerate(classes)]
    if distinctive:
        cleaned = prefer_distinctive(cleaned)
    attributes: Dict[str, List[str]] = {}
    short: List[str] = []
    for name, ranked in zip(classes, cleaned):
        # A second pass: a sub-phrase moved in front of its phrase ("ball", "soccer ball") stays one.
        keywords = postprocess_keywords(ranked, num, name, drop_name_words)
        if len(keywords) < num:
            short.append(name)
        attributes[name] = keywords
    if short:
        logger.warning(
            "%d class(es) got fewer than %d attributes (short description): %s",
            len(short), num, ", ".join(short),
        )
    header: Dict[str, object] = {
        "format": FILE_FORMAT,
        **identity,
        "num": num,
        "drop_name_words": drop_name_words,
        "distinctive": distinctive,
        "classes": len(classes),
        "descriptions": source,
        "missing_descriptions": matched.missing if descriptions is not None else list(classes),
    }
    return AttributeSet(attributes, header, matched.missing, short, requests=len(todo))


def _is_fatal(error: BaseException) -> bool:
    from stzsar.attributes.llm import LLMConfigError

    return isinstance(error, LLMConfigError)
