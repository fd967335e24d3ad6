"""Multi-label video classification metrics (YouTube-8M definitions).

All functions take `scores` [N, C] (any real numbers, higher = more likely) and `labels` [N, C] (0/1 or bool).
Ties are broken by class id / pooled position (stable sort), so results are deterministic.

- gap(k=20): Global Average Precision. Keep each video's top-k predictions, pool all (score, is_positive) pairs
  of all videos, sort by score, GAP = sum_i precision(i) * delta_recall(i), with recall over the total number
  of positive labels (positives outside a video's top k count as never retrieved).
- hit_at_1: fraction of videos whose top prediction is a positive (videos without labels count as misses).
- perr: precision at equal recall rate: per video with n >= 1 positives, precision of its top-n predictions;
  averaged over videos with positives.
- mean_ap: mean over classes with >= 1 positive of the average precision of ranking all videos by that class.
- accuracy_at_k: fraction of videos with at least one positive among their top-k predictions (for single-label
  data this is the usual top-k accuracy; accuracy@1 equals hit@1).
- recall_at_k: per video with positives, |top-k  ∩  positives| / |positives|, averaged.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must both be [N, C]")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")
    return scores, labels


def _topk(scores: np.ndarray, k: int) -> np.ndarray:
    """[N, C] -> indices [N, min(k, C)] of the top-k classes per row, best first (ties: lower class id first)."""
    k = min(k, scores.shape[1])
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def average_precision(scores: np.ndarray, positives: np.ndarray, num_positives: int | None = None) -> float:
    """AP of a ranking: sum over ranks of precision(i) * is_positive(i) / num_positives.

    `num_positives` may exceed positives.sum() (positives that were never retrieved, as in GAP).
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positives = np.asarray(positives).astype(bool).ravel()
    total = int(positives.sum()) if num_positives is None else int(num_positives)
    if total <= 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    hits = positives[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / total)


def gap(scores: np.ndarray, labels: np.ndarray, k: int = 20) -> float:
    """Global Average Precision over each video's top-k predictions (YouTube-8M)."""
    scores, labels = _check(scores, labels)
    top = _topk(scores, k)
    rows = np.arange(scores.shape[0])[:, None]
    return average_precision(scores[rows, top], labels[rows, top], int(labels.sum()))


def hit_at_1(scores: np.ndarray, labels: np.ndarray) -> float:
    scores, labels = _check(scores, labels)
    if len(scores) == 0:
        return 0.0
    top = _topk(scores, 1)[:, 0]
    return float(labels[np.arange(len(scores)), top].mean())


def perr(scores: np.ndarray, labels: np.ndarray) -> float:
    """Precision at equal recall rate, averaged over videos with at least one positive."""
    scores, labels = _check(scores, labels)
    order = np.argsort(-scores, axis=1, kind="stable")
    vals = []
    for row, idx in zip(labels, order, strict=True):
        n = int(row.sum())
        if n:
            vals.append(row[idx[:n]].sum() / n)
    return float(np.mean(vals)) if vals else 0.0


def mean_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean over classes with positives of the AP of ranking the videos by that class's score."""
    scores, labels = _check(scores, labels)
    aps = [average_precision(scores[:, c], labels[:, c]) for c in range(scores.shape[1]) if labels[:, c].any()]
    return float(np.mean(aps)) if aps else 0.0


def accuracy_at_k(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    scores, labels = _check(scores, labels)
    if len(scores) == 0:
        return 0.0
    top = _topk(scores, k)
    return float(labels[np.arange(len(scores))[:, None], top].any(axis=1).mean())


def recall_at_k(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    scores, labels = _check(scores, labels)
    top = _topk(scores, k)
    n = labels.sum(1)
    keep = n > 0
    if not keep.any():
        return 0.0
    found = labels[np.arange(len(scores))[:, None], top].sum(1)
    return float((found[keep] / n[keep]).mean())


def evaluate_all(
    scores: np.ndarray, labels: np.ndarray, gap_k: int = 20, recall_ks: tuple[int, ...] = (1, 5, 20)
) -> dict[str, Any]:
    """Every metric above in one dict (floats), plus counts."""
    scores, labels = _check(scores, labels)
    out: dict[str, Any] = {
        f"gap@{gap_k}": gap(scores, labels, gap_k),
        "hit@1": hit_at_1(scores, labels),
        "perr": perr(scores, labels),
        "mAP": mean_ap(scores, labels),
        "top1_acc": accuracy_at_k(scores, labels, 1),
        "top5_acc": accuracy_at_k(scores, labels, 5),
    }
    for k in recall_ks:
        out[f"recall@{k}"] = recall_at_k(scores, labels, k)
    out["num_videos"] = int(scores.shape[0])
    out["num_classes"] = int(scores.shape[1])
    out["num_positives"] = int(labels.sum())
    return out


# Short headline names used in tables and in checkpoints / manifests.
HEADLINE = ("gap@20", "hit@1", "perr", "mAP", "top1_acc", "top5_acc")


def per_class_ap(scores: np.ndarray, labels: np.ndarray) -> list[dict[str, Any]]:
    """AP of every class with >= 1 positive (ranking all videos by that class), sorted by AP, best first.

    Rows: {class_id, ap, num_positives, num_predicted_top1}; ties broken by class id.
    """
    scores, labels = _check(scores, labels)
    top1 = np.bincount(_topk(scores, 1)[:, 0], minlength=scores.shape[1]) if len(scores) else np.zeros(0, int)
    rows = [
        {
            "class_id": c,
            "ap": average_precision(scores[:, c], labels[:, c]),
            "num_positives": int(labels[:, c].sum()),
            "num_predicted_top1": int(top1[c]) if len(top1) else 0,
        }
        for c in range(scores.shape[1])
        if labels[:, c].any()
    ]
    rows.sort(key=lambda r: (-r["ap"], r["class_id"]))
    return rows
