"""Retention, warnings and failed-item reporting on the real stack (embedded Redis, API, Celery workers).

Uploads are gone once their jobs end (the preview strip stays); records of ended jobs carry an expiry; a file cut
short with its index at the front is tagged with a warning; `videotag status --watch` names the failed items and
`--failed` prints them as JSONL; `videotag gc --batch --dry-run` lists the batch's data; /metrics weighs the disk.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import videogen
from service_helpers import REPO, make_clips, make_weights, service_settings, start_service, wait_batch, wait_for

from workers.jobstore import JobStore, batch_key, job_key


@pytest.fixture(scope="module")
def env(tmp_path_factory, default_weights):
    tmp = tmp_path_factory.mktemp("retention")
    weights = make_weights(tmp / "weights", default_weights)
    clips = tmp / "clips"
    make_clips(clips, 2)
    svc = start_service(service_settings(tmp, weights, path_roots=[clips], record_ttl_s=3600))
    with httpx.Client(base_url=svc.api_url, timeout=120) as c:
        yield {"svc": svc, "client": c, "clips": clips, "tmp": tmp, "store": JobStore.from_url(svc.redis_url)}
    svc.stop(worker_grace=10)


def cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDEOTAG_")}
    return subprocess.run([sys.executable, "-m", "videotag", *args, "--data-dir", str(data_dir)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=300)  # fmt: skip


def test_uploads_deleted_records_expire_truncated_warned(env):
    c, tmp, store = env["client"], env["tmp"], env["store"]
    cut = videogen.make_video(tmp / "cut.mp4", frames=300, faststart=True)
    with open(cut, "r+b") as f:
        f.truncate(cut.stat().st_size // 3)
    good = videogen.make_video(tmp / "good.mp4", frames=30)
    ids = []
    for name, data in (("cut.mp4", cut.read_bytes()), ("good.mp4", good.read_bytes()), ("bad.mp4", b"not a video")):
        r = c.post("/v1/jobs", files={"file": (name, data)})
        assert r.status_code == 202, r.text
        ids.append(r.json()["job_id"])
    jobs = [wait_for(lambda j=j: (x := c.get(f"/v1/jobs/{j}").json())["status"] in ("done", "failed") and x,
                     240, f"job {j}") for j in ids]  # fmt: skip
    assert [j["status"] for j in jobs] == ["done", "done", "failed"]
    warnings = jobs[0]["result"]["warnings"]
    assert any("frames the header promised: the file looks truncated" in w for w in warnings), warnings
    assert jobs[1]["result"]["warnings"] == []
    uploads = Path(tmp / "data" / "uploads")
    wait_for(lambda: not any(uploads.iterdir()), 30, "the uploads directory to empty")
    assert all(0 < store.r.ttl(job_key(j)) <= 3600 for j in ids)
    frames = c.get(f"/v1/jobs/{ids[1]}/frames")  # the upload is gone; its strip was kept
    assert frames.status_code == 200 and frames.json()["frames"], frames.text
    text = c.get("/metrics").text
    disk = {line.split('"')[1]: float(line.split()[-1]) for line in text.splitlines()
            if line.startswith("videotag_disk_bytes{")}  # fmt: skip
    assert disk["features"] > 0 and disk["uploads"] == 0 and set(disk) >= {"uploads", "features", "results"}


def test_status_lists_failed_items_and_gc_batch_dry_run(env):
    c, clips, store = env["client"], env["clips"], env["store"]
    data_dir = env["tmp"] / "data"
    paths = sorted(str(p) for p in clips.glob("*.mp4")) + [str(clips / "missing.mp4")]
    r = c.post("/v1/batches", json={"paths": paths})
    assert r.status_code == 202, r.text
    bid = r.json()["batch_id"]
    p = cli("status", bid, "--watch", data_dir=data_dir)
    assert p.returncode == 0, p.stderr
    assert "failed items (1):" in p.stdout and "missing.mp4" in p.stdout and "[missing]" in p.stdout, p.stdout
    p = cli("status", bid, "--failed", data_dir=data_dir)
    (row,) = [json.loads(line) for line in p.stdout.splitlines()]
    assert row["index"] == 2 and row["code"] == "missing" and row["source"] == paths[2] and row["reason"]
    wait_batch(c, bid)
    assert all(0 < store.r.ttl(k) <= 3600 for k in (batch_key(bid), batch_key(bid) + ":items", job_key(f"{bid}.0")))
    p = cli("gc", "--batch", bid, "--dry-run", data_dir=data_dir)
    assert p.returncode == 0, p.stderr
    kinds = sorted(line.split()[0] for line in p.stdout.splitlines())
    assert kinds == ["features", "features", "results"] and "would remove 3 item(s)" in p.stderr, p.stdout
