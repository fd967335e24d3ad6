"""Every error the API answers is JSON `{"detail": "..."}` (the `Problem` schema), whatever raised it.

- `Refused(status, detail)` from the input checks: that status and detail.
- Request validation (FastAPI): 422 with one line per problem, `field: message`.
- Starlette's own errors (unknown route 404, wrong method 405): their status, JSON.
- Broker or job store unavailable (Redis down, restarting, loading its data, out of memory, a kombu publish that
  failed): 503 with `Retry-After`, so a client or a load balancer retries instead of giving up.
- Anything else: 500 JSON (logged with its traceback), never a text/plain page.

`responses(...)` gives the OpenAPI entries for these answers, so each route documents exactly what it returns.
"""

from __future__ import annotations

import logging
from typing import Any

import redis.exceptions as rx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from api.schemas import Problem
from api.security import Refused
from workers.celery_app import UNAVAILABLE, is_unavailable

log = logging.getLogger("videotag.api")

RETRY_AFTER_S = 5
def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def unavailable(exc: BaseException) -> JSONResponse:
    """503 for a broker/store failure; the client-facing text names no host, socket or path."""
    full = isinstance(exc, rx.OutOfMemoryError) or str(exc).startswith("OOM")
    what = "the job store is full (Redis maxmemory reached)" if full else "the job store / broker is unavailable"
    log.warning("503: %s: %s: %s", what, type(exc).__name__, exc)
    return problem(503, f"{what}; retry in a few seconds", {"Retry-After": str(RETRY_AFTER_S)})


def install(app: FastAPI) -> None:
    """Register the handlers on `app`."""

    @app.exception_handler(Refused)
    async def refused(_: Request, exc: Refused) -> JSONResponse:
        return problem(exc.status, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        msgs = [f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return problem(422, "; ".join(msgs) or "invalid request")

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    for cls in UNAVAILABLE:
        app.add_exception_handler(cls, _broker_down)
    app.add_exception_handler(rx.ResponseError, _redis_reply)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        # Runs in Starlette's outermost middleware; the exception is re-raised after this answer is sent, so the
        # server logs its traceback as usual.
        if is_unavailable(exc):
            return unavailable(exc)
        return problem(500, f"internal error ({type(exc).__name__}); the server log has the details")


async def _broker_down(_: Request, exc: Exception) -> JSONResponse:
    return unavailable(exc)


async def _redis_reply(_: Request, exc: Exception) -> JSONResponse:
    """A Redis error reply: transient ones (OOM, MISCONF, LOADING, …) are 503, the rest a 500."""
    if is_unavailable(exc):
        return unavailable(exc)
    log.error("Redis error reply: %s", exc, exc_info=exc)
    return problem(500, "internal error (Redis refused a command); the server log has the details")


# ---- OpenAPI ------------------------------------------------------------------------------------------------
DESCRIPTIONS = {
    400: "Malformed input (not JSON, a bad multipart body, a malformed URL or path)",
    401: "Missing or invalid API key",
    403: "Path outside the allowed roots, URL refused, or this kind of input disabled",
    404: "No such job, batch or model",
    409: "Conflict with the resource's state",
    413: "Body, upload or batch larger than the configured limit (the answer quotes it)",
    415: "Unsupported Content-Type (the answer lists the accepted ones)",
    422: "The request is well-formed but invalid (the answer names each field and rule)",
    500: "Unexpected server error",
    503: "Broker / job store unavailable: retry after `Retry-After` seconds",
}
RETRY_AFTER_HEADER = {"Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}}


def responses(*codes: int, **override: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries with the Problem body for `codes` (descriptions overridable as `_409="..."`)."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"model": Problem, "description": override.get(f"_{code}", DESCRIPTIONS[code])}
        if code == 503:
            entry["headers"] = RETRY_AFTER_HEADER
        out[code] = entry
    return out
