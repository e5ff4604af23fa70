"""Text side: class prompts and the frozen CLIP text encoder."""

from stzsar.text.encoder import ClassBank, TextEncoder
from stzsar.text.prompts import DEFAULT_TEMPLATE, Prompt, build_prompt, build_prompts, count_tokens

__all__ = ["ClassBank", "TextEncoder", "DEFAULT_TEMPLATE", "Prompt", "build_prompt", "build_prompts", "count_tokens"]
