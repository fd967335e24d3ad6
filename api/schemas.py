"""Response (and documented request) schemas. `extra="forbid"` so tests catch any undocumented field."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from videotag.jobs import Job
from videotag.schema import VideoResult

LANG_PATTERN = r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$"
JobStatus = Literal["queued", "extracting", "extracted", "predicting", "done", "failed"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorInfo(_Strict):
    code: str = Field(description="Stable machine-readable code, e.g. missing, not_a_video, truncated, timeout.")
    reason: str = Field(description="What went wrong, where and why.")
    stage: str | None = Field(None, description="extract or predict")


class JobOut(_Strict):
    job_id: str
    status: JobStatus
    kind: str = Field(description="tag (synchronous), job (asynchronous) or item (of a batch)")
    input: str = Field(description="upload, path, url or features")
    source: str
    filename: str | None = None
    model: str | None = None
    lang: str | None = Field(None, description="Language of class names asked for (unset: the model's default).")
    batch_id: str | None = None
    index: int | None = None
    created: float = Field(description="Unix time the job was created.")
    finished: float | None = None
    attempts: int = Field(description="How many times a worker started a stage of this job (redeliveries add).")
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds: queue waits, stages, total.")
    result: VideoResult | None = None
    error: ErrorInfo | None = None

    @classmethod
    def of(cls, job: Job) -> JobOut:
        err = None
        if job.error:
            err = ErrorInfo(code=str(job.error.get("code", "")), reason=str(job.error.get("reason", "")),
                            stage=job.error.get("stage"))  # fmt: skip
        return cls(
            job_id=job.id,
            status=job.status,  # type: ignore[arg-type]
            kind=job.kind,
            input=job.input,
            source=job.source,
            filename=job.filename,
            model=job.model,
            lang=job.lang,
            batch_id=job.batch_id,
            index=job.index,
            created=job.created,
            finished=job.finished,
            attempts=job.attempts,
            timings={k: float(v) for k, v in job.timings.items()},
            result=VideoResult.model_validate(job.result) if job.result else None,
            error=err,
        )


class BatchOut(_Strict):
    batch_id: str
    kind: Literal["batch", "repredict"]
    parent: str | None = Field(None, description="For a re-prediction: the batch whose features it reuses.")
    status: Literal["running", "complete"]
    total: int
    done: int
    failed: int
    pending: int
    progress: float = Field(description="(done + failed) / total, 0..1")
    created: float
    finished: float | None = None
    model: str | None = None
    topk: int | None = None
    threshold: float | None = None
    lang: str | None = None
    results_dir: str | None = Field(None, description="Where results.jsonl + per-video JSON were written.")


class BatchItem(_Strict):
    index: int
    job_id: str
    source: str
    status: JobStatus
    result: VideoResult | None = None
    error: ErrorInfo | None = None


class BatchResults(_Strict):
    batch_id: str
    offset: int
    limit: int
    total: int
    items: list[BatchItem]


class Frame(_Strict):
    index: int = Field(description="Decoded frame index in the video.")
    data_url: str = Field(description="data:image/jpeg;base64,…")


class FramesOut(_Strict):
    job_id: str
    frames: list[Frame]


class Health(_Strict):
    status: Literal["ok"]


class Ready(_Strict):
    status: Literal["ready", "not_ready"]
    redis: bool
    workers: dict[str, list[str]] = Field(description="queue -> worker node names consuming it")
    detail: str | None = None


class Problem(_Strict):
    detail: str


class InputJSON(BaseModel):
    """JSON body of POST /v1/tag and /v1/jobs: exactly one of url / path."""

    url: str | None = None
    path: str | None = None
    model: str | None = None
    topk: int | None = Field(None, ge=1, le=1000)
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    lang: str | None = Field(
        None, pattern=LANG_PATTERN, description="Language of class names, e.g. en or zh (unset: the model's default)."
    )


class BatchJSON(BaseModel):
    """JSON body of POST /v1/batches: `paths` (list) or `filelist` (text, one path per line)."""

    paths: list[str] | None = None
    filelist: str | None = None
    model: str | None = None
    topk: int | None = Field(None, ge=1, le=1000)
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    lang: str | None = Field(
        None, pattern=LANG_PATTERN, description="Language of class names, e.g. en or zh (unset: the model's default)."
    )


class RepredictJSON(BaseModel):
    model: str
    topk: int | None = Field(None, ge=1, le=1000)
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    lang: str | None = Field(
        None, pattern=LANG_PATTERN, description="Language of class names, e.g. en or zh (unset: the model's default)."
    )


class ModelInfo(BaseModel):
    """An installed model (from its manifest; more fields may be added)."""

    model_config = ConfigDict(extra="allow")
    name: str
    kind: str
    architecture: str | None = None
    classes: int | None = None
    languages: list[str] = Field(default_factory=list)
    default_language: str | None = None
    size_bytes: int = 0


class AvailableModel(_Strict):
    name: str
    installs: str
    needs: str
    description: str
    installed: bool


class ModelsOut(_Strict):
    default: str = Field(description="The model used when a request names none.")
    installed: list[ModelInfo]
    available: list[AvailableModel] = Field(description="What `videotag setup NAME` can install.")
