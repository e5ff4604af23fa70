"""Why the model chose a class: the spatial and temporal evidence of the STI module (paper Fig. 6).

For the top class ``c`` of a video, docs/method.md section 4 gives per frame ``t``:

- the patch heat map ``H[t, k] = max over valid words l of <P~[t, k], A~[c, l]>``: how well each
  patch matches its best word of the class prompt (``S_sp[t]`` is its maximum over patches);
- the winning (patch, word) pair, i.e. where and on which word ``S_sp[t]`` was reached (read from
  :func:`stzsar.ops.spatial_maxsim_with_index`, the op the model itself uses);
- the temporal saliency ``S_temp[t]``: how much frame ``t`` weighs in the class-conditioned video
  representation.

Word positions are mapped back to the prompt's words through the tokenizer's own decoder (BPE
pieces joined into whole words), each tagged as a template, class-name or attribute word.
:func:`render_explanation` draws the frames, the heat maps with the winning word of each frame,
``S_temp`` as bars under the frames, and the top classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from stzsar.ops import spatial_maxsim_with_index
from stzsar.text import ClassBank

PathLike = Union[str, Path]


@dataclass
class PromptWord:
    """A token position of a prompt: the whole word it belongs to, and the word's role."""

    position: int  # index on the bank's word axis (token position - 1)
    token: str  # the BPE piece at this position
    word: str  # the whole word the piece belongs to
    role: str  # "template", "class", "attribute", "punctuation" or "word" (role unknown)
    phrase: str  # the comma-separated item the word is in (e.g. the whole attribute)


@dataclass
class Explanation:
    """Evidence for one video's prediction (arrays are numpy, one entry per frame where ``[T]``)."""

    video: str
    class_names: List[str]
    probs: np.ndarray  # [C] class probabilities
    target: int  # the class explained (the top one unless asked otherwise)
    prompt: str
    frames: np.ndarray  # uint8 [T, H, W, 3] the model's input crop
    patch_scores: np.ndarray  # [T, gh, gw] best word score of each patch for the target class
    s_sp: np.ndarray  # [T]
    s_temp: np.ndarray  # [T]
    winner_patch: np.ndarray  # [T] flat patch index k
    winner_word: np.ndarray  # [T] word position l
    words: Dict[int, PromptWord] = field(default_factory=dict)  # valid positions only
    frame_indices: Optional[List[int]] = None  # source frame numbers, where known

    def top(self, k: int = 5) -> List[Tuple[str, float]]:
        order = np.argsort(-self.probs, kind="stable")[:k]
        return [(self.class_names[i], float(self.probs[i])) for i in order]

    def frame_word(self, t: int) -> PromptWord:
        """The word that won frame ``t``, with the role of its position in the prompt (a word can
        be both a class word and an attribute: its text alone does not say which one won)."""
        position = int(self.winner_word[t])
        return self.words.get(position) or PromptWord(position, f"#{position}", f"#{position}", "word", f"#{position}")

    def winning_words(self) -> List[Dict[str, object]]:
        """Each word that won at least one frame: frames won and their summed ``S_temp`` weight.

        Rows are (word, role, phrase) of the winning positions: the BPE pieces of one word merge,
        while the same text as a class word and as an attribute stays two rows, each with its role.
        """
        frames: Dict[Tuple[str, str, str], List[int]] = {}
        for t in range(len(self.winner_word)):
            info = self.frame_word(t)
            frames.setdefault((info.word, info.role, info.phrase), []).append(t)
        rows = [{"word": word, "role": role, "phrase": phrase, "frames": ts, "weight": float(self.s_temp[ts].sum())}
                for (word, role, phrase), ts in frames.items()]
        return sorted(rows, key=lambda r: -r["weight"])

    def as_dict(self) -> dict:
        return {
            "video": self.video,
            "predicted": self.class_names[self.target],
            "top": [{"class": n, "prob": p} for n, p in self.top(5)],
            "prompt": self.prompt,
            "s_sp": self.s_sp.tolist(),
            "s_temp": self.s_temp.tolist(),
            "winning_words": self.winning_words(),
            "frame_words": [self.words[l].word if l in self.words else None for l in self.winner_word.tolist()],
            "frame_roles": [self.frame_word(t).role for t in range(len(self.winner_word))],
            "frame_patches": self.winner_patch.tolist(),
            "frame_indices": self.frame_indices,
        }


# ------------------------------------------------------------------------------------------------
# Prompt words


def _template_parts(template: str) -> Tuple[str, str]:
    prefix, _, suffix = template.partition("{}")
    return prefix.strip(), suffix.strip()


def prompt_words(tokenizer, prompt: str, class_name: str, template: str, valid: Sequence[int]) -> Dict[int, PromptWord]:
    """Map the valid word positions of ``prompt`` (bank word axis) to words and roles.

    Position ``j`` is token ``j + 1`` (after start-of-text). With open_clip's BPE tokenizer a word
    ends at a piece ending in ``</w>``; pieces are joined into words and decoded with the
    tokenizer's byte decoder. Roles come from token counts: the template's prefix, then the class
    name, then the attributes, then the template's suffix (the tokenizer splits words before BPE,
    so the counts of the parts add up).
    """
    ids = tokenizer([prompt])[0].tolist()
    decoder = getattr(tokenizer, "decoder", None)
    # open_clip's Hugging Face tokenizers (SigLIP's) decode through their inner tokenizer and may
    # have no start token, so the word axis then starts at token 0 (as the text encoder's does).
    hf = getattr(tokenizer, "tokenizer", None) if decoder is None else None
    specials = set(hf.all_special_ids if hf is not None else getattr(tokenizer, "all_special_ids", ()))
    start = 1 if hf is None or ids[0] in specials else 0
    pieces: List[str] = []
    for token in ids[start:]:
        if token in specials or token == getattr(tokenizer, "eot_token_id", None):
            break
        pieces.append(decoder[token] if decoder is not None else (hf or tokenizer).decode([token]))

    def clean(text: str) -> str:
        if decoder is None:
            return text.strip()
        byte_decoder = tokenizer.byte_decoder
        raw = bytearray(byte_decoder[ch] for ch in text.replace("</w>", "") if ch in byte_decoder)
        return raw.decode("utf-8", errors="replace")

    # Whole words: consecutive pieces up to one that ends a word.
    word_of: List[str] = []
    group: List[int] = []
    for i, piece in enumerate(pieces):
        group.append(i)
        if decoder is None or piece.endswith("</w>") or i == len(pieces) - 1:
            text = "".join(clean(pieces[j]) for j in group)
            word_of.extend([text] * len(group))
            group = []

    # Roles and comma-separated phrases.
    roles = ["word"] * len(pieces)
    encode = getattr(tokenizer, "encode", None)
    if hf is not None:
        from stzsar.text.encoder import TokenVocabulary

        encode = TokenVocabulary(tokenizer).encode
    if encode is not None:
        prefix, suffix = _template_parts(template)
        from stzsar.classes import display_name

        n_prefix = len(encode(prefix)) if prefix else 0
        n_class = len(encode(display_name(class_name)))
        n_suffix = len(encode(suffix)) if suffix else 0
        for i in range(len(pieces)):
            if i < n_prefix or i >= len(pieces) - n_suffix:
                roles[i] = "template"
            elif i < n_prefix + n_class:
                roles[i] = "class"
            else:
                roles[i] = "attribute"
    phrases: List[str] = []
    current: List[int] = []

    def flush():
        text = " ".join(dict.fromkeys(word_of[j] for j in current if word_of[j] not in {",", "."}))
        phrases.extend([text] * len(current))

    for i, word in enumerate(word_of):
        if word == "," and roles[i] != "template":
            flush()
            current = []
            phrases.append(",")
            continue
        if i > 0 and roles[i] != roles[i - 1] and current:
            flush()
            current = []
        current.append(i)
    flush()

    # Separators are no words of the description; say so rather than call a comma an attribute.
    roles = ["punctuation" if not any(ch.isalnum() for ch in word) else role for word, role in zip(word_of, roles)]
    result = {}
    for position in valid:
        if 0 <= position < len(pieces):
            result[position] = PromptWord(position, clean(pieces[position]), word_of[position], roles[position],
                                          phrases[position])
    return result


# ------------------------------------------------------------------------------------------------
# Computing


@torch.no_grad()
def explain_video(
    model,
    video: Tensor,
    bank: ClassBank,
    class_names: Sequence[str],
    *,
    frames: Optional[np.ndarray] = None,
    target: Optional[int] = None,
    name: str = "video",
    frame_indices: Optional[List[int]] = None,
) -> Explanation:
    """The evidence behind ``model``'s prediction for one clip ``video [T, 3, H, W]``.

    Args:
        bank: the class bank of ``class_names`` (prompts included).
        frames: ``uint8 [T, H, W, 3]`` pixels to show (default: ``video`` de-normalised with the
            model's own mean and std).
        target: explain this class instead of the top one.
    """
    if video.dim() != 4 or video.shape[1] != 3:
        raise ValueError(f"video must be one clip [T, 3, H, W], got {tuple(video.shape)}")
    if len(bank) != len(class_names):
        raise ValueError(f"bank has {len(bank)} classes, class_names {len(class_names)}")
    if not getattr(model.sti, "spatial", True):
        raise ValueError("this model has no spatial interaction (S_sp = 1): there are no winning "
                         "patches or words to show")
    model.eval()
    device = next(model.parameters()).device
    dtype = model.sti.patch_proj.weight.dtype
    bank = bank.to(device)
    clip = video.to(device, dtype).unsqueeze(0)
    frame_feats, patches = model.encode_video(clip)  # [1, T, D], [1, T, Np, D]
    logits = model.logits_from_features(frame_feats, patches, bank)[0]
    probs = logits.double().softmax(-1).cpu().numpy()
    target = int(np.argmax(probs)) if target is None else int(target)
    if not 0 <= target < len(class_names):
        raise ValueError(f"target class {target} outside the {len(class_names)} classes")

    words = bank.words[target : target + 1].to(dtype)
    mask = bank.word_mask[target : target + 1]
    sti = model.sti
    s_sp, s_temp, _ = sti.saliency(frame_feats, patches, words, mask)
    # The STI's projected features (docs/method.md section 4): normalise, then ReLU(W x + b).
    p, w = (F.normalize(patches, dim=-1), F.normalize(words, dim=-1)) if sti.normalize else (patches, words)
    p = F.relu(sti.patch_proj(p))[0]  # [T, Np, D]
    w = F.relu(sti.word_proj(w))[0]  # [Nw, D]
    _, index = spatial_maxsim_with_index(p.unsqueeze(0), w.unsqueeze(0), mask, backend=sti.backend)
    Nw = w.shape[0]
    flat = index[0, 0].long().cpu()
    sim = torch.einsum("tkd,ld->tkl", p.double(), w.double())
    sim = sim.masked_fill(~mask[0].view(1, 1, -1), float("-inf"))
    per_patch = sim.max(dim=-1).values.cpu()  # [T, Np]

    T, Np = per_patch.shape
    height, width = video.shape[-2:]
    patch = model.video.patch_size
    gh, gw = height // patch, width // patch
    if gh * gw != Np:
        raise ValueError(f"{Np} patches do not tile a {height}x{width} input with patch size {patch}")
    if frames is None:
        from stzsar.data.spec import CLIP_MEAN, CLIP_STD
        from stzsar.eval.loading import denormalize

        # The clip was normalised with the model's own mean and std (clip_spec); undo exactly that.
        mean = getattr(model, "image_mean", CLIP_MEAN)
        std = getattr(model, "image_std", CLIP_STD)
        frames = denormalize(video.float().cpu(), mean, std).numpy()
    valid = mask[0].nonzero().flatten().tolist()
    prompt = bank.prompts[target] if bank.prompts else class_names[target]
    vocabulary = prompt_words(model.text.tokenizer, prompt, class_names[target], model.config.template, valid)
    return Explanation(
        video=name,
        class_names=list(class_names),
        probs=probs,
        target=target,
        prompt=prompt,
        frames=np.asarray(frames),
        patch_scores=per_patch.view(T, gh, gw).float().numpy(),
        s_sp=s_sp[0, 0].float().cpu().numpy(),
        s_temp=s_temp[0, 0].float().cpu().numpy(),
        winner_patch=(flat // Nw).numpy(),
        winner_word=(flat % Nw).numpy(),
        words=vocabulary,
        frame_indices=frame_indices,
    )


# ------------------------------------------------------------------------------------------------
# Drawing

ROLE_COLOURS = {"attribute": "#1b7837", "class": "#2166ac", "template": "#777777", "punctuation": "#777777",
                "word": "#000000"}

#: Frames per row of the picture: 16 frames in one row made a picture 2,500 px wide whose type
#: shrank to nothing once it was scaled to fit a screen; two rows of 8 stay about 1,400 px wide.
FRAMES_PER_ROW = 8
#: Smallest type in the picture, in points (at :data:`DPI`, 9 pt is 14 px).
MIN_FONT = 9
DPI = 110
#: Inches per frame column.
_COLUMN = 1.6


def word_colour(explanation: Explanation, t: int) -> str:
    """The colour of frame ``t``'s winning word: that of the role of its position in the prompt,
    the role :meth:`Explanation.winning_words` (and the JSON) gives the same frame."""
    return ROLE_COLOURS.get(explanation.frame_word(t).role, ROLE_COLOURS["word"])


def frame_grid(num_frames: int, per_row: int = FRAMES_PER_ROW) -> Tuple[int, int]:
    """``(rows, columns)`` of the frames: at most ``per_row`` a row, rows as even as they come."""
    if num_frames < 1:
        raise ValueError(f"no frames to draw ({num_frames})")
    rows = -(-num_frames // per_row)
    return rows, -(-num_frames // rows)


def explanation_figure(explanation: Explanation, max_frames: int = 16):
    """The matplotlib figure of ``explanation`` (see :func:`render_explanation`)."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    e = explanation
    T = len(e.s_temp)
    shown = list(range(T)) if T <= max_frames else np.linspace(0, T - 1, max_frames).round().astype(int).tolist()
    n = len(shown)
    rows, cols = frame_grid(n)
    width = max(9.0, _COLUMN * cols)
    # Each row of frames is two rows of pictures (the frame, its heat map); then S_temp and the text.
    ratios = [1.0, 1.0] * rows + [0.8, 1.0]
    fig = plt.figure(figsize=(width, _COLUMN * 2 * rows + 3.4), dpi=DPI)
    grid = fig.add_gridspec(len(ratios), cols, height_ratios=ratios, hspace=0.45, wspace=0.06)
    small, body = MIN_FONT, MIN_FONT + 2

    vmin, vmax = float(np.min(e.patch_scores)), float(np.max(e.patch_scores))
    H, W = e.frames.shape[1:3]
    gh, gw = e.patch_scores.shape[1:]
    heat_image = None
    for slot, t in enumerate(shown):
        row, column = 2 * (slot // cols), slot % cols
        ax = fig.add_subplot(grid[row, column])
        ax.imshow(e.frames[t])
        label = f"frame {e.frame_indices[t]}" if e.frame_indices else f"t={t}"
        ax.set_title(label, fontsize=small)
        ax.axis("off")

        ax = fig.add_subplot(grid[row + 1, column])
        ax.imshow(e.frames[t], alpha=0.55)
        heat_image = ax.imshow(e.patch_scores[t], cmap="inferno", alpha=0.6, vmin=vmin, vmax=vmax,
                               extent=(0, W, H, 0), interpolation="nearest")
        k = int(e.winner_patch[t])
        prow, pcol = divmod(k, gw)
        ax.add_patch(Rectangle((pcol * W / gw, prow * H / gh), W / gw, H / gh, fill=False, edgecolor="cyan", lw=1.8))
        ax.set_title(e.frame_word(t).word, fontsize=body, color=word_colour(e, t), fontweight="bold")
        ax.set_xlim(0, W)
        ax.set_ylim(H, 0)
        ax.axis("off")

    # S_temp under the frames, one bar per shown frame.
    ax = fig.add_subplot(grid[2 * rows, :])
    weights = e.s_temp[shown]
    bars = ax.bar(range(n), weights, color="#4393c3", width=0.8)
    best = int(np.argmax(weights))
    bars[best].set_color("#d6604d")
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_xticks(range(n))
    ax.set_xticklabels([str(e.frame_indices[t]) if e.frame_indices else str(t) for t in shown], fontsize=small)
    ax.set_ylabel("S_temp", fontsize=body)
    ax.set_ylim(0, max(float(weights.max()) * 1.15, 1e-6))
    ax.tick_params(axis="y", labelsize=small)
    ax.set_title("temporal saliency S_temp (weight of each frame in the class's video feature)", fontsize=body)

    # Text: top classes and the winning words, wrapped to the figure's width.
    ax = fig.add_subplot(grid[2 * rows + 1, :])
    ax.axis("off")
    chars = int(width * 72 / (body * 0.6))  # characters a line holds at this size (about 0.6 em each)
    top = "   ".join(f"{i + 1}. {name} {100 * p:.1f}%" for i, (name, p) in enumerate(e.top(5)))
    won = e.winning_words()[:8]
    summary = ",  ".join(f"{w['word']} ({w['role']}{', ' + w['phrase'] if w['phrase'] not in ('', w['word']) else ''}: "
                         f"{len(w['frames'])} frame{'s' if len(w['frames']) > 1 else ''})" for w in won)
    text = "\n".join(textwrap.fill(line, chars) for line in
                     (f"top classes: {top}", f"winning words: {summary}", f"prompt: {e.prompt}"))
    ax.text(0.0, 1.0, text, fontsize=body, va="top", transform=ax.transAxes, linespacing=1.5)

    name = e.class_names[e.target]
    title = (f"{Path(e.video).name}: {name} ({100 * e.probs[e.target]:.1f}%). Under each frame: patch match to "
             "the best word of the prompt (box: winning patch; title: winning word, green attribute, blue class "
             "name, grey template)")
    fig.suptitle(textwrap.fill(title, int(width * 72 / ((body + 1) * 0.6))), fontsize=body + 1)
    if heat_image is not None:
        cax = fig.add_axes([0.92, 0.55, 0.01, 0.25])
        fig.colorbar(heat_image, cax=cax).ax.tick_params(labelsize=small)
    return fig


def render_explanation(explanation: Explanation, path: PathLike, max_frames: int = 16) -> Path:
    """Draw ``explanation`` as a PNG: frames (at most :data:`FRAMES_PER_ROW` a row), heat maps with
    the winning words, ``S_temp`` bars, the top classes and winning words."""
    import matplotlib.pyplot as plt

    fig = explanation_figure(explanation, max_frames)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
