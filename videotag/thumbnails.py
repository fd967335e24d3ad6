"""A strip of small JPEG frames of a local video (the web page's preview), cached on disk per job.

The API serves it (`GET /v1/jobs/{id}/frames`); the extract worker makes it for an upload before deleting the
upload (retention), so the strip outlives the file.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from videotag.core.settings import Settings


def thumbs_dir(settings: Settings, job_id: str) -> Path:
    """Where one job's strip is cached: `data_dir/thumbs/<job_id>/<frame index>.jpg`."""
    return Path(settings.data_dir).resolve() / "thumbs" / job_id


def cached_thumbnails(out_dir: Path) -> list[tuple[int, bytes]]:
    """The strip already cached under `out_dir` ([] when none)."""
    cached = sorted(out_dir.glob("*.jpg"), key=lambda p: int(p.stem)) if out_dir.is_dir() else []
    return [(int(p.stem), p.read_bytes()) for p in cached]


def thumbnails(source: str, out_dir: Path, count: int = 8, width: int = 160) -> list[tuple[int, bytes]]:
    """`count` frames sampled uniformly from a local video as small JPEGs, cached under `out_dir`."""
    from PIL import Image

    from extractor.decode import SampledDecoder

    if cached := cached_thumbnails(out_dir):
        return cached
    # The API (first page request) and the extract worker (before deleting an upload) may make the same strip at
    # once: each writes its own temporary folder and publishes it with one rename; the loser serves the winner's.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        dec = SampledDecoder(source, num_frames=count)
        got: dict[int, object] = {int(i): rgb for i, rgb in dec}  # keyed by index: a 2nd pass may repeat frames
        keep = [int(i) for i in dec.plan.indices] if dec.plan is not None else sorted(got)
        out = []
        for index in dict.fromkeys(keep):  # short videos repeat indices cyclically: one thumbnail each
            img = Image.fromarray(got[index])
            img.thumbnail((width, width * 4))
            path = tmp / f"{index}.jpg"
            img.save(path, "JPEG", quality=80)
            out.append((index, path.read_bytes()))
        try:
            tmp.rename(out_dir)  # replaces an empty out_dir; fails when another writer published first
        except OSError:
            if cached := cached_thumbnails(out_dir):
                return cached
            raise
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
