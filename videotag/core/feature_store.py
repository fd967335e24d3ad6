"""The HDF5 feature store: the one format stage 1 writes and stage 2 reads.

Format (format_version 1), one or many videos per file ("shard"):

    /                         attrs: format="videotag.features", format_version=1, created
    /videos/<key>             float16 dataset [T, D], key = percent-quoted video_id, attrs:
        video_id, source, content_sha256, duration (s), fps, decoded_frames,
        sample_indices [T] int64, sample_timestamps [T] float64 (s), sampling,
        backbone, backbone_sha256, created, source_abs (since 2026-11; absent in older shards),
        plus free-form `meta_*` attrs (width, height, rotation, codec...)
    /index/video_id, /index/source, /index/key    vlen UTF-8 string datasets, one row per video
    /index/source_abs         the same for the absolute, normalised source path at extraction ("" for URLs);
                              optional: shards written before it have no such dataset and still read

Each shard has exactly one writer (`ShardWriter`) and is published atomically: it is written under a hidden
temporary name in the same directory, flushed, fsynced and then linked to its final name (no-clobber) or
renamed over it, so a reader never sees a half-written record and a crash leaves only a `.tmp` to delete.
Published shards are immutable. `FeatureStore` reads many shards; looking up by id or by source path reads
only the small `/index` datasets of each shard once. `SourceIndex` matches a path to a recorded source as
given, normalised (`./`, `..`, duplicate slashes), as the absolute path recorded at extraction and, on demand,
through symlinks (realpath).

Video ids are the first `ID_LENGTH` hex digits of the file's content sha256 (same bytes -> same id); the
per-video layout of a features directory is `DIR/<backbone>/<video_id>.h5` (`shard_path`).
"""

from __future__ import annotations

import os
import urllib.parse
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from videotag.core.errors import StoreError
from videotag.core.hashing import sha256_file
from videotag.core.manifest import now_iso

FORMAT = "videotag.features"
FORMAT_VERSION = 1
ID_LENGTH = 32  # hex chars of the content sha256 used as the video id
_STR = h5py.string_dtype("utf-8")


def video_id_for(path: str | Path) -> str:
    """Content-based id: the first 32 hex chars of the file's sha256 (same bytes -> same id)."""
    return sha256_file(path)[:ID_LENGTH]


def shard_path(features_dir: str | Path, backbone: str, video_id: str) -> Path:
    """Where a features directory keeps one video's shard: `features_dir/<backbone>/<video_id>.h5`."""
    return Path(features_dir) / backbone / f"{video_id}.h5"


@dataclass
class FeatureRecord:
    """One video's features [T, D] and provenance."""

    video_id: str
    features: np.ndarray
    source: str
    content_sha256: str = ""
    duration: float = 0.0
    fps: float = 0.0
    decoded_frames: int = 0
    sample_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    sample_timestamps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    sampling: str = "segment"
    backbone: str = ""
    backbone_sha256: str = ""
    created: str = field(default_factory=now_iso)
    meta: dict[str, Any] = field(default_factory=dict)
    source_abs: str = ""  # absolute normalised path at extraction ("" for URLs or unknown): see absolute_source

    @property
    def num_frames(self) -> int:
        return int(self.features.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1])


def absolute_source(source: str) -> str:
    """The absolute, normalised form of a local source path (relative to the cwd now); "" for URLs/empty."""
    if not source or "://" in source:
        return ""
    return os.path.normpath(os.path.abspath(os.path.expanduser(source)))


class SourceIndex:
    """Video ids by source path: exact as recorded, normalised, absolute (recorded or assumed), realpath.

    `lookup(path)` tries the exact string, then its normalised form against normalised recorded sources and
    absolute paths recorded at extraction (`source_abs`), then (old shards without `source_abs`) relative
    sources taken relative to the current directory. `lookup_realpath(path)` compares symlink-free paths; its
    index is built on first use (one realpath per video). The first video recorded for a path wins.
    """

    def __init__(self) -> None:
        self._exact: dict[str, str] = {}
        self._norm: dict[str, str] = {}
        self._guess: dict[str, str] = {}
        self._abs: list[tuple[str, str]] = []  # (absolute path, video id) for the realpath index
        self._real: dict[str, str] | None = None

    def add(self, video_id: str, source: str, source_abs: str = "") -> None:
        if not source and not source_abs:
            return
        self._exact.setdefault(source, video_id)
        if "://" in source:
            return
        norm = os.path.normpath(source) if source else ""
        if norm:
            self._norm.setdefault(norm, video_id)
        if source_abs:
            self._norm.setdefault(os.path.normpath(source_abs), video_id)
            self._abs.append((source_abs, video_id))
        elif norm and os.path.isabs(norm):
            self._abs.append((norm, video_id))
        elif norm:  # old shard, relative source: assume it was extracted from the current directory
            guess = os.path.abspath(norm)
            self._guess.setdefault(guess, video_id)
            self._abs.append((guess, video_id))
        self._real = None

    def lookup(self, path: str) -> str | None:
        """Exact, then normalised, then assumed-absolute match of `path`; None when nothing matches."""
        if path in self._exact:
            return self._exact[path]
        if not path or "://" in path:
            return None
        norm = os.path.normpath(path)
        return self._norm.get(norm) or (self._guess.get(norm) if os.path.isabs(norm) else None)

    def lookup_realpath(self, path: str) -> str | None:
        """Match `path` through symlinks: realpath(path) against the realpaths of every recorded source."""
        if not path or "://" in path:
            return None
        if self._real is None:
            self._real = {}
            for p, vid in self._abs:
                self._real.setdefault(os.path.realpath(p), vid)
        return self._real.get(os.path.realpath(path))


def _key(video_id: str) -> str:
    if not video_id:
        raise StoreError("video_id must be a non-empty string")
    return urllib.parse.quote(video_id, safe="")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse directory fsync; the rename is still atomic
    finally:
        os.close(fd)


class ShardWriter:
    """Single writer of one shard. Use as a context manager; the shard appears only on clean exit.

    on_exists: "error" (default) refuses to replace an existing shard, "replace" swaps it atomically,
    "keep" leaves the existing one and discards this write (idempotent re-runs).
    """

    def __init__(self, path: str | Path, on_exists: str = "error") -> None:
        assert on_exists in ("error", "replace", "keep")
        self.path = Path(path)
        self.on_exists = on_exists
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.parent / f".{self.path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        self._f: h5py.File | None = h5py.File(self._tmp, "w")
        self._f.attrs["format"] = FORMAT
        self._f.attrs["format_version"] = FORMAT_VERSION
        self._f.attrs["created"] = now_iso()
        self._videos = self._f.create_group("videos")
        self._index: list[tuple[str, str, str, str]] = []
        self.published = False

    def add(self, rec: FeatureRecord) -> None:
        assert self._f is not None, "writer is closed"
        feats = np.asarray(rec.features)
        if feats.ndim != 2 or feats.shape[0] == 0:
            raise StoreError(f"{rec.video_id}: features must be a non-empty [T, D] array, got {feats.shape}")
        if not np.isfinite(feats).all():
            raise StoreError(f"{rec.video_id}: features contain NaN or inf")
        key = _key(rec.video_id)
        if key in self._videos:
            raise StoreError(f"{rec.video_id}: already in this shard")
        ds = self._videos.create_dataset(key, data=feats.astype(np.float16))
        a = ds.attrs
        a["video_id"] = rec.video_id
        a["source"] = rec.source
        a["content_sha256"] = rec.content_sha256
        a["duration"] = float(rec.duration)
        a["fps"] = float(rec.fps)
        a["decoded_frames"] = int(rec.decoded_frames)
        a["sample_indices"] = np.asarray(rec.sample_indices, dtype=np.int64)
        a["sample_timestamps"] = np.asarray(rec.sample_timestamps, dtype=np.float64)
        a["sampling"] = rec.sampling
        a["backbone"] = rec.backbone
        a["backbone_sha256"] = rec.backbone_sha256
        a["created"] = rec.created
        a["source_abs"] = rec.source_abs
        for k, v in rec.meta.items():
            a[f"meta_{k}"] = v if v is not None else ""
        self._index.append((rec.video_id, rec.source, key, rec.source_abs))

    def __len__(self) -> int:
        return len(self._index)

    def close(self) -> Path:
        """Write the index, flush, fsync and publish. Returns the final path."""
        if self._f is None:
            return self.path
        idx = self._f.create_group("index")
        for col, name in enumerate(("video_id", "source", "key", "source_abs")):
            idx.create_dataset(name, data=np.array([r[col] for r in self._index], dtype=object), dtype=_STR)
        self._f.flush()
        self._f.close()
        self._f = None
        fd = os.open(self._tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            if self.on_exists == "replace":
                os.replace(self._tmp, self.path)
            else:
                os.link(self._tmp, self.path)  # atomic and refuses to clobber
                os.unlink(self._tmp)
        except FileExistsError:
            os.unlink(self._tmp)
            if self.on_exists == "error":
                raise StoreError(f"{self.path}: shard already exists (pass on_exists='replace' or 'keep')") from None
            return self.path
        _fsync_dir(self.path.parent)
        self.published = True
        return self.path

    def abort(self) -> None:
        """Discard everything written so far."""
        if self._f is not None:
            self._f.close()
            self._f = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_shard(path: str | Path, records: Iterable[FeatureRecord], on_exists: str = "error") -> Path:
    """Write `records` into one new shard, published atomically (see ShardWriter)."""
    with ShardWriter(path, on_exists=on_exists) as w:
        for r in records:
            w.add(r)
    return Path(path)


def _shard_paths(paths: Iterable[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*.h5") if not q.name.startswith(".")))
        elif p.is_file():
            out.append(p)
        else:
            raise StoreError(f"{p}: no such feature store file or directory")
    return out


class FeatureStore:
    """Read-only view over one or more shards (files or directories of `*.h5`)."""

    def __init__(self, paths: str | Path | Iterable[str | Path], max_open: int = 64) -> None:
        if isinstance(paths, str | Path):
            paths = [paths]
        self.shards = _shard_paths(paths)
        self._by_id: dict[str, tuple[Path, str]] = {}
        self._by_source: dict[str, str] = {}
        self._sources = SourceIndex()
        self._open: OrderedDict[Path, h5py.File] = OrderedDict()
        self._max_open = max_open
        for shard in self.shards:
            f = self._file(shard)
            if f.attrs.get("format") != FORMAT:
                raise StoreError(f"{shard}: not a videotag feature file (format={f.attrs.get('format')!r})")
            if "index" not in f:
                raise StoreError(f"{shard}: has no /index (written by an interrupted or foreign writer)")
            ids = f["index/video_id"].asstr()[()]
            sources = f["index/source"].asstr()[()]
            keys = f["index/key"].asstr()[()]
            absolute = f["index/source_abs"].asstr()[()] if "source_abs" in f["index"] else [""] * len(ids)
            for vid, src, key, src_abs in zip(ids, sources, keys, absolute, strict=True):
                if vid in self._by_id:
                    other = self._by_id[vid][0]
                    raise StoreError(f"video id {vid!r} appears in both {other} and {shard}")
                self._by_id[vid] = (shard, key)
                self._by_source.setdefault(src, vid)
                self._sources.add(vid, src, src_abs)

    def _file(self, shard: Path) -> h5py.File:
        f = self._open.get(shard)
        if f is None:
            f = h5py.File(shard, "r")
            self._open[shard] = f
            if len(self._open) > self._max_open:
                self._open.popitem(last=False)[1].close()
        else:
            self._open.move_to_end(shard)
        return f

    def ids(self) -> list[str]:
        return list(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, video_id: str) -> bool:
        return video_id in self._by_id

    def resolve(self, id_or_source: str) -> str | None:
        """Map an id or a source path to a video id: as recorded, else normalised/absolute (`SourceIndex.lookup`).

        Relative paths are not re-based here: `predictor.data.match_key` tries the label file's directory and
        the current directory, symlinks and file content.
        """
        if id_or_source in self._by_id:
            return id_or_source
        return self._by_source.get(id_or_source) or self._sources.lookup(id_or_source)

    def resolve_realpath(self, path: str) -> str | None:
        """Map a path to a video id through symlinks (realpath on both sides)."""
        return self._sources.lookup_realpath(path)

    def location(self, video_id: str) -> dict[str, str]:
        shard, _ = self._by_id[video_id]
        return {"path": str(shard), "video_id": video_id}

    def attrs(self, video_id: str) -> dict[str, Any]:
        shard, key = self._lookup(video_id)
        return dict(self._file(shard)["videos"][key].attrs)

    def _lookup(self, video_id: str) -> tuple[Path, str]:
        try:
            return self._by_id[video_id]
        except KeyError:
            raise StoreError(f"video {video_id!r} not in feature store ({len(self.shards)} shard(s))") from None

    def get(self, video_id: str) -> FeatureRecord:
        shard, key = self._lookup(video_id)
        ds = self._file(shard)["videos"][key]
        a = dict(ds.attrs)
        return FeatureRecord(
            video_id=str(a["video_id"]),
            features=ds[()],
            source=str(a["source"]),
            content_sha256=str(a["content_sha256"]),
            duration=float(a["duration"]),
            fps=float(a["fps"]),
            decoded_frames=int(a["decoded_frames"]),
            sample_indices=np.asarray(a["sample_indices"]),
            sample_timestamps=np.asarray(a["sample_timestamps"]),
            sampling=str(a["sampling"]),
            backbone=str(a["backbone"]),
            backbone_sha256=str(a["backbone_sha256"]),
            created=str(a["created"]),
            meta={k[5:]: (v.item() if hasattr(v, "item") else v) for k, v in a.items() if k.startswith("meta_")},
            source_abs=str(a.get("source_abs", "")),
        )

    def features(self, video_id: str) -> np.ndarray:
        shard, key = self._lookup(video_id)
        return self._file(shard)["videos"][key][()]

    def __iter__(self) -> Iterator[FeatureRecord]:
        for vid in self._by_id:
            yield self.get(vid)

    def backbones(self) -> set[tuple[str, str]]:
        """Distinct (backbone, backbone_sha256) pairs in the store."""
        out = set()
        for vid in self._by_id:
            a = self.attrs(vid)
            out.add((str(a["backbone"]), str(a["backbone_sha256"])))
        return out

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
