"""Celery workers: `extract` (stage 1, queue `extract`) chained to `predict` (stage 2, queue `predict`)."""
