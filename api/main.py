"""FastAPI application factory: `uvicorn api.main:create_app --factory` (what `videotag serve` runs).

Configuration comes from `videotag.settings` (environment `VIDEOTAG_*`); the Redis URL from VIDEOTAG_REDIS_URL
or the local `videotag serve`'s service.json. On start-up the API re-enqueues unfinished jobs that have no
message in the broker (resume after a restart).
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry

from api.deps import AppState
from api.metrics import HttpMetrics, RedisCollector
from api.routes import batches, health, jobs, models, web
from api.security import Refused
from videotag.jobs import JobStore
from videotag.settings import get_settings

log = logging.getLogger("videotag.api")


def create_app() -> FastAPI:
    settings = get_settings()
    from workers.celery_app import redis_url

    url = redis_url(settings)
    store = JobStore.from_url(url)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from workers.tasks import enqueue

        try:
            counts = store.resume(enqueue, include_unacked=True)
            if counts.get("requeued"):
                log.warning("resumed %d unfinished job(s) after a restart: %s", counts["requeued"], counts)
        except Exception:  # a broken resume must not keep the API down; it is logged and retried on next start
            log.exception("resume of unfinished jobs failed")
        yield
        await app.state.vt.aredis.aclose()
        store.r.close()

    app = FastAPI(
        title="videotag",
        version="0.1.0",
        description="Large-scale video tagging: upload or name a video, get ranked tags; bulk filelists via batches.",
        lifespan=lifespan,
    )
    app.state.vt = AppState(settings=settings, store=store, aredis=aioredis.Redis.from_url(url, decode_responses=True))
    app.state.registry = registry = CollectorRegistry()
    registry.register(RedisCollector(store))

    @app.exception_handler(Refused)
    async def refused(_: Request, exc: Refused) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        msgs = [f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"detail": "; ".join(msgs) or "invalid request"}, status_code=422)

    for r in (jobs.router, batches.router, models.router, health.router, web.router):
        app.include_router(r)
    app.mount("/static", StaticFiles(directory=web.STATIC), name="static")
    app.add_middleware(HttpMetrics, registry=registry)
    return app
