"""Workers with several videos in flight, on the real stack (embedded Redis, API, real worker processes).

The extract worker runs 3 decoders (a threads pool: 3 videos in flight feeding one CNN session) and the predict
worker batches up to 8 waiting videos (a threads pool around one MicroBatcher). Checked: a mixed batch with a bad
file gets exactly one result per item, videos really overlap in stage 1, a SIGKILLed extract worker with several
videos in hand loses none and duplicates none, and the time limit still holds without Celery's (threads pools
have none).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest
import videogen
from service_helpers import (
    all_results,
    children_of,
    external_redis_mode,
    service_settings,
    start_service,
    wait_batch,
    wait_for,
)


@pytest.fixture(scope="module")
def svc(tmp_path_factory, weights, clips_root):
    settings = service_settings(tmp_path_factory.mktemp("svc"), weights, path_roots=[clips_root], frames=32,
                                decoders=3, predict_batch=8)  # fmt: skip
    s = start_service(settings)
    yield s
    s.stop(worker_grace=10)


def _clips(d: Path, n: int, frames: int = 40, size: tuple[int, int] = (96, 64)) -> list[Path]:
    """n clips of different lengths and frame rates (distinct bytes, so distinct video ids)."""
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = d / f"c{i:02d}.mp4"
        videogen.make_video(p, frames=frames + 7 * i, size=size, fps=10 + i, gop=10)
        out.append(p)
    return out


def _overlaps(jobs) -> int:
    """How many pairs of jobs were in stage 1 at the same time."""
    spans = sorted((j.extract_started, j.extract_finished) for j in jobs if j.extract_finished)
    return sum(1 for i, (_, end) in enumerate(spans) for s, _ in spans[i + 1 :] if s < end)


def test_threads_pools_tag_a_mixed_batch_exactly_once(svc, client, jobstore, clips_root, tmp_path):
    clips = [str(c) for c in _clips(clips_root / "mixed", 14)]
    bad = clips_root / "mixed" / "broken.mp4"
    bad.write_bytes(b"not a video at all " * 100)
    sources = clips[:7] + [str(bad)] + clips[7:]
    r = client.post("/v1/batches", json={"paths": sources})
    assert r.status_code in (200, 201, 202), r.text
    batch = wait_batch(client, r.json()["batch_id"], timeout=300)
    assert (batch["total"], batch["done"], batch["failed"]) == (15, 14, 1)
    items = all_results(client, batch["batch_id"])
    assert [it["source"] for it in items] == sources
    assert items[7]["status"] == "failed" and items[7]["error"]["code"] == "not_a_video"
    ok = [it for it in items if it["status"] == "done"]
    assert len({it["result"]["video_id"] for it in ok}) == 14 and all(len(it["result"]["tags"]) == 5 for it in ok)
    jobs = jobstore.get_many(jobstore.batch_items(batch["batch_id"]))
    assert all(j.attempts == 2 for j in jobs if j.status == "done")  # extract once, predict once
    assert _overlaps(jobs) >= 3, "stage 1 never had several videos in flight"
    main = svc.child("extract-worker").proc.pid
    assert children_of(main) == [], "the extract worker should run threads, not pool processes"
    rows = (Path(batch["results_dir"]) / "results.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 15


@pytest.mark.skipif(external_redis_mode(), reason="serve requeues a dead worker's messages only with its embedded "
                    "Redis; on an external one they wait for the visibility timeout")  # fmt: skip
def test_sigkill_with_several_videos_in_flight(svc, client, jobstore, clips_root):
    """The extract worker dies holding 3 videos; all come back, each gets exactly one result."""
    clips = [str(c) for c in _clips(clips_root / "kill", 8, frames=150, size=(320, 240))]
    r = client.post("/v1/batches", json={"paths": clips})
    batch_id = r.json()["batch_id"]
    ids = jobstore.batch_items(batch_id)

    def in_flight() -> list[str] | None:
        busy = [j.id for j in jobstore.get_many(ids) if j is not None and j.status == "extracting"]
        return busy if len(busy) >= 2 else None

    victims = wait_for(in_flight, 120, "two videos in stage 1 at once", interval=0.02)
    proc = svc.child("extract-worker").proc
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert svc.poll() == ["extract-worker"]
    batch = wait_batch(client, batch_id, timeout=300)
    assert (batch["total"], batch["done"], batch["failed"]) == (8, 8, 0)
    items = all_results(client, batch_id)
    assert len({it["result"]["video_id"] for it in items}) == 8
    rows = (Path(batch["results_dir"]) / "results.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 8
    for v in victims:  # type: ignore[union-attr]
        job = jobstore.get(v)
        assert job.status == "done" and job.attempts >= 3  # extract again after the kill, then predict


def test_time_limit_holds_in_a_threads_pool(tmp_path, weights, clips_root):
    """Threads pools have no Celery time limits: the engine's own limit fails the video with `timeout`."""
    clip = videogen.make_video(clips_root / "long.mp4", frames=400, size=(64, 48), fps=25, gop=50)
    settings = service_settings(tmp_path, weights, path_roots=[clips_root], frames=300, decoders=2,
                                task_soft_time_limit_s=1, task_time_limit_s=60)  # fmt: skip
    svc = start_service(settings)
    try:
        with httpx.Client(base_url=svc.api_url, timeout=60) as c:
            t0 = time.monotonic()
            r = c.post("/v1/tag", json={"path": str(clip)})
            job = r.json()
            assert r.status_code == 422, r.text
            assert job["error"]["code"] == "timeout" and "soft time limit of 1 s" in job["error"]["reason"]
            assert job["attempts"] == 1 and time.monotonic() - t0 < 30
            assert svc.child("extract-worker").proc.poll() is None
    finally:
        svc.stop(worker_grace=10)
