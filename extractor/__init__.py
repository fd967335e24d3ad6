"""Stage 1: decode -> sample -> per-frame CNN features (ONNX Runtime). No FastAPI/Celery here."""
