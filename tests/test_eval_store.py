"""The results store: interrupted evaluations resume with the same numbers, under any number of
ranks; another configuration is refused; the class-subset protocol matches a plain computation
from the logits the dataset dictates."""

import json
import math
import os
import statistics

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from stzsar.eval.engine import EvalSettings, evaluate
from stzsar.eval.protocols import zero_shot
from stzsar.eval.store import SplitStore, StoreMismatch, read_records
from stzsar.eval.subsets import class_subsets, draw_class_subsets
from tests.test_eval_distributed import _free_port
from tests.test_eval_protocols import FixedLogitDataset, FixedLogitModel

NUM_CLASSES = 6


def make_dataset(num_videos=11, views=2, bad=(4,), seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_videos, views, NUM_CLASSES, generator=generator) * 3
    labels = [i % NUM_CLASSES for i in range(num_videos)]
    return FixedLogitDataset(logits, labels, bad=bad)


class FailingDataset(FixedLogitDataset):
    """Raises (as a kill or a Ctrl-C would stop the loop) when item ``fail_at`` is loaded."""

    def __init__(self, base, fail_at):
        super().__init__(base.logits, base.labels, base.bad)
        self.fail_at = fail_at

    def __getitem__(self, index):
        if index == self.fail_at:
            raise KeyboardInterrupt("injected")
        return super().__getitem__(index)


CLASSES = [f"class {i}" for i in range(NUM_CLASSES)]
IDENTITY = {"checkpoint": "sha256:abc", "num_frames": 2, "views": [2, 1], "classes": CLASSES,
            "num_classes": NUM_CLASSES}


def settings(**kwargs):
    return EvalSettings(num_workers=0, progress=False, device="cpu", batch_size=2, flush_every=1, **kwargs)


def run(dataset, directory, model=None, identity=IDENTITY, context=None):
    model = model or FixedLogitModel()
    store = SplitStore(directory, identity)
    return evaluate(model, dataset, model.encode_classes(CLASSES), CLASSES, settings=settings(),
                    context=context, store=store)


def assert_same_result(a, b):
    assert (a.top1, a.top5, a.num_scored) == (b.top1, b.top5, b.num_scored)
    assert np.array_equal(a.video_indices, b.video_indices) and np.array_equal(a.predictions, b.predictions)
    assert np.array_equal(a.top_probs, b.top_probs)  # same bits, not only close
    assert np.array_equal(a.confusion, b.confusion)
    assert [s.index for s in a.skipped] == [s.index for s in b.skipped]


def expected_top1(dataset):
    """Top-1 from the dataset's logits: mean over views of the softmax, plain numpy."""
    hits = total = 0
    for i, label in enumerate(dataset.labels):
        if i in dataset.bad:
            continue
        views = dataset.logits[i].double().numpy()
        probs = np.exp(views - views.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        hits += int(probs.mean(0).argmax() == label)
        total += 1
    return 100.0 * hits / total


def test_an_interrupted_run_resumes_with_the_same_numbers(tmp_path):
    whole = run(make_dataset(), tmp_path / "whole")
    assert whole.top1 == pytest.approx(expected_top1(make_dataset()))
    assert whole.resumed_videos == 0

    failing = FailingDataset(make_dataset(), fail_at=7)
    with pytest.raises(KeyboardInterrupt):
        run(failing, tmp_path / "cut")
    stored = read_records(tmp_path / "cut")
    # Batches of 2, flushed after each: videos 0-5 (4 skipped) were stored before the failure.
    assert stored.indices.tolist() == [0, 1, 2, 3, 5] and [s.index for s in stored.skipped] == [4]

    again = make_dataset()
    model = FixedLogitModel()
    resumed = run(again, tmp_path / "cut", model=model)
    assert sorted(again.loaded) == list(range(6, 11))  # stored videos were not decoded again
    assert model.clips_encoded == 2 * 5
    assert resumed.resumed_videos == 6
    assert_same_result(resumed, whole)
    # Each video once in the store, however many attempts wrote it.
    assert read_records(tmp_path / "cut").indices.tolist() == [i for i in range(11) if i != 4]


def test_another_configuration_is_refused_with_what_differs(tmp_path):
    run(make_dataset(), tmp_path / "s")
    with pytest.raises(StoreMismatch) as error:
        run(make_dataset(), tmp_path / "s", identity={**IDENTITY, "num_frames": 8, "checkpoint": "sha256:def"})
    message = str(error.value)
    assert "num_frames: 2 stored, 8 now" in message and "checkpoint" in message and "--fresh" in message
    other = ["class 0", "class 9"] + CLASSES[2:]
    with pytest.raises(StoreMismatch, match="first difference at position 1"):
        run(make_dataset(), tmp_path / "s", identity={**IDENTITY, "classes": other})


def test_leftover_temporary_files_are_ignored(tmp_path):
    whole = run(make_dataset(), tmp_path / "s")
    (tmp_path / "s" / ".part-0009-0000-000000.npz.123.tmp").write_bytes(b"half a file")
    assert_same_result(run(make_dataset(), tmp_path / "s"), whole)
    assert not list((tmp_path / "s").glob("*.tmp"))


def _resume_worker(rank, world_size, port, directory, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from stzsar.eval.distributed import init_distributed

    context = init_distributed(backend="gloo")
    try:
        data = make_dataset()
        result = run(data, directory, context=context)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as stream:
            json.dump({"loaded": data.loaded, "top1": result.top1, "resumed": result.resumed_videos,
                       "probs": result.top_probs.tolist()}, stream)
    finally:
        context.close()


def test_a_run_cut_on_one_rank_resumes_on_two(tmp_path):
    whole = run(make_dataset(), tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        run(FailingDataset(make_dataset(), fail_at=5), tmp_path / "cut")
    mp.spawn(_resume_worker, args=(2, _free_port(), str(tmp_path / "cut"), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    loaded = sorted(ranks[0]["loaded"] + ranks[1]["loaded"])
    assert loaded == list(range(4, 11))  # videos 0-3 were stored; 4-10 decoded once, on one rank
    for rank in ranks:
        assert rank["top1"] == whole.top1 and rank["resumed"] == 4
        assert np.array_equal(np.array(rank["probs"]), whole.top_probs)


def test_class_subsets_match_a_plain_computation_from_the_logits(tmp_path):
    data = make_dataset(num_videos=40, views=3, bad=(5, 17))
    full = run(data, tmp_path / "s")
    records = read_records(tmp_path / "s")
    result = class_subsets(records, num_draws=7, fraction=0.5, seed=3, topk=(1, 2))
    draws = draw_class_subsets(NUM_CLASSES, 7, 0.5, 3)
    assert [d.classes for d in result.draws] == [d.tolist() for d in draws]
    assert all(len(d) == 3 for d in draws) and len({tuple(d) for d in draws}) > 1
    top1, top2 = [], []
    per_class_hits = np.zeros(NUM_CLASSES)
    per_class_seen = np.zeros(NUM_CLASSES)
    for subset in draws:
        kept = [c for c in range(NUM_CLASSES) if c in set(subset.tolist())]
        hits1 = hits2 = n = 0
        for i, label in enumerate(data.labels):
            if i in data.bad or label not in kept:
                continue
            scores = []
            for c in kept:  # mean over views of the softmax over the kept classes only
                total = 0.0
                for view in data.logits[i].tolist():
                    denominator = sum(math.exp(view[j]) for j in kept)
                    total += math.exp(view[c]) / denominator
                scores.append(total / len(data.logits[i]))
            ranked = [kept[j] for j in sorted(range(len(kept)), key=lambda j: -scores[j])]
            hits1 += ranked[0] == label
            hits2 += label in ranked[:2]
            n += 1
            per_class_hits[label] += ranked[0] == label
            per_class_seen[label] += 1
        top1.append(100.0 * hits1 / n)
        top2.append(100.0 * hits2 / n)
    assert [d.top1 for d in result.draws] == pytest.approx(top1)
    assert result.top1_mean == pytest.approx(statistics.fmean(top1))
    assert result.top1_std == pytest.approx(statistics.pstdev(top1))
    assert result.top5_mean == pytest.approx(statistics.fmean(top2))
    np.testing.assert_array_equal(result.per_class_count, per_class_seen)
    np.testing.assert_allclose(result.per_class_accuracy, 100 * per_class_hits / per_class_seen)
    # All classes kept: the subset protocol is the full-class one.
    everything = class_subsets(records, num_draws=1, fraction=1.0, seed=0)
    assert everything.top1_mean == pytest.approx(full.top1)


def test_protocols_write_one_store_per_split(tmp_path):
    splits_data = [make_dataset(seed=s) for s in range(2)]
    from stzsar.eval.protocols import EvalSplit

    splits = [EvalSplit(f"split {i + 1}", CLASSES, d) for i, d in enumerate(splits_data)]
    first = zero_shot(FixedLogitModel(), splits, cache=False, settings=settings(), store_dir=tmp_path,
                      identity={"checkpoint": "x"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["split_1", "split_2"]
    again = zero_shot(FixedLogitModel(), [EvalSplit(s.name, CLASSES, make_dataset(seed=i)) for i, s in
                                          enumerate(splits)], cache=False, settings=settings(),
                      store_dir=tmp_path, identity={"checkpoint": "x"})
    assert all(again.results[n].resumed_videos == 11 for n in again.results)
    assert again.summary.top1_mean == first.summary.top1_mean
