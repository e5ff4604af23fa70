"""Evaluation reports: JSON for scripts, Markdown for people, plots for both.

:func:`write_report` writes into one folder:

- ``report.json``: everything measured (per split: top-1/top-5, mean class accuracy, videos
  scored and skipped with path and reason, per-class accuracy, the most confused pairs, the
  confusion matrix), the summary over splits, the paper's number for the protocol (docs/method.md section 6)
  and the run's facts (model, checkpoint, class lists, attribute file, views);
- ``report.md``: the table with the paper's number beside ours, then per split the most confused
  pairs, the per-class accuracy and the skipped videos;
- ``confusion_<split>.png``: the row-normalised confusion matrix with the classes ordered so that
  confusions cluster (:func:`cluster_order`);
- ``predictions_<split>.csv``: per video its path, label, top-5 classes and probabilities.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from stzsar.eval.meter import EvalResult

PathLike = Union[str, Path]

#: The paper's numbers (docs/method.md section 6), by (protocol, dataset) and backbone setting.
#: zero-shot: (top-1 mean, std) over 3 splits; few-shot: top-1 per K on split 1;
#: supervised: (top-1, top-5) per input setting.
PAPER_NUMBERS: Dict[Tuple[str, str], Dict[str, Any]] = {
    ("zero-shot", "ucf101"): {"ViT-B/16, 16 frames": (78.9, 0.9), "ViT-L/14, 8 frames": (81.0, 0.5)},
    ("zero-shot", "hmdb51"): {"ViT-B/16, 16 frames": (52.7, 0.8), "ViT-L/14, 8 frames": (53.1, 0.9)},
    ("zero-shot", "k600"): {"ViT-B/16, 16 frames": (72.0, 0.5), "ViT-L/14, 8 frames": (68.9, 1.2)},
    ("few-shot", "ucf101"): {"ViT-B/16, 16 frames": {2: 91.7, 4: 95.0, 8: 97.4, 16: 97.5}},
    ("few-shot", "hmdb51"): {"ViT-B/16, 16 frames": {2: 60.4, 4: 63.9, 8: 67.9, 16: 71.2}},
    ("supervised", "k400"): {"ViT-L/14, 8x224": (87.3, 97.7), "ViT-L/14, 32x336": (88.8, 98.6)},
}

DATASET_ALIASES = {
    "ucf101": "ucf101", "ucf-101": "ucf101", "ucf": "ucf101",
    "hmdb51": "hmdb51", "hmdb-51": "hmdb51", "hmdb": "hmdb51",
    "k600": "k600", "kinetics600": "k600", "kinetics-600": "k600", "k160": "k600",
    "k400": "k400", "kinetics400": "k400", "kinetics-400": "k400", "kinetics": "k400",
}


def canonical_dataset(name: Optional[str]) -> str:
    """``UCF-101`` -> ``ucf101`` etc.; unknown names are kept (lower case)."""
    if not name:
        return "custom"
    key = name.strip().lower()
    return DATASET_ALIASES.get(key, key)


def paper_setting(model_name: str, num_frames: Optional[int] = None, image_size: Optional[int] = None,
                  protocol: str = "zero-shot") -> Optional[str]:
    """The paper's setting this model compares with (by backbone), or ``None`` for other backbones."""
    compact = model_name.replace("-", "").replace("/", "").lower()
    if protocol == "supervised":
        if "vitl14" in compact:
            return "ViT-L/14, 32x336" if (image_size or 224) >= 336 or (num_frames or 8) >= 32 else "ViT-L/14, 8x224"
        return None
    if "vitb16" in compact:
        return "ViT-B/16, 16 frames"
    if "vitl14" in compact:
        return "ViT-L/14, 8 frames"
    return None


def paper_number(protocol: str, dataset: str, setting: Optional[str]) -> Optional[Dict[str, Any]]:
    """The paper's number for a protocol and dataset, ``None`` when the paper reports none.

    With ``setting`` ``None`` (a backbone the paper did not use), the first reported setting is
    returned, marked as such, so that the reader still sees the reference.
    """
    table = PAPER_NUMBERS.get((protocol, canonical_dataset(dataset)))
    if not table:
        return None
    exact = setting in table
    chosen = setting if exact else next(iter(table))
    value = table[chosen]
    entry: Dict[str, Any] = {"setting": chosen, "same_backbone": exact}
    if protocol == "zero-shot":
        entry.update(top1=value[0], top1_std=value[1])
    elif protocol == "few-shot":
        entry.update(top1_by_k={int(k): v for k, v in value.items()})
    else:
        entry.update(top1=value[0], top5=value[1])
    return entry


# ------------------------------------------------------------------------------------------------
# Confusion analysis


def normalized_confusion(confusion: np.ndarray) -> np.ndarray:
    """Rows divided by their totals (rows of classes without videos stay zero)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    totals = confusion.sum(axis=1, keepdims=True)
    return np.divide(confusion, totals, out=np.zeros_like(confusion), where=totals > 0)


def cluster_order(confusion: np.ndarray) -> List[int]:
    """A class order in which classes confused with each other sit next to each other.

    Average-linkage agglomerative clustering on the symmetrised, row-normalised confusion
    ``A = (N + N^T) / 2`` (diagonal ignored): the two clusters with the highest mean affinity merge
    first, and each merge joins the two leaf sequences at the ends that are most confused with each
    other, so the final sequence (the dendrogram's leaves) puts blocks of mutually confused classes
    together. Deterministic: ties merge the lowest cluster ids first.
    """
    C = int(np.asarray(confusion).shape[0])
    if C <= 2:
        return list(range(C))
    norm = normalized_confusion(confusion)
    affinity = (norm + norm.T) / 2.0
    np.fill_diagonal(affinity, 0.0)
    sim = affinity.copy()
    np.fill_diagonal(sim, -np.inf)
    sizes = np.ones(C)
    sequences: Dict[int, List[int]] = {i: [i] for i in range(C)}
    alive = np.ones(C, dtype=bool)
    for _ in range(C - 1):
        flat = int(np.argmax(sim))
        a, b = divmod(flat, C)
        a, b = min(a, b), max(a, b)
        left, right = sequences.pop(a), sequences.pop(b)
        # Orientation: the two ends that touch should be the most confused pair of ends.
        options = [(left, right), (left, right[::-1]), (left[::-1], right), (left[::-1], right[::-1])]
        best = max(options, key=lambda o: affinity[o[0][-1], o[1][0]])
        sequences[a] = best[0] + best[1]
        # Average linkage: the merged cluster's similarity is the size-weighted mean of its parts'.
        merged = (sizes[a] * sim[a] + sizes[b] * sim[b]) / (sizes[a] + sizes[b])
        sizes[a] += sizes[b]
        alive[b] = False
        sim[a, :] = merged
        sim[:, a] = merged
        sim[b, :] = -np.inf
        sim[:, b] = -np.inf
        sim[a, a] = -np.inf
        sim[:, ~alive] = -np.inf
    (order,) = sequences.values()
    return order


def most_confused(confusion: np.ndarray, class_names: Sequence[str], top: int = 10) -> List[Dict[str, Any]]:
    """The largest off-diagonal cells: ``{"true", "predicted", "count", "fraction"}`` (of the true class)."""
    confusion = np.asarray(confusion)
    off = confusion.astype(np.int64).copy()
    np.fill_diagonal(off, 0)
    totals = confusion.sum(axis=1)
    cells = np.argwhere(off > 0)
    ranked = sorted(cells.tolist(), key=lambda rc: (-off[rc[0], rc[1]], rc[0], rc[1]))[:top]
    return [
        {"true": class_names[r], "predicted": class_names[c], "count": int(off[r, c]),
         "fraction": float(off[r, c] / totals[r])}
        for r, c in ranked
    ]


def plot_confusion(result: EvalResult, path: PathLike, title: str = "", max_labels: int = 120) -> Path:
    """Save the row-normalised confusion matrix, classes in :func:`cluster_order`, as a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    C = len(result.class_names)
    order = cluster_order(result.confusion)
    matrix = normalized_confusion(result.confusion)[np.ix_(order, order)]
    labels = [result.class_names[i] for i in order]
    side = float(np.clip(3.0 + 0.16 * C, 6.0, 30.0))
    fig, ax = plt.subplots(figsize=(side + 1.5, side), dpi=100)
    from matplotlib.colors import PowerNorm

    # A square-root colour scale: the confusions (small fractions) stay visible next to the diagonal.
    image = ax.imshow(matrix, cmap="viridis", norm=PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0),
                      interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="fraction of the true class's videos (sqrt scale)")
    if C <= max_labels:
        font = float(np.clip(11 - C / 12, 4, 10))
        ax.set_xticks(range(C))
        ax.set_yticks(range(C))
        ax.set_xticklabels(labels, rotation=90, fontsize=font)
        ax.set_yticklabels(labels, fontsize=font)
    else:  # too many to read; the ordered list is in report.json
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"{C} classes (order in report.json 'confusion_order')")
    ax.set_xlabel("predicted class" if C <= max_labels else ax.get_xlabel())
    ax.set_ylabel("true class")
    ax.set_title(title or f"top-1 {result.top1:.1f}% over {result.num_scored} videos", fontsize=12)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------
# Writing


def _number(value: float) -> Optional[float]:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower() or "split"


def result_dict(result: EvalResult, top_confused: int = 20) -> Dict[str, Any]:
    """One split's result as JSON-ready data."""
    order = cluster_order(result.confusion)
    return {
        **{k: (_number(v) if isinstance(v, float) else v) for k, v in result.summary().items()},
        "videos_listed": result.num_scored + result.num_skipped,
        "skipped_videos": [{"index": s.index, "path": s.path, "reason": s.reason} for s in result.skipped],
        "per_class": [
            {"class": name, "videos": int(n), "accuracy": _number(float(a))}
            for name, n, a in zip(result.class_names, result.per_class_count, result.per_class_accuracy)
        ],
        "most_confused": most_confused(result.confusion, result.class_names, top_confused),
        "confusion_order": [result.class_names[i] for i in order],
        "confusion": result.confusion.tolist(),
    }


def subset_dict(subsets, class_names: Sequence[str], top_confused: int = 20) -> Dict[str, Any]:
    """The class-subset protocol of one split (:class:`~stzsar.eval.subsets.SubsetResult`) as JSON-ready data."""
    return {
        "protocol": "random class subsets (BIKE/Text4Vis); not comparable with the full-class figures",
        "draws": subsets.num_draws,
        "fraction": subsets.fraction,
        "seed": subsets.seed,
        "classes_per_draw": subsets.classes_per_draw,
        "topk": list(subsets.topk),
        "top1_mean": subsets.top1_mean, "top1_std": subsets.top1_std,
        "top5_mean": subsets.top5_mean, "top5_std": subsets.top5_std,
        "per_draw": [{"classes": [class_names[c] for c in d.classes], "videos": d.videos, "top1": d.top1,
                      "top5": d.top5} for d in subsets.draws],
        "per_class": [{"class": name, "videos": int(n), "accuracy": _number(float(a))}
                      for name, n, a in zip(class_names, subsets.per_class_count, subsets.per_class_accuracy)],
        "most_confused": most_confused(subsets.confusion, class_names, top_confused),
    }


def _per_class_lines(class_names: Sequence[str], accuracy: np.ndarray, count: np.ndarray, label: str,
                     subsets=None) -> List[str]:
    """The per-class table, worst first; with ``subsets`` (the class-subset protocol), its per-class
    figures as two more columns of the same table rather than a second table of the same classes."""
    header = "| class | videos | accuracy |"
    if subsets is not None:
        header += " videos over the subset draws | accuracy within the subsets |"
    lines = [f"{label} (worst first):", "", header, "|" + "---|" * (header.count("|") - 1)]
    ranked = sorted(range(len(class_names)), key=lambda c: (np.nan_to_num(accuracy[c], nan=np.inf), class_names[c]))
    for c in ranked:
        row = f"| {class_names[c]} | {int(count[c])} | {_fmt(float(accuracy[c]))} |"
        if subsets is not None:
            row += f" {int(subsets.per_class_count[c])} | {_fmt(float(subsets.per_class_accuracy[c]))} |"
        lines.append(row)
    return lines + [""]


def _confused_lines(confusion: np.ndarray, class_names: Sequence[str], label: str,
                    header: str = "| true | predicted | videos | of the true class |") -> List[str]:
    pairs = most_confused(confusion, class_names, 10)
    if not pairs:
        return []
    lines = [f"{label} (true → predicted):", "", header, "|---|---|---|---|"]
    lines += [f"| {p['true']} | {p['predicted']} | {p['count']} | {100 * p['fraction']:.0f}% |" for p in pairs]
    return lines + [""]


def _subset_markdown(run) -> List[str]:
    """The class-subset table, apart from the full-class one and labelled as another protocol."""
    if not run.subsets:
        return []
    first = next(iter(run.subsets.values()))
    k_small, k_big = first.topk
    lines = ["**Random class subsets (BIKE / Text4Vis protocol)**", "",
             f"**Another protocol than the table above; do not compare these figures with full-class ones.** "
             f"Each of {first.num_draws} draws (seed {first.seed}) keeps {first.fraction:g} of the classes "
             f"({first.classes_per_draw} for the first split) and scores the videos of those classes with "
             "predictions restricted to them; mean ± std (population) over the draws.", "",
             f"| split | draws | classes per draw | subset top-{k_small} | subset top-{k_big} | "
             f"full-class top-{k_small} |", "|---|---|---|---|---|---|"]
    for name, sub in run.subsets.items():
        full = run.results[name].top1 if name in run.results else None
        lines.append(f"| {name} | {sub.num_draws} | {sub.classes_per_draw} | {_fmt(sub.top1_mean, sub.top1_std)} | "
                     f"{_fmt(sub.top5_mean, sub.top5_std)} | {_fmt(full)} |")
    lines.append("")
    return lines


def _scored(scored: int, skipped: int) -> str:
    """``3 of 5``: the videos scored out of those listed."""
    return f"{scored} of {scored + skipped}"


def _fmt(value: Optional[float], std: Optional[float] = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.1f} ± {std:.1f}" if std is not None else f"{value:.1f}"


def _markdown(run, paper: Optional[Dict[str, Any]], meta: Dict[str, Any], files: Dict[str, Dict[str, str]]) -> str:
    lines = [f"# {run.protocol} evaluation: {run.dataset}", ""]
    facts = [("model", meta.get("model")), ("checkpoint", meta.get("checkpoint")),
             ("attributes", meta.get("attributes") or "none (class names alone)"),
             ("frames per clip", meta.get("num_frames")), ("views per video", meta.get("views")),
             ("precision", meta.get("precision")), ("ranks", meta.get("world_size"))]
    lines += [f"- {k}: {v}" for k, v in facts if v is not None]
    for name, info in (meta.get("splits") or {}).items():
        lines.append(f"- {name}: {info.get('num_classes')} classes from {info.get('source') or 'the given list'}")
    lines += [f"- {note}" for note in meta.get("notes") or ()]
    lines.append("")

    k_small, k_big = next(iter(run.results.values())).topk
    first = "K" if run.protocol == "few-shot" else "split"
    header = f"| {first} | top-{k_small} | top-{k_big} | videos scored | videos skipped |"
    if run.protocol == "few-shot":
        header += " paper top-1 |"
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    for name, result in run.results.items():
        row = (f"| {name} | {_fmt(result.top1)} | {_fmt(result.top5)} | {_scored(result.num_scored, result.num_skipped)} "
               f"| {result.num_skipped} |")
        if run.protocol == "few-shot":
            k = int(name.split("=")[1]) if "=" in name else None
            value = (paper or {}).get("top1_by_k", {}).get(k)
            row += f" {_fmt(value)} |"
        lines.append(row)
    if run.summary is not None and len(run.results) > 1:
        s = run.summary
        lines.append(f"| **mean ± std** | **{_fmt(s.top1_mean, s.top1_std)}** | {_fmt(s.top5_mean, s.top5_std)} | "
                     f"{_scored(s.videos_scored, s.videos_skipped)} | {s.videos_skipped} |")
    if paper and run.protocol == "zero-shot":
        lines.append(f"| paper ({paper['setting']}) | {_fmt(paper['top1'], paper['top1_std'])} | - | - | - |")
    if paper and run.protocol == "supervised":
        lines.append(f"| paper ({paper['setting']}) | {_fmt(paper['top1'])} | {_fmt(paper['top5'])} | - | - |")
    lines.append("")
    if paper and not paper.get("same_backbone"):
        lines += [f"The paper reports no number for this backbone; the row shows its {paper['setting']} result.", ""]
    if paper and run.protocol == "few-shot":
        lines += [f"Paper numbers: {paper['setting']}.", ""]
    if not paper:
        lines += ["The paper reports no number for this protocol and dataset.", ""]
    resumed = sum(r.resumed_videos for r in run.results.values())
    if resumed:
        lines += [f"{resumed} video(s) were read back from the results store of an earlier, interrupted run.", ""]
    if meta.get("finetune"):
        tuned = meta["finetune"]
        lines += ["Few-shot fine-tuning settings (" + str(tuned.get("source", "")) + "): "
                  + ", ".join(f"{k}={v}" for k, v in (tuned.get("settings") or {}).items()) + ".", ""]
        for k, note in (tuned.get("per_k") or {}).items():
            if note.get("note"):
                lines += [f"- {k}: {note['note']}"]
        lines.append("")
    lines += _subset_markdown(run)
    # Distinct files: the few-shot runs evaluate the same test split once per K.
    unreadable = {s.path for r in run.results.values() for s in r.skipped}
    if unreadable:
        allowed = meta.get("allow_unscored")
        accepted = f" (--allow-unscored {100 * allowed:g}%)" if allowed else ""
        lines += [f"**{len(unreadable)} video(s) could not be read and were skipped**{accepted}; accuracies are "
                  "over the scored videos only (list below and in report.json).", ""]

    for name, result in run.results.items():
        lines += [f"## {name}", ""]
        low, high = result.views_per_video
        views = f"{low}" if low == high else f"{low}-{high}"
        lines.append(f"Mean class accuracy: {_fmt(result.mean_class_accuracy)}%. Views per video: {views}.")
        if name in files:
            lines.append(f"Confusion matrix: `{files[name]['confusion']}`; per-video predictions: "
                         f"`{files[name]['predictions']}`.")
        lines.append("")
        sub = run.subsets.get(name)
        lines += _confused_lines(result.confusion, result.class_names, "Most confused")
        if sub is not None:
            lines += _confused_lines(sub.confusion, result.class_names,
                                     "Most confused within the random class subsets, summed over the draws",
                                     "| true | predicted | videos over the draws | of the true class over the draws |")
        label = "Per-class accuracy" + (", and within the random class subsets over the draws that kept the class"
                                        if sub is not None else "")
        lines += _per_class_lines(result.class_names, result.per_class_accuracy, result.per_class_count, label, sub)
        if result.skipped:
            lines += [f"Skipped videos ({result.num_skipped}):", ""]
            lines += [f"- `{s.path}`: {s.reason}" for s in result.skipped[:50]]
            if result.num_skipped > 50:
                lines.append(f"- ... and {result.num_skipped - 50} more (report.json)")
            lines.append("")
    return "\n".join(lines)


def write_predictions(result: EvalResult, path: PathLike, video_path=None) -> Path:
    """Per scored video: index, path, true class, predicted classes with probabilities."""
    path = Path(path)
    names = result.class_names
    k = result.predictions.shape[1] if result.predictions.ndim == 2 else 0
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["index", "path", "label", "correct"] + [f"top{i + 1}" for i in range(k)]
                        + [f"prob{i + 1}" for i in range(k)])
        for row, index in enumerate(result.video_indices.tolist()):
            label = int(result.labels[row])
            top = result.predictions[row].tolist()
            where = result.paths.get(index) or (video_path(index) if video_path else "")
            writer.writerow([index, where, names[label], int(top[0] == label)] + [names[c] for c in top]
                            + [f"{p:.6f}" for p in result.top_probs[row].tolist()])
    return path


def write_report(run, out_dir: PathLike, meta: Optional[Dict[str, Any]] = None) -> Dict[str, Path]:
    """Write ``report.json``, ``report.md``, confusion PNGs and prediction CSVs for a
    :class:`~stzsar.eval.protocols.ProtocolRun`; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = {**run.meta, **(meta or {})}
    setting = paper_setting(str(info.get("model", "")), info.get("num_frames"), info.get("image_size"), run.protocol)
    paper = paper_number(run.protocol, run.dataset, setting)
    written: Dict[str, Path] = {}
    files: Dict[str, Dict[str, str]] = {}
    for name, result in run.results.items():
        slug = _slug(name)
        confusion_png = plot_confusion(result, out / f"confusion_{slug}.png",
                                       title=f"{run.dataset} {run.protocol}, {name}: top-1 {result.top1:.1f}% "
                                             f"({result.num_scored} videos)")
        predictions = write_predictions(result, out / f"predictions_{slug}.csv", run.video_paths.get(name))
        written[f"confusion:{name}"] = confusion_png
        written[f"predictions:{name}"] = predictions
        files[name] = {"confusion": confusion_png.name, "predictions": predictions.name}
    splits_meta = info.pop("splits", {})
    report = {
        "protocol": run.protocol,
        "dataset": run.dataset,
        "meta": info,
        "splits": splits_meta,
        "paper": paper,
        "summary": run.summary.as_dict() if run.summary is not None else None,
        "resumed_videos": sum(r.resumed_videos for r in run.results.values()),
        "results": {name: {**result_dict(r), "files": files[name],
                           **({"class_subsets": subset_dict(run.subsets[name], r.class_names)}
                              if name in run.subsets else {})}
                    for name, r in run.results.items()},
    }
    json_path = out / "report.json"
    json_path.write_text(json.dumps(_clean(report), indent=2, allow_nan=False, default=_json_default) + "\n")
    md_path = out / "report.md"
    md_path.write_text(_markdown(run, paper, {**info, "splits": splits_meta}, files) + "\n", encoding="utf-8")
    written["json"] = json_path
    written["markdown"] = md_path
    return written


def _clean(value):
    """NaN (e.g. the accuracy of a class without videos) becomes null: JSON has no NaN."""
    if isinstance(value, dict):
        return {(str(k) if not isinstance(k, str) else k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return _number(float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return _number(float(value))
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
