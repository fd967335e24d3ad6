"""`videotag setup videotag`: fetch Baidu VideoTag's two released archives and import them in one step.

The archives (PaddleVideo `applications/VideoTag`) are gzip-compressed tars although named `.tar`:
    video_tag_tsn.tar   -> video_tag_tsn/tsn.pdparams (+ .pdmodel, .pdopt, not needed)
    video_tag_lstm.tar  -> attention_lstm/attention_lstm.pdparams (+ .pdmodel, .pdopt)
The label list ships with this project (labels/videotag_3396_zh.txt, with an English translation), so nothing
else is needed. Archives are cached (resumable `.part` downloads) and reused; `--source DIR_OR_URL` takes them
from a local folder or a mirror. The bundle's manifest records the URL, size and sha256 of each archive used.
"""

from __future__ import annotations

import errno
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from videotag.core.hashing import sha256_file
from videotag.core.vocab import VIDEOTAG_LABELS
from videotag.download import DownloadError, Progress, download
from videotag.importers.paddle_videotag import ImportReport, PaddleWeightsError, import_videotag


@dataclass(frozen=True)
class Archive:
    key: str  # "tsn" | "lstm"
    file: str
    url: str
    member: str  # the .pdparams file inside


ARCHIVES = (
    Archive("tsn", "video_tag_tsn.tar", "https://videotag.bj.bcebos.com/video_tag_tsn.tar",
            "video_tag_tsn/tsn.pdparams"),
    Archive("lstm", "video_tag_lstm.tar", "https://videotag.bj.bcebos.com/video_tag_lstm.tar",
            "attention_lstm/attention_lstm.pdparams"),
)  # fmt: skip
MAX_ARCHIVE_BYTES = 4 << 30


class SetupError(PaddleWeightsError):
    """`setup videotag` could not get or read the archives; the message says what to do."""


def _by_hand() -> str:
    urls = " and ".join(a.url for a in ARCHIVES)
    return f"download the two files by hand from {urls} and pass --source DIR (the folder holding them)"


def fetch_archives(
    cache_dir: Path,
    source: str | None = None,
    force: bool = False,
    progress: Callable[[Archive], Progress | None] = lambda _a: None,
    log: Callable[[str], None] = lambda _m: None,
    retries: int = 4,
) -> dict[str, tuple[Path, dict, bool]]:
    """{key: (local archive path, {url, file, size, sha256}, cached)}; `cached` archives are ours to delete."""
    out: dict[str, tuple[Path, dict, bool]] = {}
    local_dir = Path(source).expanduser() if source and not source.startswith(("http://", "https://")) else None
    if local_dir is not None and not local_dir.is_dir():
        raise SetupError(f"--source {source}: not a directory or an http(s) URL")
    for a in ARCHIVES:
        if local_dir is not None:
            path = local_dir / a.file
            if not path.is_file():
                raise SetupError(f"--source {local_dir}: {a.file} not found there (expected {ARCHIVES[0].file} "
                                 f"and {ARCHIVES[1].file})")  # fmt: skip
            out[a.key] = (path, _record(None, str(path.resolve()), path), False)
            continue
        url = f"{source.rstrip('/')}/{a.file}" if source else a.url
        dest = cache_dir / a.file
        if force:
            dest.unlink(missing_ok=True)
        if dest.is_file():
            log(f"using {dest} (downloaded before; --force downloads again)")
            record = _record(url, a.file, dest)
        else:
            log(f"downloading {url}")
            try:
                got = download(url, dest, max_bytes=MAX_ARCHIVE_BYTES, retries=retries, progress=progress(a))
            except DownloadError as e:
                hint = "Run the same command again to resume" if e.transient else "D" + _by_hand()[1:]
                raise SetupError(f"could not download {a.file}: {e.reason}. {hint}") from e
            record = {"url": url, "file": a.file, "size": got.size, "sha256": got.sha256}
        out[a.key] = (dest, record, True)
    return out


def _record(url: str | None, file: str, path: Path) -> dict:
    """What the manifest's `downloads` records of an archive already on disk."""
    return {"url": url, "file": file, "size": path.stat().st_size, "sha256": sha256_file(path)}


def extract_member(archive: Path, a: Archive, dest_dir: Path) -> Path:
    """Stream `a.member` (matched by its path, else by its file name) out of a gzip/plain tar into dest_dir."""
    want = Path(a.member).name
    try:
        with tarfile.open(archive, "r:*") as tar:
            names = tar.getnames()
            member = next((m for m in tar.getmembers() if m.isfile() and m.name.removeprefix("./") == a.member), None)
            member = member or next((m for m in tar.getmembers() if m.isfile() and Path(m.name).name == want), None)
            if member is None:
                shown = ", ".join(names[:8]) + (" …" if len(names) > 8 else "") or "nothing"
                raise SetupError(
                    f"{archive}: no {a.member} inside (it holds {shown}); is this VideoTag's {a.file}?"
                )
            src = tar.extractfile(member)
            assert src is not None
            out = dest_dir / want
            with src, open(out, "wb") as f:
                shutil.copyfileobj(src, f, 1 << 20)
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise _Corrupt(f"{archive} is truncated or corrupt ({type(e).__name__}: {e})") from e
    except OSError as e:
        if "compressed file ended" in str(e).lower() or "not a gzipped file" in str(e).lower():
            raise _Corrupt(f"{archive} is truncated or corrupt ({e})") from e
        raise
    return out


class _Corrupt(SetupError):
    pass


def install_videotag(
    out: Path,
    cache_dir: Path,
    *,
    source: str | None = None,
    force: bool = False,
    lstm_impl: str = "scan",
    progress: Callable[[Archive], Progress | None] = lambda _a: None,
    log: Callable[[str], None] = lambda _m: None,
    retries: int = 4,
) -> ImportReport:
    """Get both archives (cache, `source` folder or mirror), unpack the two .pdparams files and import them into
    `out` with the shipped labels. Nothing appears in `out` unless everything succeeded."""
    if out.exists() and not out.is_dir():
        raise SetupError(f"--out: {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not force:
        raise SetupError(f"{out} already exists (use --force to install again)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    got = fetch_archives(cache_dir, source, force, progress, log, retries)
    try:
        return _unpack_and_import(out, cache_dir, got, force, lstm_impl, log)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise SetupError(f"disk full while unpacking into {cache_dir} or importing into {out}: "
                             "free some space (the import needs about 2 GB) and run again") from e  # fmt: skip
        raise


def _unpack_and_import(
    out: Path, cache_dir: Path, got: dict, force: bool, lstm_impl: str, log: Callable[[str], None]
) -> ImportReport:
    with tempfile.TemporaryDirectory(prefix=".unpack-", dir=cache_dir) as tmp:
        files: dict[str, Path] = {}
        for a in ARCHIVES:
            path, _record, cached = got[a.key]
            log(f"unpacking {a.member} from {path.name}")
            try:
                files[a.key] = extract_member(path, a, Path(tmp))
            except _Corrupt as e:
                if cached:  # ours: remove it so that the next run downloads it again
                    path.unlink(missing_ok=True)
                    raise SetupError(
                        f"{e}; removed it from the cache: run the command again to download it anew"
                    ) from None
                raise SetupError(f"{e}; get the file again") from None
        return import_videotag(
            files["tsn"],
            files["lstm"],
            VIDEOTAG_LABELS["zh"],
            out,
            lstm_impl=lstm_impl,
            overwrite=force,
            log=log,
            downloads=[got[a.key][1] for a in ARCHIVES],
        )
