"""Single-video endpoints: POST /v1/tag (wait for the result), POST /v1/jobs (async), GET /v1/jobs/{id}[/frames]."""

from __future__ import annotations

import base64
import shutil
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from api.deps import MAX_JSON_BYTES, AppState, State, require_api_key
from api.schemas import Frame, FramesOut, InputJSON, JobOut, Problem
from api.security import Refused, check_model_lang, check_model_name, check_url, resolve_server_path
from api.uploads import read_json, receive_upload
from videotag.jobs import BLOCK_S, Job, P, new_id

router = APIRouter(prefix="/v1", tags=["jobs"], dependencies=[Depends(require_api_key)])

_FORM_FIELDS = {"model": {"type": "string"}, "topk": {"type": "integer"}, "threshold": {"type": "number"},
                "lang": {"type": "string"}}  # fmt: skip
INPUT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}, **_FORM_FIELDS},
                }
            },
            "application/json": {"schema": InputJSON.model_json_schema()},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "Malformed input"},
    401: {"model": Problem, "description": "Missing or invalid API key"},
    403: {"model": Problem, "description": "Path outside the allowed roots, or URL refused"},
    413: {"model": Problem, "description": "Upload larger than max_upload_bytes"},
}


def _validate_options(raw: dict[str, Any]) -> InputJSON:
    try:
        return InputJSON.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        raise Refused(422, f"{'.'.join(str(x) for x in first['loc'])}: {first['msg']}") from None


async def accept_input(request: Request, st: AppState, kind: str) -> Job:
    """Parse an upload (multipart or raw body) or a JSON {url}|{path}, check it, create and enqueue its job."""
    s = st.settings
    job_id = new_id("j")
    ctype = request.headers.get("content-type", "")
    filename = None
    if ctype.startswith("application/json"):
        body = _validate_options(await read_json(request, MAX_JSON_BYTES))
        if (body.url is None) == (body.path is None):
            raise Refused(400, "give exactly one of 'url' or 'path' (or upload the file as multipart 'file')")
        if body.url is not None:
            source = await run_in_threadpool(check_url, body.url, s.allow_urls, s.allow_private_urls)
            kind_in = "url"
        else:
            source, kind_in = str(resolve_server_path(body.path or "", s.path_roots)), "path"
    else:
        dest = Path(s.uploads_dir).resolve() / job_id
        try:
            up = await receive_upload(request, dest, s.max_upload_bytes)
            if up.path is None:
                raise Refused(400, "multipart body has no file part (send the video as form field 'file')")
            body = _validate_options({k: v for k, v in up.fields.items() if k in _FORM_FIELDS and v != ""})
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
        source, kind_in, filename = str(up.path), "upload", up.filename
    model = check_model_name(body.model, s.weights_dir) or s.model
    lang = check_model_lang(model, body.lang, s.weights_dir)

    def create() -> Job:
        from workers.tasks import enqueue

        job = st.store.create_job(source, kind_in, kind=kind, model=model, topk=body.topk, threshold=body.threshold,
                                  lang=lang, filename=filename, job_id=job_id)  # fmt: skip
        enqueue([(job.id, "extract", None)])
        return job

    return await run_in_threadpool(create)


def _job_response(job: Job, status: int) -> JSONResponse:
    headers = {"Location": f"/v1/jobs/{job.id}"}
    return JSONResponse(JobOut.of(job).model_dump(mode="json"), status_code=status, headers=headers)


@router.post(
    "/tag",
    response_model=JobOut,
    openapi_extra=INPUT_BODY,
    responses={**ERRORS, 202: {"model": JobOut, "description": "Not finished within the timeout; poll Location"},
               422: {"model": JobOut, "description": "The video could not be tagged (job.error says why)"}},
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
        if await st.aredis.blpop([f"{P}notify:{job.id}"], timeout=min(left, BLOCK_S)):
            break
        if (cur := await run_in_threadpool(st.store.get, job.id)) is not None and cur.terminal:
            break
    job = await run_in_threadpool(st.store.get, job.id) or job
    return _job_response(job, 200 if job.status == "done" else 422 if job.status == "failed" else 202)


@router.post("/jobs", status_code=202, response_model=JobOut, openapi_extra=INPUT_BODY, responses=ERRORS)
async def create_job(request: Request, st: State) -> Response:
    """Queue one video; returns 202 with the job (poll GET /v1/jobs/{id})."""
    job = await accept_input(request, st, "job")
    return _job_response(job, 202)


async def _get_job(st: AppState, job_id: str) -> Job:
    job = await run_in_threadpool(st.store.get, job_id)
    if job is None:
        raise Refused(404, f"no job {job_id!r}")
    return job


@router.get("/jobs/{job_id}", response_model=JobOut, responses={404: {"model": Problem}})
async def get_job(job_id: str, st: State) -> JobOut:
    """Status, timings, and the result or error of one job."""
    return JobOut.of(await _get_job(st, job_id))


def thumbnails(source: str, out_dir: Path, count: int = 8, width: int = 160) -> list[tuple[int, bytes]]:
    """`count` frames sampled uniformly from a local video as small JPEGs, cached under `out_dir`."""
    from PIL import Image

    from extractor.decode import SampledDecoder

    cached = sorted(out_dir.glob("*.jpg"), key=lambda p: int(p.stem)) if out_dir.is_dir() else []
    if cached:
        return [(int(p.stem), p.read_bytes()) for p in cached]
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dec = SampledDecoder(source, num_frames=count)
    got: dict[int, object] = {int(i): rgb for i, rgb in dec}  # keyed by index: a 2nd pass may repeat frames
    keep = [int(i) for i in dec.plan.indices] if dec.plan is not None else sorted(got)
    out = []
    for index in dict.fromkeys(keep):  # short videos repeat indices cyclically: one thumbnail each
        img = Image.fromarray(got[index])
        img.thumbnail((width, width * 4))
        path = tmp / f"{index}.jpg"
        img.save(path, "JPEG", quality=80)
        out.append((index, path.read_bytes()))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out


@router.get("/jobs/{job_id}/frames", response_model=FramesOut, responses={404: {"model": Problem},
            409: {"model": Problem}, 422: {"model": Problem}})  # fmt: skip
async def job_frames(job_id: str, st: State) -> FramesOut:
    """A strip of frames sampled from the job's video (small JPEG data URLs), decoded on first request."""
    from videotag.errors import VideoError

    job = await _get_job(st, job_id)
    if job.input not in ("upload", "path") or not Path(job.source).is_file():
        raise Refused(409, "frames are only available for uploaded or server-side files that still exist")
    out_dir = Path(st.settings.data_dir).resolve() / "thumbs" / job.id
    try:
        frames = await run_in_threadpool(thumbnails, job.source, out_dir)
    except VideoError as e:
        raise Refused(422, f"cannot decode frames: {e.code}: {e.reason}") from None
    return FramesOut(
        job_id=job.id,
        frames=[Frame(index=i, data_url="data:image/jpeg;base64," + base64.b64encode(b).decode()) for i, b in frames],
    )
