"""Shared per-app state and FastAPI dependencies (settings, job store, API-key check)."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from api.security import Refused, check_api_key
from videotag.core.settings import Settings
from workers.jobstore import JobStore


@dataclass
class AppState:
    settings: Settings
    jobstore: JobStore  # sync client: used from the thread pool
    aredis: aioredis.Redis  # async client: blocking waits without holding a thread
    ready_cache: dict = field(default_factory=dict)


def state(request: Request) -> AppState:
    """This app's AppState (a FastAPI dependency)."""
    return request.app.state.vt


API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="APIKey",
                       description="An API key (when the server has keys). A browser may send it instead as the "
                       "password of HTTP Basic authentication (any user name), which /docs asks for.")  # fmt: skip
KeyHeader = Annotated[str | None, Security(API_KEY)]


def basic_password(request: Request) -> str | None:
    """The password of an `Authorization: Basic` header (how a browser sends the key), else None."""
    scheme, _, param = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user_pass = base64.b64decode(param.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    return user_pass.partition(":")[2] or None


def given_key(request: Request, key: str | None) -> str | None:
    """The API key a request carries: the X-API-Key header, else a Basic-auth password."""
    return key or basic_password(request)


def require_api_key(request: Request, key: KeyHeader = None) -> None:
    """Refuse the request (401) unless it carries one of the server's API keys (when it has any)."""
    check_api_key(state(request).settings.api_keys, given_key(request, key))


def require_api_key_browser(request: Request, key: KeyHeader = None) -> None:
    """Like require_api_key, and a 401 asks a browser for credentials (Basic: any user, the key as password)."""
    try:
        check_api_key(state(request).settings.api_keys, given_key(request, key))
    except Refused as e:
        e.headers = {"WWW-Authenticate": 'Basic realm="videotag", charset="UTF-8"'}
        raise


State = Annotated[AppState, Depends(state)]
