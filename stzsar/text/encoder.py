"""The frozen CLIP text encoder (docs/method.md section 2).

``TextEncoder(prompts) -> ClassBank(class_emb [C, D], words [C, Nw, D], word_mask [C, Nw])``:
``class_emb`` is CLIP's usual text embedding (end-of-text token after ``ln_final`` and
``text_projection``); ``words`` holds every token position after the same two steps, and
``word_mask`` says which positions count as words in the STI matches (padding never does).
``Nw`` is trimmed to the longest prompt of the bank, so padding costs nothing downstream.

Which tokens count (``word_tokens``, docs/method.md section 2):

- ``"class_and_attributes"`` (default): the class-name and attribute tokens only; the template's
  own words (``This is a video about``, the final ``.``) and punctuation (the commas between
  attributes) are masked. With them counted, the patch-word maximum is won by ``a``, ``is`` and
  ``,`` on background patches (docs/training.md, demo section, has the measurement);
- ``"sentence"``: every token between start- and end-of-text (the paper's literal reading).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn

from stzsar.text.prompts import DEFAULT_TEMPLATE

#: The word sets of the STI matches (see the module docstring).
WORD_TOKENS = ("class_and_attributes", "sentence")


def check_word_tokens(word_tokens: str) -> str:
    if word_tokens not in WORD_TOKENS:
        raise ValueError(f"word_tokens must be one of {', '.join(WORD_TOKENS)}; got {word_tokens!r}")
    return word_tokens


@dataclass
class ClassBank:
    """Text-side features of a list of classes; computed once per class list (the encoder is frozen)."""

    class_emb: Tensor
    words: Tensor
    word_mask: Tensor
    prompts: List[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.class_emb.shape[0]

    def to(self, *args, **kwargs) -> "ClassBank":
        return ClassBank(
            self.class_emb.to(*args, **kwargs),
            self.words.to(*args, **kwargs),
            self.word_mask.to(self.class_emb.to(*args, **kwargs).device),
            list(self.prompts),
        )

    def select(self, index: Tensor) -> "ClassBank":
        """The bank restricted to the classes ``index`` (e.g. a batch's labels, repeats allowed)."""
        index_list = index.tolist()
        return ClassBank(
            self.class_emb[index],
            self.words[index],
            self.word_mask[index],
            [self.prompts[i] for i in index_list] if self.prompts else [],
        )

    def state_dict(self) -> dict:
        return {
            "class_emb": self.class_emb.cpu(),
            "words": self.words.cpu(),
            "word_mask": self.word_mask.cpu(),
            "prompts": list(self.prompts),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> "ClassBank":
        return cls(state["class_emb"], state["words"], state["word_mask"], list(state["prompts"]))


class TextEncoder(nn.Module):
    """Frozen text tower of an open_clip model (its modules are taken over, not copied)."""

    def __init__(
        self,
        token_embedding: nn.Embedding,
        positional_embedding: nn.Parameter,
        transformer: nn.Module,
        ln_final: nn.Module,
        text_projection,
        attn_mask: Optional[Tensor],
        tokenizer,
        template: str = DEFAULT_TEMPLATE,
        word_tokens: str = "class_and_attributes",
    ):
        super().__init__()
        self.token_embedding = token_embedding
        self.positional_embedding = positional_embedding
        self.transformer = transformer
        self.ln_final = ln_final
        if isinstance(text_projection, nn.Parameter):
            self.text_projection = text_projection
        else:
            self.text_projection = text_projection  # nn.Linear or None
        self.register_buffer("attn_mask", attn_mask, persistent=False)
        self.tokenizer = tokenizer
        self.context_length = positional_embedding.shape[0]
        self.template = template
        self.word_tokens = check_word_tokens(word_tokens)
        for param in self.parameters():
            param.requires_grad = False

    @classmethod
    def from_clip(cls, clip: nn.Module, tokenizer, **kwargs) -> "TextEncoder":
        tower = getattr(clip, "text", clip)  # CustomTextCLIP keeps the tower in .text
        pool = getattr(tower, "text_pool_type", getattr(tower, "pool_type", "argmax"))
        if pool != "argmax":
            raise TypeError(f"TextEncoder supports CLIP text towers with argmax pooling, got {pool!r}")
        return cls(
            tower.token_embedding,
            tower.positional_embedding,
            tower.transformer,
            tower.ln_final,
            tower.text_projection,
            getattr(tower, "attn_mask", None),
            tokenizer,
            **kwargs,
        )

    @property
    def dim(self) -> int:
        proj = self.text_projection
        if proj is None:
            return self.ln_final.normalized_shape[0]
        return proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]

    def tokenize(self, prompts: Sequence[str]) -> Tensor:
        return self.tokenizer(list(prompts))

    def _template_token_counts(self):
        """Tokens the template adds before and after the class text."""
        prefix, _, suffix = self.template.partition("{}")
        encode = self.tokenizer.encode if hasattr(self.tokenizer, "encode") else None
        if encode is None:
            return 0, 0
        return len(encode(prefix.strip())) if prefix.strip() else 0, len(encode(suffix.strip())) if suffix.strip() else 0

    def _punctuation(self, tokens: Tensor) -> Tensor:
        """``[C, L]`` True where a token is punctuation (its text has no letter or digit)."""
        decoder = getattr(self.tokenizer, "decoder", None)
        ids = tokens.unique().tolist()
        if decoder is not None:
            text = {i: decoder.get(i, "") for i in ids}
        elif hasattr(self.tokenizer, "decode"):
            text = {i: self.tokenizer.decode([i]) for i in ids}
        else:  # no way to read tokens back: nothing is called punctuation
            return torch.zeros_like(tokens, dtype=torch.bool)
        marks = [i for i, piece in text.items() if not any(ch.isalnum() for ch in piece.replace("</w>", ""))]
        return torch.isin(tokens, torch.tensor(marks, dtype=tokens.dtype, device=tokens.device))

    def _project(self, x: Tensor) -> Tensor:
        proj = self.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    @torch.no_grad()
    def encode_tokens(self, tokens: Tensor, prompts: Sequence[str] = ()) -> ClassBank:
        device = self.token_embedding.weight.device
        tokens = tokens.to(device)
        cast_dtype = self.token_embedding.weight.dtype
        x = self.token_embedding(tokens).to(cast_dtype) + self.positional_embedding.to(cast_dtype)
        x = self.transformer(x, attn_mask=self.attn_mask)
        x = self._project(self.ln_final(x))  # [C, L, D]
        eot = tokens.argmax(dim=-1)  # end-of-text has the largest id
        class_emb = x[torch.arange(x.shape[0], device=device), eot]
        last = int(eot.max())
        words = x[:, 1:last]  # positions between start-of-text and the longest end-of-text
        position = torch.arange(1, last, device=device).unsqueeze(0)
        sentence = (position >= 1) & (position < eot.unsqueeze(1))
        word_mask = sentence
        if self.word_tokens == "class_and_attributes":
            before, after = self._template_token_counts()
            inside = (position >= 1 + before) & (position < (eot - after).unsqueeze(1))
            word_mask = inside & ~self._punctuation(tokens[:, 1:last])
            # A prompt left without a word (a template-only or punctuation-only class text) keeps
            # its sentence rather than fail later in the STI.
            empty = ~word_mask.any(dim=1, keepdim=True)
            word_mask = torch.where(empty, sentence, word_mask)
        return ClassBank(class_emb, words.contiguous(), word_mask, list(prompts))

    def forward(self, prompts: Sequence[str]) -> ClassBank:
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, not one string")
        if len(prompts) == 0:
            raise ValueError("no prompts given")
        return self.encode_tokens(self.tokenize(prompts), prompts)
