"""Sharded evaluation: two gloo processes on the CPU count every video exactly once."""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from stzsar.eval.distributed import DistContext, _coverage_error, gather_meter, shard_indices
from stzsar.eval.meter import MultiViewMeter
from tests.test_eval_protocols import FixedLogitDataset, FixedLogitModel

NUM_VIDEOS = 7  # odd: two ranks cannot split it evenly
BAD = {3}
NUM_CLASSES = 4


def dataset():
    """Video i has label i % 4 and is classified right unless i is a multiple of 3."""
    logits, labels = [], []
    for i in range(NUM_VIDEOS):
        label = i % NUM_CLASSES
        row = torch.arange(NUM_CLASSES, dtype=torch.float32)
        predicted = label if i % 3 else (label + 1) % NUM_CLASSES
        row[predicted] = 10.0
        logits.append(row)
        labels.append(label)
    return FixedLogitDataset(torch.stack(logits), labels, bad=BAD)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world_size, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from stzsar.eval.distributed import init_distributed
    from stzsar.eval.engine import EvalSettings, evaluate

    context = init_distributed(backend="gloo")
    try:
        data = dataset()
        model = FixedLogitModel()
        classes = [f"class {i}" for i in range(NUM_CLASSES)]
        result = evaluate(model, data, model.encode_classes(classes), classes, context=context,
                          settings=EvalSettings(batch_size=2, num_workers=0, progress=False, device="cpu"))
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as stream:
            json.dump({
                "loaded": data.loaded,
                "clips_encoded": model.clips_encoded,
                "scored": result.video_indices.tolist(),
                "skipped": [s.index for s in result.skipped],
                "top1": result.top1,
                "confusion": result.confusion.tolist(),
            }, stream)
    finally:
        context.close()


def test_two_ranks_count_each_video_exactly_once(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    loaded = [set(r["loaded"]) for r in ranks]
    assert loaded[0].isdisjoint(loaded[1])
    assert loaded[0] | loaded[1] == set(range(NUM_VIDEOS))
    assert sorted(len(s) for s in loaded) == [3, 4]  # no padding: shards differ by one video
    assert sum(r["clips_encoded"] for r in ranks) == NUM_VIDEOS - len(BAD)
    good = [i for i in range(NUM_VIDEOS) if i not in BAD]
    right = [i for i in good if i % 3]
    for r in ranks:  # every rank gets the same gathered result
        assert r["scored"] == good
        assert r["skipped"] == sorted(BAD)
        assert r["top1"] == pytest.approx(100 * len(right) / len(good))
        assert sum(map(sum, r["confusion"])) == len(good)
    assert ranks[0]["confusion"] == ranks[1]["confusion"]


def test_shards_cover_the_dataset_without_padding():
    for n in (0, 1, 5, 7, 8):
        for world in (1, 2, 3):
            shards = [shard_indices(n, r, world) for r in range(world)]
            flat = sorted(i for s in shards for i in s)
            assert flat == list(range(n))
            assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError, match="not in a world"):
        shard_indices(4, 2, 2)


def _state(indices, skipped=()):
    meter = MultiViewMeter(["a", "b"])
    if indices:
        meter.update(torch.full((len(indices), 2), 0.5), torch.zeros(len(indices), dtype=torch.long),
                     torch.tensor(indices))
    for index in skipped:
        meter.skip(index, f"v{index}.mp4", "bad")
    return meter.state_dict()


def test_lost_or_repeated_videos_are_reported():
    assert _coverage_error([_state([0, 2]), _state([1], skipped=[3])], expected=4) is None
    assert "rank 0 and on rank 1" in _coverage_error([_state([0, 1]), _state([1, 2])], expected=3)
    assert "neither scored nor skipped" in _coverage_error([_state([0]), _state([2])], expected=3)
    meter = MultiViewMeter(["a", "b"])
    meter.update(torch.full((2, 2), 0.5), torch.zeros(2, dtype=torch.long), torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="1 of 3 videos"):
        gather_meter(meter, DistContext(), expected=3)
    assert gather_meter(meter, DistContext(), expected=2) is meter
