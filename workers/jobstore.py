"""Job and batch records in Redis: the service's own source of truth (Celery's result states are not used).

Keys (prefix `vt:`):
    vt:job:<job_id>          hash  one video's job: input, status, stage timestamps, features location, result/error
    vt:notify:<job_id>       list  one element pushed when the job ends (BLPOP by a waiting API request)
    vt:batch:<batch_id>      hash  total, done, failed, status, model, results_dir, …
    vt:batch:<batch_id>:items list job ids in submission order
    vt:jobs:active           set   job ids not yet done/failed (what `workers.submit.resume` re-enqueues)
    vt:batches:active        set   batch ids not yet complete
    vt:metrics               hash  task counters and duration histograms (read by the API's /metrics)

Retention: a record expires `record_ttl_s` (default a week) after it ends, never while it is live. A job of its
own gets its EXPIRE with its terminal write; a batch item lives as long as its batch: the batch hash, its item
list and every item get theirs when the batch completes (`expire_batch`, also re-applied when its results are
written, so a crash between the two writes leaves nothing for good).

Job status: queued -> extracting -> extracted -> predicting -> done | failed. `done`/`failed` are terminal and
written exactly once by a Lua script (`record`): a second run of a task (redelivery after a worker died,
a resumed batch) finds the job terminal and changes nothing, so no result is ever counted twice.

Only the records live here: broker messages (queues, publishing, unacked deliveries) are `workers.celery_app`'s,
and creating + enqueueing work is `workers.submit`'s.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from videotag.core.results import VideoResult
from videotag.core.settings import get_settings

P = "vt:"
TERMINAL = ("done", "failed")
ACTIVE_JOBS = P + "jobs:active"
ACTIVE_BATCHES = P + "batches:active"
METRICS = P + "metrics"
# Task duration histogram buckets (seconds), shared by the recorder (workers) and the exporter (API).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
_CHUNK = 1000  # ids per Redis pipeline round-trip for bulk operations
BLOCK_S = 2.0  # longest single blocking call (BLPOP); well under the client's socket timeout

# Exactly-once terminal write. KEYS: job, notify, batch ('' = none), active jobs, active batches.
# ARGV: status, result json, error json, finished ts, timings json, job id, batch id, record ttl s (0: none).
# Returns -1 unknown job, 0 already terminal (nothing changed), 1 recorded, 2 recorded and the batch completed.
_RECORD_LUA = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return -1 end
if st == 'done' or st == 'failed' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'result', ARGV[2], 'error', ARGV[3], 'finished', ARGV[4],
           'timings', ARGV[5])
redis.call('SREM', KEYS[4], ARGV[6])
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], 3600)
local ttl = tonumber(ARGV[8]) or 0
if KEYS[3] == '' and ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) end
if KEYS[3] ~= '' then
  redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
  local total = tonumber(redis.call('HGET', KEYS[3], 'total'))
  local done = tonumber(redis.call('HGET', KEYS[3], 'done') or '0')
  local failed = tonumber(redis.call('HGET', KEYS[3], 'failed') or '0')
  if total and done + failed >= total then
    redis.call('HSET', KEYS[3], 'status', 'complete', 'finished', ARGV[4])
    redis.call('SREM', KEYS[5], ARGV[7])
    if ttl > 0 then
      redis.call('EXPIRE', KEYS[3], ttl)
      redis.call('EXPIRE', KEYS[3] .. ':items', ttl)
    end
    return 2
  end
end
return 1
"""

# Non-terminal status change that never overwrites a terminal status. KEYS: job. ARGV: field/value pairs.
_ADVANCE_LUA = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st or st == 'done' or st == 'failed' then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""


def new_id(prefix: str) -> str:
    """A fresh job (`j…`) or batch (`b…`) id."""
    return f"{prefix}{uuid.uuid4().hex[:20]}"


def job_key(job_id: str) -> str:
    """The hash holding one job's record."""
    return f"{P}job:{job_id}"


def batch_key(batch_id: str) -> str:
    """The hash holding one batch's record (its item ids: `<key>:items`)."""
    return f"{P}batch:{batch_id}"


def notify_key(job_id: str) -> str:
    """The list a job's end is pushed to (BLPOP it to wait for the job)."""
    return f"{P}notify:{job_id}"


def _loads(s: str | None) -> Any:
    return json.loads(s) if s else None


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) if obj is not None else ""


@dataclass
class Job:
    """A job record as stored in `vt:job:<id>` (all times are Unix seconds)."""

    id: str
    status: str
    source: str
    input: str  # upload | path | url | features
    kind: str = "job"  # tag | job | item
    stages: str = "extract+predict"  # or "predict" (re-prediction on stored features)
    model: str | None = None
    topk: int | None = None
    threshold: float | None = None
    lang: str | None = None
    video_id: str | None = None
    filename: str | None = None
    batch_id: str | None = None
    index: int | None = None
    created: float = 0.0
    extract_started: float | None = None
    extract_finished: float | None = None
    predict_started: float | None = None
    finished: float | None = None
    attempts: int = 0
    location: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_hash(cls, h: dict[str, str]) -> Job:
        def f(name: str) -> float | None:
            v = h.get(name)
            return float(v) if v else None

        return cls(
            id=h["id"],
            status=h.get("status", "queued"),
            source=h.get("source", ""),
            input=h.get("input", ""),
            kind=h.get("kind", "job"),
            stages=h.get("stages", "extract+predict"),
            model=h.get("model") or None,
            topk=int(h["topk"]) if h.get("topk") else None,
            threshold=float(h["threshold"]) if h.get("threshold") else None,
            lang=h.get("lang") or None,
            video_id=h.get("video_id") or None,
            filename=h.get("filename") or None,
            batch_id=h.get("batch_id") or None,
            index=int(h["index"]) if h.get("index") else None,
            created=float(h.get("created") or 0.0),
            extract_started=f("extract_started"),
            extract_finished=f("extract_finished"),
            predict_started=f("predict_started"),
            finished=f("finished"),
            attempts=int(h.get("attempts") or 0),
            location=_loads(h.get("location")),
            result=_loads(h.get("result")),
            error=_loads(h.get("error")),
            timings=_loads(h.get("timings")) or {},
        )

    def video_result(self) -> VideoResult:
        """The job's VideoResult; a failed job gives ok=False with its error (code, reason)."""
        if self.result:
            return VideoResult.model_validate(self.result)
        err = self.error or {"code": "pending", "reason": f"job is {self.status}"}
        return VideoResult(
            video_id=self.video_id or (self.location or {}).get("video_id", ""),
            source=self.source,
            ok=False,
            error={"code": str(err.get("code", "")), "reason": str(err.get("reason", ""))},
            model=self.model,
            timings=self.timings,
        )


def _job_fields(job: Job) -> dict[str, str]:
    d = {
        "id": job.id,
        "status": job.status,
        "source": job.source,
        "input": job.input,
        "kind": job.kind,
        "stages": job.stages,
        "model": job.model or "",
        "topk": "" if job.topk is None else str(job.topk),
        "threshold": "" if job.threshold is None else repr(job.threshold),
        "lang": job.lang or "",
        "video_id": job.video_id or "",
        "filename": job.filename or "",
        "batch_id": job.batch_id or "",
        "index": "" if job.index is None else str(job.index),
        "created": repr(job.created),
        "attempts": "0",
    }
    if job.location:
        d["location"] = _dumps(job.location)
    return d


class JobStore:
    """Typed access to the records above; one instance per process (redis-py clients are thread-safe)."""

    def __init__(self, r: redis.Redis, record_ttl_s: int | None = None) -> None:
        self.r = r
        # how long a record outlives its end (settings.record_ttl_s unless given; 0 = for good)
        self.record_ttl_s = get_settings().record_ttl_s if record_ttl_s is None else int(record_ttl_s)
        self._record = r.register_script(_RECORD_LUA)
        self._advance = r.register_script(_ADVANCE_LUA)

    @classmethod
    def from_url(cls, url: str, record_ttl_s: int | None = None) -> JobStore:
        return cls(redis.Redis.from_url(url, decode_responses=True, health_check_interval=30), record_ttl_s)

    # ---- creation -------------------------------------------------------------------------------
    def create_job(
        self,
        source: str,
        input: str,
        *,
        kind: str = "job",
        model: str | None = None,
        topk: int | None = None,
        threshold: float | None = None,
        lang: str | None = None,
        video_id: str | None = None,
        filename: str | None = None,
        job_id: str | None = None,
    ) -> Job:
        job = Job(
            id=job_id or new_id("j"),
            status="queued",
            source=source,
            input=input,
            kind=kind,
            model=model,
            topk=topk,
            threshold=threshold,
            lang=lang,
            video_id=video_id,
            filename=filename,
            created=time.time(),
        )
        with self.r.pipeline() as p:
            p.hset(job_key(job.id), mapping=_job_fields(job))
            p.sadd(ACTIVE_JOBS, job.id)
            p.execute()
        return job

    def create_batch(
        self,
        sources: Sequence[str],
        input: str = "path",
        *,
        model: str | None = None,
        topk: int | None = None,
        threshold: float | None = None,
        lang: str | None = None,
        kind: str = "batch",
        parent: str | None = None,
        locations: Sequence[dict[str, Any] | None] | None = None,
        errors: Sequence[dict[str, Any] | None] | None = None,
    ) -> tuple[str, list[str]]:
        """Create a batch and one job per source (ids `<batch_id>.<index>`); nothing is enqueued here.

        For a re-prediction batch (`kind="repredict"`), `locations[i]` is the stored features of item i, and
        `errors[i]` (when the parent item failed) makes item i fail at once with the parent's error.
        """
        if not sources:
            raise ValueError("a batch needs at least one item")
        batch_id = new_id("b")
        now = time.time()
        stages = "predict" if kind == "repredict" else "extract+predict"
        bkey = batch_key(batch_id)
        job_ids = [f"{batch_id}.{i}" for i in range(len(sources))]
        with self.r.pipeline(transaction=False) as p:
            p.hset(
                bkey,
                mapping={
                    "id": batch_id,
                    "kind": kind,
                    "parent": parent or "",
                    "total": len(sources),
                    "done": 0,
                    "failed": 0,
                    "status": "running",
                    "created": repr(now),
                    "finished": "",
                    "model": model or "",
                    "topk": "" if topk is None else str(topk),
                    "threshold": "" if threshold is None else repr(threshold),
                    "lang": lang or "",
                    "results_dir": "",
                },
            )
            p.sadd(ACTIVE_BATCHES, batch_id)
            p.execute()
        for start in range(0, len(sources), _CHUNK):
            with self.r.pipeline(transaction=False) as p:
                for i in range(start, min(start + _CHUNK, len(sources))):
                    job = Job(
                        id=job_ids[i],
                        status="queued",
                        source=sources[i],
                        input="features" if kind == "repredict" else input,
                        kind="item",
                        stages=stages,
                        model=model,
                        topk=topk,
                        threshold=threshold,
                        lang=lang,
                        batch_id=batch_id,
                        index=i,
                        created=now,
                        location=locations[i] if locations else None,
                    )
                    p.hset(job_key(job.id), mapping=_job_fields(job))
                    p.sadd(ACTIVE_JOBS, job.id)
                p.rpush(bkey + ":items", *job_ids[start : start + _CHUNK])
                p.execute()
        if errors:  # items whose features never existed fail now, through the same exactly-once path
            for i, err in enumerate(errors):
                if err:
                    self.record(job_ids[i], error=err)
        return batch_id, job_ids

    # ---- reading --------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        h = self.r.hgetall(job_key(job_id))
        return Job.from_hash(h) if h else None

    def get_many(self, job_ids: Sequence[str]) -> list[Job | None]:
        out: list[Job | None] = []
        for start in range(0, len(job_ids), _CHUNK):
            with self.r.pipeline(transaction=False) as p:
                for jid in job_ids[start : start + _CHUNK]:
                    p.hgetall(job_key(jid))
                out.extend(Job.from_hash(h) if h else None for h in p.execute())
        return out

    def batch(self, batch_id: str) -> dict[str, Any] | None:
        h = self.r.hgetall(batch_key(batch_id))
        if not h:
            return None
        total, done, failed = int(h["total"]), int(h.get("done") or 0), int(h.get("failed") or 0)
        return {
            "batch_id": batch_id,
            "kind": h.get("kind", "batch"),
            "parent": h.get("parent") or None,
            "status": h.get("status", "running"),
            "total": total,
            "done": done,
            "failed": failed,
            "pending": total - done - failed,
            "progress": round((done + failed) / total, 6) if total else 1.0,
            "created": float(h.get("created") or 0),
            "finished": float(h["finished"]) if h.get("finished") else None,
            "model": h.get("model") or None,
            "topk": int(h["topk"]) if h.get("topk") else None,
            "threshold": float(h["threshold"]) if h.get("threshold") else None,
            "lang": h.get("lang") or None,
            "results_dir": h.get("results_dir") or None,
        }

    def batch_items(self, batch_id: str, offset: int = 0, limit: int | None = None) -> list[str]:
        end = -1 if limit is None else offset + limit - 1
        return self.r.lrange(batch_key(batch_id) + ":items", offset, end)

    # ---- state changes --------------------------------------------------------------------------
    def advance(self, job_id: str, **fields: Any) -> bool:
        """Set non-terminal fields (status, stage timestamps, location…); refused once the job is terminal."""
        args: list[str] = []
        for k, v in fields.items():
            args += [k, _dumps(v) if isinstance(v, dict) else ("" if v is None else str(v))]
        return bool(self._advance(keys=[job_key(job_id)], args=args))

    def bump_attempts(self, job_id: str) -> int:
        return int(self.r.hincrby(job_key(job_id), "attempts", 1))

    def record(
        self,
        job_id: str,
        result: VideoResult | None = None,
        error: dict[str, Any] | None = None,
        timings: dict[str, float] | None = None,
    ) -> int:
        """Write the job's terminal state exactly once (and start its record's expiry, or its completed batch's).
        See `_RECORD_LUA` for the return codes."""
        assert (result is None) != (error is None), "exactly one of result / error"
        job = self.r.hmget(job_key(job_id), ["batch_id"])
        batch_id = job[0] or ""
        status = "done" if result is not None else "failed"
        rc = int(
            self._record(
                keys=[job_key(job_id), notify_key(job_id), batch_key(batch_id) if batch_id else "",
                      ACTIVE_JOBS, ACTIVE_BATCHES],
                args=[status, result.model_dump_json() if result is not None else "", _dumps(error),
                      repr(time.time()), _dumps(timings or {}), job_id, batch_id, str(self.record_ttl_s)],
            )
        )  # fmt: skip
        if rc == 2:
            self.expire_batch(batch_id)
        return rc

    def expire_batch(self, batch_id: str) -> bool:
        """Start the expiry of a complete batch's records (hash, item list, every item); False (nothing set)
        while it is still running or when records are kept for good. Idempotent: restarts the countdown."""
        ttl = self.record_ttl_s
        if ttl <= 0 or self.r.hget(batch_key(batch_id), "status") != "complete":
            return False
        items = self.batch_items(batch_id)
        for start in range(0, len(items), _CHUNK):
            with self.r.pipeline(transaction=False) as p:
                for jid in items[start : start + _CHUNK]:
                    p.expire(job_key(jid), ttl)
                p.execute()
        with self.r.pipeline(transaction=False) as p:
            p.expire(batch_key(batch_id), ttl)
            p.expire(batch_key(batch_id) + ":items", ttl)
            p.execute()
        return True

    def failed_items(self, batch_id: str) -> list[dict[str, Any]]:
        """The batch's failed items in submission order: {job_id, index, source, code, reason, stage}."""
        out: list[dict[str, Any]] = []
        ids = self.batch_items(batch_id)
        for start in range(0, len(ids), _CHUNK):
            for job in self.get_many(ids[start : start + _CHUNK]):
                if job is not None and job.status == "failed":
                    err = job.error or {}
                    out.append({"job_id": job.id, "index": job.index, "source": job.source,
                                "code": err.get("code", ""), "reason": err.get("reason", ""),
                                "stage": err.get("stage")})  # fmt: skip
        return out

    def wait(self, job_id: str, timeout: float) -> Job | None:
        """Block until the job is terminal or `timeout` s pass; returns the record either way."""
        job = self.get(job_id)
        if job is None or job.terminal or timeout <= 0:
            return job
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            # short BLPOPs: redis-py's client read timeout (5 s by default) would cut a longer one
            if self.r.blpop([notify_key(job_id)], timeout=min(left, BLOCK_S)):
                break
            job = self.get(job_id)
            if job is None or job.terminal:
                return job
        return self.get(job_id)

    def set_results_dir(self, batch_id: str, path: str) -> None:
        self.r.hset(batch_key(batch_id), "results_dir", path)

    def claim(self, name: str, ttl_s: int) -> bool:
        """A best-effort lock (SET NX EX) for once-only work (results writing, resume)."""
        return bool(self.r.set(f"{P}lock:{name}", str(time.time()), nx=True, ex=ttl_s))

    def release(self, name: str) -> None:
        self.r.delete(f"{P}lock:{name}")

    # ---- metrics --------------------------------------------------------------------------------
    def observe_task(self, task: str, seconds: float, ok: bool, code: str | None = None) -> None:
        """Count one task run in the shared histogram (`vt:metrics`): le buckets, sum, count, failures."""
        with self.r.pipeline(transaction=False) as p:
            p.hincrby(METRICS, f"{task}:count", 1)
            p.hincrbyfloat(METRICS, f"{task}:sum", seconds)
            for le in DURATION_BUCKETS:
                if seconds <= le:
                    p.hincrby(METRICS, f"{task}:le:{le}", 1)
            if not ok:
                p.hincrby(METRICS, f"{task}:fail:{code or 'error'}", 1)
            p.execute()

    def metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.r.hgetall(METRICS).items()}

    def active_job_ids(self) -> list[str]:
        """Ids of jobs not yet done/failed, sorted (what a restart must make sure have a message)."""
        return sorted(self.r.smembers(ACTIVE_JOBS))

    def forget_active(self, job_id: str) -> None:
        """Drop a terminal job from the active set (it was left there by a crash between two writes)."""
        self.r.srem(ACTIVE_JOBS, job_id)

    def counts(self) -> dict[str, int]:
        return {"active_jobs": int(self.r.scard(ACTIVE_JOBS)), "active_batches": int(self.r.scard(ACTIVE_BATCHES))}
