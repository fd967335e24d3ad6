"""Stage-2 throughput through the real queue: sequences/s of the 3396-class Attention-LSTM, batch 1 vs batched.

    python benchmarks/bench_predict_queue.py [--n 400] [--rounds 2] [--batches 16,32] [--out out.json] [--keep DIR]

What it measures: how many feature sequences per second one predict worker turns into recorded results, when N
predict messages wait in the queue at once, for these worker configurations:
    a  predict_batch 1, prefork pool, 1 process      (the old default)
    b  predict_batch 1, prefork pool, 2 processes
    c  predict_batch 16, threads pool of 16          (the new default: one MicroBatcher per worker)
    d  predict_batch 32, threads pool of 32          (and one more config per value in --batches)

How: a VideoTag-shaped predictor bundle (attention_lstm, D=2048, 3396 classes, VideoTag's layer sizes, random
weights) is exported through `predictor.export.export_predictor`; N feature shards of random float16 [300, 2048]
features (distinct video ids, the bundle's backbone name/sha and "segment" sampling) are written to a features
dir. An embedded Redis (`EmbeddedRedis`) runs for the whole benchmark; each configuration gets a fresh worker
subprocess (`python -m workers --queues predict ...`, settings as VIDEOTAG_* variables, intra-op threads at their
default), which is warmed up with a few jobs. Then N jobs are created in the job store as stage 1 leaves them
(status `extracted`, with their features location), all N predict messages are published at once, and the
time from the publish until the last result was recorded (the records' `finished`) gives sequences/s.
Configurations run in interleaved rounds (a, b, c, d, a, b, c, d, ...) so that machine noise hits all alike.

Checks (exit status 1 when any fails): every job is `done` with exactly one result (one notification, attempts
== 1), and every configuration's top tags equal those of the first batch-1 run (same ids, probabilities within
1e-4; ids may swap only where their probabilities tie within that tolerance).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from service_helpers import use_broker  # noqa: E402

from videotag.core.feature_store import ID_LENGTH, FeatureRecord, shard_path, write_shard  # noqa: E402
from videotag.core.settings import Settings  # noqa: E402
from workers.celery_app import enqueue, queue_depths, workers_by_queue  # noqa: E402
from workers.jobstore import JobStore, job_key, notify_key  # noqa: E402
from workers.redis_server import EmbeddedRedis, _die_with_parent  # noqa: E402
from workers.supervisor import settings_env  # noqa: E402

T, D, C = 300, 2048, 3396  # VideoTag: 300 frames of 2048-d TSN features, 3396 classes
BACKBONE = {"name": "videotag_tsn_resnet101", "sha256": hashlib.sha256(b"bench-backbone").hexdigest(), "feature_dim": D}
SAMPLING = "segment"  # VideoTag's rule; the manifest records it, so the shards must carry it
MODEL = "videotag_bench"
TOL = 1e-4


@dataclass
class Config:
    key: str  # a, b, c, ...
    batch: int  # predict_batch
    processes: int | None  # prefork --concurrency (None: threads pool)

    @property
    def label(self) -> str:
        pool = f"prefork x{self.processes}" if self.processes else f"threads x{self.batch}"
        return f"{self.key}: batch {self.batch}, {pool}"


@dataclass
class Run:
    config: str
    round: int
    seq_per_s: float = 0.0
    wall_s: float = 0.0
    publish_s: float = 0.0
    predict_s: list[float] = field(default_factory=list)  # per job: the task's own time (incl. batching wait)
    model_s: list[float] = field(default_factory=list)  # per job: `predict.predict_s` (model call per sequence)
    problems: list[str] = field(default_factory=list)
    tags: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # video id -> [(class id, p)]


# ----------------------------------------------------------------------------------------------- inputs
def build_bundle(weights: Path) -> Path:
    """The VideoTag-shaped predictor (random weights) as an exported bundle `weights/MODEL` (reused if there)."""
    out = weights / MODEL
    man = out / "manifest.json"
    if man.is_file() and json.loads(man.read_text())["num_classes"] == C:
        return out
    import torch

    from predictor.export import export_predictor
    from predictor.models import create_model
    from videotag.core.vocab import Vocabulary

    torch.manual_seed(0)
    model = create_model("attention_lstm", feature_dim=D, num_classes=C)  # defaults: VideoTag's sizes
    vocab = Vocabulary(tuple(f"class_{i}" for i in range(C)))
    t = time.perf_counter()
    export_predictor(model, out, vocab, BACKBONE, sampling=SAMPLING)
    print(f"exported {MODEL} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params) "
          f"in {time.perf_counter() - t:.1f} s", file=sys.stderr)  # fmt: skip
    return out


def write_features(features_dir: Path, n: int) -> list[dict[str, Any]]:
    """n shards of random float16 [T, D] features (reused if there); their store locations."""
    rng = np.random.default_rng(0)
    locs, t, made = [], time.perf_counter(), 0
    for i in range(n):
        sha = hashlib.sha256(f"bench-video-{i}".encode()).hexdigest()
        vid = sha[:ID_LENGTH]
        path = shard_path(features_dir, BACKBONE["name"], vid)
        source = f"/bench/video_{i:05d}.mp4"
        if not path.is_file():
            feats = rng.standard_normal((T, D), dtype=np.float32).astype(np.float16)
            rec = FeatureRecord(video_id=vid, features=feats, source=source, content_sha256=sha, duration=T / 25,
                                fps=25.0, decoded_frames=T, sample_indices=np.arange(T, dtype=np.int64),
                                sample_timestamps=np.arange(T) / 25.0, sampling=SAMPLING, backbone=BACKBONE["name"],
                                backbone_sha256=BACKBONE["sha256"])  # fmt: skip
            write_shard(path, [rec], on_exists="keep")
            made += 1
        locs.append({"path": str(path), "video_id": vid, "source": source, "num_frames": T})
    print(f"{n} feature shards ({made} written in {time.perf_counter() - t:.1f} s) in {features_dir}", file=sys.stderr)
    return locs


# ----------------------------------------------------------------------------------------------- worker
class Worker:
    """One `python -m workers --queues predict` subprocess in its own process group."""

    def __init__(self, cfg: Config, rnd: int, settings: Settings, cwd: Path, log: Path) -> None:
        self.hostname = f"bench-{cfg.key}-r{rnd}-{os.getpid()}@%h"
        env = dict(os.environ)
        for k, v in settings_env(settings).items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        argv = [sys.executable, "-m", "workers", "--queues", "predict", "--hostname", self.hostname]
        if cfg.processes:
            argv += ["--concurrency", str(cfg.processes)]
        self.log = log
        with open(log, "ab") as f:  # cwd: the work dir, so no .env of the caller's directory is read
            self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=f, stderr=subprocess.STDOUT,
                                         preexec_fn=_die_with_parent)  # fmt: skip

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Until the worker answers the control channel as a consumer of `predict`."""
        prefix = self.hostname.split("@")[0] + "@"  # Celery expands %h itself
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode} during start-up:\n{self.tail()}")
            if any(node.startswith(prefix) for node in workers_by_queue(timeout=1.0)["predict"]):
                return
            time.sleep(0.2)
        raise RuntimeError(f"worker {self.hostname} not ready after {timeout:.0f} s:\n{self.tail()}")

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM to the whole group (Celery's warm shutdown), SIGKILL after `grace` seconds."""
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass


# ----------------------------------------------------------------------------------------------- one run
def create_jobs(store: JobStore, locs: list[dict[str, Any]]) -> list[str]:
    """Jobs as stage 1 leaves them: status `extracted`, features location recorded (what `_begin` accepts)."""
    ids = []
    for loc in locs:
        job = store.create_job(loc["source"], "path", video_id=loc["video_id"])
        store.advance(job.id, status="extracted", extract_finished=time.time(), location=loc,
                      video_id=loc["video_id"])  # fmt: skip
        ids.append(job.id)
    return ids


def run_jobs(store: JobStore, locs: list[dict[str, Any]], timeout: float, run: Run | None = None) -> Run:
    """Publish one predict message per location at once; wait for every result; check and collect them."""
    run = run or Run("warm-up", 0)
    if queue_depths(store.r)["predict"]:
        raise RuntimeError("the predict queue is not empty before a run")
    ids = create_jobs(store, locs)
    t0 = time.time()
    enqueue([(j, "predict", loc) for j, loc in zip(ids, locs, strict=True)])
    run.publish_s = time.time() - t0
    deadline = time.monotonic() + timeout
    pending = set(ids)
    while pending and time.monotonic() < deadline:
        time.sleep(0.05)
        waiting = list(pending)
        with store.r.pipeline(transaction=False) as p:  # cheap: one HGET per still-pending job
            for j in waiting:
                p.hget(job_key(j), "status")
            done = [j for j, st in zip(waiting, p.execute(), strict=True) if st in ("done", "failed")]
        pending.difference_update(done)
    if pending:
        run.problems.append(f"{len(pending)} of {len(ids)} jobs without a result after {timeout:.0f} s")
    jobs = store.get_many(ids)
    with store.r.pipeline(transaction=False) as p:
        for j in ids:
            p.llen(notify_key(j))
        notified = p.execute()
    finished = []
    for j, job, loc, nres in zip(ids, jobs, locs, notified, strict=True):
        if job is None or job.status != "done" or not job.result:
            err = (job.error if job else None) or {}
            if not pending:
                run.problems.append(f"job {j}: {job.status if job else 'missing'} {err.get('code', '')} "
                                    f"{err.get('reason', '')}".strip())  # fmt: skip
            continue
        if nres != 1 or job.attempts != 1:
            run.problems.append(f"job {j}: {nres} results recorded, {job.attempts} attempts (want 1 and 1)")
        if job.result.get("video_id") != loc["video_id"]:
            run.problems.append(f"job {j}: result for video {job.result.get('video_id')}, want {loc['video_id']}")
        finished.append(float(job.finished or 0.0))
        run.predict_s.append(float(job.timings["predict_s"]))
        run.model_s.append(float(job.timings.get("predict.predict_s", float("nan"))))
        run.tags[loc["video_id"]] = [(int(t["class_id"]), float(t["probability"])) for t in job.result["tags"]]
    if finished:
        run.wall_s = max(finished) - t0
        run.seq_per_s = len(finished) / run.wall_s
    return run


def compare_tags(ref: list[tuple[int, float]], got: list[tuple[int, float]], tol: float = TOL) -> str | None:
    """None when `got` equals `ref` (same ids, probabilities within tol; ids may swap only among ties)."""
    if len(ref) != len(got):
        return f"{len(got)} tags, want {len(ref)}"
    for i, ((ra, pa), (rb, pb)) in enumerate(zip(ref, got, strict=True)):
        if abs(pa - pb) > tol:
            return f"rank {i}: p={pb:.6f} (class {rb}), want {pa:.6f} (class {ra})"
    rp, gp = dict(ref), dict(got)
    for cid in rp.keys() | gp.keys():
        a, b = rp.get(cid), gp.get(cid)
        if a is not None and b is not None:
            bad = abs(a - b) > tol
        elif a is not None:  # fell off the end: only a tie with the last kept tag may do that
            bad = a - min(gp.values()) > tol
        else:
            bad = b - min(rp.values()) > tol  # type: ignore[operator]
        if bad:
            return f"class {cid}: p={b} here, {a} in the reference"
    return None


def one_run(cfg: Config, rnd: int, base: Settings, work: Path, store: JobStore, locs: list[dict[str, Any]],
            warm: list[dict[str, Any]], timeout: float) -> Run:  # fmt: skip
    settings = base.model_copy(update={"predict_batch": cfg.batch})
    worker = Worker(cfg, rnd, settings, work, work / "logs" / f"{cfg.key}-r{rnd}.log")
    try:
        t = time.perf_counter()
        worker.wait_ready()
        # the first jobs initialise every pool process and the batch shapes
        warm_run = run_jobs(store, warm, max(timeout, 300.0))
        if warm_run.problems:
            raise RuntimeError(f"{cfg.label}: warm-up failed: {warm_run.problems[:3]}\n{worker.tail()}")
        print(f"  {cfg.label:32s} round {rnd}: ready + warm in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        run = run_jobs(store, locs, timeout, Run(cfg.key, rnd))
        if worker.proc.poll() is not None:
            run.problems.append(f"worker exited with {worker.proc.returncode}")
        if run.problems:
            print(f"  worker log tail:\n{worker.tail()}", file=sys.stderr)
    finally:
        worker.stop()
    if run.problems:  # what a failed run left behind must not reach the next configuration's worker
        with store.r.pipeline() as p:
            p.delete(*store.r.scan_iter("predict*"), "unacked", "unacked_index")
            p.execute()
    print(f"  {cfg.label:32s} round {rnd}: {run.seq_per_s:7.2f} seq/s ({len(run.predict_s)} in {run.wall_s:.1f} s, "
          f"publish {run.publish_s:.2f} s), load {os.getloadavg()[0]:.1f}", file=sys.stderr)  # fmt: skip
    return run


# ----------------------------------------------------------------------------------------------- main
def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=400, help="sequences (jobs) per measurement")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds over all configurations")
    ap.add_argument("--batches", default="16,32", help="predict_batch values of the batched configurations")
    ap.add_argument("--warmup", type=int, default=0, help="warm-up jobs per worker (0: max(4, batch, 2 x processes))")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds one measurement may take")
    ap.add_argument("--device", default="auto", help="the workers' device setting (auto, cpu, cuda, tensorrt)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--keep", type=Path, default=None, help="work dir to keep (bundle and shards reused next time)")
    a = ap.parse_args()
    batches = [int(b) for b in a.batches.split(",") if b.strip()]
    configs = [Config("a", 1, 1), Config("b", 1, 2)]
    configs += [Config(chr(ord("c") + i), b, None) for i, b in enumerate(batches)]
    work = a.keep.resolve() if a.keep else Path(tempfile.mkdtemp(prefix="bench-predict-queue-"))
    cpus = os.cpu_count()
    print(f"T={T}, D={D}, C={C}; {cpus} CPUs, load average {os.getloadavg()[0]:.2f}; work dir {work}", file=sys.stderr)
    try:
        runs, n = measure(a, configs, work)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    report(a, configs, runs, n)


def measure(a: argparse.Namespace, configs: list[Config], work: Path) -> tuple[list[Run], int]:
    """Every configuration, `a.rounds` times interleaved, each in a fresh worker on one embedded Redis."""
    (work / "logs").mkdir(parents=True, exist_ok=True)
    bundle = build_bundle(work / "weights")
    locs = write_features(work / "data" / "features", a.n)
    shutil.rmtree(work / "redis", ignore_errors=True)  # a fresh job store every time
    redis_server = EmbeddedRedis(work / "redis")
    runs: list[Run] = []
    try:
        url = redis_server.start()
        use_broker(url)
        store = JobStore.from_url(url)
        base = Settings(_env_file=None, data_dir=work / "data", weights_dir=bundle.parent, model=MODEL, redis_url=url,
                        device=a.device)  # fmt: skip
        try:
            for rnd in range(1, a.rounds + 1):
                for cfg in configs:
                    nwarm = a.warmup or max(4, cfg.batch, 2 * (cfg.processes or 1))
                    warm = [locs[i % len(locs)] for i in range(nwarm)]
                    runs.append(one_run(cfg, rnd, base, work, store, locs, warm, a.timeout))
        finally:
            store.r.close()
    finally:
        redis_server.stop()
    return runs, len(locs)


def report(a: argparse.Namespace, configs: list[Config], runs: list[Run], n: int) -> None:
    """Compare every run's tags with the reference, print the table, write the JSON; exit 1 on any problem."""
    cpus = os.cpu_count()

    # results: one reference (the first complete batch-1 run), every run compared with it
    complete = [r for r in runs if not r.problems and len(r.tags) == n]
    ref = next((r for r in complete if r.config == "a"), None) or next((r for r in complete if r.config == "b"), None)
    problems = [f"{r.config} round {r.round}: {p}" for r in runs for p in r.problems]
    identical = {}
    if ref is None:
        problems.append("no complete batch-1 run to compare with")
    else:
        for r in runs:
            if r is ref:
                continue
            same = 0
            for vid, tags in r.tags.items():
                diff = compare_tags(ref.tags[vid], tags)
                if diff:
                    problems.append(f"{r.config} round {r.round}, video {vid}: top tags differ: {diff}")
                same += [c for c, _ in tags] == [c for c, _ in ref.tags[vid]]
            identical[f"{r.config}-r{r.round}"] = same

    rows = []
    for cfg in configs:
        mine = [r for r in runs if r.config == cfg.key]
        rates = [r.seq_per_s for r in mine]
        rows.append({"config": cfg.key, "label": cfg.label, "predict_batch": cfg.batch,
                     "pool": "prefork" if cfg.processes else "threads", "processes": cfg.processes or 1,
                     "seq_per_s": rates, "seq_per_s_median": statistics.median(rates),
                     "predict_s_p50": pct([x for r in mine for x in r.predict_s], 50),
                     "predict_s_p95": pct([x for r in mine for x in r.predict_s], 95),
                     "model_s_p50": pct([x for r in mine for x in r.model_s], 50)})  # fmt: skip
    base_rate = rows[0]["seq_per_s_median"]
    print(f"\n{a.n} sequences of [{T}, {D}] per measurement, {a.rounds} round(s), {cpus} CPUs, "
          f"load average at the end {os.getloadavg()[0]:.2f}\n")  # fmt: skip
    print("| config | seq/s (median) | vs a | per round | predict_s p50 | predict_s p95 |\n|---|---|---|---|---|---|")
    for row in rows:
        ratio = row["seq_per_s_median"] / base_rate if base_rate else float("nan")
        per = ", ".join(f"{x:.2f}" for x in row["seq_per_s"])
        print(f"| {row['label']} | {row['seq_per_s_median']:.2f} | {ratio:.2f}x | {per} | "
              f"{1000 * row['predict_s_p50']:.0f} ms | {1000 * row['predict_s_p95']:.0f} ms |")  # fmt: skip
    checked = sum(len(r.tags) for r in runs)
    print(f"\nchecked {checked} results: " + ("all complete, one result each, top tags equal to batch 1's"
                                             if not problems else f"{len(problems)} PROBLEM(S)"))  # fmt: skip
    if a.out:
        res = {"machine": f"{platform.processor() or platform.machine()}, {cpus} CPUs", "T": T, "dim": D,
               "classes": C, "n": a.n, "rounds": a.rounds, "load_average_end": os.getloadavg(), "rows": rows,
               "runs": [{"config": r.config, "round": r.round, "seq_per_s": r.seq_per_s, "wall_s": r.wall_s,
                         "publish_s": r.publish_s, "results": len(r.tags), "problems": r.problems} for r in runs],
               "identical_top_ids": identical, "problems": problems}  # fmt: skip
        a.out.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    if problems:
        print("\n".join(["", "FAILED:", *problems[:50]]), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
