"""The Celery application: Redis broker, JSON only, late acks, one prefetched message per process.

The broker URL comes from `Settings.redis_url` (`VIDEOTAG_REDIS_URL`), else from the `service.json` that a
running `videotag serve` writes into its data dir (so `videotag worker` / `submit` on the same machine find the
embedded Redis). Celery's own result backend is off: job state lives in our records (`videotag.jobs`),
because Celery reports PENDING for unknown ids and would keep a second copy of every result.
"""

from __future__ import annotations

import json
from pathlib import Path

from celery import Celery

from videotag.settings import Settings, get_settings

SERVICE_FILE = "service.json"


def service_info(settings: Settings) -> dict | None:
    """What a running `videotag serve` published about itself (Redis URL, API URL, pid), if anything."""
    p = Path(settings.data_dir) / SERVICE_FILE
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def redis_url(settings: Settings | None = None, required: bool = True) -> str | None:
    """redis-py URL of the broker/job store: VIDEOTAG_REDIS_URL, else the local `videotag serve`'s Redis."""
    settings = settings or get_settings()
    if settings.redis_url:
        return settings.redis_url
    info = service_info(settings)
    if info and info.get("redis_url"):
        return str(info["redis_url"])
    if required:
        raise RuntimeError(
            "no Redis configured: set VIDEOTAG_REDIS_URL (e.g. redis://host:6379/0), or start `videotag serve` "
            f"with the same data dir ({Path(settings.data_dir).resolve()}) so its embedded Redis can be found"
        )
    return None


def celery_broker_url(url: str) -> str:
    """redis-py's `unix:///path?db=N` is kombu's `redis+socket:///path?virtual_host=N`; TCP URLs are the same."""
    if url.startswith("unix://"):
        path, _, query = url[len("unix://") :].partition("?")
        db = "0"
        for kv in query.split("&"):
            if kv.startswith("db="):
                db = kv[3:]
        return f"redis+socket://{path}?virtual_host={db}"
    return url


def visibility_timeout(settings: Settings) -> int:
    # A message delivered to a worker that dies is redelivered only after this; it must exceed the longest task
    # (hard limit) plus the longest retry countdown, or a slow task would be delivered twice while running.
    return int(settings.task_time_limit_s) + 600


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    url = redis_url(settings, required=False)
    app = Celery("videotag", include=["workers.tasks"])
    app.conf.update(
        broker_url=celery_broker_url(url) if url else "redis://unconfigured-set-VIDEOTAG_REDIS_URL:6379/0",
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": visibility_timeout(settings)},
        result_backend=None,
        task_ignore_result=True,
        # Only JSON crosses the broker: ids, paths and small dicts, never arrays or pickles.
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        # A task is acknowledged after it ran; a worker killed mid-task gets its message redelivered.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.task_soft_time_limit_s,
        task_time_limit=settings.task_time_limit_s,
        task_routes={"videotag.extract": {"queue": "extract"}, "videotag.predict": {"queue": "predict"}},
        task_default_queue="predict",
        # Loading ONNX sessions happens lazily in the first task of each process; give the pool room anyway.
        worker_proc_alive_timeout=60,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_hijack_root_logger=False,
        timezone="UTC",
    )
    return app


app = create_app()


def worker_argv(
    queues: str, concurrency: int = 1, loglevel: str = "INFO", hostname: str | None = None, events: bool = False
) -> list[str]:
    """Arguments for `app.worker_main`: prefork pool, one process per core by default, no gossip/mingle."""
    names = [q.strip() for q in queues.split(",") if q.strip()]
    bad = [q for q in names if q not in ("extract", "predict")]
    if not names or bad:
        raise ValueError(f"queues must be extract, predict or both (comma-separated), got {queues!r}")
    import os

    argv = [
        "worker",
        "--queues", ",".join(names),
        "--concurrency", str(concurrency),
        "--pool", "prefork",
        "--loglevel", loglevel,
        "--hostname", hostname or f"{'+'.join(names)}-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
    ]  # fmt: skip
    if events:
        argv.append("--task-events")  # for Flower
    return argv


def restore_unacked(url: str, queues: tuple[str, ...] = ("extract", "predict")) -> int:
    """Put messages of `queues` that were delivered but never acked back at the head of their queue, now.

    Only for when no live worker can still hold them: a full restart of `videotag serve` (it owns the embedded
    server and every worker), or its single worker for a queue died. Otherwise kombu restores them itself once
    the visibility timeout has passed. Mirrors kombu's own restore (redis transport: `unacked` hash + index).
    """
    import redis

    r = redis.Redis.from_url(url)
    n = 0
    try:
        for tag, raw in r.hgetall("unacked").items():
            try:
                payload, _exchange, routing_key = json.loads(raw)
            except (ValueError, TypeError):
                continue
            if routing_key not in queues:
                continue
            try:
                payload["headers"]["redelivered"] = True
                payload["properties"]["delivery_info"]["redelivered"] = True
            except (KeyError, TypeError):
                pass
            with r.pipeline() as p:  # MULTI: requeue and forget the delivery atomically
                p.rpush(routing_key, json.dumps(payload))  # workers BRPOP: rpush = next to be delivered
                p.hdel("unacked", tag)
                p.zrem("unacked_index", tag)
                p.execute()
            n += 1
    finally:
        r.close()
    return n
