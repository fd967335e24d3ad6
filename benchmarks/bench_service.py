"""What the service adds on top of the bare pipeline, and how fast jobs can be enqueued.

1. bare pipeline: `extract_to_store` + `predict_from_store` in this process, per video (warm models).
2. through the service: POST /v1/tag {"path"} one at a time (embedded Redis, API, one extract and one predict
   worker); added latency per job = client wall time - time spent inside the pipeline functions (the worker's
   own measurements of extract_to_store and predict), reported as p50/p95, next to the end-to-end p50/p95.
3. enqueue rate (API + Redis, no workers, so nothing competes): POST /v1/jobs one by one and from 8 threads,
   POST /v1/batches with many paths, and the CLI path (workers.submit.submit_batch in-process).

Usage: python benchmarks/bench_service.py [--n 30] [--frames 16] [--out bench_service.json]
Every video is a distinct generated clip, so no stage-1 result is reused.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import videogen  # noqa: E402
from service_helpers import free_port, make_weights, service_settings, start_service  # noqa: E402

from workers.celery_app import queue_depths  # noqa: E402
from workers.jobstore import JobStore  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def clips(d: Path, n: int, start: int, size: tuple[int, int], frames: int) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    return [videogen.make_video(d / f"c{start + i:04d}.mp4", frames=frames, size=size, fps=10 + start + i)
            for i in range(n)]  # fmt: skip


def bare_pipeline(paths: list[Path], settings) -> list[float]:
    from videotag import pipeline

    feats = Path(settings.data_dir) / "bare-features"
    warm = paths[0]
    pipeline.predict_from_store(pipeline.extract_to_store(str(warm), feats, settings), settings)  # load models
    out = []
    for p in paths[1:]:
        t = time.perf_counter()
        loc = pipeline.extract_to_store(str(p), feats, settings)
        pipeline.predict_from_store(loc, settings)
        out.append(time.perf_counter() - t)
    return out


def through_service(paths: list[Path], svc) -> tuple[list[float], list[float]]:
    total, added = [], []
    with httpx.Client(base_url=svc.api_url, timeout=120) as c:
        c.post("/v1/tag", json={"path": str(paths[0])})  # warm: pool processes load their models
        for p in paths[1:]:
            t = time.perf_counter()
            r = c.post("/v1/tag", json={"path": str(p)})
            wall = time.perf_counter() - t
            job = r.json()
            assert r.status_code == 200, r.text
            tm = job["timings"]
            inside = tm["extract.total_s"] + tm["predict.predict_s"]
            total.append(wall)
            added.append(wall - inside)
    return total, added


def enqueue_rates(tmp: Path, weights: Path, root: Path, n_single: int, n_batch: int) -> dict[str, float]:
    from workers.supervisor import Service

    settings = service_settings(tmp / "enqueue", weights, path_roots=[root])
    svc = Service(settings, port=free_port(), workers=False).start()
    out: dict[str, float] = {}
    try:
        with httpx.Client(base_url=svc.api_url, timeout=120) as c:
            deadline = time.monotonic() + 60
            while True:
                try:
                    c.get("/healthz")
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            body = {"path": str(root / "x.mp4")}
            for _ in range(20):
                c.post("/v1/jobs", json=body)
            t = time.perf_counter()
            for _ in range(n_single):
                assert c.post("/v1/jobs", json=body).status_code == 202
            out["api_jobs_per_s_sequential"] = n_single / (time.perf_counter() - t)

            def one(_: int) -> int:
                return c.post("/v1/jobs", json=body).status_code

            with ThreadPoolExecutor(8) as ex:
                t = time.perf_counter()
                codes = list(ex.map(one, range(n_single)))
                out["api_jobs_per_s_8_clients"] = n_single / (time.perf_counter() - t)
            assert set(codes) == {202}
            jobstore = JobStore.from_url(svc.redis_url)
            depth0 = queue_depths(jobstore.r)["extract"]
            paths = [str(root / f"v{i}.mp4") for i in range(n_batch)]
            t = time.perf_counter()
            r = c.post("/v1/batches", json={"paths": paths})
            assert r.status_code == 202, r.text
            out["api_batch_response_items_per_s"] = n_batch / (time.perf_counter() - t)
            while queue_depths(jobstore.r)["extract"] < depth0 + n_batch:  # published after the response
                time.sleep(0.01)
            out["api_batch_queued_items_per_s"] = n_batch / (time.perf_counter() - t)
        from workers.celery_app import app, celery_broker_url
        from workers.submit import submit_batch

        app.conf.broker_url = celery_broker_url(svc.redis_url)
        t = time.perf_counter()
        submit_batch(jobstore, paths)
        out["cli_batch_items_per_s"] = n_batch / (time.perf_counter() - t)
        out["queue_depth_after"] = float(queue_depths(jobstore.r)["extract"])
        jobstore.r.close()
    finally:
        svc.stop(worker_grace=5)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=30, help="videos per latency measurement")
    ap.add_argument("--frames", type=int, default=16, help="frames sampled per video")
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--clip-frames", type=int, default=50)
    ap.add_argument("--single", type=int, default=300, help="POST /v1/jobs requests per enqueue measurement")
    ap.add_argument("--batch", type=int, default=5000, help="items in the enqueued batch")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    w, h = map(int, a.size.split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="bench-service-"))
    from videotag.defaults import export_defaults

    export_defaults(REPO / "weights")
    weights = make_weights(tmp / "weights", REPO / "weights")
    root = tmp / "videos"
    bare_clips = clips(root / "bare", a.n + 1, 0, (w, h), a.clip_frames)
    svc_clips = clips(root / "svc", a.n + 1, 1000, (w, h), a.clip_frames)
    settings = service_settings(tmp, weights, path_roots=[root], frames=a.frames, batch_size=a.frames,
                                intra_op_threads=0)  # fmt: skip

    bare = bare_pipeline(bare_clips, settings)
    svc = start_service(settings)
    try:
        total, added = through_service(svc_clips, svc)
    finally:
        svc.stop(worker_grace=10)
    rates = enqueue_rates(tmp, weights, root, a.single, a.batch)

    res = {
        "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores",
        "videos": a.n,
        "clip": f"{w}x{h}, {a.clip_frames} frames H.264, {a.frames} sampled, EfficientNet-Lite0 + imagenet_framepool",
        "bare_pipeline_s": {"p50": pct(bare, 50), "p95": pct(bare, 95), "mean": statistics.mean(bare)},
        "service_end_to_end_s": {"p50": pct(total, 50), "p95": pct(total, 95), "mean": statistics.mean(total)},
        "service_added_s": {"p50": pct(added, 50), "p95": pct(added, 95), "mean": statistics.mean(added)},
        "enqueue": rates,
    }
    print(json.dumps(res, indent=2))
    print()
    print("| measure | p50 | p95 |\n|---|---|---|")
    rows = (("bare pipeline per video", "bare_pipeline_s"), ("POST /v1/tag end to end", "service_end_to_end_s"),
            ("added by API + queue", "service_added_s"))  # fmt: skip
    for name, key in rows:
        print(f"| {name} | {1000 * res[key]['p50']:.0f} ms | {1000 * res[key]['p95']:.0f} ms |")
    for k, v in rates.items():
        print(f"| {k} | {v:.0f} | |")
    if a.out:
        a.out.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
