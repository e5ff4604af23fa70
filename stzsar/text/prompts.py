"""Class prompts (docs/method.md section 2): the class name followed by its attributes, in a template,
within CLIP's 77-token context. Trailing attributes are dropped to fit; the class name is never cut.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

from stzsar.classes import display_name

logger = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "This is a video about {}."
CONTEXT_LENGTH = 77


@dataclass
class Prompt:
    """A built prompt: its text, the attributes kept and those dropped to fit the context."""

    class_name: str
    text: str
    kept: List[str] = field(default_factory=list)
    dropped: List[str] = field(default_factory=list)
    num_tokens: int = 0


def _default_tokenizer():
    # open_clip's SimpleTokenizer: the BPE the CLIP text encoder uses.
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


_TOKENIZER = None


def count_tokens(text: str, tokenizer=None) -> int:
    """Tokens ``text`` takes in the context, start- and end-of-text included."""
    global _TOKENIZER
    if tokenizer is None:
        if _TOKENIZER is None:
            _TOKENIZER = _default_tokenizer()
        tokenizer = _TOKENIZER
    return len(tokenizer.encode(text)) + 2


def build_prompt(
    class_name: str,
    attributes: Sequence[str] = (),
    template: str = DEFAULT_TEMPLATE,
    context_length: int = CONTEXT_LENGTH,
    tokenizer=None,
    warn: bool = True,
) -> Prompt:
    """``template.format("name, attr1, attr2, ...")``, dropping trailing attributes to fit.

    Raises ``ValueError`` when the class name alone does not fit (it is never cut silently).
    """
    name = display_name(class_name)
    kept = [a.strip() for a in attributes if a and a.strip()]
    dropped: List[str] = []
    while True:
        text = template.format(", ".join([name] + kept))
        tokens = count_tokens(text, tokenizer)
        if tokens <= context_length:
            break
        if not kept:
            raise ValueError(
                f"the prompt for class {class_name!r} takes {tokens} tokens without any attribute, "
                f"over the {context_length}-token context; shorten the class name or the template"
            )
        dropped.insert(0, kept.pop())
    if dropped and warn:
        logger.warning(
            "prompt for %r: dropped %d trailing attribute(s) %s to fit %d tokens",
            class_name, len(dropped), dropped, context_length,
        )
    return Prompt(class_name=class_name, text=text, kept=kept, dropped=dropped, num_tokens=tokens)


def build_prompts(
    class_names: Sequence[str],
    attributes: Optional[dict] = None,
    template: str = DEFAULT_TEMPLATE,
    context_length: int = CONTEXT_LENGTH,
    tokenizer=None,
) -> List[Prompt]:
    """One prompt per class; ``attributes`` maps class name (any naming style) to keywords."""
    from stzsar.classes import canonical_name

    by_key = {canonical_name(k): v for k, v in (attributes or {}).items()}
    return [
        build_prompt(name, by_key.get(canonical_name(name), ()), template, context_length, tokenizer)
        for name in class_names
    ]
