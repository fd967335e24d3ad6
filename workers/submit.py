"""The one submit path: create a job or a batch in the job store, then enqueue its messages.

The API (POST /v1/tag, /v1/jobs, /v1/batches, /v1/batches/{id}/repredict and its start-up `resume`) and the CLI
(`videotag submit`) call these; nothing else creates jobs. A batch's inputs are expanded by `videotag.inputs`, so
a directory means each video in it, exactly as for `videotag tag DIR`, and a filelist may hold `#` comments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from videotag.core.errors import VideotagError
from videotag.core.settings import get_settings
from videotag.inputs import expand_inputs, is_directory, is_url, read_filelist
from workers import celery_app
from workers.jobstore import Job, JobStore
from workers.redis_server import check_room

# A door's policy for sources: (items, what they are: "line" for what was given, "found file" for what a
# directory held) -> the sources to use (normalised), raising the door's own error for refused ones.
SourceCheck = Callable[[list[str], str], list[str]]
_CHUNK = 1000  # messages per enqueue call when resuming


class NothingToSubmit(VideotagError):
    """The inputs name no video (empty, or only directories without video files)."""


def batch_sources(
    inputs: Iterable[str], filelist: str | Path | None = None, check: SourceCheck | None = None
) -> list[str]:
    """Inputs as a door received them -> one source per video.

    `check` (the API's allowed roots and URLs, the CLI's absolute paths) sees what was given before anything is
    listed, then what the directories held (a symlink inside one may lead elsewhere). NothingToSubmit when no
    video is left.
    """
    given = list(inputs) + (read_filelist(filelist) if filelist else [])
    if check is not None:
        given = check(given, "line")
    has_dirs = any(is_directory(s) for s in given)
    sources = expand_inputs(given) if has_dirs else given
    if has_dirs and check is not None:
        sources = check(sources, "found file")
    if not sources:
        raise NothingToSubmit(
            "nothing to submit: no videos given" + (" (the directories hold no video files)" if has_dirs else "")
        )
    return sources


def absolute_paths(items: list[str], _what: str = "line") -> list[str]:
    """The CLI's source check: local paths made absolute (the workers run elsewhere), URLs as given."""
    return [s if is_url(s) else str(Path(s).expanduser().absolute()) for s in items]


def submit_job(
    jobstore: JobStore,
    source: str,
    input: str,
    *,
    kind: str = "job",
    model: str | None = None,
    topk: int | None = None,
    threshold: float | None = None,
    lang: str | None = None,
    filename: str | None = None,
    job_id: str | None = None,
) -> Job:
    """One video: its job record, then its extract message (a job whose message cannot be published is failed at
    once, so that a restart's resume does not run it later on an upload the door has deleted)."""
    check_room(jobstore.r, get_settings().redis_submit_limit)  # Redis nearly full: 503, before anything is written
    job = jobstore.create_job(source, input, kind=kind, model=model, topk=topk, threshold=threshold, lang=lang,
                              filename=filename, job_id=job_id)  # fmt: skip
    try:
        celery_app.enqueue([(job.id, "extract", None)])
    except Exception as e:
        _abandon(jobstore, job.id, e)
        raise
    return job


def _abandon(jobstore: JobStore, job_id: str, exc: Exception) -> None:
    """Fail a recorded job whose message could not be published (best effort: Redis may be down too)."""
    code = "unavailable" if celery_app.is_unavailable(exc) else "submit_failed"
    try:
        jobstore.record(job_id, error={"code": code, "stage": "submit",
                                       "reason": f"the job could not be queued ({type(exc).__name__}); submit again"})
    except Exception:  # noqa: BLE001 - Redis is down too: resume will find the job and fail it as missing
        pass


def submit_batch(
    jobstore: JobStore,
    sources: list[str],
    *,
    model: str | None = None,
    topk: int | None = None,
    threshold: float | None = None,
    lang: str | None = None,
    publish: bool = True,
) -> tuple[str, list[str]]:
    """A batch of sources (from `batch_sources`): the batch and item records, then (unless `publish=False`, for
    a door that publishes later with `publish_extract`) one extract message per item. Returns (batch id, job ids).
    """
    check_room(jobstore.r, get_settings().redis_submit_limit)
    batch_id, job_ids = jobstore.create_batch(sources, "path", model=model, topk=topk, threshold=threshold,
                                              lang=lang)  # fmt: skip
    if publish:
        publish_extract(job_ids)
    return batch_id, job_ids


def publish_extract(job_ids: list[str]) -> None:
    """The extract messages of jobs already recorded (a crash before this is covered by `resume`)."""
    celery_app.enqueue([(j, "extract", None) for j in job_ids])


def submit_repredict(
    jobstore: JobStore,
    parent: str,
    *,
    model: str,
    topk: int | None = None,
    threshold: float | None = None,
    lang: str | None = None,
) -> dict[str, Any]:
    """Stage 2 again, with another model, on a complete batch's stored features: a new batch (returned as
    `JobStore.batch` describes it). Items whose parent never got features fail at once with the parent's error."""
    check_room(jobstore.r, get_settings().redis_submit_limit)
    jobs = jobstore.get_many(jobstore.batch_items(parent))
    sources, locations, errors = [], [], []
    for job in jobs:
        assert job is not None
        sources.append(job.source)
        locations.append(job.location)
        errors.append(
            None
            if job.location
            else {
                "code": (job.error or {}).get("code", "no_features"),
                "stage": "extract",
                "reason": "no stored features: " + (job.error or {}).get("reason", "never extracted"),
            }
        )
    batch_id, job_ids = jobstore.create_batch(sources, kind="repredict", parent=parent, model=model, topk=topk,
                                              threshold=threshold, lang=lang, locations=locations,
                                              errors=errors)  # fmt: skip
    celery_app.enqueue([(j, "predict", loc) for j, loc in zip(job_ids, locations, strict=True) if loc])
    info = jobstore.batch(batch_id) or {}
    if info.get("status") == "complete":  # every item failed upstream: nothing was queued, write results now
        from workers.tasks import finalize_batch

        finalize_batch(batch_id)
        info = jobstore.batch(batch_id) or {}
    return info


def resume(jobstore: JobStore, include_unacked: bool = True, redis_url: str | None = None) -> dict[str, int]:
    """Re-enqueue every unfinished job that has no message in the broker (after a restart).

    A job with its features already stored goes straight to `predict`; others restart at `extract`. Returns
    counts. Safe to run twice (a lock; and a duplicate message only repeats idempotent work, never a result).
    `redis_url`: publish there rather than through this process's Celery app (see `celery_app.enqueue`).
    """
    if not jobstore.claim("resume", ttl_s=300):
        return {"skipped": 1}
    try:
        active = jobstore.active_job_ids()
        pending = celery_app.queued_job_ids(jobstore.r, include_unacked=include_unacked)
        todo: list[tuple[str, str, dict | None]] = []
        stale = 0
        for job in jobstore.get_many([j for j in active if j not in pending]):
            if job is None:
                stale += 1
                continue
            if job.terminal:
                jobstore.forget_active(job.id)
                continue
            if job.location and (job.stages == "predict" or job.status in ("extracted", "predicting")):
                todo.append((job.id, "predict", job.location))
            else:
                todo.append((job.id, "extract", None))
        for start in range(0, len(todo), _CHUNK):
            celery_app.enqueue(todo[start : start + _CHUNK], redis_url=redis_url)
        return {"active": len(active), "in_queue": len(pending), "requeued": len(todo), "stale": stale}
    finally:
        jobstore.release("resume")
