"""API routers: jobs (single videos), batches (filelists), health (healthz/readyz/metrics), web (the page)."""
