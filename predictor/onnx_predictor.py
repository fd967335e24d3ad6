"""Serve an exported predictor directory through ONNX Runtime."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from videotag.core.errors import ModelMismatchError
from videotag.core.manifest import read_manifest
from videotag.core.onnx_sessions import get_session
from videotag.core.vocab import Vocabulary


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
        self._names = self._load_languages()
        self.session = get_session(self.dir / self.manifest["weights"], providers, intra_op_threads)

    def _load_languages(self) -> dict[str, tuple[str, ...]]:
        """{lang: names} for every vocabulary the manifest records (same ids; checked by count and sha256)."""
        out: dict[str, tuple[str, ...]] = {}
        for lang, entry in (self.manifest.get("languages") or {}).items():
            vocab = self.vocab if entry["file"] == self.manifest["vocabulary"]["file"] else None
            if vocab is None:
                try:
                    vocab = Vocabulary.load(self.dir / entry["file"])
                except (OSError, ValueError) as e:
                    raise ModelMismatchError(f"{self.dir}: {lang} labels {entry['file']!r} unreadable ({e})") from e
            if len(vocab) != self.num_classes or vocab.sha256 != entry["sha256"]:
                raise ModelMismatchError(
                    f"{self.dir}: {lang} labels {entry['file']!r} do not match the manifest "
                    f"({len(vocab)} names, sha256 {vocab.sha256[:12]}…); re-install the model"
                )
            out[lang] = vocab.names
        return out

    @property
    def languages(self) -> list[str]:
        """Languages this model can name its classes in (empty: one vocabulary of unrecorded language)."""
        return list(self._names)

    @property
    def default_language(self) -> str | None:
        return self.manifest.get("default_language") or next(iter(self._names), None)

    def names(self, lang: str | None = None) -> tuple[str, ...]:
        """Class names in `lang` (None: the model's default); ids never change with the language."""
        lang = lang or self.default_language
        if lang is None:  # no language recorded: the model's one vocabulary
            return self.vocab.names
        if lang not in self._names:
            have = ", ".join(self._names) or "one vocabulary with no recorded language (leave the language unset)"
            raise ModelMismatchError(f"model {self.name} has no {lang!r} class names (it has: {have})")
        return self._names[lang]

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

    @property
    def sampling(self) -> str | None:
        """The frame-sampling rule of the features this model was trained on (None: any)."""
        return self.manifest.get("sampling")

    def check_features(
        self, backbone: str, backbone_sha256: str, feature_dim: int, where: str = "", sampling: str | None = None
    ) -> None:
        """Refuse features made by another backbone, with another dimension or sampling rule, clearly."""
        where = f" ({where})" if where else ""
        if sampling and self.sampling and sampling != self.sampling:
            raise ModelMismatchError(
                f"model {self.name} was trained on features sampled with the {self.sampling!r} rule but these were "
                f"sampled with {sampling!r}{where}; extract them again with --sampling {self.sampling} "
                "(or leave --sampling unset: the model's rule is the default)"
            )
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
