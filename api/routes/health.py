"""GET /healthz (process up), /readyz (Redis + workers of both queues), /metrics (Prometheus)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import AppState, State
from api.schemas import Health, Ready
from videotag.jobs import QUEUES

router = APIRouter(tags=["health"])
READY_CACHE_S = 2.0
INSPECT_TIMEOUT_S = 1.0


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The API process is up (no dependencies checked)."""
    return Health(status="ok")


def _workers_by_queue() -> dict[str, list[str]]:
    """Ask the workers over the broker's control channel which queues they consume."""
    from workers.celery_app import app

    replies = app.control.inspect(timeout=INSPECT_TIMEOUT_S).active_queues() or {}
    out: dict[str, list[str]] = {q: [] for q in QUEUES}
    for node, queues in replies.items():
        for q in queues or []:
            if q.get("name") in out:
                out[q["name"]].append(node)
    return {q: sorted(nodes) for q, nodes in out.items()}


def check_ready(st: AppState) -> dict[str, Any]:
    cached = st.ready_cache
    if cached and time.monotonic() - cached["at"] < READY_CACHE_S:
        return cached["body"]
    body: dict[str, Any] = {"status": "not_ready", "redis": False, "workers": {q: [] for q in QUEUES}}
    try:
        body["redis"] = bool(st.store.r.ping())
        body["workers"] = _workers_by_queue()
    except Exception as e:  # noqa: BLE001 - any failure here means "not ready", and the reason is reported
        body["detail"] = f"{type(e).__name__}: {e}"
    missing = [q for q in QUEUES if not body["workers"].get(q)]
    if body["redis"] and not missing:
        body["status"] = "ready"
    elif "detail" not in body:
        body["detail"] = "no worker consumes queue(s): " + ", ".join(missing) if body["redis"] else "Redis down"
    st.ready_cache.update(at=time.monotonic(), body=body)
    return body


@router.get("/readyz", response_model=Ready, responses={503: {"model": Ready}})
async def readyz(st: State) -> Response:
    """Ready when Redis answers and at least one worker consumes each of the extract and predict queues."""
    body = await run_in_threadpool(check_ready, st)
    return JSONResponse(Ready.model_validate(body).model_dump(mode="json"),
                        status_code=200 if body["status"] == "ready" else 503)  # fmt: skip


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request) -> Response:
    """Prometheus text format: HTTP requests, queue depths, task durations and failures, active jobs."""
    data = await run_in_threadpool(generate_latest, request.app.state.registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)
