"""Errors are JSON, whatever fails: the broker/job store down answers 503 with Retry-After on every route (never a
bare 500), an upload whose job could not be created is deleted, and the service recovers once Redis is back.

The Redis-down test runs the real API (uvicorn, `Service` without workers) on a Redis server that the test owns,
so that it can kill it (SIGKILL, as in the fault run of issue 11) and start it again on the same data.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
import redis.exceptions as rx
from fastapi import FastAPI
from kombu.exceptions import OperationalError
from service_helpers import free_port, make_clips, make_weights, service_settings

from api import errors
from api.schemas import JobOut, Problem, Ready
from workers.redis_server import EmbeddedRedis

KEY = "errors-key"


def test_handlers_map_failures_to_json():
    app = FastAPI()
    errors.install(app)
    raised = {
        "down": rx.ConnectionError("Error 111 connecting to /secret/redis.sock. Connection refused."),
        "timeout": rx.TimeoutError("Timeout reading from socket"),
        "loading": rx.BusyLoadingError("Redis is loading the dataset in memory"),
        "oom": rx.OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'."),
        "misconf": rx.ResponseError("MISCONF Redis is configured to save RDB snapshots, but it cannot persist"),
        "publish": OperationalError("[Errno 111] Connection refused"),
        "wrongtype": rx.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        "bug": RuntimeError("a bug"),
    }

    def raiser(exc: Exception):
        def route() -> None:
            raise exc

        return route

    for name, exc in raised.items():
        app.add_api_route(f"/{name}", raiser(exc))

    async def check() -> None:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            for name in ("down", "timeout", "loading", "oom", "misconf", "publish"):
                r = await c.get(f"/{name}")
                assert r.status_code == 503 and r.headers["retry-after"] == str(errors.RETRY_AFTER_S), name
                assert r.headers["content-type"] == "application/json"
                detail = Problem.model_validate(r.json()).detail
                assert "retry in a few seconds" in detail and "/secret" not in detail, name
            assert "is full" in (await c.get("/oom")).json()["detail"]
            for name in ("wrongtype", "bug"):
                r = await c.get(f"/{name}")
                assert r.status_code == 500 and r.headers["content-type"] == "application/json", name
                assert Problem.model_validate(r.json()).detail.startswith("internal error")
            r = await c.get("/nowhere")
            assert r.status_code == 404 and r.json() == {"detail": "Not Found"}
            r = await c.post("/bug")
            assert r.status_code == 405 and r.json() == {"detail": "Method Not Allowed"}
            assert r.headers["allow"] == "GET"

    asyncio.run(check())


@pytest.fixture
def api_on_own_redis(tmp_path, default_weights):
    """The API (no workers) on a Redis server this test starts, kills and restarts."""
    from workers.supervisor import Service

    server = EmbeddedRedis(tmp_path / "redis")
    url = server.start()
    root = tmp_path / "root"
    make_clips(root / "clips", 1, prefix="err")
    settings = service_settings(tmp_path, make_weights(tmp_path / "w", default_weights), redis_url=url,
                                api_keys=[KEY], path_roots=[root], tag_timeout_s=2.0)  # fmt: skip
    svc = Service(settings, port=free_port(), workers=False).start()
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(svc.api_url + "/healthz", timeout=3).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "API did not start"
        time.sleep(0.2)
    try:
        yield svc, server, tmp_path, root
    finally:
        svc.stop(worker_grace=5)
        server.stop()


def test_redis_down_answers_503_everywhere_and_recovers(api_on_own_redis):
    svc, server, tmp, root = api_on_own_redis
    c = httpx.Client(base_url=svc.api_url, headers={"X-API-Key": KEY}, timeout=30)
    clip = (root / "clips" / "err_000.mp4").read_bytes()
    uploads = Path(svc.settings.uploads_dir)
    assert c.post("/v1/jobs", json={"path": "clips/err_000.mp4"}).status_code == 202  # up: accepted

    server.proc.kill()  # SIGKILL: no SHUTDOWN, the socket file stays behind
    server.proc.wait()
    calls = [
        ("GET", "/v1/jobs/jnope", {}),
        ("GET", "/v1/jobs/jnope/frames", {}),
        ("GET", "/v1/batches/bnope", {}),
        ("GET", "/v1/batches/bnope/results", {}),
        ("POST", "/v1/jobs", {"json": {"path": "clips/err_000.mp4"}}),
        ("POST", "/v1/jobs", {"files": {"file": ("upload.mp4", clip)}}),
        ("POST", "/v1/tag", {"files": {"file": ("upload.mp4", clip)}}),
        ("POST", "/v1/tag", {"content": clip, "headers": {"Content-Type": "video/mp4"}}),
        ("POST", "/v1/batches", {"json": {"paths": ["clips/err_000.mp4"]}}),
        ("POST", "/v1/batches/bnope/repredict", {"json": {"model": "tiny_pool"}}),
    ]
    for method, path, kw in calls:
        t0 = time.monotonic()
        r = c.request(method, path, **kw)
        assert r.status_code == 503, (method, path, r.status_code, r.text)
        assert r.headers["content-type"] == "application/json" and r.headers["retry-after"].isdigit(), path
        detail = Problem.model_validate(r.json()).detail
        assert "unavailable" in detail and "sock" not in detail and str(tmp) not in detail, detail
        assert time.monotonic() - t0 < 10, (path, "a 503 must come quickly")
    # uploads whose job could not be created are gone
    assert not [p for p in uploads.rglob("*") if p.is_file()], list(uploads.rglob("*"))
    # readiness says so, in JSON, without the socket path; liveness is not readiness
    r = httpx.get(svc.api_url + "/readyz")
    ready = Ready.model_validate(r.json())
    assert r.status_code == 503 and not ready.redis and ready.status == "not_ready" and "Redis" in ready.detail
    assert str(tmp) not in r.text and "sock" not in r.text
    verbose = Ready.model_validate(c.get("/readyz", params={"verbose": "true"}).json())
    assert verbose.error  # the operator's view has the error as raised
    assert "videotag_redis_up 0.0" in c.get("/metrics").text

    server.start()  # same data directory: the AOF brings the first job back
    deadline = time.monotonic() + 20
    while c.get("/v1/jobs/jnope").status_code != 404:
        assert time.monotonic() < deadline, "API did not recover after Redis came back"
        time.sleep(0.5)
    r = c.post("/v1/jobs", files={"file": ("vidéo.mp4", clip)})
    assert r.status_code == 202 and JobOut.model_validate(r.json()).filename == "vidéo.mp4"
