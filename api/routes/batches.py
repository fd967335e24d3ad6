"""Bulk endpoints: submit a filelist, follow its progress, page through results, re-predict with another model."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask

from api import limits
from api.deps import AppState, State, require_api_key
from api.errors import responses
from api.openapi import BATCH_BODY, REPREDICT_BODY
from api.schemas import BatchId, BatchItem, BatchOut, BatchResults, ErrorInfo, JobOut, Options, RepredictJSON
from api.security import Refused, check_model_lang, check_model_name, check_url, resolve_server_path
from api.uploads import read_body, receive_upload
from videotag.inputs import parse_filelist
from workers.submit import NothingToSubmit, batch_sources, publish_extract, submit_batch, submit_repredict

router = APIRouter(prefix="/v1/batches", tags=["batches"], dependencies=[Depends(require_api_key)])
INLINE_ENQUEUE = 1000  # batches up to this size are fully queued before the response
_REPORT = 5  # refused lines quoted in an error message
BATCH_TYPES = (limits.JSON, limits.TEXT, limits.MULTIPART)
EXPECTED = ("application/json {\"paths\": [...]} or {\"filelist\": \"...\"}, text/plain (one path per line), or "
            "multipart/form-data with a 'filelist' part")  # fmt: skip


async def _read_batch(request: Request, st: AppState) -> tuple[Options, list[str]]:
    """The batch's options and items from a JSON, text/plain or multipart body (limits: api.limits)."""
    s = st.settings
    ctype = limits.body_type(request, BATCH_TYPES, EXPECTED)
    if ctype == limits.JSON:
        body, items = limits.batch_json(await limits.read_json_object(request, s.max_filelist_bytes,
                                                                      "max_filelist_bytes"))  # fmt: skip
        return body, items
    if ctype == limits.MULTIPART:
        up = await receive_upload(request, s.uploads_dir, s.max_filelist_bytes, file_field="",
                                  memory_fields=("filelist",), setting=limits.setting("max_filelist_bytes"),
                                  what="filelist")  # fmt: skip
        if up.path is not None:  # a stray file part: we only want the filelist
            up.path.unlink(missing_ok=True)
        if "filelist" not in up.files and "filelist" not in up.fields:
            raise Refused(422, "multipart body has no 'filelist' part")
        raw = up.files.get("filelist") or up.fields.get("filelist", "").encode()
        fields = {k: v for k, v in up.fields.items() if k in ("model", "topk", "threshold", "lang")}
        opts = limits.validate(Options, fields, strict=False)
        return opts, parse_filelist(raw.decode("utf-8", "replace"))
    raw = await read_body(request, s.max_filelist_bytes, "filelist", limits.setting("max_filelist_bytes"))
    return Options(), parse_filelist(raw.decode("utf-8", "replace"))


def _check_sources(items: list[str], what: str, st: AppState) -> list[str]:
    """Every entry must be an allowed URL or a path under the roots; report the first few refusals by number
    (`what`: "line" for the entries given, "found file" for the videos a directory held)."""
    s = st.settings
    out, bad = [], []
    for n, item in enumerate(items, 1):
        try:
            if item.startswith(("http://", "https://")):
                out.append(check_url(item, s.allow_urls, s.allow_private_urls))
            else:
                out.append(str(resolve_server_path(item, s.path_roots)))
        except Refused as e:
            bad.append((n, e))
    if bad:
        status = max(e.status for _, e in bad)
        more = f" (and {len(bad) - _REPORT} more)" if len(bad) > _REPORT else ""
        raise Refused(status, f"{len(bad)} refused item(s): " + "; ".join(f"{what} {n}: {e.detail}" for n, e in
                      bad[:_REPORT]) + more)  # fmt: skip
    return out


def _batch_response(info: dict[str, Any], status: int = 200) -> JSONResponse:
    body = BatchOut.model_validate(info).model_dump(mode="json")
    return JSONResponse(body, status_code=status, headers={"Location": f"/v1/batches/{info['batch_id']}"})


@router.post("", status_code=202, response_model=BatchOut, openapi_extra=BATCH_BODY,
             responses=responses(400, 401, 403, 404, 413, 415, 422, 503))  # fmt: skip
async def create_batch(request: Request, st: State) -> Response:
    """Queue a filelist (JSON `paths`/`filelist`, a text/plain body, or an uploaded `filelist` file); a directory
    is each video in it, blank and `#` lines are skipped."""
    body, items = await _read_batch(request, st)
    limits.check_batch(items, st.settings)
    try:  # directories become their videos, as for `videotag tag DIR`
        sources = await run_in_threadpool(batch_sources, items, None, partial(_check_sources, st=st))
    except NothingToSubmit as e:
        raise Refused(422, str(e)) from None
    if len(sources) != len(items):
        limits.check_batch(sources, st.settings)  # what the directories held counts against the same limits
    model = check_model_name(body.model, st.settings.weights_dir) or st.settings.model
    lang = check_model_lang(model, body.lang, st.settings.weights_dir)
    # Large filelists: answer once the records exist; publish after the response (a crash in between is
    # covered by resume at the next start: the jobs are in vt:jobs:active with no message in the queue).
    inline = len(sources) <= INLINE_ENQUEUE

    def create() -> tuple[dict[str, Any], list[str]]:
        batch_id, job_ids = submit_batch(st.jobstore, sources, model=model, topk=body.topk, threshold=body.threshold,
                                         lang=lang, publish=inline)  # fmt: skip
        return st.jobstore.batch(batch_id) or {}, job_ids

    info, job_ids = await run_in_threadpool(create)
    resp = _batch_response(info, 202)
    if not inline:
        resp.background = BackgroundTask(publish_extract, job_ids)
    return resp


async def _batch(st: AppState, batch_id: str) -> dict[str, Any]:
    info = await run_in_threadpool(st.jobstore.batch, batch_id)
    if info is None:
        raise Refused(404, f"no batch {batch_id!r}")
    return info


@router.get("/{batch_id}", response_model=BatchOut, responses=responses(401, 404, 422, 503))
async def get_batch(batch_id: BatchId, st: State) -> Response:
    """Progress: total, done, failed, pending, progress (0..1), status."""
    return _batch_response(await _batch(st, batch_id))


@router.get("/{batch_id}/results", response_model=BatchResults, responses=responses(401, 404, 422, 503))
async def batch_results(
    batch_id: BatchId,
    st: State,
    offset: Annotated[int, Query(ge=0, le=2**40)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> BatchResults:
    """Items in submission order, each with its status and result, or its error."""
    info = await _batch(st, batch_id)

    def page() -> list[BatchItem]:
        ids = st.jobstore.batch_items(batch_id, offset, limit)
        items = []
        for jid, job in zip(ids, st.jobstore.get_many(ids), strict=True):
            if job is None:
                continue
            j = JobOut.of(job)
            items.append(BatchItem(index=job.index if job.index is not None else -1, job_id=jid,
                                   source=job.source, status=j.status, result=j.result, error=j.error))  # fmt: skip
        return items

    return BatchResults(batch_id=batch_id, offset=offset, limit=limit, total=info["total"],
                        items=await run_in_threadpool(page))  # fmt: skip


@router.post(
    "/{batch_id}/repredict",
    status_code=202,
    response_model=BatchOut,
    openapi_extra=REPREDICT_BODY,
    responses=responses(400, 401, 404, 409, 413, 415, 422, 503, _409="Batch still running"),
)
async def repredict(batch_id: BatchId, request: Request, st: State) -> Response:
    """Stage 2 only, with another model, on the batch's stored features (no decoding): a new batch."""
    limits.body_type(request, (limits.JSON,), 'application/json {"model": "..."}')
    raw = await limits.read_json_object(request, st.settings.max_json_bytes, "max_json_bytes")
    body = limits.validate(RepredictJSON, raw, strict=True)
    model = check_model_name(body.model, st.settings.weights_dir)
    lang = check_model_lang(model, body.lang, st.settings.weights_dir)
    info = await _batch(st, batch_id)
    if info["status"] != "complete":
        raise Refused(409, f"batch {batch_id} is still running ({info['pending']} pending); re-predict when complete")

    def create() -> dict[str, Any]:
        return submit_repredict(st.jobstore, batch_id, model=model, topk=body.topk, threshold=body.threshold,
                                lang=lang)  # fmt: skip

    return _batch_response(await run_in_threadpool(create), 202)


__all__ = ["router", "ErrorInfo"]
