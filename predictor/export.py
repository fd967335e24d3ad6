"""Export any registered SequenceModel to ONNX + manifest, asserting ONNX == torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from predictor.models.base import SequenceModel
from videotag.core.manifest import LABELS_NAME, WEIGHTS_NAME, staged_dir, write_manifest
from videotag.core.vocab import Vocabulary

OPSET = 17
PARITY_TOL = 1e-4


class _Probabilities(torch.nn.Module):
    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.model.probabilities(features, lengths)


def parity_batch(feature_dim: int, lengths=(37, 11, 1, 24), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch of sequences of different lengths: features [B, T, D], lengths [B]."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor(lengths, dtype=torch.int64)
    x = torch.randn(len(lengths), int(lens.max()), feature_dim, generator=g)
    return x, lens


def onnx_parity(onnx_path: str | Path, model: SequenceModel, batch=None) -> float:
    """Max |ONNX Runtime (CPU) - torch| of probabilities on a batch of different lengths."""
    import onnxruntime as ort

    x, lens = batch if batch is not None else parity_batch(model.feature_dim)
    with torch.no_grad():
        ref = model.probabilities(x, lens).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    out = sess.run(["probabilities"], {"features": x.numpy(), "lengths": lens.numpy()})[0]
    return float(np.abs(out - ref).max())


def export_onnx(model: SequenceModel, path: str | Path, opset: int = OPSET) -> float:
    """Write `path` (single-file ONNX: features[B,T,D], lengths[B] -> probabilities[B,C]); return parity.

    A model may define `export_onnx_graph(path, opset)` to write its own graph (same inputs/outputs).
    """
    model = model.eval()
    x, lens = parity_batch(model.feature_dim)
    custom = getattr(model, "export_onnx_graph", None)
    if custom is not None:  # models whose ops torch's exporter can't express (e.g. the peephole LSTM)
        custom(path, opset)
    else:
        _torch_export(model, x, lens, path, opset)
    diff = onnx_parity(path, model, (x, lens))
    if diff > PARITY_TOL:
        raise AssertionError(f"ONNX export of {model.name} differs from torch by {diff:.2e} > {PARITY_TOL}")
    return diff


def _torch_export(model: SequenceModel, x: torch.Tensor, lens: torch.Tensor, path: str | Path, opset: int) -> None:
    # The wrapper must be in eval mode too: the exporter restores the wrapper's mode recursively afterwards,
    # which would otherwise leave `model` in training mode (dropout/BN) for the parity check.
    torch.onnx.export(
        _Probabilities(model).eval(),
        (x, lens),
        str(path),
        input_names=["features", "lengths"],
        output_names=["probabilities"],
        dynamic_axes={"features": {0: "batch", 1: "time"}, "lengths": {0: "batch"}, "probabilities": {0: "batch"}},
        opset_version=opset,
        dynamo=False,  # the legacy exporter writes one self-contained file
    )


def export_predictor(
    model: SequenceModel,
    out_dir: str | Path,
    vocab: Vocabulary,
    backbone: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    sampling: str | None = None,
) -> Path:
    """Export to `out_dir/{model.onnx, labels.txt, manifest.json}`; `backbone` = {name, sha256, feature_dim}.

    sampling: the frame-sampling policy the model was trained on (e.g. "segment"), recorded as the manifest's
    "sampling" so prediction can check the features it gets; omitted from the manifest when None.
    """
    if len(vocab) != model.num_classes:
        raise ValueError(f"vocabulary has {len(vocab)} names but the model outputs {model.num_classes} classes")
    if int(backbone.get("feature_dim", model.feature_dim)) != model.feature_dim:
        raise ValueError(f"backbone feature dim {backbone['feature_dim']} != model input dim {model.feature_dim}")
    with staged_dir(out_dir) as tmp:
        diff = export_onnx(model, tmp / WEIGHTS_NAME)
        vocab.save(tmp / LABELS_NAME)
        manifest = {
            "kind": "predictor",
            "architecture": model.name,
            "config": model.config,
            "feature_dim": model.feature_dim,
            "num_classes": model.num_classes,
            "backbone": {"name": backbone.get("name"), "sha256": backbone.get("sha256")},
            "vocabulary": {"file": LABELS_NAME, "sha256": vocab.sha256, "num_classes": len(vocab)},
            "inputs": {"features": "float32 [B, T, D]", "lengths": "int64 [B]"},
            "output": "probabilities",
            "opset": OPSET,
            "onnx_parity_max_abs_diff": diff,
            "metrics": metrics or {},
            **(extra or {}),
        }
        if sampling is not None:
            manifest["sampling"] = sampling
        write_manifest(tmp, manifest)
    return Path(out_dir)
