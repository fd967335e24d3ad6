"""Manifests: a JSON file that travels with every weights file and says what it is.

A model directory holds `model.onnx` + `manifest.json` (+ `labels.txt` for predictors). Loading checks the
file's sha256 against the manifest and refuses mismatched dims / backbones / vocabularies with a clear message.

Backbone manifest (kind="backbone"):
    architecture, input {size, layout "NHWC", dtype "uint8", color "RGB"}, preprocessing {...},
    feature_dim, opset, sha256, source {package, version}, created
Predictor manifest (kind="predictor"):
    architecture, config, feature_dim, backbone {name, sha256|None}, vocabulary {file, sha256, num_classes},
    output "probabilities", opset, sha256, metrics, created
A predictor directory may contain a `backbone/` sub-directory (e.g. an imported VideoTag bundle); then
`videotag tag --model DIR` extracts with that backbone.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from videotag.core.errors import ManifestError
from videotag.core.hashing import sha256_file

MANIFEST_NAME = "manifest.json"
WEIGHTS_NAME = "model.onnx"
LABELS_NAME = "labels.txt"
FORMAT_VERSION = 1


def now_iso() -> str:
    """The current UTC time as ISO 8601 (seconds), as manifests and stores record it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_manifest(model_dir: str | Path, manifest: dict[str, Any], weights_name: str = WEIGHTS_NAME) -> Path:
    """Write `manifest.json` beside `weights_name`, filling sha256/created/format_version."""
    model_dir = Path(model_dir)
    m = dict(manifest)
    m.setdefault("format_version", FORMAT_VERSION)
    m.setdefault("created", now_iso())
    m["weights"] = weights_name
    m["sha256"] = sha256_file(model_dir / weights_name)
    path = model_dir / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(m, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_manifest(model_dir: str | Path, kind: str | None = None, verify: bool = True) -> dict[str, Any]:
    """Read and validate a model directory's manifest; verify the weights' sha256."""
    model_dir = Path(model_dir)
    path = model_dir / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{model_dir}: no {MANIFEST_NAME} (not a videotag model directory)")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON ({e})") from e
    for key in ("kind", "architecture", "feature_dim", "sha256", "weights"):
        if key not in m:
            raise ManifestError(f"{path}: missing field {key!r}")
    if kind is not None and m["kind"] != kind:
        raise ManifestError(f"{model_dir}: is a {m['kind']!r} model, expected a {kind!r} model")
    weights = model_dir / m["weights"]
    if not weights.is_file():
        raise ManifestError(f"{model_dir}: weights file {m['weights']!r} named by the manifest is missing")
    if verify:
        actual = sha256_file(weights)
        if actual != m["sha256"]:
            raise ManifestError(
                f"{weights}: sha256 {actual[:12]}… does not match the manifest's {m['sha256'][:12]}… "
                "(file replaced or corrupted; re-export the model)"
            )
    return m


def backbone_id(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a feature store records about the backbone that made it."""
    return {"name": manifest["architecture"], "sha256": manifest["sha256"], "feature_dim": manifest["feature_dim"]}


def publish_dir(stage: str | Path, out: str | Path) -> Path:
    """Move a finished model directory into place, replacing `out` by a rename swap (never half-written)."""
    stage, out = Path(stage), Path(out)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        out.rename(old)
    stage.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


@contextmanager
def staged_dir(out: str | Path) -> Iterator[Path]:
    """Build a model directory under a hidden staging name; it becomes `out` only if the block succeeds."""
    out = Path(out)
    stage = out.with_name(f".{out.name}.staging-{uuid.uuid4().hex[:8]}")
    stage.mkdir(parents=True)
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    publish_dir(stage, out)


def add_vocabularies(
    model_dir: str | Path, primary_language: str, translations: dict[str, Any], default_language: str
) -> dict[str, Any]:
    """Record the language of a predictor's own labels and add translated label files (same ids, same count).

    translations: {lang: Vocabulary}; each is written as `labels_<lang>.txt` with its sha256 in the manifest's
    `languages` map, so `OnnxPredictor.names(lang)` can verify it. Returns the updated manifest.
    """
    model_dir = Path(model_dir)
    m = read_manifest(model_dir, kind="predictor")
    n = int(m["vocabulary"]["num_classes"])
    languages = {primary_language: {"file": m["vocabulary"]["file"], "sha256": m["vocabulary"]["sha256"]}}
    for lang, vocab in translations.items():
        if len(vocab) != n:
            raise ManifestError(f"{lang} vocabulary has {len(vocab)} names; the model has {n} classes")
        name = f"labels_{lang}.txt"
        vocab.save(model_dir / name)
        languages[lang] = {"file": name, "sha256": vocab.sha256}
    if default_language not in languages:
        raise ManifestError(f"default language {default_language!r} is not one of {', '.join(languages)}")
    m["vocabulary"] = {**m["vocabulary"], "language": primary_language}
    m["languages"] = languages
    m["default_language"] = default_language
    write_manifest(model_dir, m, m["weights"])
    return m
