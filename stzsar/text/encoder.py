"""The frozen CLIP text encoder (docs/method.md section 2).

``TextEncoder(prompts) -> ClassBank(class_emb [C, D], words [C, Nw, D], word_mask [C, Nw])``:
``class_emb`` is CLIP's usual text embedding (the position the tower pools, after ``ln_final``
and ``text_projection``: end-of-text for OpenAI's BPE, the last position for SigLIP); ``words``
holds the prompts' token positions after the same two steps, and
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

#: How open_clip text towers pool their tokens into the text embedding (``text_global_pool``).
TEXT_POOLS = ("argmax", "last", "eos", "first")


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


class TokenVocabulary:
    """What the text encoder needs to know about a tokenizer, for open_clip's BPE tokenizer
    (``SimpleTokenizer``: start-of-text first, then the text, then end-of-text, padded with 0) and
    for Hugging Face tokenizers (``HFTokenizer``, e.g. SigLIP's: special tokens marked as such).

    ``encode(text)`` gives the text's token ids without special tokens, cleaned as the tokenizer
    cleans a prompt (so the prompt builder's budget and the template's token counts match);
    ``piece(id)`` the text of one token; ``sentence(tokens)`` where a prompt's own tokens are.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.hf = getattr(tokenizer, "tokenizer", None) if not hasattr(tokenizer, "encoder") else None
        if self.hf is None and not hasattr(tokenizer, "encode"):
            raise TypeError(f"tokenizer {type(tokenizer).__name__} has neither encode() nor a Hugging Face "
                            f"tokenizer; the word masks cannot be made")

    def encode(self, text: str) -> List[int]:
        if self.hf is None:
            return list(self.tokenizer.encode(text))  # SimpleTokenizer cleans inside encode
        clean = getattr(self.tokenizer, "clean_fn", None)
        return list(self.hf.encode(clean(text) if clean else text, add_special_tokens=False))

    def piece(self, token: int) -> str:
        decoder = getattr(self.tokenizer, "decoder", None)
        if isinstance(decoder, dict):
            return decoder.get(token, "").replace("</w>", "")
        return (self.hf or self.tokenizer).decode([token])

    def special_ids(self) -> List[int]:
        if self.hf is None:
            return [i for i in (getattr(self.tokenizer, "sot_token_id", None),
                                getattr(self.tokenizer, "eot_token_id", None)) if i is not None]
        return list(self.hf.all_special_ids)

    def sentence(self, tokens: Tensor) -> Tensor:
        """``[C, L]`` True at the positions of each prompt's own tokens."""
        position = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0)
        if self.hf is None:
            # Between start-of-text (position 0) and the first end-of-text; the padding id 0 is
            # also a real token ("!"), so only the positions tell padding apart.
            eot = getattr(self.tokenizer, "eot_token_id", None)
            end = (tokens == eot).int().argmax(dim=1) if eot is not None else tokens.argmax(dim=1)
            return (position >= 1) & (position < end.unsqueeze(1))
        special = torch.isin(tokens, torch.tensor(self.special_ids(), dtype=tokens.dtype, device=tokens.device))
        # Up to the first special token after the text's start (end-of-text, separator or padding).
        after_start = special & (position > 0)
        end = torch.where(after_start.any(1), after_start.int().argmax(1), torch.full_like(tokens[:, 0], tokens.shape[1]))
        return ~special & (position < end.unsqueeze(1))


class TextEncoder(nn.Module):
    """Frozen text tower of an open_clip model (its modules are taken over, not copied).

    ``pool_type`` and ``eos_id`` say which position is the text embedding ``z_c``, as in the
    tower's own forward: ``argmax`` (end-of-text, the largest id: OpenAI's BPE), ``last`` (the
    last context position: SigLIP, CLIPA), ``eos`` (the first ``eos_id``), ``first``.
    """

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
        pool_type: str = "argmax",
        eos_id: Optional[int] = None,
    ):
        super().__init__()
        self.token_embedding = token_embedding
        self.positional_embedding = positional_embedding
        self.transformer = transformer
        self.ln_final = ln_final
        self.text_projection = text_projection  # nn.Parameter, nn.Linear or None
        self.register_buffer("attn_mask", attn_mask, persistent=False)
        self.tokenizer = tokenizer
        self.context_length = positional_embedding.shape[0]
        self.template = template
        self.word_tokens = check_word_tokens(word_tokens)
        if pool_type not in TEXT_POOLS:
            raise TypeError(f"TextEncoder supports text towers pooled by {', '.join(TEXT_POOLS)}, got {pool_type!r}")
        if pool_type == "eos" and eos_id is None:
            raise TypeError("pool_type 'eos' needs the tower's eos_id")
        self.pool_type = pool_type
        self.eos_id = eos_id
        for param in self.parameters():
            param.requires_grad = False

    @classmethod
    def from_clip(cls, clip: nn.Module, tokenizer, **kwargs) -> "TextEncoder":
        tower = getattr(clip, "text", clip)  # CustomTextCLIP keeps the tower in .text
        if not hasattr(tower, "token_embedding"):
            raise TypeError(f"TextEncoder needs open_clip's own text transformer; {type(tower).__name__} "
                            f"(a Hugging Face text model) is not supported (docs/backbones.md)")
        if getattr(tower, "cls_emb", None) is not None:
            raise TypeError("TextEncoder does not support text towers with an appended class token (CoCa)")
        if getattr(tower, "use_pad_mask", False):
            raise TypeError("TextEncoder does not support text towers that mask their padding (use_pad_mask)")
        pool = getattr(tower, "text_pool_type", getattr(tower, "pool_type", "argmax"))
        eos_id = getattr(tower, "text_eos_id", getattr(tower, "eos_id", None))
        return cls(
            tower.token_embedding,
            tower.positional_embedding,
            tower.transformer,
            tower.ln_final,
            tower.text_projection,
            getattr(tower, "attn_mask", None),
            tokenizer,
            pool_type=pool,
            eos_id=eos_id,
            **kwargs,
        )

    @property
    def dim(self) -> int:
        proj = self.text_projection
        if proj is None:
            return self.ln_final.normalized_shape[0]
        return proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]

    @property
    def vocabulary(self) -> TokenVocabulary:
        """The tokenizer's ids and pieces (and ``encode`` for the prompt builder's token budget)."""
        return TokenVocabulary(self.tokenizer)

    def tokenize(self, prompts: Sequence[str]) -> Tensor:
        return self.tokenizer(list(prompts))

    def _template_token_counts(self):
        """Tokens the template adds before and after the class text."""
        prefix, _, suffix = self.template.partition("{}")
        vocabulary = self.vocabulary
        return tuple(len(vocabulary.encode(part.strip())) if part.strip() else 0 for part in (prefix, suffix))

    def _punctuation(self, tokens: Tensor) -> Tensor:
        """``[C, L]`` True where a token is punctuation (its text has no letter or digit)."""
        vocabulary = self.vocabulary
        ids = tokens.unique().tolist()
        marks = [i for i in ids if not any(ch.isalnum() for ch in vocabulary.piece(i))]
        return torch.isin(tokens, torch.tensor(marks, dtype=tokens.dtype, device=tokens.device))

    def _project(self, x: Tensor) -> Tensor:
        proj = self.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    def _pooled_position(self, tokens: Tensor) -> Tensor:
        """Per prompt, the position whose feature is ``z_c`` (as open_clip's ``text_global_pool``)."""
        if self.pool_type == "argmax":
            return tokens.argmax(dim=-1)  # end-of-text has the largest id
        if self.pool_type == "eos":
            return (tokens == self.eos_id).int().argmax(dim=-1)
        if self.pool_type == "last":
            return torch.full_like(tokens[:, 0], tokens.shape[1] - 1)
        return torch.zeros_like(tokens[:, 0])

    @torch.no_grad()
    def encode_tokens(self, tokens: Tensor, prompts: Sequence[str] = ()) -> ClassBank:
        device = self.token_embedding.weight.device
        tokens = tokens.to(device)
        cast_dtype = self.token_embedding.weight.dtype
        x = self.token_embedding(tokens).to(cast_dtype) + self.positional_embedding.to(cast_dtype)
        x = self.transformer(x, attn_mask=self.attn_mask)
        x = self._project(self.ln_final(x))  # [C, L, D]
        rows = torch.arange(x.shape[0], device=device)
        class_emb = x[rows, self._pooled_position(tokens)]
        vocabulary = self.vocabulary
        sentence = vocabulary.sentence(tokens)  # [C, L]
        # Nw: from the first position any prompt uses to the last (open_clip's BPE: position j of
        # the word axis is token j + 1, after start-of-text).
        used = sentence.any(dim=0).nonzero().flatten()
        first, last = (int(used[0]), int(used[-1]) + 1) if len(used) else (1, 2)
        words = x[:, first:last]
        sentence = sentence[:, first:last]
        word_mask = sentence
        if self.word_tokens == "class_and_attributes":
            before, after = self._template_token_counts()
            # Rank of each position among its prompt's own tokens: the template's leading
            # ``before`` and trailing ``after`` tokens are masked, and so is punctuation.
            rank = sentence.cumsum(dim=1) - 1
            count = sentence.sum(dim=1, keepdim=True)
            inside = sentence & (rank >= before) & (rank < count - after)
            word_mask = inside & ~self._punctuation(tokens[:, first:last])
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
