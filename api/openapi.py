"""The published OpenAPI document, built to say exactly what the server does.

FastAPI derives most of it from the routes; this module adds what it cannot see:
- the request bodies, which the routes read by hand (JSON, multipart and raw bodies on one route), with every
  rule the server enforces: exactly one of url/path (`oneOf`), non-empty lists and filelists, topk and
  threshold ranges, name and language patterns, and the limits configured in the settings (`max_source_chars`,
  `max_batch_items`, `max_filelist_bytes`) as maxLength/maxItems;
- the installed predictors and their languages as enums (read again when weights_dir changes);
- every error body as `Problem` (`{"detail": str}`; FastAPI would declare its list form for 422);
- the API-key security schemes only where the server has keys (optional on /readyz; none on /metrics when
  `metrics_public`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.schemas import FILELIST_PATTERN, BatchJSON, InputJSON, Options, RepredictJSON
from videotag.catalog import installed_models, model_languages
from videotag.core.settings import Settings


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


# ---- request bodies, referenced by the routes' `openapi_extra` ------------------------------------------------
INPUT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The video: a multipart upload (field `file`), the raw bytes (application/octet-stream or "
        "video/*, name in `X-Filename`, percent-encoded), or JSON naming a server file (`path`) or a URL (`url`).",
        "content": {
            "multipart/form-data": {"schema": _ref("InputForm")},
            "application/json": {"schema": _ref("InputJSON")},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "video/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
BATCH_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The videos: JSON (`paths` and/or `filelist`), a text/plain filelist (one path or URL per "
        "line; `#` comment lines and blank lines skipped; a directory is each video in it), or a multipart form with "
        "a `filelist` part (a file or a text field).",
        "content": {
            "application/json": {"schema": _ref("BatchJSON")},
            "text/plain": {"schema": _ref("Filelist")},
            "multipart/form-data": {"schema": _ref("BatchForm")},
        },
    }
}
REPREDICT_BODY: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("RepredictJSON")}}}
}


def _schema(model: type) -> dict[str, Any]:
    s = model.model_json_schema()
    s.pop("title", None)
    return s


def _model_lang_rule(settings: Settings, langs: dict[str, list[str]], named: bool, nullable: bool) -> dict[str, Any]:
    """Which `lang` goes with which `model`, exactly: one branch per set of languages. Without `model` (or with an
    empty one) the server's default model decides; a branch for other models requires `model`."""
    empty = [None, ""] if nullable else [""]
    groups: dict[tuple[str, ...], list[str]] = {}
    for name, ls in langs.items():
        groups.setdefault(tuple(ls), []).append(name)
    branches = []
    if not named:
        default = Path(settings.weights_dir) / settings.model
        branches.append({"properties": {"model": {"enum": [*empty, settings.model]},
                                        "lang": {"enum": [*empty, *model_languages(default)]}}})  # fmt: skip
    for ls, names in sorted(groups.items()):
        branches.append({"required": ["model"], "properties": {"model": {"enum": sorted(names)},
                                                               "lang": {"enum": [*empty, *ls]}}})  # fmt: skip
    return {"anyOf": branches}


def _body_schemas(settings: Settings, langs: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    n = settings.max_source_chars
    predictors = sorted(langs)
    languages = sorted({x for ls in langs.values() for x in ls})

    def options(schema: dict[str, Any], named: bool = False) -> dict[str, Any]:
        props = schema["properties"]
        nullable = False
        for name, values in (("model", predictors if named else ["", *predictors]), ("lang", ["", *languages])):
            nullable = any(a.get("type") == "null" for a in props[name].get("anyOf", []))
            if values:  # (an enum may not be empty: with no predictor installed, the pattern alone)
                props[name]["enum"] = [None, *values] if nullable else list(values)
        if predictors:
            schema["allOf"] = [_model_lang_rule(settings, langs, named, nullable)]
        return schema

    inp = _schema(InputJSON)
    inp["properties"]["url"]["maxLength"] = n
    inp["properties"]["path"]["maxLength"] = n
    options(inp)

    batch = _schema(BatchJSON)
    batch["properties"]["paths"]["maxItems"] = settings.max_batch_items
    batch["properties"]["paths"]["items"]["maxLength"] = n
    batch["properties"]["filelist"]["maxLength"] = settings.max_filelist_bytes
    options(batch)

    rep = options(_schema(RepredictJSON), named=True)

    def form(extra: dict[str, Any], required: str) -> dict[str, Any]:
        # form fields are text: null is not a value there, an empty model/lang is the server's default
        props = {}
        for name, p in _schema(Options)["properties"].items():
            plain = next((a for a in p.get("anyOf", []) if a.get("type") != "null"), p)
            props[name] = {**plain, **{k: v for k, v in p.items() if k not in ("anyOf", "default", "title")}}
        return options({"type": "object", "required": [required], "properties": {**extra, **props}})

    filelist = {"type": "string", "minLength": 1, "pattern": FILELIST_PATTERN,
                "maxLength": settings.max_filelist_bytes,
                "description": "One path or URL per line (blank lines skipped; at least one path). Each line "
                f"at most {n} characters, at most {settings.max_batch_items} lines, at most "
                f"{settings.max_filelist_bytes} bytes."}  # fmt: skip
    return {
        "InputJSON": inp,
        "InputForm": form({"file": {"type": "string", "format": "binary",
                                    "description": f"The video (at most {settings.max_upload_bytes} bytes)."}},
                          "file"),  # fmt: skip
        "BatchJSON": batch,
        "Filelist": filelist,
        "BatchForm": form({"filelist": filelist}, "filelist"),
        "RepredictJSON": rep,
    }


def _installed(settings: Settings) -> dict[str, list[str]]:
    """Installed predictors -> the languages of their class names."""
    return {m["name"]: list(m.get("languages") or []) for m in installed_models(settings.weights_dir)
            if m.get("kind") == "predictor"}  # fmt: skip


def _walk(node: Any, fn) -> None:
    if isinstance(node, dict):
        fn(node)
        for v in node.values():
            _walk(v, fn)
    elif isinstance(node, list):
        for v in node:
            _walk(v, fn)


def build(app: FastAPI, settings: Settings) -> dict[str, Any]:
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    comps = doc.setdefault("components", {})
    schemas = comps.setdefault("schemas", {})
    schemas.update(_body_schemas(settings, _installed(settings)))

    # FastAPI's own 422 form is never answered: every error body is Problem
    def problem_refs(node: dict[str, Any]) -> None:
        if node.get("$ref") == "#/components/schemas/HTTPValidationError":
            node["$ref"] = "#/components/schemas/Problem"

    _walk(doc["paths"], problem_refs)
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for name in list(schemas):  # FastAPI names some body models after their route; none are used as bodies here
        if name.startswith("Body_"):
            schemas.pop(name)

    # security: only where keys are configured; optional on /readyz (its verbose view needs it)
    if not settings.api_keys:
        comps.pop("securitySchemes", None)
        for ops in doc["paths"].values():
            for op in ops.values():
                op.pop("security", None)
                op.get("responses", {}).pop("401", None)
    else:
        readyz = doc["paths"].get("/readyz", {}).get("get")
        if readyz and readyz.get("security"):
            readyz["security"] = [{}, *readyz["security"]]
        metrics = doc["paths"].get("/metrics", {}).get("get")
        if metrics and settings.metrics_public:
            metrics.pop("security", None)
            metrics["responses"].pop("401", None)
    return doc


class Cached:
    """The document, rebuilt when the set of installed models may have changed (weights_dir's mtime)."""

    def __init__(self, app: FastAPI, settings: Settings) -> None:
        self.app, self.settings = app, settings
        self._key: tuple | None = None
        self._doc: dict[str, Any] | None = None

    def _stamp(self) -> tuple:
        try:
            w = self.settings.weights_dir
            return tuple(sorted((e.name, e.stat().st_mtime_ns) for e in os.scandir(w)))
        except OSError:
            return ()

    def get(self) -> dict[str, Any]:
        key = self._stamp()
        if self._doc is None or key != self._key:
            self._doc, self._key = build(self.app, self.settings), key
        return self._doc
