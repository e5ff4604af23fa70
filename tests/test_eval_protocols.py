"""Protocols end to end with a model whose logits are fixed by construction (no decoding, no CLIP).

A clip tensor carries its own logits: ``clip[t=0, channel=0, row=0, :C]`` are the logits of the
C classes, and the class bank stores each class's global id, so that a chunk of classes picks its
own logit columns. Expected accuracies are computed here from the logits with plain Python.
"""

import json
import math
import statistics
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from stzsar.eval.engine import EvalSettings, evaluate
from stzsar.eval.protocols import EvalSplit, few_shot, supervised, zero_shot
from stzsar.eval.report import write_report
from stzsar.text import ClassBank


class FixedLogitModel(nn.Module):
    """``logits[n, c] = clip_n[0, 0, 0, id(c)]``; counts the clips it encodes."""

    def __init__(self, name: str = "ViT-B-16"):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # so that .to()/parameters() behave
        self.clips_encoded = 0
        self.banks_encoded = 0
        self.config = type("Config", (), {"name": name})()

    def encode_classes(self, names, attributes=None):
        self.banks_encoded += 1
        ids = torch.tensor([float(int(name.split()[-1])) for name in names]).unsqueeze(1)  # "class 7" -> 7
        C = len(names)
        return ClassBank(ids, torch.zeros(C, 1, 1), torch.ones(C, 1, dtype=torch.bool), list(names))

    def encode_video(self, clips):
        self.clips_encoded += clips.shape[0]
        return clips[:, :, 0, 0, :], clips[:, :, :, 0, :]

    def logits_from_features(self, frames, patches, bank):
        ids = bank.class_emb[:, 0].long().to(frames.device)
        return frames[:, 0, :][:, ids]


class FixedLogitDataset(Dataset):
    """Items carrying given logits (``[N, C]``, or ``[N, V, C]`` for V views); ``bad`` indices are
    skip records, as :class:`stzsar.data.VideoDataset` returns for unreadable files."""

    def __init__(self, logits, labels, bad=(), frames=2):
        self.logits = torch.as_tensor(logits, dtype=torch.float32)
        self.labels = list(labels)
        self.bad = set(bad)
        self.frames = frames
        self.loaded = []

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        self.loaded.append(index)
        if index in self.bad:
            from stzsar.data.dataset import SkippedVideo

            return SkippedVideo(index, f"/videos/v{index}.mp4", "truncated file")
        logits = self.logits[index]
        views = logits.unsqueeze(0) if logits.dim() == 1 else logits
        clip = torch.zeros(views.shape[0], self.frames, 3, 1, views.shape[-1])
        clip[:, :, 0, 0, :] = views.unsqueeze(1)
        return {"video": clip[0] if logits.dim() == 1 else clip, "label": self.labels[index], "index": index}


def make_split(num_classes, spec, name, bad=(), seed=0):
    """A dataset whose top-1 decisions are dictated: ``spec`` lists (label, rank of the label)."""
    generator = torch.Generator().manual_seed(seed)
    logits, labels = [], []
    for label, rank in spec:
        # Distinct scores; the label gets the rank-th highest.
        scores = torch.randperm(num_classes, generator=generator).float()
        order = scores.argsort(descending=True)
        swap = int(order[rank])
        scores[label], scores[swap] = scores[swap].clone(), scores[label].clone()
        assert int((scores.argsort(descending=True) == label).nonzero()) == rank
        logits.append(scores)
        labels.append(label)
    classes = [f"class {i}" for i in range(num_classes)]
    dataset = FixedLogitDataset(torch.stack(logits), labels, bad)
    return EvalSplit(name, classes, dataset, source=f"generated {name}",
                     video_path=lambda i: f"/videos/{name}/{i}.mp4")


def quiet(**kwargs):
    return EvalSettings(num_workers=0, progress=False, **kwargs)


def expected_topk(spec, bad, k):
    scored = [rank for i, (_, rank) in enumerate(spec) if i not in bad]
    return 100.0 * sum(rank < k for rank in scored) / len(scored)


SPLITS = {
    # name: (class count, [(label, rank of the label)], bad indices)
    "split 1": (7, [(0, 0), (1, 0), (2, 3), (3, 6), (4, 0), (5, 1), (6, 5)], ()),
    "split 2": (7, [(0, 0), (1, 2), (2, 0), (3, 0), (4, 4)], (1,)),
    "split 3": (6, [(5, 0), (4, 0), (3, 0), (2, 5), (1, 1), (0, 0)], (2, 4)),
}


def test_zero_shot_gives_the_exact_accuracies_mean_and_std(tmp_path):
    model = FixedLogitModel()
    splits = [make_split(C, spec, name, bad, seed=n) for n, (name, (C, spec, bad)) in enumerate(SPLITS.items())]
    # Batches of 2 and chunks of 3 classes: neither divides the split sizes or class counts.
    run = zero_shot(model, splits, dataset="ucf101", cache=False, settings=quiet(batch_size=2, class_chunk=3),
                    meta={"model": "ViT-B-16", "num_frames": 16})
    top1 = [expected_topk(spec, bad, 1) for C, spec, bad in SPLITS.values()]
    top5 = [expected_topk(spec, bad, 5) for C, spec, bad in SPLITS.values()]
    assert top1 == [100 * 3 / 7, 100 * 3 / 4, 100 * 3 / 4]  # the generated data is what we think
    for (name, (C, spec, bad)), t1, t5 in zip(SPLITS.items(), top1, top5):
        result = run.results[name]
        assert result.top1 == pytest.approx(t1)
        assert result.top5 == pytest.approx(t5)
        assert result.num_scored == len(spec) - len(bad)
        assert sorted(s.index for s in result.skipped) == sorted(bad)
    assert run.summary.top1_mean == pytest.approx(statistics.fmean(top1))
    assert run.summary.top1_std == pytest.approx(statistics.pstdev(top1))
    assert run.summary.top5_std == pytest.approx(statistics.pstdev(top5))
    assert run.summary.videos_skipped == 3
    # Each video went through the video encoder once, however many classes and class chunks.
    assert model.clips_encoded == sum(len(spec) - len(bad) for _, spec, bad in SPLITS.values())
    assert model.banks_encoded == 3

    written = write_report(run, tmp_path)
    report = json.loads(written["json"].read_text())
    assert report["protocol"] == "zero-shot" and report["dataset"] == "ucf101"
    assert report["paper"] == {"setting": "ViT-B/16, 16 frames", "same_backbone": True, "top1": 78.9, "top1_std": 0.9}
    assert report["summary"]["top1_mean"] == pytest.approx(statistics.fmean(top1))
    assert report["results"]["split 3"]["videos_skipped"] == 2
    assert report["results"]["split 3"]["skipped_videos"][0] == {"index": 2, "path": "/videos/v2.mp4",
                                                                 "reason": "truncated file"}
    markdown = written["markdown"].read_text()
    mean, std = statistics.fmean(top1), statistics.pstdev(top1)
    assert f"**{mean:.1f} ± {std:.1f}**" in markdown
    assert "| paper (ViT-B/16, 16 frames) | 78.9 ± 0.9 |" in markdown
    assert "3 video(s) could not be read and were skipped" in markdown
    assert "`/videos/v4.mp4`: truncated file" in markdown
    assert (tmp_path / "confusion_split_1.png").stat().st_size > 0
    rows = (tmp_path / "predictions_split_2.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 and rows[1].split(",")[1] == "/videos/split 2/0.mp4"


def test_class_chunks_do_not_change_the_scores():
    C, spec, bad = SPLITS["split 1"]
    split = make_split(C, spec, "split 1")
    bank = FixedLogitModel().encode_classes(split.classes)
    whole = evaluate(FixedLogitModel(), split.dataset, bank, split.classes, settings=quiet(class_chunk=0))
    chunked = evaluate(FixedLogitModel(), split.dataset, bank, split.classes, settings=quiet(class_chunk=2))
    assert (whole.predictions == chunked.predictions).all()
    torch.testing.assert_close(torch.from_numpy(whole.top_probs), torch.from_numpy(chunked.top_probs))


def test_supervised_averages_view_probabilities():
    # 3 videos, 4 views, 3 classes; per-view logits chosen so that the majority vote and the mean
    # of the probabilities disagree for video 0.
    views = torch.tensor([
        [[0.0, 8.0, 0.0], [0.5, 0.0, 0.0], [0.5, 0.0, 0.0], [0.5, 0.0, 0.0]],  # mean favours class 1
        [[0.0, 0.0, 2.0], [0.0, 0.0, 2.0], [0.0, 0.0, 2.0], [0.0, 0.0, 2.0]],
        [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
    ])
    labels = [1, 2, 1]
    expected_mean = views.double().softmax(-1).mean(1)
    assert expected_mean[0].argmax() == 1 and views[0].argmax(-1).tolist().count(0) == 3
    split = EvalSplit("val", ["class 0", "class 1", "class 2"], FixedLogitDataset(views, labels))
    model = FixedLogitModel("ViT-L-14")
    run = supervised(model, split, dataset="k400", cache=False, settings=quiet(batch_size=2))
    result = run.results["val"]
    assert result.views_per_video == (4, 4)
    assert model.clips_encoded == 12
    assert result.top1 == pytest.approx(200 / 3)  # videos 0 and 1 right, video 2 (class 0) wrong
    for row in range(3):
        best = expected_mean[row].argsort(descending=True)[:3].tolist()
        assert result.predictions[row].tolist() == best
        torch.testing.assert_close(torch.from_numpy(result.top_probs[row]), expected_mean[row][best])


def test_few_shot_runs_each_k_and_reports_the_paper_numbers(tmp_path):
    C = 5
    split = make_split(C, [(i % C, 0) for i in range(10)], "split 1")
    calls = []

    class Biased(FixedLogitModel):
        """The "fine-tuned" model: a bias added to the fixed logits."""

        def __init__(self, bias):
            super().__init__()
            self.bias = torch.tensor(bias)

        def logits_from_features(self, frames, patches, bank):
            return super().logits_from_features(frames, patches, bank) + self.bias[bank.class_emb[:, 0].long()]

    def finetune(k, output_dir):
        calls.append((k, Path(output_dir).name))
        # K=2: class 0 always wins, so only its 2 videos of 10 are right; K=4: the fixed logits.
        return Biased([100.0, 0, 0, 0, 0] if k == 2 else [0.0] * 5), Path(output_dir) / "last.pt"

    run = few_shot([2, 4], finetune, split, output_dir=tmp_path / "ft", dataset="ucf101", cache=False,
                   settings=quiet(), meta={"model": "ViT-B-16"})
    assert calls == [(2, "K2"), (4, "K4")]
    assert list(run.results) == ["K=2", "K=4"]
    assert run.results["K=2"].top1 == 20.0 and run.results["K=4"].top1 == 100.0
    assert run.meta["few_shot_checkpoints"]["K=4"].endswith("K4/last.pt")
    markdown = write_report(run, tmp_path / "report")["markdown"].read_text()
    assert "| K=2 | 20.0 | 100.0 | 10 of 10 | 0 | 91.7 |" in markdown
    assert "| K=4 | 100.0 | 100.0 | 10 of 10 | 0 | 95.0 |" in markdown
    with pytest.raises(ValueError, match="positive"):
        few_shot([0], finetune, split, output_dir=tmp_path, cache=False, settings=quiet())


def test_other_backbones_and_datasets_are_labelled_in_the_report(tmp_path):
    split = make_split(3, [(0, 0), (1, 1), (2, 0)], "split 1")
    run = zero_shot(FixedLogitModel("stzsar-tiny"), [split], dataset="hmdb51", cache=False, settings=quiet(),
                    meta={"model": "stzsar-tiny"})
    markdown = write_report(run, tmp_path / "a")["markdown"].read_text()
    assert "paper (ViT-B/16, 16 frames) | 52.7 ± 0.8" in markdown
    assert "reports no number for this backbone" in markdown
    run = zero_shot(FixedLogitModel(), [split], dataset="my-dataset", cache=False, settings=quiet())
    markdown = write_report(run, tmp_path / "b")["markdown"].read_text()
    assert "reports no number for this protocol and dataset" in markdown
    assert math.isclose(run.results["split 1"].top1, 200 / 3)
