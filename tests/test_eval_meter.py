"""The multi-view meter, the split summary and the confusion analysis, against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from stzsar.eval.meter import MultiViewMeter, summarize_splits
from stzsar.eval.report import cluster_order, most_confused, normalized_confusion, plot_confusion


def one_hot_probs(predicted, num_classes, confidence=0.9):
    """Probabilities whose arg-max is ``predicted`` (the rest spread evenly)."""
    rest = (1.0 - confidence) / (num_classes - 1)
    probs = torch.full((len(predicted), num_classes), rest, dtype=torch.float64)
    probs[torch.arange(len(predicted)), torch.tensor(predicted)] = confidence
    return probs


def test_confusion_matrix_of_a_known_prediction():
    names = ["a", "b", "c"]
    labels = [0, 0, 1, 2, 2, 2]
    predicted = [0, 1, 1, 2, 0, 2]
    meter = MultiViewMeter(names)
    meter.update(one_hot_probs(predicted, 3), torch.tensor(labels), torch.arange(6))
    result = meter.compute()
    # Written out by hand: rows true a, b, c; columns predicted a, b, c.
    expected = np.array([[1, 1, 0],
                         [0, 1, 0],
                         [1, 0, 2]])
    np.testing.assert_array_equal(result.confusion, expected)
    assert result.top1 == pytest.approx(100 * 4 / 6)
    np.testing.assert_allclose(result.per_class_accuracy, [50.0, 100.0, 200 / 3])
    assert result.mean_class_accuracy == pytest.approx((50 + 100 + 200 / 3) / 3)
    np.testing.assert_array_equal(result.per_class_count, [2, 1, 3])
    assert result.num_scored == 6 and result.num_skipped == 0
    pairs = most_confused(result.confusion, names)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [("a", "b", 1), ("c", "a", 1)]
    assert pairs[1]["fraction"] == pytest.approx(1 / 3)


def test_views_are_averaged_per_video_whatever_batch_they_arrive_in():
    # Video 0: view 1 says class 1 loudly, views 2 and 3 say class 0 softly; the average decides.
    views_video0 = [[0.05, 0.90, 0.05], [0.60, 0.30, 0.10], [0.55, 0.35, 0.10]]
    # Video 1: two views, both class 2.
    views_video1 = [[0.1, 0.2, 0.7], [0.2, 0.1, 0.7]]
    meter = MultiViewMeter(["x", "y", "z"])
    # Views arrive spread over batches and mixed with the other video.
    meter.update(torch.tensor([views_video0[0], views_video1[0]]), torch.tensor([0, 2]), torch.tensor([0, 1]))
    meter.update(torch.tensor([[views_video0[1], views_video0[2]]]), torch.tensor([0]), torch.tensor([0]))
    meter.update(torch.tensor([views_video1[1]]), torch.tensor([2]), torch.tensor([1]))
    result = meter.compute()
    mean0 = [sum(v[c] for v in views_video0) / 3 for c in range(3)]  # [0.4, 0.5166, 0.0833]
    assert mean0[1] > mean0[0]  # class 1 wins on average although two of three views say class 0
    np.testing.assert_array_equal(result.video_indices, [0, 1])
    np.testing.assert_array_equal(result.predictions[:, 0], [1, 2])
    np.testing.assert_allclose(result.top_probs[0], sorted(mean0, reverse=True), rtol=0, atol=1e-7)
    assert result.views_per_video == (2, 3)
    assert result.top1 == 50.0


def test_top5_counts_the_label_among_the_five_best():
    C = 7
    scores = torch.tensor([[7, 6, 5, 4, 3, 2, 1]], dtype=torch.float64).softmax(-1)  # ranking 0..6
    probs = scores.repeat(3, 1)
    labels = torch.tensor([4, 5, 0])  # rank 5 (in top-5), rank 6 (not), rank 1
    meter = MultiViewMeter([f"c{i}" for i in range(C)])
    meter.update(probs, labels, torch.tensor([10, 11, 12]))
    result = meter.compute()
    assert result.top1 == pytest.approx(100 / 3)
    assert result.top5 == pytest.approx(200 / 3)
    # Fewer than 5 classes: top-5 becomes top-C and is 100%.
    small = MultiViewMeter(["a", "b"])
    small.update(torch.tensor([[0.3, 0.7]]), torch.tensor([0]), torch.tensor([0]))
    assert small.compute().topk == (1, 2) and small.compute().top5 == 100.0


def test_skipped_videos_are_counted_not_scored():
    meter = MultiViewMeter(["a", "b", "c"])
    meter.update(one_hot_probs([0, 2], 3), torch.tensor([0, 1]), torch.tensor([0, 2]))
    meter.skip(1, "/videos/broken.mp4", "empty file (0 bytes)")
    result = meter.compute()
    assert result.num_scored == 2 and result.num_skipped == 1
    assert result.top1 == 50.0  # over the two scored videos, not three
    assert result.skipped[0].path == "/videos/broken.mp4" and result.skipped[0].reason.startswith("empty")
    assert math.isnan(result.per_class_accuracy[2])  # class c has no video
    assert result.mean_class_accuracy == pytest.approx(50.0)  # mean over classes a and b only
    meter.skip(2, "/videos/x.mp4", "twice")
    with pytest.raises(ValueError, match="both scored and skipped"):
        meter.compute()


def test_bad_inputs_say_what_is_wrong():
    meter = MultiViewMeter(["a", "b"])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\); video 7 has label 5"):
        meter.update(torch.tensor([[0.5, 0.5]]), torch.tensor([5]), torch.tensor([7]))
    with pytest.raises(ValueError, match="C = 2"):
        meter.update(torch.ones(1, 3) / 3, torch.tensor([0]), torch.tensor([0]))
    with pytest.raises(FloatingPointError, match="non-finite"):
        meter.update(torch.tensor([[float("nan"), 0.5]]), torch.tensor([0]), torch.tensor([3]))
    meter.update(torch.tensor([[0.5, 0.5]]), torch.tensor([0]), torch.tensor([1]))
    meter.update(torch.tensor([[0.5, 0.5]]), torch.tensor([1]), torch.tensor([1]))
    with pytest.raises(ValueError, match="two different labels"):
        meter.compute()


def test_meters_merge_like_one():
    torch.manual_seed(0)
    probs = torch.rand(9, 2, 4, dtype=torch.float64).softmax(-1)
    labels = torch.randint(0, 4, (9,))
    whole = MultiViewMeter(list("abcd"))
    whole.update(probs, labels, torch.arange(9))
    parts = [MultiViewMeter(list("abcd")) for _ in range(2)]
    parts[0].update(probs[:4], labels[:4], torch.arange(4))
    parts[1].update(probs[4:], labels[4:], torch.arange(4, 9))
    parts[0].load_state(parts[1].state_dict())
    a, b = whole.compute(), parts[0].compute()
    np.testing.assert_array_equal(a.confusion, b.confusion)
    np.testing.assert_allclose(a.top_probs, b.top_probs)
    assert a.top1 == b.top1


def test_mean_and_std_over_splits():
    results = {}
    for name, hits, total in (("split 1", 1, 2), ("split 2", 3, 4), ("split 3", 4, 4)):
        meter = MultiViewMeter(["a", "b"])
        predicted = [0] * hits + [1] * (total - hits)
        meter.update(one_hot_probs(predicted, 2), torch.zeros(total, dtype=torch.long), torch.arange(total))
        results[name] = meter.compute()
    summary = summarize_splits(results)
    assert summary.top1 == [50.0, 75.0, 100.0]
    assert summary.top1_mean == pytest.approx(75.0)
    # Population standard deviation of 50, 75, 100 (numpy's default, ddof=0).
    assert summary.top1_std == pytest.approx(math.sqrt((25**2 + 0 + 25**2) / 3))
    assert summary.videos_scored == 10


def block_confusion():
    """8 classes in two groups, {0, 3, 5, 6} and {1, 2, 4, 7}, confused only within their group."""
    rng = np.random.default_rng(0)
    confusion = np.zeros((8, 8), dtype=np.int64)
    groups = [[0, 3, 5, 6], [1, 2, 4, 7]]
    for group in groups:
        for i in group:
            confusion[i, i] = 20
            for j in group:
                if i != j:
                    confusion[i, j] = int(rng.integers(1, 6))
    return confusion, groups


def test_cluster_order_puts_mutually_confused_classes_together():
    confusion, groups = block_confusion()
    order = cluster_order(confusion)
    assert sorted(order) == list(range(8))
    for group in groups:
        positions = sorted(order.index(c) for c in group)
        assert positions == list(range(positions[0], positions[0] + len(group))), (order, group)
    assert cluster_order(np.eye(2)) == [0, 1]
    norm = normalized_confusion(confusion)
    np.testing.assert_allclose(norm.sum(1), 1.0)


def test_confusion_png_is_written(tmp_path):
    confusion, _ = block_confusion()
    meter = MultiViewMeter([f"class {i}" for i in range(8)])
    labels, predicted = np.nonzero(confusion)
    counts = confusion[labels, predicted]
    labels, predicted = np.repeat(labels, counts), np.repeat(predicted, counts)
    meter.update(one_hot_probs(predicted.tolist(), 8), torch.tensor(labels), torch.arange(len(labels)))
    result = meter.compute()
    np.testing.assert_array_equal(result.confusion, confusion)
    path = plot_confusion(result, tmp_path / "confusion.png")
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.shape[0] > 300 and image.shape[1] > 300
