"""The one input parser behind every door (CLI `tag`/`extract`/`submit`, `Tagger`, POST /v1/batches).

An input is a video file, a directory (searched recursively for files with a video extension, sorted), an
http(s) URL, or a filelist: one path or URL per line, UTF-8, VideoTag's format (spaces and non-ASCII kept), blank
lines and lines starting with `#` skipped. A directory therefore means the same everywhere: each video in it is
one item. Paths that do not exist are kept (each is reported as `missing` by the stage that opens it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from videotag.core.errors import VideotagError

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = {
    ".mp4", ".m4v", ".mkv", ".webm", ".avi", ".mov", ".qt", ".flv", ".wmv", ".mpg", ".mpeg", ".ts", ".m2ts",
    ".mts", ".3gp", ".ogv", ".vob", ".mxf", ".divx",
}  # fmt: skip
_BLANK = " \t\r\ufeff"  # what makes a filelist line blank


def is_url(s: str) -> bool:
    """True for http(s) URLs (fetched by stage 1), False for local paths."""
    return s.startswith(("http://", "https://"))


def is_directory(item: str) -> bool:
    """True for a local path naming a directory; False for URLs, files, missing and unusable names (too long...)."""
    if is_url(item):
        return False
    try:
        return Path(item).is_dir()
    except (OSError, ValueError):  # ENAMETOOLONG, a NUL byte: not a directory we can list
        return False


def parse_filelist(text: str) -> list[str]:
    """Filelist text -> entries: one per line (split on newlines only, a trailing CR and a byte-order mark dropped);
    lines that are blank (spaces, tabs) or start with `#` (after blanks) are skipped. Other characters are kept."""
    out = []
    for line in text.split("\n"):
        entry = line.rstrip("\r").lstrip("\ufeff")
        stripped = entry.strip(_BLANK)
        if stripped and not stripped.startswith("#"):
            out.append(entry)
    return out


def read_filelist(path: str | Path) -> list[str]:
    """A filelist file (see `parse_filelist`); VideotagError when it cannot be read as UTF-8 text."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as e:
        raise VideotagError(f"cannot read filelist {path}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise VideotagError(f"filelist {path} is not UTF-8 text ({e})") from e
    return parse_filelist(text)


def videos_in(directory: str | Path) -> list[str]:
    """The video files under `directory`, recursively, sorted (a warning when there are none)."""
    d = Path(directory)
    found = sorted(str(q) for q in d.rglob("*") if q.suffix.lower() in VIDEO_EXTENSIONS and q.is_file())
    if not found:
        log.warning("%s: directory contains no video files (extensions: %s)", d, "/".join(sorted(VIDEO_EXTENSIONS)))
    return found


def expand_inputs(inputs: Iterable[str], filelist: str | Path | None = None) -> list[str]:
    """Videos, directories, URLs and a filelist -> the ordered list of sources, one per video.

    Directories are replaced by the videos in them; the filelist's entries follow `inputs` (and are expanded the
    same way). Paths that don't exist are kept: they are reported per item as `missing`, never dropped.
    """
    items = list(inputs) + (read_filelist(filelist) if filelist else [])
    out: list[str] = []
    for item in items:
        if is_directory(item):
            out.extend(videos_in(item))
        else:
            out.append(item)
    return out
