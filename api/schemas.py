"""Response (and documented request) schemas. `extra="forbid"` so tests catch any undocumented field."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field, field_validator

from videotag.core.results import VideoResult
from workers.jobstore import Job

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
JobId = Annotated[str, Path(pattern=ID_PATTERN, description="A job id (from a submission, or `<batch_id>.<index>`).")]
BatchId = Annotated[str, Path(pattern=ID_PATTERN, description="A batch id.")]
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
    """Readiness. The public answer says what is missing without naming hosts, sockets or paths; the detailed one
    (`?verbose=true`, with an API key where keys are set) adds the worker node names and the error text."""

    status: Literal["ready", "not_ready"]
    redis: bool = Field(description="The broker / job store answered PING.")
    workers: dict[str, int] = Field(description="queue -> number of workers consuming it")
    detail: str | None = Field(None, description="Why not ready (no host names or paths).")
    nodes: dict[str, list[str]] | None = Field(None, description="verbose only: queue -> worker node names")
    error: str | None = Field(None, description="verbose only: the error met while checking, as raised")


class Problem(_Strict):
    """Every error answer: one human-readable line (several `field: rule` parts for a validation error)."""

    detail: str


# ---- request bodies (validated by hand in the routes: they take JSON, multipart and raw bodies) ---------------
# "" means "the server's default" for model and lang (a web form's empty choice).
LANG_PATTERN = r"^([a-z]{2,3}(-[A-Za-z0-9]{2,8})?)?$"
MODEL_PATTERN = r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,127})?$"
NAMED_MODEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
SOURCE_PATTERN = r"^[^\x00]+$"  # a path or URL: not empty, no NUL byte
URL_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://[^/?#]"
FILELIST_PATTERN = r"^[^\x00]*[^\t\n\r \uFEFF\x00][^\x00]*$"  # a filelist: no NUL byte, a non-blank line

_LANG = Field(None, pattern=LANG_PATTERN, description="Language of class names, e.g. en or zh (unset or empty: the "
              "model's default). Must be one the model has (else 422).")  # fmt: skip
_TOPK = Field(None, ge=1, le=1000, description="How many tags (default: the server's topk).")
_THRESHOLD = Field(None, ge=0.0, le=1.0, description="Drop tags below this probability.")
_MODEL = Field(None, pattern=MODEL_PATTERN, description="An installed predictor (unset or empty: the server's "
               "default; unknown: 404).")  # fmt: skip


def _integral(v: object) -> object:
    """JSON Schema counts 5.0 as an integer: accept it as 5 (JSON bodies are validated strictly otherwise)."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


class Options(BaseModel):
    """Model and ranking options shared by every submission."""

    model: str | None = _MODEL
    topk: int | None = _TOPK
    threshold: float | None = _THRESHOLD
    lang: str | None = _LANG

    _topk = field_validator("topk", mode="before")(_integral)


class InputJSON(Options):
    """JSON body of POST /v1/tag and /v1/jobs: exactly one of `url` / `path`."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"required": ["url"], "properties": {"url": {"type": "string"}}},
        {"required": ["path"], "properties": {"path": {"type": "string"}}},
    ]})  # fmt: skip
    url: str | None = Field(None, json_schema_extra={"pattern": URL_PATTERN}, description="http(s) URL of the "
                            "video (when the server allows URL inputs).")  # fmt: skip
    path: str | None = Field(None, json_schema_extra={"pattern": SOURCE_PATTERN}, description="A file on the "
                             "server, absolute or relative to the first allowed root.")  # fmt: skip


class BatchJSON(Options):
    """JSON body of POST /v1/batches: `paths` (list) and/or `filelist` (text, one path or URL per line)."""

    model_config = ConfigDict(json_schema_extra={"anyOf": [
        {"required": ["paths"], "properties": {"paths": {"type": "array"}}},
        {"required": ["filelist"], "properties": {"filelist": {"type": "string"}}},
    ]})  # fmt: skip
    paths: list[str] | None = Field(None, description="Paths or URLs (a directory: each video in it).",
                                    json_schema_extra={"minItems": 1,
                                                       "items": {"type": "string", "pattern": SOURCE_PATTERN}})
    filelist: str | None = Field(None, json_schema_extra={"pattern": FILELIST_PATTERN}, description="One path or "
                                 "URL per line (a directory: each video in it); blank lines and lines starting with # "
                                 "are skipped (at least one must remain).")  # fmt: skip


class RepredictJSON(BaseModel):
    model: str = Field(pattern=NAMED_MODEL_PATTERN, description="The installed predictor to run on the features.")
    topk: int | None = _TOPK
    threshold: float | None = _THRESHOLD
    lang: str | None = _LANG

    _topk = field_validator("topk", mode="before")(_integral)


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
