"""Request bodies read as streams with a byte limit: video uploads (multipart or raw) and JSON/text bodies.

Starlette parses multipart forms in full (spooling files to /tmp) before an endpoint runs and has no size
limit, so uploads are parsed here chunk by chunk with python-multipart: the file part is written straight to
its destination and the request is refused with 413 the moment it passes the limit.
"""

from __future__ import annotations

import os
import re
import unicodedata
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from api.security import Refused

MAX_FIELD_BYTES = 64 * 1024  # non-file form fields (model, topk, …)
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(name: str | None, default: str = "upload") -> str:
    """A client file name reduced to a harmless basename (no dirs, no dots-only, bounded length)."""
    base = os.path.basename((name or "").replace("\\", "/"))
    base = _SAFE.sub("_", base).strip("._")[:120]
    return base or default


def client_filename(name: str | None) -> str | None:
    """The file name the client gave, as it was (unicode kept, NFC), for the records: only its last path
    component, without control characters, at most 255 characters. None when nothing is left."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in unicodedata.normalize("NFC", base) if unicodedata.category(c)[0] != "C").strip()
    return base[:255] or None


def too_large(what: str, limit: int, setting: str | None, size: int | None = None) -> Refused:
    """413 quoting the limit in force and the setting that changes it."""
    of = f" of {size} bytes" if size is not None else ""
    how = f" (set by {setting})" if setting else ""
    return Refused(413, f"{what}{of} is larger than the limit of {limit} bytes{how}")


def _check_declared_length(request: Request, limit: int, what: str, setting: str | None, slack: int = 0) -> None:
    """Refuse at once when Content-Length already says the body is too large (`slack`: multipart overhead)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise Refused(400, "invalid Content-Length header") from None
        if n > limit + slack:
            raise too_large(what, limit, setting, n)


async def read_body(request: Request, limit: int, what: str = "request body", setting: str | None = None) -> bytes:
    """The whole body, refusing (413) more than `limit` bytes whether or not Content-Length was sent."""
    _check_declared_length(request, limit, what, setting)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(what, limit, setting)
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class Upload:
    """What a multipart/raw upload produced: the saved file (if any), its client name, size, the text fields."""

    path: Path | None = None
    filename: str | None = None  # as the client named it (unicode kept); the file on disk has a safe name
    size: int = 0
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # small in-memory file parts (e.g. a filelist)


async def receive_upload(
    request: Request,
    dest_dir: Path,
    limit: int,
    file_field: str = "file",
    memory_fields: tuple[str, ...] = (),
    setting: str | None = None,
    what: str = "upload",
) -> Upload:
    """Stream a multipart form (or a raw body) to `dest_dir/<safe name>`; 413 as soon as `limit` is passed.

    The part named `file_field` (or the first part with a filename) is written to disk; parts named in
    `memory_fields` are kept in memory (same limit); other fields are small text values. `setting` names the
    limit's setting in the 413 message.
    """
    _check_declared_length(request, limit, what, setting, slack=MAX_FIELD_BYTES)
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    up = Upload()
    dest_dir.mkdir(parents=True, exist_ok=True)
    if ctype != b"multipart/form-data":  # raw body: the bytes are the video
        # X-Filename is percent-encoded UTF-8 when the name is not ASCII (HTTP header values are Latin-1)
        name = urllib.parse.unquote(request.headers.get("x-filename") or "") or request.query_params.get("filename")
        up.path = dest_dir / safe_filename(name)
        up.filename = client_filename(name) or up.path.name
        with open(up.path, "wb") as f:
            async for chunk in request.stream():
                up.size += len(chunk)
                if up.size > limit:
                    raise too_large(what, limit, setting)
                f.write(chunk)
        return up
    boundary = params.get(b"boundary")
    if not boundary:
        raise Refused(400, "multipart body without a boundary")

    state: dict[str, Any] = {"headers": {}, "hname": b"", "hval": b"", "name": None, "out": None, "buf": None}

    def on_part_begin() -> None:
        state.update(headers={}, hname=b"", hval=b"", name=None, out=None, buf=None)

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["hname"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["hval"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["hname"].decode("latin-1").lower()] = state["hval"]
        state["hname"], state["hval"] = b"", b""

    def on_headers_finished() -> None:
        _, disp = parse_options_header(state["headers"].get("content-disposition", b""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        fname = disp.get(b"filename")
        state["name"] = name
        if name in memory_fields:
            state["buf"] = bytearray()
        elif fname is not None and up.path is None and (name == file_field or not file_field):
            client = fname.decode("utf-8", "replace")
            up.path = dest_dir / safe_filename(client)
            up.filename = client_filename(client) or up.path.name
            state["out"] = open(up.path, "wb")  # noqa: SIM115 - closed in on_part_end / on error below
        else:
            state["buf"] = bytearray()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        n = end - start
        up.size += n
        if up.size > limit:
            raise too_large(what, limit, setting)
        if state["out"] is not None:
            state["out"].write(data[start:end])
        elif state["buf"] is not None:
            if state["name"] not in memory_fields and len(state["buf"]) + n > MAX_FIELD_BYTES:
                raise Refused(413, f"form field {state['name']!r} is larger than {MAX_FIELD_BYTES} bytes")
            state["buf"] += data[start:end]

    def on_part_end() -> None:
        if state["out"] is not None:
            state["out"].close()
            state["out"] = None
        elif state["buf"] is not None:
            if state["name"] in memory_fields:
                up.files[state["name"]] = bytes(state["buf"])
            else:
                up.fields[state["name"]] = state["buf"].decode("utf-8", "replace")

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except Refused:
        raise
    except Exception as e:  # python-multipart raises its own errors for malformed bodies
        raise Refused(400, f"malformed multipart body: {e}") from None
    finally:
        if state["out"] is not None:
            state["out"].close()
    return up
