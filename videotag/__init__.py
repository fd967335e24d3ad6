"""videotag: two-stage video tagging (frame features -> sequence model -> ranked tags).

From Python::

    from videotag import Tagger

    tagger = Tagger()                          # model="imagenet_framepool", device="auto"
    for r in tagger.tag(["a.mp4", "clips/"]):  # files, directories, URLs; one result each, in order
        print(r.source, r.tags[:3] if r.ok else r.error)

See `help(videotag.Tagger)`. Floors (docs/architecture.md): `videotag.core` is the ground (settings, errors,
manifests, vocabularies, result schema, feature store, ONNX sessions); `extractor` and `predictor` stand on it;
the pipeline (`videotag.inputs`, `videotag.pipeline`, `videotag.tagger`, ...) above them; the doors on top
(`videotag.cli`, `workers`, `api`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Tag", "Tagger", "VideoResult", "VideotagError", "__version__"]

if TYPE_CHECKING:
    from videotag.core.errors import VideotagError
    from videotag.core.results import Tag, VideoResult
    from videotag.tagger import Tagger

_LAZY = {
    "Tagger": "videotag.tagger",
    "VideoResult": "videotag.core.results",
    "Tag": "videotag.core.results",
    "VideotagError": "videotag.core.errors",
}


def __getattr__(name: str) -> Any:
    # Lazy: `import videotag.core.settings` (the API, the workers) must not load ONNX Runtime and the decoders.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'videotag' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
