"""Bulk endpoints: submit a filelist, follow its progress, page through results, re-predict with another model."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.background import BackgroundTask

from api.deps import MAX_JSON_BYTES, AppState, State, require_api_key
from api.routes.jobs import ERRORS
from api.schemas import BatchItem, BatchJSON, BatchOut, BatchResults, ErrorInfo, JobOut, Problem, RepredictJSON
from api.security import Refused, check_model_lang, check_model_name, check_url, resolve_server_path
from api.uploads import read_body, read_json, receive_upload

router = APIRouter(prefix="/v1/batches", tags=["batches"], dependencies=[Depends(require_api_key)])
MAX_ITEMS = 1_000_000
INLINE_ENQUEUE = 1000  # batches up to this size are fully queued before the response
_REPORT = 5  # refused lines quoted in an error message

BATCH_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": BatchJSON.model_json_schema()},
            "text/plain": {"schema": {"type": "string", "description": "filelist: one path per line"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["filelist"],
                    "properties": {
                        "filelist": {"type": "string", "format": "binary"},
                        "model": {"type": "string"},
                        "lang": {"type": "string"},
                        "topk": {"type": "integer"},
                        "threshold": {"type": "number"},
                    },
                }
            },
        },
    }
}


def _parse(model: type, raw: dict[str, Any]) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        raise Refused(422, f"{'.'.join(str(x) for x in first['loc'])}: {first['msg']}") from None


def _lines(text: str) -> list[str]:
    return [ln.rstrip("\r") for ln in text.lstrip("\ufeff").split("\n") if ln.strip()]


def _check_sources(items: list[str], st: AppState) -> list[str]:
    """Every entry must be an allowed URL or a path under the roots; report the first few refusals by line."""
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
        raise Refused(status, f"{len(bad)} refused item(s): " + "; ".join(f"line {n}: {e.detail}" for n, e in
                      bad[:_REPORT]) + more)  # fmt: skip
    return out


def _batch_response(info: dict[str, Any], status: int = 200) -> JSONResponse:
    body = BatchOut.model_validate(info).model_dump(mode="json")
    return JSONResponse(body, status_code=status, headers={"Location": f"/v1/batches/{info['batch_id']}"})


@router.post("", status_code=202, response_model=BatchOut, openapi_extra=BATCH_BODY, responses=ERRORS)
async def create_batch(request: Request, st: State) -> Response:
    """Queue a filelist (JSON `paths`/`filelist`, a text/plain body, or an uploaded `filelist` file)."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("application/json"):
        body = _parse(BatchJSON, await read_json(request, MAX_JSON_BYTES))
        items = list(body.paths or []) + (_lines(body.filelist) if body.filelist else [])
    elif ctype.startswith("multipart/form-data"):
        up = await receive_upload(request, st.settings.uploads_dir, MAX_JSON_BYTES, file_field="",
                                  memory_fields=("filelist",))  # fmt: skip
        if up.path is not None:  # a stray file part: we only want the filelist
            up.path.unlink(missing_ok=True)
        if "filelist" not in up.files and "filelist" not in up.fields:
            raise Refused(400, "multipart body has no 'filelist' part")
        raw = up.files.get("filelist") or up.fields.get("filelist", "").encode()
        body = _parse(BatchJSON, {k: v for k, v in up.fields.items() if k in ("model", "topk", "threshold", "lang")})
        items = _lines(raw.decode("utf-8", "replace"))
    elif ctype.startswith("text/plain"):
        body = BatchJSON()
        items = _lines((await read_body(request, MAX_JSON_BYTES, "filelist")).decode("utf-8", "replace"))
    else:
        raise Refused(415, "send application/json, text/plain or multipart/form-data")
    if not items:
        raise Refused(400, "the filelist is empty")
    if len(items) > MAX_ITEMS:
        raise Refused(413, f"{len(items)} items; at most {MAX_ITEMS} per batch")
    sources = await run_in_threadpool(_check_sources, items, st)
    model = check_model_name(body.model, st.settings.weights_dir) or st.settings.model
    lang = check_model_lang(model, body.lang, st.settings.weights_dir)

    from workers.tasks import enqueue

    def create() -> tuple[dict[str, Any], list[str]]:
        batch_id, job_ids = st.store.create_batch(sources, "path", model=model, topk=body.topk,
                                                  threshold=body.threshold, lang=lang)  # fmt: skip
        return st.store.batch(batch_id) or {}, job_ids

    info, job_ids = await run_in_threadpool(create)
    items = [(j, "extract", None) for j in job_ids]
    if len(items) <= INLINE_ENQUEUE:
        await run_in_threadpool(enqueue, items)
        return _batch_response(info, 202)
    # Large filelists: answer once the records exist; publish after the response (a crash in between is
    # covered by resume at the next start: the jobs are in vt:jobs:active with no message in the queue).
    resp = _batch_response(info, 202)
    resp.background = BackgroundTask(enqueue, items)
    return resp


async def _batch(st: AppState, batch_id: str) -> dict[str, Any]:
    info = await run_in_threadpool(st.store.batch, batch_id)
    if info is None:
        raise Refused(404, f"no batch {batch_id!r}")
    return info


@router.get("/{batch_id}", response_model=BatchOut, responses={404: {"model": Problem}})
async def get_batch(batch_id: str, st: State) -> Response:
    """Progress: total, done, failed, pending, progress (0..1), status."""
    return _batch_response(await _batch(st, batch_id))


@router.get("/{batch_id}/results", response_model=BatchResults, responses={404: {"model": Problem}})
async def batch_results(
    batch_id: str,
    st: State,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> BatchResults:
    """Items in submission order, each with its status and result, or its error."""
    info = await _batch(st, batch_id)

    def page() -> list[BatchItem]:
        ids = st.store.batch_items(batch_id, offset, limit)
        items = []
        for jid, job in zip(ids, st.store.get_many(ids), strict=True):
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
    responses={**ERRORS, 404: {"model": Problem}, 409: {"model": Problem, "description": "Batch still running"}},
)
async def repredict(batch_id: str, request: Request, st: State) -> Response:
    """Stage 2 only, with another model, on the batch's stored features (no decoding): a new batch."""
    body = _parse(RepredictJSON, await read_json(request, MAX_JSON_BYTES))
    model = check_model_name(body.model, st.settings.weights_dir)
    lang = check_model_lang(model, body.lang, st.settings.weights_dir)
    info = await _batch(st, batch_id)
    if info["status"] != "complete":
        raise Refused(409, f"batch {batch_id} is still running ({info['pending']} pending); re-predict when complete")

    def create() -> dict[str, Any]:
        from workers.tasks import enqueue

        jobs = st.store.get_many(st.store.batch_items(batch_id))
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
        new_id, job_ids = st.store.create_batch(sources, kind="repredict", parent=batch_id, model=model,
                                                topk=body.topk, threshold=body.threshold, lang=lang,
                                                locations=locations,
                                                errors=errors)  # fmt: skip
        enqueue([(j, "predict", loc) for j, loc in zip(job_ids, locations, strict=True) if loc])
        info = st.store.batch(new_id) or {}
        if info.get("status") == "complete":  # every item failed upstream: nothing was queued, write results now
            from workers.tasks import finalize_batch

            finalize_batch(new_id)
            info = st.store.batch(new_id) or {}
        return info

    return _batch_response(await run_in_threadpool(create), 202)


__all__ = ["router", "ErrorInfo"]
