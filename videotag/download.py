"""Fetch a large file over HTTP(S) the way a user's network needs it: streamed to a `.part` file beside the
target, resumed with HTTP Range after a cut connection or a Ctrl-C, retried with backoff on transient failures
(connection errors, 5xx, 429), bounded in size and time, and published by rename only when complete.

Permanent failures (DNS, 4xx, size limit, disk full) raise `DownloadError` at once with what/where/why.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from videotag.core.errors import VideotagError
from videotag.core.hashing import sha256_file

log = logging.getLogger(__name__)
_CHUNK = 1 << 20

# progress(bytes_done, bytes_total_or_None) is called as data arrives (and once at the start with what was resumed)
Progress = Callable[[int, int | None], None]


class DownloadError(VideotagError):
    """A download failed; `transient` says whether trying again later may help (the `.part` file is kept)."""

    def __init__(self, url: str, reason: str, transient: bool = False) -> None:
        self.url, self.reason, self.transient = url, reason, transient
        super().__init__(f"{url}: {reason}")


@dataclass(frozen=True)
class Downloaded:
    url: str
    path: Path
    size: int
    sha256: str
    resumed_from: int = 0


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _dns_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, socket.gaierror):
            return True
        text = str(seen).lower()
        if "name or service not known" in text or "temporary failure in name resolution" in text:
            return True
        if "nodename nor servname" in text or "no address associated" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def download(
    url: str,
    dest: str | Path,
    *,
    max_bytes: int = 8 << 30,
    timeout_s: float = 60.0,
    retries: int = 4,
    backoff_s: float = 1.0,
    progress: Progress | None = None,
) -> Downloaded:
    """Download `url` to `dest` (resuming `dest.part` if present). Returns size and sha256 of the complete file.

    The part file survives failures and interruptions, so calling again continues where the last call stopped.
    """
    import httpx

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    resumed_from = part.stat().st_size if part.exists() else 0
    attempt = 0
    while True:
        try:
            total = _fetch_into(url, part, max_bytes, timeout_s, progress)
            break
        except DownloadError as e:
            if not e.transient or attempt >= retries:
                if e.transient:
                    raise DownloadError(
                        url, f"{e.reason} (gave up after {attempt + 1} tries; run again to resume)", True
                    ) from e
                raise
        except httpx.HTTPError as e:
            if _dns_failure(e):
                raise DownloadError(url, f"cannot resolve the host ({e}): no network or DNS") from e
            if attempt >= retries:
                raise DownloadError(
                    url, f"{type(e).__name__}: {e} (gave up after {attempt + 1} tries; run again to resume)", True
                ) from e
            log.warning("%s: %s: %s; retrying", url, type(e).__name__, e)
        attempt += 1
        time.sleep(backoff_s * 2 ** (attempt - 1))
    size = part.stat().st_size
    if total is not None and size != total:
        raise DownloadError(url, f"got {size} bytes, the server announced {total}; run again to resume", True)
    os.replace(part, dest)
    return Downloaded(url=url, path=dest, size=size, sha256=sha256_file(dest), resumed_from=resumed_from)


def _fetch_into(url: str, part: Path, max_bytes: int, timeout_s: float, progress: Progress | None) -> int | None:
    """One request, appending to `part` from its current size. Returns the complete size if the server said it."""
    import httpx

    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 30.0))
    client = httpx.Client(timeout=timeout, follow_redirects=True)
    with client, client.stream("GET", url, headers=headers) as r:
        if r.status_code == 416 and have:  # nothing left to fetch, or the part is bogus: start again
            part.unlink()
            raise DownloadError(url, "the server refused to resume (HTTP 416); starting again", transient=True)
        if r.status_code in (429,) or r.status_code >= 500:
            raise DownloadError(url, f"HTTP {r.status_code} from the server", transient=True)
        if r.status_code not in (200, 206):
            raise DownloadError(url, f"HTTP {r.status_code} from the server (is the URL right?)")
        if r.status_code == 200:
            have = 0  # the server ignored Range: start over
        length = r.headers.get("content-length")
        total = have + int(length) if length and length.isdigit() else None
        if total is not None and total > max_bytes:
            raise DownloadError(url, f"the file is {total} bytes, over the limit of {max_bytes} bytes")
        if progress:
            progress(have, total)
        try:
            with open(part, "ab" if have else "wb") as f:
                for chunk in r.iter_bytes(_CHUNK):
                    have += len(chunk)
                    if have > max_bytes:
                        raise DownloadError(url, f"more than the limit of {max_bytes} bytes")
                    f.write(chunk)
                    if progress:
                        progress(have, total)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DownloadError(
                    url, f"disk full while writing {part} ({have} bytes so far); free space and run again to resume"
                ) from e
            raise DownloadError(url, f"cannot write {part}: {e.strerror or e}") from e
        return total
