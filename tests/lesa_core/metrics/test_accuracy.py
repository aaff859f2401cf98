"""Top-k accuracy on hand-made logits."""

import pytest
import torch

from lesa_core.metrics.accuracy import topk_accuracy, topk_correct

# 4 samples, 6 classes; the label ranks 1st, 2nd, 4th and 6th in its row
LOGITS = torch.tensor([
    [0.0, 5.0, 1.0, 2.0, 3.0, 4.0],  # label 1: top-1
    [5.0, 0.0, 4.0, 3.0, 2.0, 1.0],  # label 2: 2nd
    [1.0, 2.0, 0.5, 3.0, 4.0, 5.0],  # label 1: 4th
    [1.0, 2.0, 3.0, 4.0, 5.0, 0.0],  # label 5: last
])
LABELS = torch.tensor([1, 2, 1, 5])


def test_topk_fractions_on_hand_made_logits():
    assert topk_accuracy(LOGITS, LABELS, ks=(1, 2, 4, 5, 6)) == {
        "acc1": 0.25, "acc2": 0.5, "acc4": 0.75, "acc5": 0.75, "acc6": 1.0
    }
    assert topk_correct(LOGITS, LABELS, ks=(1, 5)).tolist() == [1, 3]


def test_soft_mixup_targets_count_their_argmax_class():
    soft = torch.full((4, 6), 0.02)
    soft[torch.arange(4), LABELS] = 0.6
    soft[torch.arange(4), (LABELS + 1) % 6] = 0.32  # the mixed-in partner class
    assert topk_accuracy(LOGITS, soft) == topk_accuracy(LOGITS, LABELS) == {"acc1": 0.25, "acc5": 0.75}


def test_k_above_the_class_count_means_every_class():
    logits = torch.tensor([[0.2, 0.1, 0.7], [0.9, 0.05, 0.05]])
    assert topk_accuracy(logits, torch.tensor([1, 1])) == {"acc1": 0.0, "acc5": 1.0}


def test_an_empty_batch_is_an_error():
    with pytest.raises(ValueError, match="empty batch"):
        topk_accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
