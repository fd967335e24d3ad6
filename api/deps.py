"""Shared per-app state and FastAPI dependencies (settings, job store, API-key check)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, Header, Request

from api.security import check_api_key
from videotag.jobs import JobStore
from videotag.settings import Settings

MAX_JSON_BYTES = 64 * 1024 * 1024  # JSON/text bodies (a filelist of ~500k paths); uploads have their own limit


@dataclass
class AppState:
    settings: Settings
    store: JobStore  # sync client: used from the thread pool
    aredis: aioredis.Redis  # async client: blocking waits without holding a thread
    ready_cache: dict = field(default_factory=dict)


def state(request: Request) -> AppState:
    return request.app.state.vt


def require_api_key(
    request: Request, x_api_key: Annotated[str | None, Header(description="API key (when the server has keys)")] = None
) -> None:
    check_api_key(state(request).settings.api_keys, x_api_key)


State = Annotated[AppState, Depends(state)]
