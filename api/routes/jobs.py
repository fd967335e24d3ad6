"""Single-video endpoints: POST /v1/tag (wait for the result), POST /v1/jobs (async), GET /v1/jobs/{id}[/frames]."""

from __future__ import annotations

import base64
import shutil
import time
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api import limits
from api.deps import AppState, State, require_api_key
from api.errors import responses
from api.openapi import INPUT_BODY
from api.schemas import Frame, FramesOut, JobId, JobOut, Options
from api.security import Refused, check_model_lang, check_model_name, check_url, resolve_server_path
from api.uploads import receive_upload
from videotag.inputs import is_directory
from videotag.thumbnails import cached_thumbnails, thumbnails, thumbs_dir
from workers.jobstore import BLOCK_S, Job, new_id, notify_key
from workers.submit import submit_job

router = APIRouter(prefix="/v1", tags=["jobs"], dependencies=[Depends(require_api_key)])

_FORM_FIELDS = ("model", "topk", "threshold", "lang")
INPUT_TYPES = (limits.MULTIPART, limits.JSON, limits.OCTETS, "video/*")
EXPECTED = ("multipart/form-data with the video in field 'file', the raw video as application/octet-stream or "
            "video/*, or application/json {\"path\": ...} or {\"url\": ...}")  # fmt: skip
ERRORS = responses(400, 401, 403, 404, 413, 415, 422, 503)


async def accept_input(request: Request, st: AppState, kind: str) -> Job:
    """Parse an upload (multipart or raw body) or a JSON {url}|{path}, check it, create and enqueue its job."""
    s = st.settings
    job_id = new_id("j")
    ctype = limits.body_type(request, INPUT_TYPES, EXPECTED)
    filename, dest = None, None
    try:
        if ctype == limits.JSON:
            body = limits.input_json(await limits.read_json_object(request, s.max_json_bytes, "max_json_bytes"), s)
            if body.url is not None:
                source = await run_in_threadpool(check_url, body.url, s.allow_urls, s.allow_private_urls)
                kind_in = "url"
            else:
                path = resolve_server_path(body.path or "", s.path_roots)
                if is_directory(str(path)):
                    raise Refused(422, f"{body.path} is a directory: submit it as a batch (POST /v1/batches) to tag "
                                  "each video in it")  # fmt: skip
                source, kind_in = str(path), "path"
        else:
            dest = Path(s.uploads_dir).resolve() / job_id
            up = await receive_upload(request, dest, s.max_upload_bytes, setting=limits.setting("max_upload_bytes"))
            if up.path is None:
                raise Refused(422, "multipart body has no file part (send the video as form field 'file')")
            if up.size == 0:
                raise Refused(422, f"the uploaded file is empty: {EXPECTED}")
            body = limits.validate(Options, {k: v for k, v in up.fields.items() if k in _FORM_FIELDS}, strict=False)
            source, kind_in, filename = str(up.path), "upload", up.filename
        model = check_model_name(body.model, s.weights_dir) or s.model
        lang = check_model_lang(model, body.lang, s.weights_dir)

        def create() -> Job:
            return submit_job(st.jobstore, source, kind_in, kind=kind, model=model, topk=body.topk,
                              threshold=body.threshold, lang=lang, filename=filename, job_id=job_id)  # fmt: skip

        return await run_in_threadpool(create)
    except BaseException:
        if dest is not None:  # refused, or the job could not be created: nothing will ever read this upload
            shutil.rmtree(dest, ignore_errors=True)
        raise



def _job_response(job: Job, status: int) -> JSONResponse:
    headers = {"Location": f"/v1/jobs/{job.id}"}
    return JSONResponse(JobOut.of(job).model_dump(mode="json"), status_code=status, headers=headers)


@router.post(
    "/tag",
    response_model=JobOut,
    openapi_extra=INPUT_BODY,
    responses={**ERRORS, 202: {"model": JobOut, "description": "Not finished within the timeout; poll Location"},
               422: {"description": "The video could not be tagged (a JobOut: job.error says why), or the request "
                                    "is invalid (a Problem)",
                     "content": {"application/json": {"schema": {"anyOf": [
                         {"$ref": "#/components/schemas/JobOut"}, {"$ref": "#/components/schemas/Problem"}]}}}}},
)  # fmt: skip
async def tag(
    request: Request,
    st: State,
    timeout: Annotated[float | None, Query(ge=0, description="Seconds to wait (default: tag_timeout_s).")] = None,
) -> Response:
    """Tag one video and wait for the ranked result (200), or its error (422), up to a timeout (then 202)."""
    job = await accept_input(request, st, "tag")
    wait = min(timeout if timeout is not None else st.settings.tag_timeout_s, st.settings.tag_timeout_s)
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        # short BLPOPs (a long one would hit redis-py's socket timeout); re-check the record between them
        if await st.aredis.blpop([notify_key(job.id)], timeout=min(left, BLOCK_S)):
            break
        if (cur := await run_in_threadpool(st.jobstore.get, job.id)) is not None and cur.terminal:
            break
    job = await run_in_threadpool(st.jobstore.get, job.id) or job
    return _job_response(job, 200 if job.status == "done" else 422 if job.status == "failed" else 202)


@router.post("/jobs", status_code=202, response_model=JobOut, openapi_extra=INPUT_BODY, responses=ERRORS)
async def create_job(request: Request, st: State) -> Response:
    """Queue one video; returns 202 with the job (poll GET /v1/jobs/{id})."""
    job = await accept_input(request, st, "job")
    return _job_response(job, 202)


async def _get_job(st: AppState, job_id: str) -> Job:
    job = await run_in_threadpool(st.jobstore.get, job_id)
    if job is None:
        raise Refused(404, f"no job {job_id!r}")
    return job


@router.get("/jobs/{job_id}", response_model=JobOut, responses=responses(401, 404, 422, 503))
async def get_job(job_id: JobId, st: State) -> JobOut:
    """Status, timings, and the result or error of one job."""
    return JobOut.of(await _get_job(st, job_id))


def _is_file(path: str) -> bool:
    try:
        return Path(path).is_file()
    except OSError:  # e.g. a name too long for the file system: not a file we can read
        return False




@router.get("/jobs/{job_id}/frames", response_model=FramesOut,
            responses=responses(401, 404, 409, 422, 503, _409="The job's video is not a local file (any more), or "
                                "it cannot be decoded", _422="The job id is malformed"))  # fmt: skip
async def job_frames(job_id: JobId, st: State) -> FramesOut:
    """A strip of frames sampled from the job's video (small JPEG data URLs), decoded on first request."""
    from videotag.core.errors import VideoError

    job = await _get_job(st, job_id)
    out_dir = thumbs_dir(st.settings, job.id)
    # an upload is deleted once its features are stored; the extract worker made its strip first
    cached = await run_in_threadpool(cached_thumbnails, out_dir)
    if not cached and (job.input not in ("upload", "path") or not _is_file(job.source)):
        raise Refused(409, "frames are only available for uploaded or server-side files that still exist")
    try:
        frames = cached or await run_in_threadpool(thumbnails, job.source, out_dir)
    except VideoError as e:
        # the worker may have cached the strip and deleted the upload while this request was decoding it
        if not (frames := await run_in_threadpool(cached_thumbnails, out_dir)):
            raise Refused(409, f"cannot decode frames: {e.code}: {e.reason}") from None
    return FramesOut(
        job_id=job.id,
        frames=[Frame(index=i, data_url="data:image/jpeg;base64," + base64.b64encode(b).decode()) for i, b in frames],
    )
