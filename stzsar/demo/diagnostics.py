"""What the STI module does on the demo's test videos: the numbers behind docs/training.md's diagnosis.

For a trained model and a test set whose action windows are known (``windows.json`` of the
generated dataset), over the videos and their true class:

- ``s_sp``: the spread of the spatial score ``S_sp[t]`` (its mean, its standard deviation over the
  frames of a video, and its mean inside and outside the action window);
- ``s_temp``: how peaked the temporal weights are (the largest ``S_temp[t]`` of a video; ``1/T``
  is uniform, 1 a single frame) and how much of the weight falls on the frames of the action
  window (``window_weight``; ``window_share`` is what uniform weights would give);
- ``winners_on_actor``: the share of the action window's frames whose winning patch of ``S_sp``
  (the patch of the best patch-word pair) holds pixels of the actor, next to the share of all
  patches of those frames that do (``patches_on_actor``: what a random patch would give);
- ``winner_roles``: which prompt words win ``S_sp`` (share of all frames by role: class name,
  attribute, template word, punctuation), the word set being ``model.word_tokens``;
- ``relu_dead``: the share of the projected patch and word features that the ReLU sets to zero;
- ``projection_shift``: ``|W - I| / |I|`` (Frobenius) of the two projections, i.e. how far they
  moved from their identity start.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from stzsar.data.sampling import middle_indices
from stzsar.text import ClassBank


def _projection_shift(layer) -> Optional[float]:
    if layer is None:
        return None
    eye = torch.eye(layer.weight.shape[0], dtype=layer.weight.dtype)
    return float((layer.weight.detach().cpu() - eye).norm() / eye.norm())


def _mean(values: List[float]) -> Optional[float]:
    return float(sum(values) / len(values)) if values else None


@torch.no_grad()
def sti_statistics(model, dataset, bank: ClassBank, windows_path: Path, colours: List, batch_size: int = 32
                   ) -> Dict[str, object]:
    """The statistics above for ``model`` on ``dataset`` (a demo test set with labels into ``bank``;
    ``colours[label]`` is the RGB of the class's actor)."""
    from stzsar.eval.loading import denormalize
    from stzsar.ops import spatial_maxsim_with_index

    sti = model.sti
    model.eval()
    windows = json.loads(Path(windows_path).read_text())
    root = Path(windows_path).parent
    num_frames = dataset.spec.num_frames
    s_sp_mean, s_sp_std, s_sp_in, s_sp_out, peak, in_weight, in_share = [], [], [], [], [], [], []
    from collections import Counter

    from stzsar.eval.explain import prompt_words

    dead_patch, dead_word, on_actor, patches_on_actor = [], [], [], []
    roles: Counter = Counter()
    vocabulary = [prompt_words(model.text.tokenizer, bank.prompts[c], dataset.split.classes[c],
                               model.config.template, bank.word_mask[c].nonzero().flatten().tolist())
                  for c in range(len(bank))] if bank.prompts else None
    for first in range(0, len(dataset), batch_size):
        indices = list(range(first, min(first + batch_size, len(dataset))))
        clips = torch.stack([dataset.load(i) for i in indices])
        labels = torch.tensor([dataset.split.videos[i].label for i in indices])
        frames, patches = model.encode_video(clips)
        words, mask = bank.words[labels].to(frames.dtype), bank.word_mask[labels]
        s_sp, s_temp, _ = sti.saliency(frames, patches, words, mask)  # [b, b, T]: video i vs class of j
        own = torch.arange(len(indices))
        s_sp, s_temp = s_sp[own, own], s_temp[own, own]  # [b, T] each video with its own class
        winners = None
        if sti.patch_proj is not None:
            projected = F.relu(sti.patch_proj(F.normalize(patches, dim=-1) if sti.normalize else patches))
            dead_patch.append(float((projected == 0).float().mean()))
            projected_words = sti._project(words, sti.word_proj)
            _, index = spatial_maxsim_with_index(projected, projected_words, mask, backend="torch")
            winners = index[own, own] // words.shape[1]  # [b, T] flat patch index of the winner
            if vocabulary is not None:
                for row, label in enumerate(labels.tolist()):
                    for position in (index[row, row] % words.shape[1]).tolist():
                        word = vocabulary[label].get(position)
                        roles[word.role if word else "word"] += 1
        if sti.word_proj is not None:
            projected = F.relu(sti.word_proj(F.normalize(words, dim=-1) if sti.normalize else words))
            dead_word.append(float((projected == 0).float()[mask].mean()))
        for row, i in enumerate(indices):
            path = Path(dataset.split.locate(i)).resolve()
            start, length = windows[path.relative_to(root.resolve()).as_posix()]
            sampled = middle_indices(len(dataset._decoded(i)[0]), num_frames)  # the test clip's frames
            inside = torch.tensor([start <= t < start + length for t in sampled])
            s_sp_mean.append(float(s_sp[row].mean()))
            s_sp_std.append(float(s_sp[row].std(unbiased=False)))
            if inside.any():
                s_sp_in.append(float(s_sp[row][inside].mean()))
                in_weight.append(float(s_temp[row][inside].sum() / s_temp[row].sum()))
                in_share.append(float(inside.float().mean()))
            if (~inside).any():
                s_sp_out.append(float(s_sp[row][~inside].mean()))
            peak.append(float((s_temp[row] / s_temp[row].sum()).max()))
            if winners is not None:
                pixels = denormalize(clips[row].float(), dataset.spec.mean, dataset.spec.std).numpy()  # [T, H, W, 3]
                grid = int(round(patches.shape[2] ** 0.5))
                cell_h, cell_w = pixels.shape[1] / grid, pixels.shape[2] / grid
                rgb = colours[int(labels[row])]
                for t in inside.nonzero().flatten().tolist():
                    on_actor.append(_on_actor(pixels[t], *divmod(int(winners[row, t]), grid), cell_h, cell_w, rgb))
                    patches_on_actor.append(_mean([_on_actor(pixels[t], r, c, cell_h, cell_w, rgb)
                                                   for r in range(grid) for c in range(grid)]))
    return {
        "videos": len(dataset),
        "s_sp": {"mean": _mean(s_sp_mean), "std_over_frames": _mean(s_sp_std),
                 "mean_in_window": _mean(s_sp_in), "mean_outside_window": _mean(s_sp_out)},
        "s_temp": {"max": _mean(peak), "uniform_max": 1.0 / num_frames,
                   "window_weight": _mean(in_weight), "window_share": _mean(in_share)},
        "winners_on_actor": _mean([float(x) for x in on_actor]), "patches_on_actor": _mean(patches_on_actor),
        "winner_roles": {role: n / sum(roles.values()) for role, n in roles.most_common()},
        "relu_dead": {"patches": _mean(dead_patch), "words": _mean(dead_word)},
        "projection_shift": {"patch": _projection_shift(sti.patch_proj), "word": _projection_shift(sti.word_proj)},
    }


def epoch_losses(history: List[Dict[str, float]], steps_per_epoch: int) -> List[float]:
    """The mean training loss of each epoch (the training curve the report keeps)."""
    losses = [h["loss"] for h in history]
    size = max(1, steps_per_epoch)
    return [round(sum(losses[i:i + size]) / len(losses[i:i + size]), 4) for i in range(0, len(losses), size)]


def _on_actor(frame, row: int, col: int, cell_h: float, cell_w: float, rgb) -> bool:
    """Whether the patch (row, col) of ``frame`` (uint8 [H, W, 3]) holds pixels of the actor's colour
    (distractors have other colours, the clutter is grey; see :mod:`stzsar.demo.actions`)."""
    import numpy as np

    cell = frame[int(row * cell_h):int((row + 1) * cell_h), int(col * cell_w):int((col + 1) * cell_w)]
    return bool((np.abs(cell.astype(int) - np.array(rgb)).sum(-1) < 60).any())


def explain_example(model, clip, bank: ClassBank, class_names: List[str], label: int, rgb,
                    window, frame_indices: List[int]) -> Dict[str, object]:
    """``stzsar explain`` on one video (its top class, as the command does; ``label`` is the true
    one), summed up: the winning words
    with their role and ``S_temp`` weight, the share of that weight on class and attribute words,
    on the frames of the action window, and how many of the window's frames have their winning
    patch on the actor."""
    from stzsar.eval.explain import explain_video

    e = explain_video(model, clip, bank, class_names, frame_indices=frame_indices)
    words = e.winning_words()
    total = float(e.s_temp.sum())
    content = sum(w["weight"] for w in words if w["role"] in ("class", "attribute"))
    start, length = window
    inside = [t for t, index in enumerate(frame_indices) if start <= index < start + length]
    gh, gw = e.patch_scores.shape[1:]
    height, width = e.frames.shape[1:3]
    on_actor = [_on_actor(e.frames[t], *divmod(int(e.winner_patch[t]), gw), height / gh, width / gw, rgb)
                for t in inside]
    return {
        "predicted": e.class_names[e.target],
        "true_class": class_names[label],
        "winning_words": [{k: w[k] for k in ("word", "role", "weight", "frames")} for w in words],
        "class_and_attribute_weight": content / total if total else None,
        "window_frames": inside,
        "window_weight": float(e.s_temp[inside].sum()) / total if total and inside else None,
        "window_winners_on_actor": sum(on_actor),
    }
