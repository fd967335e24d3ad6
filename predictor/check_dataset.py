"""`videotag check-dataset`: validate feature stores + a label file before training.

Finds, without raising: unreadable shards, duplicate video ids (across shards and in the label file), label
lines that do not parse, label ids out of range / unknown class names, labelled keys missing from the store,
empty / NaN / inf / wrongly shaped sequences, mixed backbones or feature dims. Reports class counts, classes
without examples, videos without labels. Writes `report.json` and `class_histogram.png` into the output dir.

Label keys are matched to stored videos as training matches them (`predictor.data.match_key`: id, recorded or
normalised path, relative to the label file or the current directory, symlinks, content). The report's
`mismatches` counts, by kind, the keys that match nothing (`unknown_id`, `missing_file`, `not_extracted`,
`ambiguous_line`) and the stored videos without a label line (`unlabelled_videos`), with a few examples each;
`summary.matched_by` says how the others matched.

Every problem has a stable `code` (see `Problem`) and a message with file:line or the video id.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from predictor.data import MISMATCH_CODES, Problem, read_labels, resolve_labels
from videotag.core.errors import StoreError
from videotag.core.feature_store import FeatureStore, SourceIndex
from videotag.core.manifest import now_iso
from videotag.core.vocab import Vocabulary

REPORT_NAME = "report.json"
HISTOGRAM_NAME = "class_histogram.png"
MISMATCH_EXAMPLES = 5
MISMATCH_KINDS = {
    "unknown_id": "label keys that are no video id or recorded source in the store",
    "missing_file": "label paths with no such file and no such recorded source",
    "not_extracted": "label paths to existing files whose features are not in the store",
    "ambiguous_line": "list lines whose path seems to contain spaces",
    "unlabelled_videos": "stored videos without a label line",
}


class _MultiShard:
    """Shards opened one by one, so one bad shard or a duplicate id is reported instead of raised."""

    def __init__(self, paths: Sequence[str | Path], errors: list[Problem]) -> None:
        self.by_id: dict[str, tuple[FeatureStore, str]] = {}
        self.by_source: dict[str, str] = {}
        self.sources = SourceIndex()
        self.stores: list[FeatureStore] = []
        for shard in self._expand(paths, errors):
            try:
                st = FeatureStore(shard)
            except (StoreError, OSError) as e:
                errors.append(Problem("unreadable_shard", f"{shard}: cannot read feature shard ({e})"))
                continue
            self.stores.append(st)
            for vid in st.ids():
                if vid in self.by_id:
                    first = self.by_id[vid][1]
                    errors.append(Problem("duplicate_store_id", f"video id {vid!r} is in both {first} and {shard}"))
                    continue
                self.by_id[vid] = (st, str(shard))
                attrs = st.attrs(vid)
                src = str(attrs.get("source", ""))
                if src:
                    self.by_source.setdefault(src, vid)
                self.sources.add(vid, src, str(attrs.get("source_abs", "")))

    @staticmethod
    def _expand(paths: Sequence[str | Path], errors: list[Problem]) -> list[Path]:
        out: list[Path] = []
        for p in map(Path, paths):
            if p.is_dir():
                found = sorted(q for q in p.rglob("*.h5") if not q.name.startswith("."))
                if not found:
                    errors.append(Problem("no_shards", f"{p}: directory holds no *.h5 feature shards"))
                out.extend(found)
            elif p.is_file():
                out.append(p)
            else:
                errors.append(Problem("missing_store", f"{p}: no such feature store file or directory"))
        return out

    def resolve(self, id_or_source: str) -> str | None:
        if id_or_source in self.by_id:
            return id_or_source
        return self.by_source.get(id_or_source) or self.sources.lookup(id_or_source)

    def resolve_realpath(self, path: str) -> str | None:
        return self.sources.lookup_realpath(path)

    def source_of(self, vid: str) -> str:
        st, _ = self.by_id[vid]
        return str(st.attrs(vid).get("source", ""))

    def close(self) -> None:
        for st in self.stores:
            st.close()


def _check_sequences(shards: _MultiShard, errors: list[Problem], progress: bool) -> dict[str, Any]:
    """Read every sequence once: shape, emptiness, finiteness, dims and backbones."""
    dims: Counter[int] = Counter()
    backbones: Counter[tuple[str, str]] = Counter()
    frames: list[int] = []
    example: dict[Any, str] = {}
    for vid, (st, shard) in tqdm(shards.by_id.items(), desc="reading sequences", disable=not progress, leave=False):
        try:
            x = st.features(vid)
            attrs = st.attrs(vid)
        except Exception as e:  # h5py raises OSError/KeyError/RuntimeError on damaged datasets
            errors.append(Problem("unreadable_sequence", f"{vid!r} ({shard}): cannot read features ({e})"))
            continue
        bb = (str(attrs.get("backbone", "")), str(attrs.get("backbone_sha256", "")))
        backbones[bb] += 1
        example.setdefault(bb, vid)
        if x.ndim != 2:
            errors.append(Problem("bad_shape", f"{vid!r} ({shard}): features have shape {x.shape}, want [T, D]"))
            continue
        if x.shape[0] == 0:
            errors.append(Problem("empty_sequence", f"{vid!r} ({shard}): sequence has 0 frames"))
            continue
        dims[int(x.shape[1])] += 1
        example.setdefault(int(x.shape[1]), vid)
        frames.append(int(x.shape[0]))
        finite = np.isfinite(x)
        if not finite.all():
            bad_rows = int((~finite.all(axis=1)).sum())
            kind = "NaN" if np.isnan(x).any() else "inf"
            errors.append(Problem("nan_features", f"{vid!r} ({shard}): {kind} in {bad_rows} of {x.shape[0]} frames"))
    if len(dims) > 1:
        desc = ", ".join(f"{d}-d: {n} videos (e.g. {example[d]!r})" for d, n in dims.most_common())
        errors.append(Problem("mixed_dims", f"sequences have different feature dims: {desc}"))
    if len(backbones) > 1:
        desc = ", ".join(
            f"{b or '?'} {s[:12] or '?'}: {n} videos (e.g. {example[(b, s)]!r})" for (b, s), n in backbones.items()
        )
        errors.append(Problem("mixed_backbones", f"features come from different backbones: {desc}"))
    f = np.array(frames) if frames else np.zeros(1)
    return {
        "feature_dims": {str(d): n for d, n in dims.items()},
        "backbones": [{"name": b, "sha256": s, "videos": n} for (b, s), n in backbones.items()],
        "frames": {"min": int(f.min()), "max": int(f.max()), "mean": float(f.mean())},
    }


def _histogram(counts: np.ndarray, vocab: Vocabulary, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = len(counts)
    fig, ax = plt.subplots(figsize=(min(max(6.0, 0.25 * c), 16.0), 4.5), dpi=100)
    if c <= 60:  # few classes: one named bar each
        ax.bar(range(c), counts, color="#4c72b0")
        ax.set_xticks(range(c))
        ax.set_xticklabels([n[:24] for n in vocab.names], rotation=90, fontsize=7)
        ax.set_xlabel("class")
    else:  # many classes: sorted counts (the long tail is what matters)
        ax.bar(range(c), np.sort(counts)[::-1], width=1.0, color="#4c72b0")
        ax.set_xlabel(f"classes sorted by count ({c} classes, {int((counts == 0).sum())} without examples)")
        if counts.max() > 0:
            ax.set_yscale("log")
    ax.set_ylabel("labelled videos")
    ax.set_title(f"class histogram: {int(counts.sum())} labels")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def check_dataset(
    features: Sequence[str | Path],
    labels: str | Path,
    vocab_path: str | Path,
    out_dir: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run every check; return the report (also written to out_dir/report.json + class_histogram.png)."""
    errors: list[Problem] = []
    warnings: list[Problem] = []
    summary: dict[str, Any] = {}
    class_counts: list[dict[str, Any]] = []
    mismatches: dict[str, dict[str, Any]] = {}
    try:
        vocab: Vocabulary | None = Vocabulary.load(vocab_path)
    except (ValueError, OSError, UnicodeDecodeError) as e:
        errors.append(Problem("bad_vocabulary", f"vocabulary {vocab_path}: {e}"))
        vocab = None
    shards = _MultiShard(features, errors)
    summary["videos_in_store"] = len(shards.by_id)
    summary.update(_check_sequences(shards, errors, progress))
    if vocab is not None:
        dup = [n for n, k in Counter(vocab.names).items() if k > 1]
        if dup:
            warnings.append(
                Problem("duplicate_class_names", f"{len(dup)} class name(s) appear twice in {vocab_path}: {dup[:5]}")
            )
        try:
            lf = read_labels(labels, vocab)
        except Exception as e:  # DatasetError (missing/not UTF-8) -> reported like any other problem
            errors.append(Problem("bad_label_file", str(e)))
            lf = None
        if lf is not None:
            res = resolve_labels(lf, shards)
            errors.extend(res.problems)
            warnings.extend(res.notes)
            summary["label_lines"] = len(lf.items)
            summary["labelled_videos"] = len(res.video_ids)
            summary["matched_by"] = dict(res.matched_by)
            for code in MISMATCH_CODES:
                found = [p.message for p in res.problems if p.code == code]
                mismatches[code] = {"count": len(found), "examples": found[:MISMATCH_EXAMPLES]}
            counts = np.zeros(len(vocab), dtype=np.int64)
            for ids in res.labels:
                counts[list(ids)] += 1
            per_video = np.array([len(x) for x in res.labels]) if res.labels else np.zeros(1)
            summary["labels_per_video"] = {
                "min": int(per_video.min()),
                "max": int(per_video.max()),
                "mean": float(per_video.mean()),
            }
            summary["num_classes"] = len(vocab)
            summary["classes_without_examples"] = int((counts == 0).sum())
            class_counts = [
                {"id": i, "name": n, "count": int(c)} for i, (n, c) in enumerate(zip(vocab.names, counts, strict=True))
            ]
            if (counts == 0).any():
                empty = [vocab.names[i] for i in np.flatnonzero(counts == 0)[:10]]
                warnings.append(
                    Problem(
                        "empty_classes",
                        f"{int((counts == 0).sum())} of {len(vocab)} classes have no labelled video (e.g. {empty})",
                    )
                )
            labelled = set(res.video_ids)
            unlabelled = [v for v in shards.by_id if v not in labelled]
            examples = [f"{v} ({shards.source_of(v) or 'no source'})" for v in unlabelled[:MISMATCH_EXAMPLES]]
            mismatches["unlabelled_videos"] = {"count": len(unlabelled), "examples": examples}
            if unlabelled:
                warnings.append(
                    Problem(
                        "unlabelled_videos",
                        f"{len(unlabelled)} video(s) in the store have no label line (e.g. {', '.join(examples)})",
                    )
                )
            if out_dir is not None and len(vocab):
                Path(out_dir).mkdir(parents=True, exist_ok=True)
                _histogram(counts, vocab, Path(out_dir) / HISTOGRAM_NAME)
    shards.close()
    by_code = Counter(p.code for p in errors)
    report = {
        "ok": not errors,
        "features": [str(f) for f in features],
        "labels": str(labels),
        "vocabulary": str(vocab_path),
        "summary": summary,
        "error_counts": dict(by_code),
        "errors": [{"code": p.code, "message": p.message} for p in errors],
        "warnings": [{"code": p.code, "message": p.message} for p in warnings],
        "mismatches": mismatches,
        "class_counts": class_counts,
        "created": now_iso(),
    }
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / REPORT_NAME).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", "utf-8")
    return report
