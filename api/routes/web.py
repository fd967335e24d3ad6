"""The web page at `/` (static files, no CDN): upload a video, watch progress, see tags and sampled frames."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC = Path(__file__).resolve().parent.parent / "static"
router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    """The web page (upload a video, watch progress, see its tags and frames)."""
    return FileResponse(STATIC / "index.html", media_type="text/html")
