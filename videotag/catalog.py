"""What models are installed under the weights directory, and which ones `videotag setup` can install.

Read from manifests only (no ONNX session, no hashing), so the CLI (`videotag models`) and the API
(`GET /v1/models`) can list them cheaply.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from videotag.core.errors import ModelMismatchError
from videotag.core.manifest import MANIFEST_NAME

# name -> what `videotag setup NAME` installs and what it needs
AVAILABLE: dict[str, dict[str, str]] = {
    "default": {
        "installs": "efficientnet_lite0, imagenet_framepool",
        "needs": "nothing (offline, ~10 s)",
        "description": "EfficientNet-Lite0 + its ImageNet-1k head pooled over time (1000 object classes, en)",
    },
    "videotag": {
        "installs": "videotag",
        "needs": "internet (two archives from Baidu, about 1 GB) or --source DIR_OR_URL; ~1 min to import",
        "description": "Baidu VideoTag: TSN ResNet-101 + Attention-LSTM, 3396 video tags (en, zh)",
    },
}


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _describe(d: Path, m: dict[str, Any]) -> dict[str, Any]:
    kind = m.get("kind", "?")
    info: dict[str, Any] = {
        "name": d.name,
        "path": str(d),
        "kind": kind,
        "architecture": m.get("architecture"),
        "feature_dim": m.get("feature_dim"),
        "size_bytes": _dir_size(d),
        "created": m.get("created"),
    }
    src = m.get("source") or {}
    if kind == "predictor":
        voc = m.get("vocabulary") or {}
        langs = manifest_languages(m)
        bundled = (d / "backbone" / MANIFEST_NAME).is_file()
        info.update(
            classes=voc.get("num_classes"),
            languages=langs,
            default_language=m.get("default_language"),
            backbone=((m.get("backbone") or {}).get("name") or "") + (" (bundled)" if bundled else ""),
            sampling=m.get("sampling"),
            source=src.get("package") if isinstance(src, dict) else str(src),
        )
    else:
        info.update(
            classes=None, languages=[], backbone=None, sampling=m.get("sampling"),
            source=src.get("package") if isinstance(src, dict) else str(src),
        )  # fmt: skip
    return info


def installed_models(weights_dir: str | Path) -> list[dict[str, Any]]:
    """One dict per model directory under `weights_dir` (predictors first, then backbones; by name)."""
    weights_dir = Path(weights_dir)
    out = []
    if not weights_dir.is_dir():
        return out
    for d in sorted(weights_dir.iterdir()):
        f = d / MANIFEST_NAME
        if d.name.startswith(".") or not f.is_file():
            continue
        try:
            m = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            out.append({"name": d.name, "path": str(d), "kind": "broken", "architecture": None,
                        "size_bytes": _dir_size(d), "error": str(e)})  # fmt: skip
            continue
        out.append(_describe(d, m))
    return sorted(out, key=lambda x: (x["kind"] != "predictor", x["name"]))


def available_models(weights_dir: str | Path) -> list[dict[str, Any]]:
    """What `videotag setup NAME` can install, and whether it already is."""
    weights_dir = Path(weights_dir)
    return [
        {"name": name, **spec,
         "installed": all((weights_dir / n.strip() / MANIFEST_NAME).is_file() for n in spec["installs"].split(","))}
        for name, spec in AVAILABLE.items()
    ]  # fmt: skip


def manifest_languages(manifest: dict[str, Any]) -> list[str]:
    """Languages a predictor manifest can name its classes in ([] when unrecorded)."""
    return list(manifest.get("languages") or {})


def model_languages(model_dir: str | Path) -> list[str]:
    """Languages a predictor directory can name its classes in (from its manifest; [] when unrecorded)."""
    try:
        m = json.loads((Path(model_dir) / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return []
    return manifest_languages(m)


def require_language(model_dir: str | Path, lang: str) -> None:
    """ModelMismatchError unless the predictor in `model_dir` has class names in `lang` (reads the manifest only:
    for the doors that check a request before queueing it; `OnnxPredictor.names` checks the loaded model)."""
    have = model_languages(model_dir)
    if lang not in have:
        raise ModelMismatchError(
            f"model {Path(model_dir).name!r} has no {lang!r} class names (it has: {', '.join(have) or 'none'})"
        )
