"""The multi-positive symmetric loss of SPEC section 5 against a direct float64 loop."""

import math

import pytest
import torch
import torch.nn.functional as F

from stzsar.losses import multi_positive_contrastive_loss


def _loop_loss(logits, labels):
    n = logits.shape[0]
    logits = logits.double().tolist()

    def side(rows, row_labels, col_labels):
        total = 0.0
        for i, row in enumerate(rows):
            m = max(row)
            lse = m + math.log(sum(math.exp(x - m) for x in row))
            pos = [j for j, lab in enumerate(col_labels) if lab == row_labels[i]]
            total += -sum(row[j] - lse for j in pos) / len(pos)
        return total / len(rows)

    labels = labels.tolist()
    columns = [list(col) for col in zip(*logits)]
    return 0.5 * (side(logits, labels, labels) + side(columns, labels, labels))


def test_matches_loop_with_repeated_labels():
    torch.manual_seed(0)
    logits = torch.randn(6, 6) * 5
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    got = multi_positive_contrastive_loss(logits, labels)
    assert got.item() == pytest.approx(_loop_loss(logits, labels), rel=1e-6)


def test_unique_labels_reduce_to_clip_loss():
    torch.manual_seed(1)
    logits = torch.randn(5, 5)
    labels = torch.arange(5)
    target = torch.arange(5)
    expected = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    torch.testing.assert_close(multi_positive_contrastive_loss(logits, labels), expected)


def test_rectangular_with_text_labels_and_errors():
    logits = torch.randn(3, 4)
    loss = multi_positive_contrastive_loss(logits, torch.tensor([0, 1, 2]), torch.tensor([2, 1, 0, 0]))
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="positive"):
        multi_positive_contrastive_loss(logits, torch.tensor([0, 1, 5]), torch.tensor([2, 1, 0, 0]))
    with pytest.raises(ValueError, match="do not match"):
        multi_positive_contrastive_loss(logits, torch.tensor([0, 1]))
