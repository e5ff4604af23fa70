"""Post-processing of extracted keywords (docs/method.md section 1, step 3).

Whatever produced them (an LLM answer or an offline extractor), keywords go through the same
steps: lower-case, strip list numbering, quotes and punctuation, trim stopwords at both ends,
drop keywords that are only stopwords, drop duplicates and near-duplicates (plural and other
inflected forms: ``band``/``bands``, ``march``/``marching``), optionally drop keywords made only
of the class name's own words (the prompt already starts with the class name), keep the first
``num``.

Near-duplicates are found with :func:`light_stem`, a deliberately small suffix stripper: it
only has to map the inflected forms of one word to one key, not to produce real stems.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import FrozenSet, Iterable, List, Optional, Sequence, Tuple

# English function words, plus the filler words that dictionary definitions are full of
# ("especially", "usually", "someone", "one's") and that never describe what a video shows.
STOPWORDS: FrozenSet[str] = frozenset(
    """
    a about above across after afterwards again against all almost alone along already also
    although always am among amongst an and another any anybody anyhow anyone anything anyway
    anywhere are around as at away be became because become becomes becoming been before
    beforehand behind being below beside besides between beyond both but by can cannot could
    did do does doing done down during each eg either else elsewhere enough especially etc even
    ever every everybody everyone everything everywhere except few first for former formerly
    from further had has have having he hence her here hereby herein hers herself him himself
    his how however i ie if in indeed into is it its itself just last latter least less many
    may me meanwhile might mine more moreover most mostly much must my myself namely neither
    never nevertheless next no nobody none noone nor not nothing now nowhere of off often on
    once one ones oneself only onto or other others otherwise our ours ourselves out over own
    per perhaps please rather same several she should since so some somebody somehow someone
    something sometime sometimes somewhat somewhere such than that the their theirs them
    themselves then thence there thereafter thereby therefore therein thereupon these they
    this those though through throughout thru thus to together too toward towards under until
    up upon us usually very via was we well were what whatever when whence whenever where
    whereafter whereas whereby wherein whereupon wherever whether which while whither who
    whoever whole whom whose why will with within without would yet you your yours yourself
    yourselves
    also typically generally commonly usually often particularly especially mainly
    various variety kind kinds type types way ways form forms something someone person's
    thing things etc usu esp
    """.split()
)

# List markers an LLM puts in front of items: "1.", "2)", "(3)", "a.", "-", "*", "•", "–".
_LIST_MARKER = re.compile(r"^\s*(?:\(?\d{1,3}[.):]|\(?[a-zA-Z][.)](?=\s)|[-*•·–—+>#]+)\s*")
# Everything that is not a letter, digit, apostrophe, hyphen or space goes.
_NOT_WORD = re.compile(r"[^a-z0-9'\- ]+")
_SPACES = re.compile(r"\s+")
_VOWEL = re.compile(r"[aeiouy]")


def _ascii_lower(text: str) -> str:
    # NFKC folds full-width and ligature forms; curly quotes become straight ones below.
    text = unicodedata.normalize("NFKC", text).lower()
    return text.replace("\u2019", "'").replace("\u2018", "'").replace("`", "'")


def normalize_keyword(text: str) -> str:
    """Clean one keyword: lower case, no numbering, quotes or punctuation, no stopword at either end.

    Returns ``""`` when nothing but stopwords and punctuation is left.
    """
    text = _ascii_lower(text).strip()
    # Strip repeated list markers ("1. - word") before the punctuation goes.
    previous = None
    while previous != text:
        previous, text = text, _LIST_MARKER.sub("", text, count=1).strip()
    text = text.replace("/", " ").replace("_", " ")
    text = _NOT_WORD.sub(" ", text)
    words = []
    for word in _SPACES.split(text):
        word = word.strip("'-")
        if word.endswith("'s"):  # possessive: "person's" -> "person"
            word = word[:-2]
        if word:
            words.append(word)
    while words and (words[0] in STOPWORDS or words[0].isdigit()):
        words.pop(0)
    while words and (words[-1] in STOPWORDS or words[-1].isdigit()):
        words.pop()
    return " ".join(words)


def light_stem(word: str) -> str:
    """A key shared by the inflected forms of one word (``dives``, ``diving``, ``dive`` -> ``div``).

    Only plural and verb endings are removed, and only when a vowel is left in front of the ending,
    so short words (``bus``, ``sing``, ``bed``) stay intact. Not a linguistic stem; it only has to be
    consistent.
    """
    w = word.lower()
    if len(w) <= 2:
        return w
    if len(w) == 3:  # only the plural of two-letter words ("yos" -> "yo"); "bus", "gas" stay
        return w[:2] if w.endswith("s") and w[1] in "aeiouy" and w[:2] not in ("bu", "ga") else w
    if w.endswith("ies") and len(w) > 4:
        w = w[:-3] + "y"
    elif w.endswith(("sses", "shes", "ches", "xes", "zes")):
        w = w[:-2]
    elif w.endswith("s") and not w.endswith(("ss", "us", "'s")) and not (w.endswith("is") and len(w) > 4):
        # "tennis", "basis" keep their s; the short "skis" is a plural
        w = w[:-1]
    for suffix in ("ing", "ed"):
        if w.endswith(suffix) and not w.endswith("eed"):
            base = w[: -len(suffix)]
            if len(base) >= 3 and _VOWEL.search(base):
                w = base
                # running -> runn -> run; but keep "ll"/"ss"/"ff" (falling -> fall)
                if len(w) >= 4 and w[-1] == w[-2] and w[-1] not in "lsfz" and w[-1] not in "aeiou":
                    w = w[:-1]
                break
    if w.endswith("e") and len(w) > 3:
        w = w[:-1]
    if w.endswith("y") and len(w) > 3 and w[-2] not in "aeiou":
        w = w[:-1] + "i"
    return w


def keyword_stems(keyword: str) -> Tuple[str, ...]:
    """The stems of the content words of a normalised keyword, in order (hyphens split words)."""
    return tuple(light_stem(w) for w in keyword.replace("-", " ").split() if w not in STOPWORDS)


def name_stems(class_name: str) -> FrozenSet[str]:
    """Stems of the words of a class name in any naming style."""
    from stzsar.classes import canonical_name

    return frozenset(keyword_stems(canonical_name(class_name)))


def _letters(text: str) -> str:
    from stzsar.classes import canonical_name

    return re.sub(r"[^a-z0-9]", "", canonical_name(text))


def postprocess_keywords(
    keywords: Iterable[str],
    num: Optional[int] = 8,
    class_name: Optional[str] = None,
    drop_name_words: bool = True,
) -> List[str]:
    """Clean, de-duplicate and truncate a ranked list of keywords.

    A keyword is dropped when it is empty after :func:`normalize_keyword`, when its content-word
    stems are all contained in those of a keyword kept before it (exact, plural or inflected
    duplicate, or a sub-phrase: ``ball`` after ``soccer ball``), or, with ``drop_name_words`` and a
    ``class_name``, when all its stems are words of the class name (``hair`` for ``brush hair``)
    or its letters are part of the name's (``push-up`` for ``HandstandPushups``).
    ``num=None`` keeps all.
    """
    banned = name_stems(class_name) if (class_name and drop_name_words) else frozenset()
    # The name's letters alone catch spellings the stems miss ("push-up" in "HandstandPushups").
    name_letters = _letters(class_name) if (class_name and drop_name_words) else ""
    kept: List[str] = []
    kept_stems: List[FrozenSet[str]] = []
    for raw in keywords:
        if not isinstance(raw, str):
            continue
        keyword = normalize_keyword(raw)
        if not keyword:
            continue
        stems = frozenset(keyword_stems(keyword))
        if not stems or stems <= banned or (name_letters and _letters(keyword) in name_letters):
            continue
        if any(stems <= earlier for earlier in kept_stems):
            continue
        kept.append(keyword)
        kept_stems.append(stems)
        if num is not None and len(kept) >= num:
            break
    return kept


def class_frequency(keyword_lists: Sequence[Sequence[str]]) -> List[List[int]]:
    """For each class's keywords, how many classes of the list use all of the keyword's words.

    A class uses a word when it is among the content-word stems of that class's own keywords,
    so ``ball`` counts for a class with ``soccer ball``. Every count is at least 1 (its own class).
    """
    used = [frozenset(s for k in keywords for s in keyword_stems(k)) for keywords in keyword_lists]
    counts: List[List[int]] = []
    for keywords in keyword_lists:
        counts.append([sum(1 for words in used if frozenset(keyword_stems(k)) <= words) for k in keywords])
    return counts


def prefer_distinctive(keyword_lists: Sequence[Sequence[str]]) -> List[List[str]]:
    """Re-rank every class's keywords so that words few classes share come first (IDF-like).

    A keyword at rank ``r`` (0-based, the extractor's order) used by ``df`` of the ``N`` classes
    scores ``log(N / df) / (r + 1)``: a word every class has scores 0 and goes last, and among
    equally shared words the extractor's order stands (ties keep the rank). Nothing is dropped,
    so a class keeps as many keywords as it had. The lists must be post-processed already
    (:func:`postprocess_keywords` with ``num=None``), so that inflected forms count as one word.
    """
    total = len(keyword_lists)
    if total < 2:
        return [list(k) for k in keyword_lists]
    out: List[List[str]] = []
    for keywords, counts in zip(keyword_lists, class_frequency(keyword_lists)):
        # Rounded so that the last bits of the log never reorder equal scores.
        scores = [round(math.log(total / df) / (rank + 1), 9) for rank, df in enumerate(counts)]
        order = sorted(range(len(keywords)), key=lambda i: (-scores[i], i))
        out.append([keywords[i] for i in order])
    return out


def content_words(text: str) -> List[str]:
    """The words of a text that are not stopwords, in order (lower case, no punctuation)."""
    words = []
    for token in _SPACES.split(_NOT_WORD.sub(" ", _ascii_lower(text))):
        token = token.strip("'-")
        if token.endswith("'s"):
            token = token[:-2]
        if token and token not in STOPWORDS and not token.isdigit() and len(token) > 1:
            words.append(token)
    return words


def is_stopword(keyword: str) -> bool:
    """True when a keyword has no content word at all."""
    return not any(w not in STOPWORDS for w in normalize_keyword(keyword).split())


def unique_in_order(items: Sequence[str]) -> List[str]:
    """``items`` without repeats, first occurrence kept."""
    seen = set()
    return [x for x in items if not (x in seen or seen.add(x))]
