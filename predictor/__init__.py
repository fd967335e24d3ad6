"""Stage 2: sequence models over per-frame features -> class probabilities (no FastAPI/Celery here)."""
