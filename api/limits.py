"""What a request body may be, checked before anything is stored: its media type (415), that there is one (422),
its size (413, quoting the configured limit and its setting), its JSON shape (422 naming field and rule), and the
lengths and counts that bound memory (path/URL length, items per batch).

Limits come from the settings (`max_json_bytes`, `max_filelist_bytes`, `max_batch_items`, `max_source_chars`,
`max_upload_bytes`); `api.openapi` writes the same numbers into the published schema.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from api.schemas import BatchJSON, InputJSON
from api.security import Refused
from api.uploads import read_body
from videotag.core.settings import Settings
from videotag.inputs import parse_filelist

M = TypeVar("M", bound=BaseModel)

JSON = "application/json"
MULTIPART = "multipart/form-data"
TEXT = "text/plain"
OCTETS = "application/octet-stream"


def setting(name: str) -> str:
    """How an operator sets a limit: the environment variable (the same name works in .env)."""
    return f"VIDEOTAG_{name.upper()}"


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def has_body(request: Request) -> bool:
    """False when the request says it has no body (no Content-Length and no chunked encoding, or length 0)."""
    length = request.headers.get("content-length")
    if length is not None:
        return length.strip() != "0"
    return "chunked" in request.headers.get("transfer-encoding", "").lower()


def body_type(request: Request, accepted: Sequence[str], expected: str) -> str:
    """The request's media type if it is one of `accepted` (`video/*` style ranges allowed); else 422 without a
    body, 415 with one. `expected` says, for the error message, what to send."""
    if not has_body(request):
        raise Refused(422, f"a request body is required: {expected}")
    mt = media_type(request)
    for a in accepted:
        if mt == a or (a.endswith("/*") and mt.startswith(a[:-1]) and len(mt) > len(a) - 1):
            return mt
    got = f"Content-Type {mt!r}" if mt else "no Content-Type"
    raise Refused(415, f"{got} is not accepted here: {expected}")


async def read_json_object(request: Request, limit: int, limit_name: str) -> dict[str, Any]:
    """The JSON object in the body: 413 past `limit` bytes, 400 when not JSON, 422 when not an object."""
    raw = await read_body(request, limit, "JSON body", setting(limit_name))
    if not raw.strip():
        raise Refused(422, "the JSON body is empty: send a JSON object")
    try:
        obj = json.loads(raw)
    except ValueError as e:
        raise Refused(400, f"body is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise Refused(422, f"the JSON body must be an object, not {type(obj).__name__}")
    return obj


def validate(model: type[M], raw: dict[str, Any], strict: bool) -> M:
    """422 naming each invalid field and its rule. JSON is checked strictly ("5" is not an integer); form fields,
    which are all text, are converted."""
    try:
        return model.model_validate(raw, strict=strict)
    except ValidationError as e:
        msgs = [f"{'.'.join(str(x) for x in err['loc']) or 'body'}: {err['msg']}" for err in e.errors()]
        raise Refused(422, "; ".join(msgs)) from None


def check_source_length(value: str, field: str, settings: Settings) -> str:
    n, limit = len(value), settings.max_source_chars
    if n > limit:
        raise Refused(422, f"{field}: {n} characters, more than the limit of {limit} ({setting('max_source_chars')})")
    return value


def input_json(raw: dict[str, Any], settings: Settings) -> InputJSON:
    """POST /v1/tag and /v1/jobs: exactly one of url / path, each within max_source_chars."""
    body = validate(InputJSON, raw, strict=True)
    if (body.url is None) == (body.path is None):
        raise Refused(422, "give exactly one of 'url' or 'path' (or upload the file as multipart 'file')")
    if body.url is not None:
        check_source_length(body.url, "url", settings)
    else:
        check_source_length(body.path or "", "path", settings)
    return body


def batch_json(raw: dict[str, Any]) -> tuple[BatchJSON, list[str]]:
    """POST /v1/batches as JSON: `paths` and/or `filelist`, each non-empty when given."""
    body = validate(BatchJSON, raw, strict=True)
    if body.paths is None and body.filelist is None:
        raise Refused(422, "give 'paths' (a list) or 'filelist' (text, one path per line)")
    if body.paths is not None and not body.paths:
        raise Refused(422, "paths: the list is empty")
    lines = parse_filelist(body.filelist) if body.filelist is not None else []
    if body.filelist is not None and not lines:
        raise Refused(422, "filelist: no path in it (every line is blank or a # comment)")
    return body, list(body.paths or []) + lines


def check_batch(items: list[str], settings: Settings) -> list[str]:
    """At least one item, at most max_batch_items (413), each within max_source_chars (422, by line)."""
    if not items:
        raise Refused(422, "the filelist is empty: give at least one path")
    if len(items) > settings.max_batch_items:
        raise Refused(413, f"{len(items)} items; at most {settings.max_batch_items} per batch "
                      f"({setting('max_batch_items')})")  # fmt: skip
    limit = settings.max_source_chars
    long = [n for n, item in enumerate(items, 1) if len(item) > limit]
    if long:
        more = f" (and {len(long) - 5} more)" if len(long) > 5 else ""
        raise Refused(422, f"{len(long)} item(s) longer than {limit} characters ({setting('max_source_chars')}): "
                      + ", ".join(f"line {n}" for n in long[:5]) + more)  # fmt: skip
    return items
