"""`videotag ensemble`: build an ensemble predictor directory from exported member dirs and/or checkpoints.

Checkpoint members are exported first (parity-checked). All members must share the feature dim, the backbone
(name + weights sha256) and the vocabulary; the merged ONNX graph averages their probabilities with the given
weights, is checked against the members' own ONNX outputs, and gets a manifest whose `config` rebuilds the
torch architecture with `create_model("ensemble", **config)`.

Fusion weights are equal unless given, or tuned (`tune=(features, labels)`): every weight vector on a simplex grid
is scored on those labelled videos (held out from the members' training, e.g. their validation set) and the one
with the best GAP@20 wins; ties go to the lower log-loss, then to the weights closest to equal. The corners of the
grid are the members alone, so on the tuning set the ensemble is never worse than its best member.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from predictor.checkpoint import export_checkpoint
from predictor.export import OPSET, PARITY_TOL, parity_batch
from predictor.metrics import gap
from predictor.models.ensemble import compose_onnx, normalise_weights
from videotag.core.errors import ModelMismatchError
from videotag.core.manifest import (
    LABELS_NAME,
    MANIFEST_NAME,
    WEIGHTS_NAME,
    add_vocabularies,
    read_manifest,
    staged_dir,
    write_manifest,
)
from videotag.core.vocab import Vocabulary


def _member_dirs(members: Sequence[str | Path], tmp: Path) -> list[Path]:
    dirs = []
    for i, m in enumerate(members):
        p = Path(m)
        if p.is_dir() and (p / MANIFEST_NAME).is_file():
            dirs.append(p)
        else:  # a checkpoint file or a training run dir
            dirs.append(export_checkpoint(p, tmp / f"member{i}"))
    return dirs


def _check_compatible(manifests: list[dict[str, Any]], dirs: list[Path]) -> None:
    ref, ref_dir = manifests[0], dirs[0]
    for m, d in zip(manifests[1:], dirs[1:], strict=True):
        if int(m["feature_dim"]) != int(ref["feature_dim"]):
            raise ModelMismatchError(
                f"ensemble members take different features: {ref_dir} {ref['feature_dim']}-d, {d} {m['feature_dim']}-d"
            )
        for key in ("name", "sha256"):
            a, b = (ref.get("backbone") or {}).get(key), (m.get("backbone") or {}).get(key)
            if a != b:
                raise ModelMismatchError(
                    f"ensemble members were trained on different backbones ({key}: {ref_dir} {a!r}, {d} {b!r})"
                )
        if m["vocabulary"]["sha256"] != ref["vocabulary"]["sha256"]:
            raise ModelMismatchError(
                f"ensemble members predict different vocabularies: {ref_dir} "
                f"({ref['vocabulary']['num_classes']} classes) vs {d} ({m['vocabulary']['num_classes']} classes)"
            )
        if m.get("sampling") != ref.get("sampling"):
            raise ModelMismatchError(
                f"ensemble members were trained on features sampled differently: {ref_dir} {ref.get('sampling')!r}, "
                f"{d} {m.get('sampling')!r}"
            )


def _parity(merged: Path, member_files: list[Path], weights: list[float], feature_dim: int) -> float:
    import onnxruntime as ort

    x, lens = parity_batch(feature_dim)
    feeds = {"features": x.numpy(), "lengths": lens.numpy()}

    def run(p: Path) -> np.ndarray:
        sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        return sess.run(["probabilities"], feeds)[0]

    ref = sum(w * run(p) for w, p in zip(weights, member_files, strict=True))
    return float(np.abs(run(merged) - ref).max())


def simplex_grid(n: int, step: float) -> list[tuple[float, ...]]:
    """Every weight vector of n non-negative multiples of `step` summing to 1 (n=2, step 0.5: (0,1), (.5,.5), (1,0))."""
    units = round(1.0 / step)
    if n < 1 or units < 1 or abs(units * step - 1.0) > 1e-9:
        raise ValueError(f"the tuning grid step must divide 1 (e.g. 0.05), got {step}")

    def parts(k: int, left: int) -> list[tuple[int, ...]]:
        return [(left,)] if k == 1 else [(i, *rest) for i in range(left + 1) for rest in parts(k - 1, left - i)]

    return [tuple(u / units for u in p) for p in parts(n, units)]


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).mean())


def tune_weights(scores: Sequence[np.ndarray], targets: np.ndarray, step: float = 0.05, k: int = 20) -> dict[str, Any]:
    """Fusion weights for member probabilities `scores` (each [N, C]) against `targets` [N, C]: best GAP@k on the
    simplex grid, ties (within 1e-9) to the lower log-loss, then to the weights nearest equal. Returns
    {"weights", "gap@k", "log_loss", "equal_weights_gap@k", "members_gap@k", "grid_step", "candidates"}."""
    n = len(scores)
    equal = np.full(n, 1.0 / n)
    best: tuple[float, float, float] | None = None
    chosen: tuple[float, ...] = tuple(equal)
    grid = simplex_grid(n, step)
    for w in grid:
        fused = sum(wi * s for wi, s in zip(w, scores, strict=True))
        # Rounded: float noise must not beat the next criterion (identical members -> equal weights).
        key = (-round(gap(fused, targets, k), 9), round(_log_loss(fused, targets), 9),
               round(float(np.abs(np.array(w) - equal).sum()), 9))  # fmt: skip
        if best is None or key < best:
            best, chosen = key, w
    assert best is not None
    equal_fused = sum(s / n for s in scores)
    return {
        "weights": [float(w) for w in chosen],
        f"gap@{k}": -best[0],
        "log_loss": best[1],
        f"equal_weights_gap@{k}": gap(equal_fused, targets, k),
        f"members_gap@{k}": [gap(s, targets, k) for s in scores],
        "grid_step": step,
        "candidates": len(grid),
    }


def build_ensemble(
    members: Sequence[str | Path],
    out_dir: str | Path,
    weights: Sequence[float] | None = None,
    tune: tuple[Sequence[str | Path], str | Path] | None = None,
    tune_step: float = 0.05,
) -> Path:
    """Write an ensemble predictor dir (model.onnx + labels.txt + manifest.json) and return its path.
    `tune=(feature stores, label file)`: choose the weights on those videos (module doc) instead of `weights`."""
    if not members:
        raise ValueError("an ensemble needs at least one member")
    if tune is not None and weights is not None:
        raise ValueError("give fusion weights or a tuning set, not both")
    norm = normalise_weights(weights, len(members))
    out = Path(out_dir)
    tuning: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="videotag-ensemble-") as tmp_s:
        tmp = Path(tmp_s)
        dirs = _member_dirs(members, tmp)
        manifests = [read_manifest(d, kind="predictor") for d in dirs]
        _check_compatible(manifests, dirs)
        if tune is not None:
            from predictor.evaluate import score_labelled

            features, labels = tune
            scored = [score_labelled(d, features, labels) for d in dirs]
            tuning = tune_weights([s[0] for s in scored], scored[0][1], tune_step)
            tuning.update(features=[str(f) for f in features], labels=str(labels), videos=int(len(scored[0][1])))
            norm = weights = tuning["weights"]
        files = [d / m["weights"] for d, m in zip(dirs, manifests, strict=True)]
        with staged_dir(out) as stage:
            compose_onnx(files, norm, stage / WEIGHTS_NAME)
            ref = manifests[0]
            diff = _parity(stage / WEIGHTS_NAME, files, norm, int(ref["feature_dim"]))
            if diff > PARITY_TOL:
                raise AssertionError(f"merged ensemble graph differs from its members' average by {diff:.2e}")
            vocab = Vocabulary.load(dirs[0] / ref["vocabulary"]["file"])
            vocab.save(stage / LABELS_NAME)
            config = {
                "feature_dim": int(ref["feature_dim"]),
                "num_classes": int(ref["num_classes"]),
                "members": [
                    {
                        "name": m["architecture"],
                        "config": {k: v for k, v in m["config"].items() if k not in ("feature_dim", "num_classes")},
                    }
                    for m in manifests
                ],
                "weights": [float(w) for w in (weights if weights is not None else [1.0] * len(members))],
            }
            manifest = {
                "kind": "predictor",
                "architecture": "ensemble",
                "config": config,
                "feature_dim": int(ref["feature_dim"]),
                "num_classes": int(ref["num_classes"]),
                "backbone": ref.get("backbone"),
                "vocabulary": {"file": LABELS_NAME, "sha256": vocab.sha256, "num_classes": len(vocab)},
                "inputs": {"features": "float32 [B, T, D]", "lengths": "int64 [B]"},
                "output": "probabilities",
                "opset": OPSET,
                "onnx_parity_max_abs_diff": diff,
                "fusion_weights": norm,
                **({"fusion_tuning": tuning} if tuning else {}),
                "members": [
                    {
                        "source": str(src),
                        "architecture": m["architecture"],
                        "sha256": m["sha256"],
                        "weight": w,
                        "metrics": m.get("metrics", {}),
                    }
                    for src, m, w in zip(members, manifests, norm, strict=True)
                ],
                "metrics": {},
                **({"sampling": ref["sampling"]} if ref.get("sampling") else {}),
            }
            write_manifest(stage, manifest)
            _copy_languages(dirs[0], ref, stage)
    return out


def _copy_languages(member_dir: Path, member: dict[str, Any], stage: Path) -> None:
    """The ensemble names its classes in the same languages as its (same-vocabulary) members."""
    primary = member["vocabulary"].get("language")
    if not primary:
        return
    translations = {
        lang: Vocabulary.load(member_dir / e["file"])
        for lang, e in (member.get("languages") or {}).items()
        if e["file"] != member["vocabulary"]["file"]
    }
    add_vocabularies(stage, primary, translations, member.get("default_language") or primary)


def set_metrics(model_dir: str | Path, metrics: dict[str, Any]) -> None:
    """Record evaluation metrics in a predictor dir's manifest (the weights, and so the sha256, are unchanged)."""
    m = read_manifest(model_dir, kind="predictor")
    m["metrics"] = metrics
    write_manifest(model_dir, m, m["weights"])
