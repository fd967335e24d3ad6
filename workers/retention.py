"""Retention: what the data directory holds (the API's disk gauges) and `videotag gc` (features/results by age
or of a batch). Here, not in the CLI, so the API can call it too.

Never removed: anything a live job (queued or running) still needs: the shard its location names, its upload,
its preview strip. Job and batch records expire by themselves (`record_ttl_s`, `workers.jobstore`); uploads are
deleted by the extract task once their features are stored, so `gc` only finds uploads a crash left behind.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from videotag.core.settings import Settings
from workers.jobstore import JobStore

KINDS = ("features", "results", "uploads", "thumbs")
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "": 86400}


def parse_age(text: str) -> float:
    """'7d', '12h', '30m', '90s', '2w' or a bare number of days -> seconds; ValueError otherwise."""
    m = _AGE.match(text.lower())
    if not m:
        raise ValueError(f"not an age: {text!r} (say e.g. 7d, 12h, 30m, 90s or 2w)")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def kind_dirs(settings: Settings) -> dict[str, Path]:
    """Where each kind of data lives under the data directory."""
    data = Path(settings.data_dir)
    return {"features": Path(settings.features_dir), "results": Path(settings.results_dir),
            "uploads": Path(settings.uploads_dir), "thumbs": data / "thumbs"}  # fmt: skip


def tree_stats(path: Path) -> tuple[int, float]:
    """(bytes, newest mtime) of a file or a directory tree (links not followed); (0, 0.0) when missing."""
    try:
        st = path.lstat()
    except OSError:
        return 0, 0.0
    if not path.is_dir() or path.is_symlink():
        return st.st_size, st.st_mtime
    size, newest = 0, st.st_mtime
    for root, dirs, files in os.walk(path):
        for name in files + dirs:
            try:
                s = os.lstat(os.path.join(root, name))
            except OSError:  # removed meanwhile
                continue
            newest = max(newest, s.st_mtime)
            if name in files:
                size += s.st_size
    return size, newest


def disk_usage(settings: Settings) -> dict[str, int]:
    """Bytes used by uploads, features, results and preview strips (a walk of each directory)."""
    return {kind: tree_stats(d)[0] for kind, d in kind_dirs(settings).items()}


class DiskUsageCache:
    """`disk_usage` at most once per `ttl_s` (a scrape every few seconds must not walk 100k shards each time)."""

    def __init__(self, settings: Settings, ttl_s: float = 10.0) -> None:
        self.settings, self.ttl_s = settings, ttl_s
        self._lock = threading.Lock()
        self._at, self._value = -1e18, {}

    def get(self) -> dict[str, int]:
        with self._lock:
            if time.monotonic() - self._at >= self.ttl_s:
                self._value = disk_usage(self.settings)
                self._at = time.monotonic()
            return dict(self._value)


@dataclass(frozen=True)
class Doomed:
    """One thing `gc` removes: a file or a directory, its size, what kind of data it is and why it goes."""

    path: Path
    bytes: int
    kind: str
    why: str


def _live(jobstore: JobStore | None) -> tuple[set[str], set[Path]]:
    """Ids of live jobs and the shards they name (protected from gc)."""
    if jobstore is None:
        return set(), set()
    ids = set(jobstore.active_job_ids())
    shards = {Path(j.location["path"]).resolve() for j in jobstore.get_many(sorted(ids))
              if j is not None and j.location and j.location.get("path")}  # fmt: skip
    return ids, shards


def _entries(d: Path, kind: str) -> list[Path]:
    """What gc weighs one by one: feature shards (files), and the per-batch / per-job folders of the others."""
    if not d.is_dir():
        return []
    if kind == "features":
        return sorted(p for p in d.rglob("*") if p.is_file() or p.is_symlink())
    return sorted(d.iterdir())


def plan_older_than(
    settings: Settings, age_s: float, jobstore: JobStore | None = None, now: float | None = None
) -> list[Doomed]:
    """Feature shards, batch results, left-over uploads and preview strips not touched for `age_s` seconds,
    except those of live jobs (known only with a job store)."""
    cutoff = (time.time() if now is None else now) - age_s
    live_ids, live_shards = _live(jobstore)
    out: list[Doomed] = []
    for kind, d in kind_dirs(settings).items():
        for p in _entries(d, kind):
            if kind == "features" and p.resolve() in live_shards:
                continue
            if kind in ("uploads", "thumbs") and p.name.removesuffix(".tmp") in live_ids:
                continue
            size, newest = tree_stats(p)
            if newest < cutoff:
                days = (cutoff + age_s - newest) / 86400
                out.append(Doomed(p, size, kind, f"last changed {days:.1f} days ago"))
    return out


def plan_batch(settings: Settings, jobstore: JobStore, batch_id: str) -> list[Doomed]:
    """A complete batch's results folder, the feature shards of its items (unless a live job needs one), its
    items' preview strips and any upload left. LookupError: no such batch; ValueError: still running."""
    info = jobstore.batch(batch_id)
    if info is None:
        raise LookupError(f"no batch {batch_id!r} in the job store (unknown, or its records expired)")
    if info["status"] != "complete":
        raise ValueError(f"batch {batch_id} is still {info['status']} ({info['pending']} pending): nothing removed")
    dirs = kind_dirs(settings)
    why = f"of batch {batch_id}"
    found: dict[Path, str] = {}
    results = Path(info["results_dir"]) if info["results_dir"] else dirs["results"] / batch_id
    found[results] = "results"
    _, live_shards = _live(jobstore)
    features = dirs["features"].resolve()
    for job in jobstore.get_many(jobstore.batch_items(batch_id)):
        if job is None:
            continue
        if job.location and job.location.get("path"):
            shard = Path(job.location["path"]).resolve()
            if features in shard.parents and shard not in live_shards:
                found[shard] = "features"
        found[dirs["thumbs"] / job.id] = "thumbs"
        found[dirs["uploads"] / job.id] = "uploads"
    out = []
    for p, kind in found.items():
        if p.exists() or p.is_symlink():
            out.append(Doomed(p, tree_stats(p)[0], kind, why))
    return out


def remove(items: list[Doomed]) -> tuple[int, int]:
    """Delete what a plan listed; (items removed, bytes freed). Already gone counts as nothing."""
    n = freed = 0
    for it in items:
        try:
            if it.path.is_dir() and not it.path.is_symlink():
                shutil.rmtree(it.path)
            else:
                it.path.unlink()
        except FileNotFoundError:
            continue
        n += 1
        freed += it.bytes
    return n, freed


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover
