"""The two Celery tasks. Each is a few lines around the same pipeline functions the CLI uses.

`extract(job_id)` (queue `extract`) -> features location dict -> `predict(location, job_id)` (queue `predict`):
extract publishes its job's predict message itself, inside its error handling and before its own late ack.
Messages carry only ids and the small location dict. Failure policy (`_guard`):
  - bad input (VideoError) and model/store mismatches are permanent: recorded on the job at once, no retry;
  - transient I/O errors (OSError, Redis connection errors) are retried with exponential backoff, then recorded;
    an OSError no retry can fix (permission denied, read-only file system) is recorded at once (`permission_denied`);
  - the soft time limit records a `timeout` failure; the hard one is recorded by the worker's main process.
The job's terminal state is written exactly once (`JobStore.record`), so redelivery never duplicates a result.
Retention: an upload is deleted once its features are stored (after its preview strip is cached), or when its job
fails; records expire after `record_ttl_s` (`workers.jobstore`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
from celery import Task
from celery.exceptions import Ignore, SoftTimeLimitExceeded
from celery.signals import worker_process_init, worker_ready
from celery.worker.request import Request

from videotag.core.errors import ManifestError, ModelMismatchError, StageTimeout, StoreError, VideoError
from videotag.core.settings import Settings, get_settings
from workers.celery_app import TASKS, app, job_id_of, redis_url, signature
from workers.jobstore import Job, JobStore

log = logging.getLogger("videotag.workers")
MAX_RETRIES = 4
TRANSIENT = (OSError, redis.ConnectionError, redis.TimeoutError)  # VideoError is not an OSError
# OSErrors that no retry can fix: no permission (EACCES, EPERM), a read-only file system (EROFS)
NOT_TRANSIENT_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
# StageTimeout: our own limit where the pool cannot enforce Celery's (threads)
PERMANENT_CODES = {ModelMismatchError: "model_mismatch", ManifestError: "model_missing", StoreError: "store_error",
                   StageTimeout: "timeout"}  # fmt: skip

_JOBSTORE: JobStore | None = None


def jobstore() -> JobStore:
    """This process's job store client (created lazily, i.e. after the pool forked)."""
    global _JOBSTORE
    if _JOBSTORE is None:
        _JOBSTORE = JobStore.from_url(redis_url(get_settings()))
    return _JOBSTORE


class _Request(Request):
    def on_timeout(self, soft: bool, timeout: float) -> None:
        super().on_timeout(soft, timeout)
        if not soft:  # the hard limit killed the pool process: record it here, in the main process
            stage = self.task_name.rsplit(".", 1)[-1]
            err = {"code": "timeout", "reason": f"{stage} exceeded the hard time limit of {timeout:.0f} s",
                   "stage": stage}  # fmt: skip
            with contextlib.suppress(Exception):
                jobstore().record(job_id_of(self.id), error=err)
                jobstore().observe_task(stage, float(timeout), ok=False, code="timeout")


class VideotagTask(Task):
    Request = _Request
    acks_late = True
    reject_on_worker_lost = True
    max_retries = MAX_RETRIES

    def on_failure(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict, einfo: Any) -> None:
        """Anything that escaped `_guard` (e.g. the soft time limit striking between two statements of ours):
        the message is acked as failed, so record the job's failure here rather than leave it unfinished."""
        stage = self.name.rsplit(".", 1)[-1]
        code = "timeout" if isinstance(exc, SoftTimeLimitExceeded) else "internal_error"
        reason = (f"{stage} exceeded the soft time limit of {self.soft_time_limit or app.conf.task_soft_time_limit} s"
                  if code == "timeout" else f"{type(exc).__name__}: {exc}")  # fmt: skip
        try:
            st = jobstore()
            job = st.get(job_id_of(task_id))
            st.observe_task(stage, 0.0, ok=False, code=code)
            if job is not None and st.record(job.id, error={"code": code, "reason": reason, "stage": stage},
                                             timings=job.timings) == 2:  # fmt: skip
                finalize_batch(job.batch_id)
            if job is not None:
                discard_upload(job)
        except Exception:  # noqa: BLE001 - Redis gone too: resume re-enqueues the job at the next start
            log.exception("could not record the failure of %s", task_id)


def _begin(job_id: str, stage: str, **fields: Any) -> Job:
    """Load the job; stop quietly (Ignore: acked, chain not continued) if it is unknown or already finished."""
    job = jobstore().get(job_id)
    if job is None or job.terminal:
        log.info("%s %s: %s, nothing to do", stage, job_id, "unknown job" if job is None else job.status)
        raise Ignore()
    jobstore().advance(job_id, **fields)
    jobstore().bump_attempts(job_id)
    return job


def _not_transient(e: BaseException) -> bool:
    return isinstance(e, PermissionError) or (isinstance(e, OSError) and e.errno in NOT_TRANSIENT_ERRNOS)


def _fail(job: Job, stage: str, code: str, reason: str, seconds: float) -> None:
    """Record a stage's permanent failure on its job (and finish its batch when it was the last item)."""
    jobstore().observe_task(stage, seconds, ok=False, code=code)
    rc = jobstore().record(job.id, error={"code": code, "reason": reason, "stage": stage}, timings=job.timings)
    discard_upload(job)  # nothing will read it again
    if rc == 2:
        finalize_batch(job.batch_id)


def discard_upload(job: Job, settings: Settings | None = None) -> bool:
    """Delete an uploaded job's file (its folder `uploads_dir/<job_id>/`); never a path or URL input, nor
    anything outside the uploads directory. True when something was deleted."""
    if getattr(job, "input", None) != "upload" or not getattr(job, "source", None):
        return False
    uploads = Path((settings or get_settings()).uploads_dir).resolve()
    src = Path(job.source).resolve()
    if uploads not in src.parents:
        log.warning("upload %s of %s is outside %s: left in place", src, job.id, uploads)
        return False
    target = src.parent if src.parent != uploads else src  # uploads_dir/<job_id>/<name>: the whole folder
    existed = target.exists()
    try:
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    except OSError as e:
        log.warning("could not delete upload %s: %s", target, e)
        return False
    return existed


def _keep_preview_and_discard_upload(job: Job, settings: Settings) -> None:
    """Features stored: cache the upload's preview strip (the page's frames), then delete the upload."""
    if job.input != "upload":
        return
    try:
        from videotag.thumbnails import thumbnails, thumbs_dir

        thumbnails(job.source, thumbs_dir(settings, job.id))
    except Exception as e:  # noqa: BLE001 - a preview is a nicety: the upload goes either way
        log.info("no preview strip for %s: %s: %s", job.id, type(e).__name__, e)
    discard_upload(job, settings)


@contextlib.contextmanager
def _guard(task: Task, job: Job, stage: str, observe: bool = True) -> Iterator[None]:
    """Classify what the stage raised: record permanent failures, retry transient ones with backoff."""
    t0 = time.monotonic()
    try:
        yield
    except VideoError as e:  # bad input: fail fast, with the pipeline's code and reason
        log.warning("%s %s: %s", stage, job.id, e)
        _fail(job, stage, e.code, e.reason, time.monotonic() - t0)
        raise Ignore() from None
    except SoftTimeLimitExceeded:
        limit = task.soft_time_limit or app.conf.task_soft_time_limit
        _fail(job, stage, "timeout", f"{stage} exceeded the soft time limit of {limit} s", time.monotonic() - t0)
        raise Ignore() from None
    except tuple(PERMANENT_CODES) as e:
        code = next(c for t, c in PERMANENT_CODES.items() if isinstance(e, t))
        log.warning("%s %s: %s", stage, job.id, e)
        _fail(job, stage, code, str(e), time.monotonic() - t0)
        raise Ignore() from None
    except TRANSIENT as e:
        if _not_transient(e):  # e.g. a data volume this user may not write: retrying cannot help, say so now
            log.error("%s %s: %s: %s (not retried)", stage, job.id, type(e).__name__, e)
            reason = (f"{type(e).__name__}: {e} (not retried: the worker runs as uid {os.getuid()}; check the owner "
                      "and mode of the data directories)")  # fmt: skip
            _fail(job, stage, "permission_denied", reason, time.monotonic() - t0)
            raise Ignore() from None
        retries = task.request.retries
        if retries < task.max_retries:
            countdown = min(60.0, 2.0 * 2**retries) * random.uniform(0.8, 1.2)
            log.warning("%s %s: transient %s (%s); retry %d in %.1f s", stage, job.id, type(e).__name__, e,
                        retries + 1, countdown)  # fmt: skip
            jobstore().observe_task(stage, time.monotonic() - t0, ok=False, code="retry")
            raise task.retry(exc=e, countdown=countdown) from None
        _fail(job, stage, "io_error", f"{type(e).__name__}: {e} (after {retries} retries)", time.monotonic() - t0)
        raise Ignore() from None
    except Exception as e:  # a bug or an unforeseen input: record it with its type, keep the traceback in the log
        log.exception("%s %s failed", stage, job.id)
        _fail(job, stage, "internal", f"{type(e).__name__}: {e}", time.monotonic() - t0)
        raise Ignore() from None
    if observe:
        jobstore().observe_task(stage, time.monotonic() - t0, ok=True)


@worker_process_init.connect
def _warm_up_process(**_: Any) -> None:
    """Prefork: load this pool process's models right after the fork (never before: ORT sessions and threads
    don't survive fork), so the first job does not pay for imports and session creation."""
    if os.environ.get("VIDEOTAG_WORKER_POOL", "prefork") == "prefork":
        _warm_up()


@worker_ready.connect
def _warm_up_threads(**_: Any) -> None:
    """Threads pool: the worker process itself runs the tasks; warm it up once it is ready."""
    if os.environ.get("VIDEOTAG_WORKER_POOL") == "threads":
        _warm_up()


def _warm_up() -> None:
    """Models, the stage-1 engine and the stage-2 batcher of this process. Failures are only logged: the first
    task then reports the real error on the job."""
    queues = os.environ.get("VIDEOTAG_WORKER_QUEUES", "")
    if not queues:
        return
    try:
        from videotag import pipeline

        settings = get_settings()
        if "extract" in queues:
            pipeline.get_engine(settings)
        if "predict" in queues:
            pipeline.get_predictor(settings)
            if settings.predict_batch > 1:
                pipeline.get_batcher(settings)
    except Exception as e:  # noqa: BLE001
        log.warning("model warm-up failed (%s: %s); tasks will report it", type(e).__name__, e)


@app.task(name=TASKS["extract"], bind=True, base=VideotagTask)
def extract(self: Task, job_id: str) -> dict:
    """Stage 1: decode + sample + backbone -> one HDF5 shard. Returns the features location (JSON dict)."""
    settings = get_settings()
    started = time.time()
    job = _begin(job_id, "extract", status="extracting", extract_started=started)
    if job.location and Path(job.location["path"]).is_file():  # redelivered after stage 1 finished
        _keep_preview_and_discard_upload(job, settings)  # in case the first run died before it did
        _hand_off(self, job, job.location)
        return job.location
    from videotag.pipeline import extract_to_store

    with _guard(self, job, "extract"):
        loc = extract_to_store(job.source, settings.features_dir, settings, model=job.model, video_id=job.video_id,
                               public_urls_only=not settings.allow_private_urls,
                               timeout_s=settings.task_soft_time_limit_s)  # fmt: skip
    timings = {"queue_extract_s": started - job.created, "extract_s": time.time() - started,
               **{f"extract.{k}": float(v) for k, v in (loc.get("timings") or {}).items()}}  # fmt: skip
    location = {k: loc[k] for k in ("path", "video_id", "source", "num_frames") if k in loc}
    jobstore().advance(job_id, status="extracted", extract_finished=time.time(), location=location,
                    video_id=location.get("video_id", ""), timings=timings)  # fmt: skip
    # after the location is recorded: a redelivered message then finds the features, not a missing upload
    _keep_preview_and_discard_upload(job, settings)
    _hand_off(self, job, location)
    return location


def _hand_off(task: Task, job: Job, location: dict) -> None:
    """Publish this job's predict message before extract's own message is acked (late ack): if the publish
    fails, the transient-error path retries extract, which finds the features stored and publishes again.
    (A Celery chain would publish after the task body, outside any handler: a failure there loses the job.)"""
    with _guard(task, job, "extract", observe=False):
        signature(job.id, "predict", location).apply_async()


@app.task(name=TASKS["predict"], bind=True, base=VideotagTask)
def predict(self: Task, location: dict, job_id: str) -> None:
    """Stage 2 on stored features; records the job's result exactly once."""
    settings = get_settings()
    started = time.time()
    job = _begin(job_id, "predict", status="predicting", predict_started=started)
    from videotag.pipeline import predict_from_store

    with _guard(self, job, "predict"):
        result = predict_from_store(
            location, settings, model=job.model, topk=job.topk, threshold=job.threshold, lang=job.lang
        )
    now = time.time()
    queued_since = job.extract_finished or job.created
    result.timings = {**job.timings, **{f"predict.{k}": v for k, v in result.timings.items()},
                      "queue_predict_s": started - queued_since, "predict_s": now - started,
                      "total_s": now - job.created}  # fmt: skip
    if jobstore().record(job_id, result=result, timings=result.timings) == 2:
        finalize_batch(job.batch_id)


def finalize_batch(batch_id: str | None, settings: Settings | None = None, force: bool = False) -> Path | None:
    """Write a complete batch's results (results.jsonl + one VideoTag JSON per video) once, under results_dir."""
    if not batch_id:
        return None
    settings = settings or get_settings()
    st = jobstore()
    info = st.batch(batch_id)
    if info is None or info["status"] != "complete" or (info["results_dir"] and not force):
        return Path(info["results_dir"]) if info and info["results_dir"] else None
    if not st.claim(f"results:{batch_id}", ttl_s=600):
        return None
    try:
        from videotag.pipeline import write_results

        jobs = st.get_many(st.batch_items(batch_id))
        out = Path(settings.results_dir).resolve() / batch_id
        write_results((j.video_result() for j in jobs if j is not None), out)
        st.set_results_dir(batch_id, str(out))
        st.expire_batch(batch_id)  # again, in case the writer of the last item died before it did
        log.info("batch %s complete: results in %s", batch_id, out)
        return out
    finally:
        st.release(f"results:{batch_id}")
