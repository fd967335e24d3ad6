"""The HTTP API (FastAPI): jobs, batches, health/metrics and a small web page, over the Redis job store."""
