"""GET /healthz (liveness), /readyz (Redis + workers of both queues), /metrics (Prometheus).

Liveness answers "restart me?": it fails (503 JSON) only for what a restart of this process fixes: the event loop
does not answer at all (the orchestrator's probe times out), or the thread pool that runs every Redis call,
upload and file read is wedged (a no-op does not get a thread within LIVENESS_TIMEOUT_S). It does not look at
Redis or the workers: a broker that is down makes the API answer 503 and `/readyz` not ready (take it out of the
load balancer), but restarting the API would not bring the broker back. (Under `videotag serve` the supervisor
restarts a dead embedded Redis, and exits non-zero if it cannot, so the whole service is restarted.)

With API keys set, /metrics needs one (unless `metrics_public`), and so does the detailed `/readyz?verbose=true`;
the public readiness answer names no host, worker node, socket or path.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import AppState, KeyHeader, State, given_key
from api.errors import RETRY_AFTER_S, responses
from api.schemas import Health, Ready
from api.security import check_api_key
from workers.celery_app import QUEUES, workers_by_queue

router = APIRouter(tags=["health"])
READY_CACHE_S = 2.0
INSPECT_TIMEOUT_S = 1.0
LIVENESS_TIMEOUT_S = 5.0


def _noop() -> bool:
    return True


@router.get("/healthz", response_model=Health,
            responses=responses(503, _503="This process cannot serve (wedged): restart it"))  # fmt: skip
async def healthz(request: Request) -> Response:
    """Liveness: 200 while this process can serve requests (its event loop and its thread pool answer), else 503.
    The broker and the workers are not checked here (see /readyz): a restart of the API would not fix them."""
    detail = None
    if getattr(request.app.state, "vt", None) is None:
        detail = "the application did not finish starting"
    else:
        try:
            await asyncio.wait_for(run_in_threadpool(_noop), LIVENESS_TIMEOUT_S)
        except TimeoutError:
            detail = f"the worker thread pool did not run a no-op within {LIVENESS_TIMEOUT_S:.0f} s (wedged)"
    if detail:
        return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
    return JSONResponse({"status": "ok"})


def check_ready(st: AppState) -> dict[str, Any]:
    """The detailed answer (node names, the error as raised); `public()` makes the one anybody may see.

    Redis is PINGed on every call (cheap, and a dead broker must show at once); only the worker inspection (a
    broadcast over the broker that waits up to INSPECT_TIMEOUT_S) is cached, for READY_CACHE_S."""
    nodes: dict[str, list[str]] = {q: [] for q in QUEUES}
    body: dict[str, Any] = {"status": "not_ready", "redis": False}
    try:
        body["redis"] = bool(st.jobstore.r.ping())
        cached = st.ready_cache
        if cached and time.monotonic() - cached["at"] < READY_CACHE_S:
            nodes = cached["nodes"]
        else:
            nodes = workers_by_queue(INSPECT_TIMEOUT_S)
            st.ready_cache.update(at=time.monotonic(), nodes=nodes)
    except Exception as e:  # noqa: BLE001 - any failure here means "not ready", and the reason is reported
        body["error"] = f"{type(e).__name__}: {e}"
        st.ready_cache.clear()
    missing = [q for q in QUEUES if not nodes.get(q)]
    if body["redis"] and not missing:
        body["status"] = "ready"
    elif not body["redis"]:
        body["detail"] = "the broker / job store (Redis) does not answer"
    elif missing:
        body["detail"] = "no worker consumes queue(s): " + ", ".join(missing)
    else:
        body["detail"] = "the workers could not be asked which queues they consume"
    body["workers"] = {q: len(nodes.get(q, [])) for q in QUEUES}
    body["nodes"] = nodes
    return body


def public(body: dict[str, Any]) -> dict[str, Any]:
    """The readiness body without node names and raw errors: what anybody may see."""
    return {k: v for k, v in body.items() if k not in ("nodes", "error")}


@router.get("/readyz", response_model=Ready, response_model_exclude_none=True,
            responses={503: {"model": Ready, "description": "Not ready (the body says what is missing)"},
                       **responses(401, 422)})  # fmt: skip
async def readyz(
    request: Request,
    st: State,
    key: KeyHeader = None,
    verbose: Annotated[bool, Query(description="Add worker node names and the error text (needs an API key "
                                               "where keys are set).")] = False,  # fmt: skip
) -> Response:
    """Ready when Redis answers and at least one worker consumes each of the extract and predict queues."""
    if verbose:
        check_api_key(st.settings.api_keys, given_key(request, key))
    body = await run_in_threadpool(check_ready, st)
    out = Ready.model_validate(body if verbose else public(body)).model_dump(mode="json", exclude_none=True)
    return JSONResponse(out, status_code=200 if body["status"] == "ready" else 503)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
                             "description": "Prometheus text format"}, **responses(401)})  # fmt: skip
async def metrics(request: Request, st: State, key: KeyHeader = None) -> Response:
    """Prometheus text format: HTTP requests, queue depths, task durations and failures, active jobs.

    Needs an API key where keys are set, unless the server sets `metrics_public`."""
    if not st.settings.metrics_public:
        check_api_key(st.settings.api_keys, given_key(request, key))
    data = await run_in_threadpool(generate_latest, request.app.state.registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)
