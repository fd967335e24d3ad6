"""`videotag evaluate`: score a model (exported dir or training checkpoint) on a feature store + label file.

With `out_dir` it also writes (see `write_outputs`):
    metrics.json            the report (as `out_json`)
    per_class_ap.json/.csv  AP of every class with positives, sorted best first (+ positives, top-1 count)
    pr_curves.png           precision-recall curves of the most frequent classes
    confusion_matrix.png    only when every video has exactly one label (top-1 prediction vs truth)
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from predictor.checkpoint import checkpoint_vocab, load_checkpoint, model_from_checkpoint
from predictor.data import DatasetError, SequenceDataset, load_labelled, pad_collate, sequence_shape, store_backbone
from predictor.metrics import evaluate_all, per_class_ap
from predictor.models import SequenceModel
from videotag.core.errors import ModelMismatchError
from videotag.core.feature_store import FeatureStore
from videotag.core.manifest import MANIFEST_NAME, now_iso
from videotag.core.vocab import Vocabulary


@torch.no_grad()
def predict_torch(model: SequenceModel, dataset: SequenceDataset, batch_size: int = 64) -> np.ndarray:
    """Probabilities [N, C] of a torch model over a dataset, in dataset order (eval mode)."""
    was_training = model.training
    model.eval()
    out = np.empty((len(dataset), model.num_classes), dtype=np.float32)
    # Sort by length so each padded batch wastes little; results go back to dataset order.
    order = sorted(range(len(dataset)), key=lambda i: sequence_shape(dataset.store, dataset.video_ids[i])[0])
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        batch = pad_collate([dataset[i] for i in idx])
        out[idx] = model.probabilities(batch["features"], batch["lengths"]).numpy()
    model.train(was_training)
    return out


def check_backbone(model_name: str, want: dict[str, Any], have: dict[str, Any]) -> None:
    """Refuse features from another backbone or dim than the model was trained on."""
    if int(want.get("feature_dim") or have["feature_dim"]) != int(have["feature_dim"]):
        raise ModelMismatchError(
            f"model {model_name} expects {want['feature_dim']}-d features but the store holds "
            f"{have['feature_dim']}-d features from backbone {have.get('name')!r}"
        )
    if want.get("name") and have.get("name") and want["name"] != have["name"]:
        raise ModelMismatchError(
            f"model {model_name} was trained on {want['name']!r} features but the store's come from "
            f"{have['name']!r}; extract with the matching backbone"
        )
    if want.get("sha256") and have.get("sha256") and want["sha256"] != have["sha256"]:
        raise ModelMismatchError(
            f"model {model_name} needs features from {want.get('name')} weights {want['sha256'][:12]}… but the "
            f"store's were made with weights {have['sha256'][:12]}…"
        )


class _Scorer:
    """A model to evaluate: exported ONNX directory or a torch checkpoint, behind one interface."""

    def __init__(self, path: str | Path) -> None:
        p = Path(path)
        if p.is_dir() and (p / MANIFEST_NAME).is_file():
            from predictor.onnx_predictor import OnnxPredictor

            self.kind = "onnx"
            self.onnx = OnnxPredictor(p)
            self.vocab = self.onnx.vocab
            self.architecture = self.onnx.manifest["architecture"]
            self.backbone = {**self.onnx.backbone, "feature_dim": self.onnx.feature_dim}
        else:
            self.kind = "checkpoint"
            ckpt = load_checkpoint(p)
            self.model = model_from_checkpoint(ckpt)
            self.vocab = checkpoint_vocab(ckpt)
            self.architecture = ckpt["model"]
            self.backbone = dict(ckpt["backbone"])
        self.name = str(p)

    def predict(self, dataset: SequenceDataset, batch_size: int) -> np.ndarray:
        if self.kind == "onnx":
            # Batch by batch: a real dataset (10k videos x 300 x 2048 floats) does not fit in RAM at once.
            out = np.empty((len(dataset), self.onnx.num_classes), dtype=np.float32)
            for s in range(0, len(dataset), batch_size):
                idx = range(s, min(s + batch_size, len(dataset)))
                seqs = [np.asarray(dataset.sequence(i), dtype=np.float32) for i in idx]
                out[s : s + len(seqs)] = self.onnx.predict(seqs, batch_size=batch_size)
            return out
        return predict_torch(self.model, dataset, batch_size)


def score_labelled(
    model: str | Path,
    features: Sequence[str | Path],
    labels: str | Path,
    vocab: str | Path | None = None,
    batch_size: int = 32,
) -> tuple[np.ndarray, np.ndarray, Vocabulary, dict[str, Any], _Scorer]:
    """Scores of `model` on the labelled videos of a feature store: (probabilities [N, C], targets [N, C] 0/1,
    the model's vocabulary, the store's backbone record, the scorer). Refuses mismatched vocabularies/backbones."""
    scorer = _Scorer(model)
    if vocab is not None:
        v = Vocabulary.load(vocab)
        if v.sha256 != scorer.vocab.sha256:
            raise ModelMismatchError(
                f"labels use vocabulary {vocab} ({len(v)} classes, sha256 {v.sha256[:12]}…) but model {model} "
                f"predicts another one ({len(scorer.vocab)} classes, sha256 {scorer.vocab.sha256[:12]}…)"
            )
    store = FeatureStore(features)
    try:
        res = load_labelled(labels, scorer.vocab, store)
        have = store_backbone(store, res.video_ids)
        check_backbone(scorer.name, scorer.backbone, have)
        ds = SequenceDataset(store, res.video_ids, res.labels, len(scorer.vocab))
        probs = scorer.predict(ds, batch_size)
    finally:
        store.close()
    if not np.isfinite(probs).all():
        raise DatasetError(f"model {model} produced NaN/inf scores (NaN features in the store? run check-dataset)")
    return probs, ds.targets, scorer.vocab, have, scorer


def evaluate(
    model: str | Path,
    features: Sequence[str | Path],
    labels: str | Path,
    vocab: str | Path | None = None,
    batch_size: int = 32,
    gap_k: int = 20,
    recall_ks: tuple[int, ...] = (1, 5, 20),
    out_json: str | Path | None = None,
    out_dir: str | Path | None = None,
    pr_top: int = 10,
) -> dict[str, Any]:
    """Metrics of `model` on the labelled videos; writes the JSON report when `out_json` is given and every
    output file (module doc) into `out_dir` when given. The report's "outputs" lists the files written."""
    probs, targets, model_vocab, have, scorer = score_labelled(model, features, labels, vocab, batch_size)
    metrics = evaluate_all(probs, targets, gap_k=gap_k, recall_ks=recall_ks)
    report = {
        "model": str(model),
        "model_kind": scorer.kind,
        "architecture": scorer.architecture,
        "features": [str(f) for f in features],
        "labels": str(labels),
        "backbone": have,
        "vocabulary": {"num_classes": len(model_vocab), "sha256": model_vocab.sha256},
        "metrics": metrics,
        "created": now_iso(),
    }
    if out_dir is not None:
        report["outputs"] = write_outputs(Path(out_dir), report, probs, targets, model_vocab, pr_top)
    if out_json is not None:
        _write_text(Path(out_json), json.dumps(report, indent=2) + "\n")
    return report


def _write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_outputs(
    out: Path, report: dict[str, Any], probs: np.ndarray, targets: np.ndarray, vocab: Vocabulary, pr_top: int = 10
) -> dict[str, str]:
    """Write metrics.json, per_class_ap.{json,csv}, pr_curves.png (+ confusion_matrix.png) into `out`.

    probs: [N, C] probabilities, targets: [N, C] 0/1. Returns {kind: file name}.
    """
    from predictor import plots

    out.mkdir(parents=True, exist_ok=True)
    names = list(vocab.names)
    rows = [{"class_name": names[r["class_id"]], **r} for r in per_class_ap(probs, targets)]
    cols = ["class_id", "class_name", "ap", "num_positives", "num_predicted_top1"]
    files: dict[str, str] = {}
    per_class = {
        "sorted_by": "ap (descending), then class_id",
        "num_classes": len(names),
        "classes_with_positives": len(rows),
        "classes": [{k: r[k] for k in cols} for r in rows],
    }
    _write_text(out / "per_class_ap.json", json.dumps(per_class, indent=2) + "\n")
    tmp = out / f".per_class_ap.csv.{os.getpid()}.tmp"
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["rank", *cols])
        for i, r in enumerate(rows, 1):
            w.writerow([i, *(f"{r[k]:.6f}" if k == "ap" else r[k] for k in cols)])
    os.replace(tmp, out / "per_class_ap.csv")
    files.update(per_class_ap_json="per_class_ap.json", per_class_ap_csv="per_class_ap.csv")
    _, drawn = plots.pr_curves(probs, targets, names, out / "pr_curves.png", top=pr_top)
    files["pr_curves"] = "pr_curves.png"
    per_video = targets.sum(axis=1)
    if len(per_video) and bool((per_video == 1).all()):
        plots.confusion_matrix(targets.argmax(axis=1), probs.argmax(axis=1), names, out / "confusion_matrix.png")
        files["confusion_matrix"] = "confusion_matrix.png"
    files["metrics"] = "metrics.json"
    _write_text(out / "metrics.json", json.dumps({**report, "outputs": files}, indent=2) + "\n")
    return files
