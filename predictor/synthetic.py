"""Synthetic feature-sequence tasks that tell order-aware models from order-blind ones.

Both tasks are written as real HDF5 feature stores + VideoTag label lists + a vocabulary, so they go through
exactly the path real data takes (`videotag check-dataset / train / evaluate / export`).

order       Every sequence holds pattern A and pattern B once each (a few consecutive frames, random offsets,
            random length, Gaussian background). Class 0 "A_then_B", class 1 "B_then_A". Every frame has the
            same distribution in both classes, so any model that pools frames without their order (frame
            pooling, NeXtVLAD) can only guess; a recurrent model can learn it.
multilabel  C pattern classes; each sequence holds 1..max_labels of them at random non-overlapping positions,
            plus distractor patterns that belong to no class; the labels are the classes present.

Pattern vectors come from `task_seed` (shared by the train and test splits); the sequences from each split's
own seed, so the test split is held-out data from the same task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from videotag.core.feature_store import FeatureRecord, write_shard
from videotag.core.hashing import sha256_bytes
from videotag.core.vocab import Vocabulary


@dataclass
class SyntheticTask:
    name: str
    feature_dim: int
    vocab: Path
    stores: dict[str, Path] = field(default_factory=dict)  # split -> shard path
    labels: dict[str, Path] = field(default_factory=dict)  # split -> label list path

    @property
    def num_classes(self) -> int:
        return len(Vocabulary.load(self.vocab))


def _patterns(rng: np.random.Generator, n: int, dim: int, amplitude: float) -> np.ndarray:
    """n random directions of norm `amplitude` (per-dim scale ~ amplitude/sqrt(dim) vs unit noise)."""
    p = rng.standard_normal((n, dim))
    return (p / np.linalg.norm(p, axis=1, keepdims=True) * amplitude).astype(np.float32)


def _place(rng: np.random.Generator, length: int, n: int, width: int) -> list[int] | None:
    """Sorted start positions of n non-overlapping width-long segments in [0, length), or None if no room."""
    free = length - n * width
    if free < 0:
        return None
    # Stars and bars: n+1 gaps summing to `free`, so every arrangement is possible.
    cuts = np.sort(rng.integers(0, free + 1, size=n))
    return [int(c) + i * width for i, c in enumerate(cuts)]


def _write(
    out_dir: Path, task: str, split: str, dim: int, task_seed: int, seqs: list[np.ndarray], labels: list[list[int]]
) -> tuple[Path, Path]:
    backbone = f"synthetic-{task}"
    sha = sha256_bytes(f"{task}:{dim}:{task_seed}".encode())
    records = [
        FeatureRecord(
            video_id=f"{task}-{split}-{i:06d}",
            features=x,
            source=f"synthetic://{task}/{split}/{i}",
            duration=x.shape[0] / 30.0,
            fps=30.0,
            decoded_frames=x.shape[0],
            sample_indices=np.arange(x.shape[0]),
            sampling="synthetic",
            backbone=backbone,
            backbone_sha256=sha,
        )
        for i, x in enumerate(seqs)
    ]
    store = write_shard(out_dir / f"{task}_{split}.h5", records, on_exists="replace")
    lab = out_dir / f"{task}_{split}.txt"
    lab.write_text(
        "".join(f"{r.video_id} {' '.join(map(str, ls))}\n" for r, ls in zip(records, labels, strict=True)),
        encoding="utf-8",
    )
    return store, lab


def make_order_task(
    out_dir: str | Path,
    sizes: dict[str, int],
    dim: int = 32,
    min_len: int = 20,
    max_len: int = 60,
    pattern_len: int = 3,
    amplitude: float = 4.0,
    task_seed: int = 0,
) -> SyntheticTask:
    """Write the A-then-B / B-then-A task; `sizes` = {split: n_sequences}, e.g. {"train": 800, "test": 200}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    a, b = _patterns(np.random.default_rng(task_seed), 2, dim, amplitude)
    vocab = out / "order_vocab.txt"
    Vocabulary(("A_then_B", "B_then_A")).save(vocab)
    task = SyntheticTask("order", dim, vocab)
    for s_i, (split, n) in enumerate(sizes.items()):
        rng = np.random.default_rng([task_seed, 1000 + s_i])
        seqs, labels = [], []
        for _ in range(n):
            t = int(rng.integers(min_len, max_len + 1))
            x = rng.standard_normal((t, dim)).astype(np.float32)
            first, second = _place(rng, t, 2, pattern_len)
            y = int(rng.integers(0, 2))
            p1, p2 = (a, b) if y == 0 else (b, a)
            x[first : first + pattern_len] += p1
            x[second : second + pattern_len] += p2
            seqs.append(x)
            labels.append([y])
        task.stores[split], task.labels[split] = _write(out, "order", split, dim, task_seed, seqs, labels)
    return task


def make_multilabel_task(
    out_dir: str | Path,
    sizes: dict[str, int],
    dim: int = 32,
    num_classes: int = 8,
    max_labels: int = 3,
    distractors: int = 4,
    min_len: int = 20,
    max_len: int = 60,
    pattern_len: int = 3,
    amplitude: float = 4.0,
    task_seed: int = 0,
) -> SyntheticTask:
    """Write the multi-label pattern task (1..max_labels classes per sequence, plus 0..2 distractors)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pats = _patterns(np.random.default_rng([task_seed, 7]), num_classes + distractors, dim, amplitude)
    vocab = out / "multilabel_vocab.txt"
    Vocabulary(tuple(f"pattern_{c}" for c in range(num_classes))).save(vocab)
    task = SyntheticTask("multilabel", dim, vocab)
    for s_i, (split, n) in enumerate(sizes.items()):
        rng = np.random.default_rng([task_seed, 2000 + s_i])
        seqs, labels = [], []
        for _ in range(n):
            t = int(rng.integers(min_len, max_len + 1))
            x = rng.standard_normal((t, dim)).astype(np.float32)
            k = int(rng.integers(1, max_labels + 1))
            classes = sorted(rng.choice(num_classes, size=k, replace=False).tolist())
            extra = rng.choice(distractors, size=int(rng.integers(0, 3)), replace=False).tolist() if distractors else []
            shown = classes + [num_classes + d for d in extra]
            starts = _place(rng, t, len(shown), pattern_len)
            assert starts is not None, "min_len too short for the patterns"
            for pos, c in zip(starts, rng.permutation(shown), strict=True):
                x[pos : pos + pattern_len] += pats[int(c)]
            seqs.append(x)
            labels.append(classes)
        task.stores[split], task.labels[split] = _write(out, "multilabel", split, dim, task_seed, seqs, labels)
    return task
