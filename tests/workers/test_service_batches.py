"""Queue-driven tagging on the real stack: embedded Redis, the API and real Celery worker processes (prefork
pools, no eager mode), real generated videos through the real pipeline (EfficientNet-Lite0, 8 frames).

Covers: a 50-video batch with exact counts; SIGKILL of a pool process and of a worker's main process mid-batch;
bad videos inside a batch; a duplicated message (idempotence); re-prediction with another model on the stored
features; a full restart (workers and API crashed, Redis restarted from its AOF) that resumes a batch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import videogen
from service_helpers import (
    REPO,
    SECOND_MODEL,
    all_results,
    children_of,
    external_redis_mode,
    make_clips,
    service_settings,
    start_service,
    use_broker,
    wait_batch,
    wait_for,
)

from videotag.core.feature_store import FeatureStore
from workers.jobstore import JobStore


@pytest.fixture(scope="module")
def svc(tmp_path_factory, weights, clips_root):
    tmp = tmp_path_factory.mktemp("svc")
    s = start_service(service_settings(tmp, weights, path_roots=[clips_root]))
    yield s
    s.stop(worker_grace=10)


def videotag_cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDEOTAG_")}
    p = subprocess.run([sys.executable, "-m", "videotag", *args, "--data-dir", str(data_dir)], capture_output=True,
                       text=True, cwd=REPO, env=env, timeout=120)  # fmt: skip
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def check_results_dir(batch: dict, sources: list[str]) -> list[dict]:
    """results.jsonl has exactly one line per source; one VideoTag JSON per successful video."""
    out = Path(batch["results_dir"])
    rows = [json.loads(ln) for ln in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(r["source"] for r in rows) == sorted(sources)
    ok = [r for r in rows if r["ok"]]
    assert len(list(out.glob("*.json"))) == len(ok)
    for r in ok:
        data = json.loads((out / f"{Path(r['source']).name}.json").read_text(encoding="utf-8"))
        assert data[0] == r["source"] and len(data) == len(r["tags"]) + 1
    return rows


def test_batch_of_50_exact_counts(svc, client, jobstore, clips_root, tmp_path):
    clips = make_clips(clips_root / "fifty", 50)
    flist = tmp_path / "list.txt"
    flist.write_text("\n".join(map(str, clips)) + "\n", encoding="utf-8")
    t0 = time.monotonic()
    batch_id = videotag_cli("submit", "--filelist", str(flist), data_dir=svc.data_dir).stdout.strip()
    assert batch_id.startswith("b")
    batch = wait_batch(client, batch_id, timeout=300)
    elapsed = time.monotonic() - t0
    assert (batch["total"], batch["done"], batch["failed"], batch["pending"]) == (50, 50, 0, 0)
    assert batch["progress"] == 1.0
    items = all_results(client, batch_id)
    assert [it["index"] for it in items] == list(range(50))
    assert [it["source"] for it in items] == [str(c) for c in clips]
    assert all(it["status"] == "done" and len(it["result"]["tags"]) == 5 for it in items)
    assert len({it["result"]["video_id"] for it in items}) == 50
    check_results_dir(batch, [str(c) for c in clips])
    shards = list((svc.data_dir / "features" / "efficientnet_lite0").glob("*.h5"))
    assert {s.stem for s in shards} >= {it["result"]["video_id"] for it in items}
    assert not list((svc.data_dir / "features").rglob("*.tmp"))
    status = videotag_cli("status", batch_id, data_dir=svc.data_dir).stdout
    assert "complete" in status and "50/50" in status and batch["results_dir"] in status.replace("\n", "")
    print(f"50-video batch: {elapsed:.1f} s")


def test_submit_a_directory_and_a_commented_filelist(svc, client, clips_root, tmp_path):
    """`videotag submit DIR` queues each video in DIR (as `tag DIR` tags them); filelist comments are skipped."""
    from videotag.inputs import expand_inputs

    d = clips_root / "submit_dir"
    clips = make_clips(d / "sub", 2, prefix="sd", frames=8) + make_clips(d, 1, prefix="top", frames=8)
    (d / "notes.txt").write_text("not a video", encoding="utf-8")
    flist = tmp_path / "list.txt"
    flist.write_text(f"# header\n\n{clips[0]}\n   # indented comment\n", encoding="utf-8")
    batch_id = videotag_cli("submit", str(d), "--filelist", str(flist), data_dir=svc.data_dir).stdout.strip()
    batch = wait_batch(client, batch_id)
    want = expand_inputs([str(d)]) + [str(clips[0])]
    assert len(want) == 4 and (batch["total"], batch["done"]) == (4, 4), batch
    assert [it["source"] for it in all_results(client, batch_id)] == want


def test_repredict_uses_stored_features_only(svc, client, jobstore, clips_root):
    clips = make_clips(clips_root / "fifty", 50)[:12]
    r = client.post("/v1/batches", json={"paths": [str(c) for c in clips] + [str(clips_root / "gone.mp4")]})
    parent = wait_batch(client, r.json()["batch_id"])
    extracts_before = jobstore.metrics().get("extract:count", 0)
    r = client.post(f"/v1/batches/{parent['batch_id']}/repredict", json={"model": SECOND_MODEL, "topk": 3})
    assert r.status_code == 202, r.text
    child = wait_batch(client, r.json()["batch_id"])
    assert (child["kind"], child["parent"], child["total"], child["done"], child["failed"]) == (
        "repredict", parent["batch_id"], 13, 12, 1)  # fmt: skip
    assert jobstore.metrics().get("extract:count", 0) == extracts_before  # no decoding, no stage 1 at all
    items = all_results(client, child["batch_id"])
    names = {"red", "green", "blue", "white", "black", "grid", "noise"}
    for it in items[:12]:
        res = it["result"]
        assert res["model"] == SECOND_MODEL and len(res["tags"]) == 3
        assert {t["class_name"] for t in res["tags"]} <= names
        job = jobstore.get(it["job_id"])
        assert job.extract_started is None and job.input == "features"
    assert items[12]["status"] == "failed" and items[12]["error"]["code"] == "missing"
    assert "no stored features" in items[12]["error"]["reason"]


def test_bad_videos_get_per_item_errors(svc, client, clips_root):
    d = clips_root / "bad"
    d.mkdir()
    good = make_clips(d, 4, prefix="good")
    bad = {
        "not_a_video": videogen.make_not_a_video(d / "text.mp4"),
        "audio_only": videogen.make_audio_only(d / "tone.m4a"),
        "missing": d / "nope.mp4",
        "empty": d / "empty.mp4",
    }
    bad["empty"].write_bytes(b"")
    trunc = videogen.make_truncated(d / "cut.mp4", fraction=0.05, frames=40, size=(64, 48))
    paths = [str(p) for p in good[:2]] + [str(p) for p in bad.values()] + [str(p) for p in good[2:]]
    r = client.post("/v1/batches", json={"paths": paths + [str(trunc)]})
    batch = wait_batch(client, r.json()["batch_id"])
    items = {it["source"]: it for it in all_results(client, batch["batch_id"])}
    for code, p in bad.items():
        it = items[str(p)]
        assert it["status"] == "failed" and it["result"] is None
        assert it["error"]["code"] == code and it["error"]["reason"] and it["error"]["stage"] == "extract"
    for p in good:
        assert items[str(p)]["status"] == "done"
    cut = items[str(trunc)]  # a file cut to 5%: fails with a specific reason, or tags what survived (never lost)
    assert cut["status"] in ("done", "failed")
    if cut["status"] == "failed":
        assert cut["error"]["code"] in ("truncated", "no_frames", "not_a_video")
    n_failed = sum(it["status"] == "failed" for it in items.values())
    assert (batch["done"], batch["failed"]) == (len(paths) + 1 - n_failed, n_failed)
    rows = check_results_dir(batch, paths + [str(trunc)])
    assert {r["error"]["code"] for r in rows if not r["ok"]} >= set(bad)


def test_duplicate_messages_record_one_result(svc, client, jobstore, clips_root):
    """The same job's messages delivered three times: one result, one feature shard, counts of one."""
    from workers.celery_app import enqueue

    use_broker(svc.redis_url)
    (clip,) = make_clips(clips_root / "dup", 1, prefix="dup", frames=30)
    batch_id, (job_id,) = jobstore.create_batch([str(clip)], "path", model="imagenet_framepool")
    enqueue([(job_id, "extract", None)] * 3)
    batch = wait_batch(client, batch_id)
    wait_for(lambda: jobstore.get(job_id).attempts >= 2, 30, "the duplicate deliveries to run")
    time.sleep(1.0)  # let any straggling duplicate finish: it must not change anything
    batch = client.get(f"/v1/batches/{batch_id}").json()
    assert (batch["total"], batch["done"], batch["failed"]) == (1, 1, 0)
    check_results_dir(batch, [str(clip)])
    job = jobstore.get(job_id)
    with FeatureStore(job.location["path"]) as fs:
        assert fs.ids() == [job.video_id] and fs.get(job.video_id).num_frames == 8


def _slow_clips(d: Path, n: int) -> list[Path]:
    """Clips that take ~0.5-1 s to extract here (longer decode), so a kill lands inside a task."""
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = d / f"slow_{i:02d}.mp4"
        videogen.make_video(p, frames=150 + i, size=(320, 240), fps=25, gop=50)
        out.append(p)
    return out


def _kill_mid_task(svc, jobstore, job_ids: list[str], kill) -> str:
    """Wait until some job is being extracted, then kill; returns that job's id."""

    def running():
        for j in jobstore.get_many(job_ids):
            if j is not None and j.status == "extracting":
                return j.id
        return None

    victim = wait_for(running, 120, "a job in stage 1", interval=0.02)
    kill()
    return victim  # type: ignore[return-value]


def _check_exactly_once(client, jobstore, batch_id: str, sources: list[str], victim: str) -> None:
    batch = wait_batch(client, batch_id, timeout=300)
    assert (batch["total"], batch["done"], batch["failed"]) == (len(sources), len(sources), 0)
    check_results_dir(batch, sources)
    items = all_results(client, batch_id)
    assert len({it["result"]["video_id"] for it in items}) == len(sources)
    job = jobstore.get(victim)
    assert job.status == "done" and job.attempts >= 3  # extract ran again after the kill, then predict


def test_sigkill_pool_process_mid_batch(svc, client, jobstore, clips_root):
    clips = _slow_clips(clips_root / "kill_pool", 6)
    r = client.post("/v1/batches", json={"paths": [str(c) for c in clips]})
    batch_id = r.json()["batch_id"]
    main_pid = svc.child("extract-worker").proc.pid
    (pool_pid,) = children_of(main_pid)

    victim = _kill_mid_task(svc, jobstore, jobstore.batch_items(batch_id), lambda: os.kill(pool_pid, signal.SIGKILL))
    _check_exactly_once(client, jobstore, batch_id, [str(c) for c in clips], victim)
    assert svc.child("extract-worker").proc.poll() is None  # the worker itself lived on…
    assert children_of(main_pid) and children_of(main_pid) != [pool_pid]  # …with a new pool process


@pytest.mark.skipif(external_redis_mode(), reason="serve requeues a dead worker's messages only with its embedded "
                    "Redis; on an external one they wait for the visibility timeout")  # fmt: skip
def test_sigkill_worker_main_process_mid_batch(svc, client, jobstore, clips_root):
    """The whole extract worker dies; the supervisor restarts it and requeues the message it held."""
    clips = _slow_clips(clips_root / "kill_main", 5)
    r = client.post("/v1/batches", json={"paths": [str(c) for c in clips]})
    batch_id = r.json()["batch_id"]
    proc = svc.child("extract-worker").proc

    def kill() -> None:
        os.killpg(proc.pid, signal.SIGKILL)  # the worker and its pool process
        proc.wait()

    victim = _kill_mid_task(svc, jobstore, jobstore.batch_items(batch_id), kill)
    assert svc.poll() == ["extract-worker"]
    _check_exactly_once(client, jobstore, batch_id, [str(c) for c in clips], victim)


@pytest.mark.skipif(external_redis_mode(), reason="restarts the embedded Redis (VIDEOTAG_TEST_REDIS=external7)")
def test_full_restart_resumes_batch(tmp_path, weights, clips_root):
    """Workers and API SIGKILLed mid-batch, Redis restarted from its append-only file: done items are kept
    as they were (not redone), the rest completes, every video has exactly one result."""
    clips = _slow_clips(clips_root / "restart", 8)
    settings = service_settings(tmp_path, weights, path_roots=[clips_root])
    svc = start_service(settings)
    try:
        with httpx.Client(base_url=svc.api_url, timeout=60) as c:
            batch_id = c.post("/v1/batches", json={"paths": [str(p) for p in clips]}).json()["batch_id"]
        st = JobStore.from_url(svc.redis_url)
        ids = st.batch_items(batch_id)
        wait_for(lambda: st.batch(batch_id)["done"] >= 2, 120, "two items done", interval=0.05)
        for child in svc.children:  # crash: SIGKILL the API and both workers (with their pool processes)
            os.killpg(child.proc.pid, signal.SIGKILL)
            child.proc.wait()
        before = {j.id: j for j in st.get_many(ids) if j.status == "done"}
        st.r.close()
    finally:
        redis_pid = svc.redis.proc.pid
        svc.stop(worker_grace=5)  # children are gone; Redis gets SHUTDOWN (its AOF is what survives)
    assert 2 <= len(before) < len(clips)
    svc2 = start_service(settings)
    try:
        assert svc2.redis.proc.pid != redis_pid
        st = JobStore.from_url(svc2.redis_url)
        with httpx.Client(base_url=svc2.api_url, timeout=60) as c:
            batch = wait_batch(c, batch_id, timeout=300)
        assert (batch["total"], batch["done"], batch["failed"]) == (8, 8, 0)
        check_results_dir(batch, [str(p) for p in clips])
        for j in st.get_many(list(before)):  # done before the crash: untouched since
            old = before[j.id]
            assert (j.finished, j.attempts, j.result) == (old.finished, old.attempts, old.result)
        st.r.close()
    finally:
        svc2.stop(worker_grace=10)


def test_soft_time_limit_records_timeout(tmp_path, weights, clips_root):
    """A stage running past the soft time limit fails with code `timeout` (recorded, not retried or lost)."""
    clip = videogen.make_video(clips_root / "long.mp4", frames=400, size=(64, 48), fps=25, gop=50)
    settings = service_settings(tmp_path, weights, path_roots=[clips_root], frames=300,  # 300 CNN frames: > 1 s
                                task_soft_time_limit_s=1, task_time_limit_s=60)  # fmt: skip
    svc = start_service(settings)
    try:
        with httpx.Client(base_url=svc.api_url, timeout=60) as c:
            r = c.post("/v1/tag", json={"path": str(clip)})
            job = r.json()
            assert r.status_code == 422, r.text
            assert job["error"]["code"] == "timeout" and "soft time limit of 1 s" in job["error"]["reason"]
            assert job["attempts"] == 1  # failed once, not retried
            assert svc.child("extract-worker").proc.poll() is None
    finally:
        svc.stop(worker_grace=10)
