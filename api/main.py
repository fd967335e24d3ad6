"""FastAPI application factory: `uvicorn api.main:create_app --factory` (what `videotag serve` runs).

Configuration comes from `videotag.core.settings` (environment `VIDEOTAG_*`); the Redis URL from VIDEOTAG_REDIS_URL
or the local `videotag serve`'s service.json. On start-up the API re-enqueues unfinished jobs that have no
message in the broker (resume after a restart).
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

import redis
import redis.asyncio as aioredis
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry

from api import errors, openapi
from api.deps import AppState
from api.metrics import HttpMetrics, RedisCollector
from api.routes import batches, docs, health, jobs, models, web
from videotag.core.settings import get_settings
from workers.jobstore import BLOCK_S, JobStore

log = logging.getLogger("videotag.api")


def create_app() -> FastAPI:
    """The FastAPI app: job store + Redis clients, routes, metrics, and a resume of unfinished jobs at start-up."""
    settings = get_settings()
    from workers.celery_app import redis_url

    url = redis_url(settings)
    # Bounded waits: a Redis that is down answers "refused" at once, but a hung one must not hold a request
    # forever (the handlers in api.errors turn these timeouts into 503). Reads outlast the longest BLPOP.
    timeouts = {"socket_connect_timeout": 3.0, "socket_timeout": BLOCK_S + 8.0}
    jobstore = JobStore(redis.Redis.from_url(url, decode_responses=True, health_check_interval=30, **timeouts))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from workers.submit import resume

        try:
            counts = resume(jobstore, include_unacked=True)
            if counts.get("requeued"):
                log.warning("resumed %d unfinished job(s) after a restart: %s", counts["requeued"], counts)
        except Exception:  # a broken resume must not keep the API down; it is logged and retried on next start
            log.exception("resume of unfinished jobs failed")
        yield
        await app.state.vt.aredis.aclose()
        jobstore.r.close()

    app = FastAPI(
        title="videotag",
        version="0.1.0",
        description="Large-scale video tagging: upload or name a video, get ranked tags; bulk filelists via batches.",
        lifespan=lifespan,
        openapi_url=None,  # served by api.routes.docs: built by api.openapi, behind the API key when keys are set
        docs_url=None,
        redoc_url=None,
    )
    aredis = aioredis.Redis.from_url(url, decode_responses=True, **timeouts)
    app.state.vt = AppState(settings=settings, jobstore=jobstore, aredis=aredis)
    app.state.registry = registry = CollectorRegistry()
    registry.register(RedisCollector(jobstore))
    errors.install(app)

    for r in (jobs.router, batches.router, models.router, health.router, docs.router, web.router):
        app.include_router(r)
    app.mount("/static", StaticFiles(directory=web.STATIC), name="static")
    app.mount(docs.ASSETS_URL, docs.assets(), name="docs-assets")
    app.state.openapi = openapi.Cached(app, settings)
    app.openapi = app.state.openapi.get  # type: ignore[method-assign]
    app.add_middleware(HttpMetrics, registry=registry)
    return app
