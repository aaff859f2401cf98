"""Top-k classification accuracy, on a 0..1 scale, for hard or soft (mixup / cutmix) targets."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def hard_labels(target: torch.Tensor) -> torch.Tensor:
    """(B,) class indices as they are, or (B, C) soft targets -> (B,) argmax class."""
    return target.argmax(dim=1) if target.ndim == 2 else target


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)) -> torch.Tensor:
    """How many samples have their label among the k highest logits, for each k.

    Args:
        logits: (B, C) scores.
        target: (B,) class indices or (B, C) soft targets (their argmax is the label).
        ks: the k values; a k above C counts as C (every label is in the top C).

    Returns:
        (len(ks),) int64 counts on ``logits.device``, ready to be summed across batches or ranks.
    """
    labels = hard_labels(target)
    max_k = min(max(ks), logits.shape[1])
    top = logits.topk(max_k, dim=1).indices  # B, max_k
    hits = top.eq(labels.unsqueeze(1))  # B, max_k: at most one True per row
    return torch.stack([hits[:, : min(k, max_k)].any(dim=1).sum() for k in ks])


def topk_accuracy(logits: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """{"acc1": ..., "acc5": ...}: fraction (0..1) of the B samples whose label is in the top k.

    Args:
        logits: (B, C) scores.
        target: (B,) class indices or (B, C) soft targets (their argmax is the label).
        ks: the k values.
    """
    if logits.shape[0] == 0:
        raise ValueError("top-k accuracy of an empty batch")
    correct = topk_correct(logits, target, ks).tolist()
    return {f"acc{k}": count / logits.shape[0] for k, count in zip(ks, correct, strict=True)}
