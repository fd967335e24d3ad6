"""Importers: turn other projects' released weights into videotag model directories (ONNX + manifests)."""

from videotag.importers.paddle_videotag import PaddleWeightsError, import_videotag, load_pdparams

__all__ = ["PaddleWeightsError", "import_videotag", "load_pdparams"]
