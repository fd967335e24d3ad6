"""Pictures people look at: training curves, precision-recall curves, confusion matrix (matplotlib, Agg backend).

Every function writes one PNG atomically (temp name + rename) and returns its path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _plt():  # noqa: ANN202 - matplotlib.pyplot, imported lazily (about 0.5 s) with a non-interactive backend
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        _plt().close(fig)
    return path


def training_curves(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """curves.png: train loss, validation GAP@20, validation mAP and learning rate per epoch (history.json rows)."""
    plt = _plt()
    epochs = [int(h["epoch"]) for h in history]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    panels = [
        ("train loss", [h.get("train_loss") for h in history], False),
        ("validation GAP@20", [(h.get("val") or {}).get("gap@20") for h in history], False),
        ("validation mAP", [(h.get("val") or {}).get("mAP") for h in history], False),
        ("learning rate (epoch start)", [h.get("lr") for h in history], True),
    ]
    for ax, (title, ys, log) in zip(axes.ravel(), panels, strict=True):
        pts = [(e, y) for e, y in zip(epochs, ys, strict=True) if y is not None]
        if pts:
            ax.plot([e for e, _ in pts], [y for _, y in pts], marker="o", markersize=3)
            if log and all(y > 0 for _, y in pts):
                ax.set_yscale("log")
        else:
            ax.text(0.5, 0.5, "no validation set", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, Path(path))


def precision_recall(scores: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall [N] at every cut-off of the ranking by `scores` [N] (positives [N] 0/1)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    hits = np.asarray(positives).astype(bool)[order]
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1)
    recall = tp / max(int(hits.sum()), 1)
    return precision, recall


def pr_curves(
    scores: np.ndarray, labels: np.ndarray, names: Sequence[str], path: str | Path, top: int = 10
) -> tuple[Path, list[int]]:
    """pr_curves.png: precision-recall curves of the `top` classes with most positives.

    scores, labels: [N, C]. Returns the path and the class ids drawn (most frequent first).
    """
    plt = _plt()
    labels = np.asarray(labels).astype(bool)
    counts = labels.sum(axis=0)
    classes = [int(c) for c in np.argsort(-counts, kind="stable")[:top] if counts[c] > 0]
    fig, ax = plt.subplots(figsize=(8, 6))
    for c in classes:
        p, r = precision_recall(scores[:, c], labels[:, c])
        from predictor.metrics import average_precision

        ap = average_precision(scores[:, c], labels[:, c])
        ax.step(np.r_[0.0, r], np.r_[1.0, p], where="post", label=f"{names[c][:30]} (n={counts[c]}, AP {ap:.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.0)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"precision-recall, {len(classes)} most frequent classes")
    ax.grid(alpha=0.3)
    if classes:
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return _save(fig, Path(path)), classes


def confusion_matrix(
    true: np.ndarray, pred: np.ndarray, names: Sequence[str], path: str | Path, max_classes: int = 30
) -> tuple[Path, np.ndarray, list[int]]:
    """confusion_matrix.png for single-label data: rows true class, columns top-1 prediction (true/pred [N] ids).

    With more than `max_classes` classes involved, shows the most frequent true classes and folds the rest into
    an "other" row/column. Returns the path, the matrix drawn and the class ids of its rows/columns.
    """
    plt = _plt()
    true, pred = np.asarray(true, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    involved, counts = np.unique(true, return_counts=True)
    keep = [int(c) for c in involved[np.argsort(-counts, kind="stable")][:max_classes]]
    keep.sort()
    other = len(set(true.tolist()) | set(pred.tolist())) > len(keep)
    index = {c: i for i, c in enumerate(keep)}
    size = len(keep) + (1 if other else 0)
    m = np.zeros((size, size), dtype=np.int64)
    for t, p in zip(true, pred, strict=True):
        m[index.get(int(t), size - 1), index.get(int(p), size - 1)] += 1
    tick = [names[c][:20] for c in keep] + (["other"] if other else [])
    side = max(4.0, 0.35 * size + 2)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(m, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xticks(range(size), tick, rotation=90, fontsize=7)
    ax.set_yticks(range(size), tick, fontsize=7)
    ax.set_xlabel("predicted (top-1)")
    ax.set_ylabel("true")
    acc = float((true == pred).mean()) if len(true) else 0.0
    ax.set_title(f"confusion matrix ({len(true)} videos, top-1 accuracy {acc:.3f})")
    if size <= 15:
        for i in range(size):
            for j in range(size):
                if m[i, j]:
                    ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if m[i, j] > m.max() / 2 else "black")  # fmt: skip
    fig.tight_layout()
    return _save(fig, Path(path)), m, keep


__all__ = ["confusion_matrix", "pr_curves", "precision_recall", "training_curves"]
