"""Serve an exported predictor directory through ONNX Runtime."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from videotag.errors import ModelMismatchError
from videotag.manifest import read_manifest
from videotag.runtime import get_session
from videotag.vocab import Vocabulary


class OnnxPredictor:
    """features [T_i, D] sequences -> probabilities [B, C] with the model's vocabulary."""

    def __init__(self, model_dir: str | Path, providers=None, intra_op_threads: int = 0) -> None:
        self.dir = Path(model_dir)
        self.manifest: dict[str, Any] = read_manifest(self.dir, kind="predictor")
        self.vocab = Vocabulary.load(self.dir / self.manifest["vocabulary"]["file"])
        if self.vocab.sha256 != self.manifest["vocabulary"]["sha256"] or len(self.vocab) != self.num_classes:
            raise ModelMismatchError(
                f"{self.dir}: labels file does not match the manifest's vocabulary "
                f"({len(self.vocab)} names, sha256 {self.vocab.sha256[:12]}…; manifest: {self.num_classes} classes, "
                f"sha256 {self.manifest['vocabulary']['sha256'][:12]}…)"
            )
        self.session = get_session(self.dir / self.manifest["weights"], providers, intra_op_threads)

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def feature_dim(self) -> int:
        return int(self.manifest["feature_dim"])

    @property
    def num_classes(self) -> int:
        return int(self.manifest["vocabulary"]["num_classes"])

    @property
    def backbone(self) -> dict[str, Any]:
        return self.manifest.get("backbone") or {}

    def check_features(self, backbone: str, backbone_sha256: str, feature_dim: int, where: str = "") -> None:
        """Refuse features made by another backbone or with another dimension, clearly."""
        where = f" ({where})" if where else ""
        if feature_dim != self.feature_dim:
            raise ModelMismatchError(
                f"model {self.name} expects {self.feature_dim}-d features but the store holds {feature_dim}-d "
                f"features from backbone {backbone!r}{where}"
            )
        want = self.backbone
        if want.get("name") and backbone and want["name"] != backbone:
            raise ModelMismatchError(
                f"model {self.name} was trained on {want['name']!r} features but the store's come from "
                f"{backbone!r}{where}; extract with the matching backbone"
            )
        if want.get("sha256") and backbone_sha256 and want["sha256"] != backbone_sha256:
            raise ModelMismatchError(
                f"model {self.name} needs features from {want['name']} weights {want['sha256'][:12]}… but the "
                f"store's were made with weights {backbone_sha256[:12]}…{where}"
            )

    def predict(self, sequences: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """List of [T_i, D] arrays -> probabilities [N, C] (float32); pads per batch, lengths mask it."""
        out = np.empty((len(sequences), self.num_classes), dtype=np.float32)
        for start in range(0, len(sequences), batch_size):
            chunk = sequences[start : start + batch_size]
            lengths = np.array([s.shape[0] for s in chunk], dtype=np.int64)
            x = np.zeros((len(chunk), int(lengths.max()), self.feature_dim), dtype=np.float32)
            for i, s in enumerate(chunk):
                if s.ndim != 2 or s.shape[1] != self.feature_dim:
                    raise ModelMismatchError(f"sequence {start + i} has shape {s.shape}, want [T, {self.feature_dim}]")
                x[i, : s.shape[0]] = s
            feeds = {"features": x, "lengths": lengths}
            out[start : start + len(chunk)] = self.session.run(["probabilities"], feeds)[0]
        return out
