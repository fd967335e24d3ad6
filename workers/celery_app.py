"""The Celery application and every Redis/Celery/kombu message detail, in one place.

Redis broker, JSON only, late acks, one prefetched message per process. Here and only here: the queue names and
the routing of the two stage tasks, how a job's stage message is built and published (`signature`, `enqueue`),
and what is read from or written to the broker's own keys (`queue_depths`, `queued_job_ids`, `restore_unacked`,
`workers_by_queue`). The job records themselves live in `workers.jobstore`; the tasks in `workers.tasks`.

The broker URL comes from `Settings.redis_url` (`VIDEOTAG_REDIS_URL`), else from the `service.json` that a
running `videotag serve` writes into its data dir (so `videotag worker` / `submit` on the same machine find the
embedded Redis). Celery's own result backend is off: job state lives in our records (`workers.jobstore`),
because Celery reports PENDING for unknown ids and would keep a second copy of every result.
"""

from __future__ import annotations

import json
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import redis
import redis.exceptions as rx
from celery import Celery, Signature
from celery.worker.consumer import Consumer as _Consumer
from kombu.exceptions import OperationalError
from kombu.transport import redis as _kombu_redis

from videotag.core.settings import Settings, get_settings

SERVICE_FILE = "service.json"
QUEUES = ("extract", "predict")
# Stage -> Celery task name; each stage's task is routed to the queue of the same name.
TASKS = {"extract": "videotag.extract", "predict": "videotag.predict"}
# Redis errors that mean "not now" rather than "never": the server is down, restarting, replaying its AOF,
# full (noeviction refuses writes) or refusing writes because it cannot persist.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    rx.ConnectionError,  # includes BusyLoadingError (LOADING) and AuthenticationError-free connection failures
    rx.TimeoutError,
    rx.OutOfMemoryError,
    rx.ReadOnlyError,
    rx.MasterDownError,
    rx.TryAgainError,
    OperationalError,  # kombu/Celery: a message could not be published
    ConnectionError,  # OSError family: refused / reset while talking to the broker
)
_TRANSIENT_REPLIES = ("MISCONF", "LOADING", "OOM", "READONLY", "MASTERDOWN", "TRYAGAIN")


def is_unavailable(exc: BaseException) -> bool:
    """True when `exc` means the broker/job store (Redis) is unavailable for now, not that the request is bad."""
    if isinstance(exc, UNAVAILABLE):
        return True
    return isinstance(exc, rx.ResponseError) and str(exc).startswith(_TRANSIENT_REPLIES)


_PRIORITY_SUFFIXES = [f"\x06\x16{pri}" for pri in (3, 6, 9)]  # kombu's redis priority sub-queues


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
    """Seconds before the broker redelivers an unacked message (longest task + retry room)."""
    return int(settings.task_time_limit_s) + 600


# ---- broker connection: fail fast, reconnect within seconds ---------------------------------------------------
# kombu's defaults wait 2, 4, 6, … up to 30 s between reconnection attempts, so a worker whose Redis restarted
# (`videotag serve` brings a dead embedded Redis back in about a second) sat idle for up to 30 s. Ours: 0.2 s, then
# +0.5 s per attempt, never more than 2 s apart, and forever (a supervisor or orchestrator restarts the rest).
RECONNECT_INTERVALS = {"interval_start": 0.2, "interval_step": 0.5, "interval_max": 2.0}
# redis-py socket settings of the broker connections (workers and publishers): a dead server is noticed at once
# (connection refused/reset), a hung one within the read timeout; kombu's BRPOP waits 1 s, well inside it.
BROKER_SOCKET_OPTIONS = {"socket_connect_timeout": 3.0, "socket_timeout": 10.0, "health_check_interval": 10,
                         "retry_on_timeout": True}  # fmt: skip


class Consumer(_Consumer):
    """Celery's worker consumer with short reconnection intervals (RECONNECT_INTERVALS) instead of up to 30 s."""

    def ensure_connected(self, conn):
        ensure = conn.ensure_connection
        conn.ensure_connection = lambda *a, **kw: ensure(*a, **{**RECONNECT_INTERVALS, **kw})
        return super().ensure_connected(conn)


# ---- kombu: a broker lost with messages in hand must not end the worker ----------------------------------------
# When Redis goes away while a worker holds unacked messages and waits in BRPOP, Celery's consumer tears the
# connection down twice: `collect()` closes the channel, which fails part-way on the dead server (draining the
# BRPOP, deleting the pidbox fanout binding) before the channel is marked closed, then drops the transport's
# client; `close()` closes the same channel again, and kombu's restore of the unacked messages asks the dropped
# client for its host: AttributeError, not a connection error, so Celery logs "Unrecoverable error" and the
# worker exits (kombu 5.7). Seen in the fault test with a threads pool, where messages are almost always in hand.
# Here a channel whose transport is closed says so with a connection error, which the teardown expects and
# ignores; the consumer reconnects. The unacked messages stay in Redis's `unacked` hash, from where the
# visibility timeout (or `videotag serve`'s recovery after restarting its Redis) puts them back in the queue.
_kombu_connparams = _kombu_redis.Channel._connparams


def _connparams_of_an_open_transport(self: _kombu_redis.Channel, asynchronous: bool = False) -> dict:
    if self.connection is None or self.connection.client is None:
        raise rx.ConnectionError("the broker connection was closed (the server went away)")
    return _kombu_connparams(self, asynchronous=asynchronous)


_kombu_redis.Channel._connparams = _connparams_of_an_open_transport


def create_app(settings: Settings | None = None) -> Celery:
    """The Celery app configured from `settings` (broker, JSON only, late acks, limits, routes)."""
    settings = settings or get_settings()
    url = redis_url(settings, required=False)
    app = Celery("videotag", include=["workers.tasks"])
    app.conf.update(
        broker_url=celery_broker_url(url) if url else "redis://unconfigured-set-VIDEOTAG_REDIS_URL:6379/0",
        broker_connection_retry_on_startup=True,
        broker_connection_retry=True,
        broker_connection_max_retries=None,  # a lost broker is retried forever, every <= 2 s (Consumer above)
        broker_connection_timeout=4.0,
        broker_transport_options={"visibility_timeout": visibility_timeout(settings), **BROKER_SOCKET_OPTIONS},
        worker_consumer="workers.celery_app:Consumer",
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
        task_routes={name: {"queue": stage} for stage, name in TASKS.items()},
        task_default_queue="predict",
        # Loading ONNX sessions happens lazily in the first task of each process; give the pool room anyway.
        worker_proc_alive_timeout=60,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_hijack_root_logger=False,
        timezone="UTC",
    )
    return app


app = create_app()


def queue_names(queues: str) -> list[str]:
    """`extract`, `predict` or `extract,predict` -> the queue names (ValueError for anything else)."""
    names = [q.strip() for q in queues.split(",") if q.strip()]
    bad = [q for q in names if q not in QUEUES]
    if not names or bad:
        raise ValueError(f"queues must be extract, predict or both (comma-separated), got {queues!r}")
    return names


def worker_pool(queues: str, decoders: int, predict_batch: int, processes: int | None = None) -> tuple[str, int]:
    """(Celery pool, its size) for a worker of `queues`.

    Several videos in flight share one model in one process: the extract queue with `decoders` > 1 (one shared
    stage-1 engine: cross-video CNN batches) and the predict queue with `predict_batch` > 1 (one MicroBatcher)
    run a threads pool, one thread per video in flight. Otherwise a prefork pool of `processes` (each loads the
    models once; the hard time limit can kill a stuck one). The two exclude each other.
    """
    names = queue_names(queues)
    threads = (decoders if "extract" in names else 0) + (predict_batch if "predict" in names else 0)
    if ("extract" in names and decoders > 1) or ("predict" in names and predict_batch > 1):
        if processes and processes > 1:
            raise ValueError(
                f"{processes} pool processes asked for, but this worker shares one model among {threads} threads "
                f"(decoders {decoders}, predict batch {predict_batch}); processes need decoders 1 (extract) and "
                "predict batch 1 (predict), or run more workers"
            )
        return "threads", threads
    return "prefork", processes or 1


def worker_argv(
    queues: str,
    concurrency: int = 1,
    loglevel: str = "INFO",
    hostname: str | None = None,
    events: bool = False,
    pool: str = "prefork",
) -> list[str]:
    """Arguments for `app.worker_main`: the pool (`worker_pool`) and its size, no gossip/mingle."""
    names = queue_names(queues)
    import os

    argv = [
        "worker",
        "--queues", ",".join(names),
        "--concurrency", str(concurrency),
        "--pool", pool,
        "--loglevel", loglevel,
        "--hostname", hostname or f"{'+'.join(names)}-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
    ]  # fmt: skip
    if events:
        argv.append("--task-events")  # for Flower
    return argv


def restore_unacked(url: str, queues: tuple[str, ...] = QUEUES) -> int:
    """Put messages of `queues` that were delivered but never acked back at the head of their queue, now.

    Only for when no live worker can still hold them: a full restart of `videotag serve` (it owns the embedded
    server and every worker), or its single worker for a queue died. Otherwise kombu restores them itself once
    the visibility timeout has passed. Mirrors kombu's own restore (redis transport: `unacked` hash + index).
    """
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


# ---- publishing: how a job's stage becomes a message (the API, the CLI, resume and the extract task) -------------
def task_id_for(job_id: str, stage: str) -> str:
    """Our task ids are `<job_id>/<stage>/<nonce>`: the job is readable from any message (see queued_job_ids)."""
    return f"{job_id}/{stage}/{uuid.uuid4().hex[:8]}"


def job_id_of(task_id: str) -> str:
    """The job a task id belongs to (inverse of `task_id_for`)."""
    return task_id.split("/", 1)[0]


def signature(job_id: str, stage: str = "extract", location: dict | None = None) -> Signature:
    """The message for one job's stage: extract(job_id), or predict(location, job_id) on stored features."""
    if stage == "predict":
        assert location is not None, "predict needs a features location"
        args: tuple[Any, ...] = (location, job_id)
    elif stage == "extract":
        args = (job_id,)
    else:
        raise ValueError(f"unknown stage {stage!r}")
    return app.signature(TASKS[stage], args=args, immutable=True, task_id=task_id_for(job_id, stage))


def enqueue(items: list[tuple[str, str, dict | None]], redis_url: str | None = None) -> None:
    """Publish [(job_id, stage, location)] over one broker connection: from the app's pool, or to `redis_url`
    (a process that owns a Redis its app is not configured for: `videotag serve`'s supervisor)."""
    with ExitStack() as stack:
        if redis_url is None:
            producer = stack.enter_context(app.producer_or_acquire())
        else:
            conn = stack.enter_context(app.connection_for_write(celery_broker_url(redis_url)))
            producer = stack.enter_context(app.amqp.Producer(conn, auto_declare=False))
        for job_id, stage, location in items:
            signature(job_id, stage, location).apply_async(producer=producer)


# ---- reading the broker's own keys --------------------------------------------------------------------------
def queue_depths(r: redis.Redis) -> dict[str, int]:
    """Messages waiting in each queue (kombu's redis transport keeps a queue as a list of that name)."""
    with r.pipeline(transaction=False) as p:
        for q in QUEUES:
            p.llen(q)
        return dict(zip(QUEUES, (int(n) for n in p.execute()), strict=True))


def queued_job_ids(r: redis.Redis, include_unacked: bool = True) -> set[str]:
    """Job ids that have a message in a broker queue (or, optionally, delivered but not yet acked).

    kombu keeps each message as JSON with the task id in `headers.id`, and our task ids start with the job id,
    so reading the lists (and the `unacked` hash) tells which jobs need no new message.
    """
    ids: set[str] = set()

    def take(payload: Any) -> None:
        try:
            tid = payload["headers"]["id"]
        except (KeyError, TypeError):
            return
        if isinstance(tid, str) and "/" in tid:
            ids.add(job_id_of(tid))

    for name in QUEUES:
        for q in [name] + [name + suffix for suffix in _PRIORITY_SUFFIXES]:
            for start in range(0, int(r.llen(q)), 10_000):
                for raw in r.lrange(q, start, start + 9_999):
                    try:
                        take(json.loads(raw))
                    except ValueError:
                        continue
    if include_unacked:
        for raw in r.hvals("unacked"):
            try:
                take(json.loads(raw)[0])
            except (ValueError, IndexError, TypeError):
                continue
    return ids


def workers_by_queue(timeout: float = 1.0) -> dict[str, list[str]]:
    """Ask the workers over the broker's control channel which of our queues they consume (node names)."""
    replies = app.control.inspect(timeout=timeout).active_queues() or {}
    out: dict[str, list[str]] = {q: [] for q in QUEUES}
    for node, queues in replies.items():
        for q in queues or []:
            if q.get("name") in out:
                out[q["name"]].append(node)
    return {q: sorted(nodes) for q, nodes in out.items()}
