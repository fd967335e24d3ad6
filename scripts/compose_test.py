#!/usr/bin/env python3
"""End-to-end test of the compose deployment (`make compose-test`, tests/deploy/test_compose.py).

1. Docker engine: the one DOCKER_HOST (or the default socket) reaches, else a running dockerd found by its command
   line, else one started here as root with scratch --data-root/--exec-root (and stopped again at the end).
2. Base images: $BASE_IMAGE/$REDIS_IMAGE when set; else python:3.11-slim and redis:7-alpine, pulled; where they
   cannot be pulled (no Docker Hub), stand-ins built from Debian packages by scripts/standin_bases.sh.
3. Builds the images (`compose build`: videotag:latest = runtime, videotag:full = setup) and measures them.
4. `up -d` of the CPU profile, waits until redis, api, both workers and flower are healthy and setup exited 0.
5. Checks: the data volumes belong to uid 1000; Redis runs noeviction with a memory cap; API keys given
   comma-separated are accepted; an upload is tagged (POST /v1/jobs); a batch of 10 videos by path completes with
   10 results; the extract worker is restarted mid-batch of 50 and every item ends done exactly once (50 results,
   each source once); Flower asks for basic auth and its UI's API answers with it.
6. `down -v`, removes the built images, stops the engine it started; prints the figures (and one JSON line).

Exit status: 0 passed, 1 failed, 77 no Docker engine can be started here (the test-suite skips on it).
Only the standard library: the host needs python3, Docker and a compose client, nothing from the project.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from base64 import b64encode
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SHARED_CLIP = REPO.parent / "shared" / "videos" / "mmaction2_demo_demo.mp4"
EXIT_SKIP = 77
DEFAULT_BASE, DEFAULT_REDIS = "python:3.11-slim", "redis:7-alpine"
HEALTHY = ("redis", "api", "extract-worker-cpu", "predict-worker", "flower")
LOCK = Path(tempfile.gettempdir()) / "videotag-compose-test.lock"
T0 = time.monotonic()


class Skip(Exception):
    """No Docker engine (or compose client) can be used here."""


class Failed(Exception):
    pass


def log(msg: str) -> None:
    print(f"[compose-test {time.monotonic() - T0:7.1f}s] {msg}", flush=True)


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise Failed(msg)
    log(f"ok: {msg}")


def run(cmd: list[str], env: dict | None = None, timeout: float = 600, check_rc: bool = True,
        quiet: bool = False) -> subprocess.CompletedProcess:  # fmt: skip
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if check_rc and p.returncode != 0:
        out = (p.stdout + p.stderr)[-4000:]
        raise Failed(f"`{' '.join(cmd)}` exited {p.returncode}:\n{out}")
    if not quiet and p.returncode != 0:
        log(f"`{' '.join(cmd[:4])} ...` exited {p.returncode}: {(p.stderr or p.stdout).strip()[-300:]}")
    return p


# --------------------------------------------------------------------------------------------- the engine
class Engine:
    def __init__(self, docker: str, env: dict[str, str], proc: subprocess.Popen | None = None,
                 root: Path | None = None, keep_root: bool = False) -> None:  # fmt: skip
        self.docker, self.env, self.proc, self.root, self.keep_root = docker, env, proc, root, keep_root

    @property
    def started_here(self) -> bool:
        return self.proc is not None

    def cli(self, *args: str, timeout: float = 600, check_rc: bool = True) -> subprocess.CompletedProcess:
        return run([self.docker, *args], env=self.env, timeout=timeout, check_rc=check_rc)

    def stop(self) -> None:
        if self.proc is None:
            return
        log(f"stopping the Docker engine started here (pid {self.proc.pid})")
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        if self.root is not None and not self.keep_root:
            for d in ("data", "exec"):  # layers of the built images: gigabytes
                shutil.rmtree(self.root / d, ignore_errors=True)


def _docker_cli() -> str | None:
    # Any docker CLI can talk to the engine; prefer the distribution's one (it matches its dockerd).
    return next((c for c in ("/usr/bin/docker", shutil.which("docker")) if c and os.access(c, os.X_OK)), None)


def _reachable(docker: str, env: dict[str, str]) -> bool:
    try:
        return subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], env=env, capture_output=True,
                              timeout=20).returncode == 0  # fmt: skip
    except subprocess.TimeoutExpired:
        return False


def _running_dockerd_hosts() -> list[str]:
    """The -H/--host addresses of dockerd processes that run on this machine (started by someone else)."""
    hosts: list[str] = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or not argv[0].endswith(b"dockerd"):
            continue
        args = [a.decode(errors="replace") for a in argv[1:] if a]
        for i, a in enumerate(args):
            if a in ("-H", "--host") and i + 1 < len(args):
                hosts.append(args[i + 1])
            elif a.startswith(("--host=", "-H=")):
                hosts.append(a.split("=", 1)[1])
        if not any(a in ("-H", "--host") or a.startswith(("--host=", "-H=")) for a in args):
            hosts.append("unix:///var/run/docker.sock")
    return hosts


def find_or_start_engine(work: Path, engine_dir: Path | None) -> Engine:
    docker = _docker_cli()
    if docker is None:
        raise Skip("no docker CLI installed (apt-get install docker.io docker-compose)")
    env = dict(os.environ)
    if _reachable(docker, env):
        log(f"using the running Docker engine ({env.get('DOCKER_HOST', 'default socket')})")
        return Engine(docker, env)
    for host in _running_dockerd_hosts():
        e = {**env, "DOCKER_HOST": host}
        if _reachable(docker, e):
            log(f"using the running Docker engine at {host}")
            return Engine(docker, e)
    dockerd = shutil.which("dockerd") or ("/usr/sbin/dockerd" if os.access("/usr/sbin/dockerd", os.X_OK) else None)
    if dockerd is None:
        raise Skip("no Docker engine runs here and dockerd is not installed (apt-get install docker.io)")
    if os.geteuid() != 0:
        raise Skip("no Docker engine runs here and starting dockerd needs root")
    root = engine_dir or work / "engine"
    root.mkdir(parents=True, exist_ok=True)
    sock = f"unix://{root}/docker.sock"
    if len(sock) > 90:  # unix socket paths are short
        raise Skip(f"engine directory path too long for a socket: {root}")
    logf = open(root / "dockerd.log", "ab")  # noqa: SIM115 - lives as long as the daemon
    proc = subprocess.Popen([dockerd, "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
                             "--pidfile", str(root / "dockerd.pid"), "-H", sock, "--storage-driver", "overlay2"],
                            stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    env["DOCKER_HOST"] = sock
    engine = Engine(docker, env, proc, root, keep_root=engine_dir is not None)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (root / "dockerd.log").read_text(errors="replace")[-1500:]
            raise Skip(f"dockerd could not start here (exit {proc.returncode}):\n{tail}")
        if _reachable(docker, env):
            log(f"started a Docker engine (dockerd pid {proc.pid}, data root {root / 'data'})")
            return engine
        time.sleep(1)
    engine.stop()
    raise Skip("dockerd did not answer within 90 s:\n" + (root / "dockerd.log").read_text(errors="replace")[-1500:])


def compose_client(engine: Engine) -> list[str]:
    if run([engine.docker, "compose", "version"], env=engine.env, check_rc=False, quiet=True).returncode == 0:
        return [engine.docker, "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise Skip("no compose client: neither `docker compose` nor `docker-compose` (apt-get install docker-compose)")


# --------------------------------------------------------------------------------------------- HTTP
def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None,
         timeout: float = 60) -> tuple[int, Any]:  # fmt: skip
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, data, ctype = r.status, r.read(), r.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        status, data, ctype = e.code, e.read(), e.headers.get("content-type", "")
    if "json" in ctype:
        return status, json.loads(data)
    return status, data.decode(errors="replace")


def multipart(path: Path, field: str = "file") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{path.name}"\r\n'
            "Content-Type: video/mp4\r\n\r\n").encode()  # fmt: skip
    return head + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------- the test
class ComposeTest:
    def __init__(self, engine: Engine, work: Path, args: argparse.Namespace) -> None:
        self.engine, self.work, self.args = engine, work, args
        self.compose = compose_client(engine)
        self.project = f"vtct{os.getpid()}"
        self.image = f"videotag-composetest-{os.getpid()}"
        self.videos = work / "videos"
        self.key1, self.key2 = f"k1-{secrets.token_hex(8)}", f"k2-{secrets.token_hex(8)}"
        self.flower_auth = f"ops:{secrets.token_hex(8)}"
        self.api_port, self.flower_port = free_port(), free_port()
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.figures: dict[str, Any] = {"compose": " ".join(Path(c).name for c in self.compose)}
        self.env = dict(engine.env)
        self.up = False

    # -- helpers
    def dc(self, *args: str, timeout: float = 900, check_rc: bool = True) -> subprocess.CompletedProcess:
        return run([*self.compose, "-p", self.project, "-f", str(REPO / "docker-compose.yml"), "--profile", "cpu",
                    *args], env=self.env, timeout=timeout, check_rc=check_rc)  # fmt: skip

    def exec(self, service: str, *cmd: str) -> str:
        return self.dc("exec", "-T", service, *cmd, timeout=120).stdout

    def get(self, path: str, key: str | None = None) -> tuple[int, Any]:
        return http("GET", self.api + path, headers={"X-API-Key": key or self.key1})

    def post_json(self, path: str, body: dict) -> tuple[int, Any]:
        return http("POST", self.api + path, json.dumps(body).encode(),
                    {"Content-Type": "application/json", "X-API-Key": self.key1})  # fmt: skip

    def wait(self, what: str, probe, timeout: float, interval: float = 0.5):
        deadline = time.monotonic() + timeout
        while True:
            value = probe()
            if value:
                return value
            if time.monotonic() > deadline:
                raise Failed(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(interval)

    def timed(self, name: str, t0: float) -> float:
        self.figures[name] = round(time.monotonic() - t0, 1)
        return self.figures[name]

    # -- steps
    def base_images(self) -> None:
        base, redis = os.environ.get("BASE_IMAGE"), os.environ.get("REDIS_IMAGE")
        if base and redis:
            log(f"base images from the environment: {base}, {redis}")
        else:
            missing = []
            for ref in (DEFAULT_BASE, DEFAULT_REDIS):
                if run([self.engine.docker, "image", "inspect", ref], env=self.env, check_rc=False,
                       quiet=True).returncode == 0:
                    continue
                p = self.engine.cli("pull", "-q", ref, timeout=300, check_rc=False)
                if p.returncode != 0:
                    missing.append(ref)
            base, redis = base or DEFAULT_BASE, redis or DEFAULT_REDIS
            if missing:
                log(f"cannot pull {', '.join(missing)} (no Docker Hub?): building stand-ins from Debian packages")
                t0 = time.monotonic()
                p = run(["bash", str(REPO / "scripts" / "standin_bases.sh")],
                        env={**self.env, "DOCKER": self.engine.docker}, timeout=1800)  # fmt: skip
                self.timed("standin_bases_s", t0)
                names = dict(kv.split("=", 1) for kv in p.stdout.strip().splitlines()[-1].split())
                base = names["BASE_IMAGE"] if DEFAULT_BASE in missing else base
                redis = names["REDIS_IMAGE"] if DEFAULT_REDIS in missing else redis
                if DEFAULT_BASE in missing:
                    self.env.setdefault("TORCH_INDEX_URL", "")  # the stand-in carries the local CPU torch wheel
        self.figures.update(base_image=base, redis_image=redis)
        self.env.update(BASE_IMAGE=base, REDIS_IMAGE=redis, VIDEOTAG_IMAGE=self.image, VIDEOS_DIR=str(self.videos),
                        VIDEOTAG_API_KEYS=f"{self.key1}, {self.key2}", FLOWER_BASIC_AUTH=self.flower_auth,
                        API_BIND="127.0.0.1", API_PORT=str(self.api_port), FLOWER_BIND="127.0.0.1",
                        FLOWER_PORT=str(self.flower_port))  # fmt: skip

    def build(self) -> None:
        log("building the images (compose build)")
        t0 = time.monotonic()
        self.dc("build", timeout=3600)
        log(f"built in {self.timed('build_s', t0)} s")
        for tag in ("latest", "full"):
            size = int(self.engine.cli("image", "inspect", "-f", "{{.Size}}", f"{self.image}:{tag}").stdout.strip())
            self.figures[f"image_{tag}_mb"] = round(size / 1e6)
        base_size = int(self.engine.cli("image", "inspect", "-f", "{{.Size}}", self.env["BASE_IMAGE"]).stdout.strip())
        self.figures["base_image_mb"] = round(base_size / 1e6)
        log(f"image sizes: runtime {self.figures['image_latest_mb']} MB, full {self.figures['image_full_mb']} MB "
            f"(base {self.figures['base_image_mb']} MB)")  # fmt: skip

    def make_clips(self) -> None:
        t0 = time.monotonic()
        self.videos.mkdir(parents=True, exist_ok=True)
        gen = ["run", "--rm", "--user", "0", "--entrypoint", "python", "-v", f"{self.videos}:/out",
               "-v", f"{REPO / 'scripts' / 'compose_clips.py'}:/compose_clips.py:ro", f"{self.image}:latest",
               "/compose_clips.py"]  # fmt: skip
        self.engine.cli(*gen, "/out/batch", str(self.args.batch), "60", "b", timeout=600)
        self.engine.cli(*gen, "/out/restart", str(self.args.restart_batch), "60", "r", timeout=600)
        if SHARED_CLIP.is_file():
            self.upload_clip = SHARED_CLIP
        else:
            self.engine.cli(*gen, "/out/upload", "1", "90", "u", timeout=300)
            self.upload_clip = self.videos / "upload" / "u_000.mp4"
        log(f"clips ready in {self.timed('clips_s', t0)} s (upload: {self.upload_clip.name})")

    def states(self) -> dict[str, str]:
        """service -> "status/health/exit code" of its (first) container, from two engine calls."""
        ps = self.engine.cli("ps", "-a", "--filter", f"label=com.docker.compose.project={self.project}", "--format",
                             '{{.ID}} {{.Label "com.docker.compose.service"}}', check_rc=False).stdout.split("\n")
        ids = {svc: cid for cid, svc in (line.split() for line in ps if len(line.split()) == 2)}
        out = {svc: "missing" for svc in (*HEALTHY, "setup")}
        if ids:
            fmt = ('{{index .Config.Labels "com.docker.compose.service"}} {{.State.Status}}/'
                   "{{if .State.Health}}{{.State.Health.Status}}{{end}}/{{.State.ExitCode}}")  # fmt: skip
            for line in self.engine.cli("inspect", "-f", fmt, *ids.values(), check_rc=False).stdout.splitlines():
                svc, _, state = line.partition(" ")
                out[svc] = state
        return out

    def start(self) -> None:
        log("starting the CPU profile (up -d)")
        t0 = time.monotonic()
        self.up = True
        try:
            self.dc("up", "-d", timeout=1200)
        except Failed as e:
            logs = self.dc("logs", "--tail", "40", check_rc=False).stdout[-8000:]
            raise Failed(f"{e}\n{self.states()}\n{logs}") from None
        self.timed("up_s", t0)
        last: dict[str, str] = {}

        def healthy() -> bool:
            nonlocal last
            last = self.states()
            setup_ok = last["setup"].startswith("exited") and last["setup"].endswith("/0")
            if last["setup"].startswith("exited") and not setup_ok:
                raise Failed(f"setup failed: {last}\n{self.dc('logs', '--tail', '40', 'setup', check_rc=False).stdout}")
            return setup_ok and all(last[s].startswith("running/healthy") for s in HEALTHY)

        try:
            self.wait("all services healthy", healthy, timeout=600, interval=2)
        except Failed as e:
            raise Failed(f"{e}: {last}\n{self.dc('logs', '--tail', '30', check_rc=False).stdout[-6000:]}") from None
        log(f"all healthy {self.timed('healthy_s', t0)} s after `up -d`: {last}")

    def check_config(self) -> None:
        owners = self.exec("api", "stat", "-c", "%u %n", "/data/features", "/data/results", "/data/uploads",
                           "/app/weights").split("\n")  # fmt: skip
        check(all(line.startswith("1000 ") for line in owners if line), f"volumes owned by uid 1000: {owners}")
        policy = self.exec("redis", "redis-cli", "config", "get", "maxmemory-policy").split()
        maxmem = self.exec("redis", "redis-cli", "config", "get", "maxmemory").split()
        check(policy[-1] == "noeviction" and int(maxmem[-1]) > 0, f"redis noeviction with maxmemory {maxmem[-1]}")
        status, _ = http("GET", self.api + "/v1/models")
        check(status == 401, f"no API key -> {status} (401 expected)")
        status, _ = self.get("/v1/models", key=self.key2)
        check(status == 200, f"second key of the comma-separated VIDEOTAG_API_KEYS accepted -> {status}")

    def check_flower(self) -> None:
        url = f"http://127.0.0.1:{self.flower_port}"
        auth = {"Authorization": "Basic " + b64encode(self.flower_auth.encode()).decode()}
        check(http("GET", url + "/")[0] == 401, "Flower without credentials -> 401")
        check(http("GET", url + "/", headers=auth)[0] == 200, "Flower UI with basic auth -> 200")
        status, workers = http("GET", url + "/api/workers?refresh=1", headers=auth, timeout=120)
        names = sorted(workers) if isinstance(workers, dict) else workers
        check(status == 200 and any(n.startswith("extract@") for n in names) and
              any(n.startswith("predict@") for n in names), f"Flower API with basic auth lists the workers: {names}")

    def tag_upload(self) -> None:
        body, ctype = multipart(self.upload_clip)
        t0 = time.monotonic()
        status, job = http("POST", self.api + "/v1/jobs", body, {"Content-Type": ctype, "X-API-Key": self.key1})
        check(status == 202, f"POST /v1/jobs (upload {self.upload_clip.name}) -> {status}")
        jid = job["job_id"]
        job = self.wait("the upload's job", lambda: (j := self.get(f"/v1/jobs/{jid}")[1])["status"] in
                        ("done", "failed") and j, timeout=300)  # fmt: skip
        secs = self.timed("upload_tag_s", t0)
        check(job["status"] == "done" and job["result"]["tags"],
              f"upload tagged in {secs} s: {job.get('error') or [t['class_name'] for t in job['result']['tags'][:3]]}")

    def run_batch(self, folder: str, n: int, restart: bool) -> dict:
        paths = [f"/videos/{folder}/{p.name}" for p in sorted((self.videos / folder).glob("*.mp4"))]
        assert len(paths) == n, (folder, len(paths))
        t0 = time.monotonic()
        status, batch = self.post_json("/v1/batches", {"paths": paths})
        check(status == 202, f"POST /v1/batches ({n} paths) -> {status}")
        bid = batch["batch_id"]

        def info() -> dict:
            return self.get(f"/v1/batches/{bid}")[1]

        if restart:
            at = self.wait("two items done", lambda: (b := info())["done"] + b["failed"] >= 2 and b, 600, 0.2)
            log(f"restarting extract-worker-cpu with {at['done']}/{n} done")
            t1 = time.monotonic()
            self.dc("restart", "extract-worker-cpu", timeout=300)
            self.timed("restart_s", t1)
            self.figures["done_at_restart"] = at["done"]
        final = self.wait(f"batch {bid} complete", lambda: (b := info())["status"] == "complete" and b,
                          timeout=1800, interval=1)  # fmt: skip
        secs = self.timed("restart_batch_s" if restart else "batch_s", t0)
        if restart:
            check(self.figures["done_at_restart"] < n, f"the restart came mid-batch ({self.figures['done_at_restart']}"
                  f"/{n} done)")  # fmt: skip
        check((final["total"], final["done"], final["failed"]) == (n, n, 0),
              f"batch of {n}: done {final['done']}, failed {final['failed']} in {secs} s")
        items = []
        for offset in range(0, n, 100):
            items += self.get(f"/v1/batches/{bid}/results?offset={offset}&limit=100")[1]["items"]
        check(len(items) == n and all(it["status"] == "done" for it in items)
              and sorted(it["source"] for it in items) == sorted(paths)
              and len({it["result"]["video_id"] for it in items}) == n,
              f"{n} results: every source once, {n} distinct videos")  # fmt: skip
        lines = [json.loads(x) for x in self.exec("api", "cat", f"{final['results_dir']}/results.jsonl").splitlines()
                 if x.strip()]  # fmt: skip
        sources = sorted(r.get("source") or r.get("video") or r.get("path") or "" for r in lines)
        check(len(lines) == n and sources == sorted(paths),
              f"results.jsonl has exactly {n} lines, one per source ({final['results_dir']})")
        attempts = [self.get(f"/v1/jobs/{it['job_id']}")[1]["attempts"] for it in items]
        if restart:
            self.figures["redone_after_restart"] = sum(a > 2 for a in attempts)
            st = self.states()["extract-worker-cpu"]
            check(st.startswith("running"), f"extract worker back after the restart ({st})")
        return final

    def redis_memory(self) -> None:
        info = dict(line.split(":", 1) for line in self.exec("redis", "redis-cli", "info", "memory").splitlines()
                    if ":" in line)  # fmt: skip
        jobs = 1 + self.args.batch + self.args.restart_batch
        self.figures["redis_used_memory_mb"] = round(int(info["used_memory"]) / 1e6, 1)
        self.figures["redis_dbsize"] = int(self.exec("redis", "redis-cli", "dbsize").strip())
        log(f"redis: {self.figures['redis_used_memory_mb']} MB used, {self.figures['redis_dbsize']} keys after "
            f"{jobs} jobs")  # fmt: skip

    def teardown(self) -> None:
        if self.up:
            if self.args.keep:
                log(f"--keep: left running as compose project {self.project}")
                return
            t0 = time.monotonic()
            self.dc("down", "-v", "--remove-orphans", "--timeout", "20", timeout=300, check_rc=False)
            log(f"down -v in {self.timed('down_s', t0)} s")
        if not self.args.keep_images and not self.engine.started_here:  # an engine started here goes entirely
            for tag in ("latest", "full"):
                self.engine.cli("rmi", f"{self.image}:{tag}", check_rc=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Build, start, exercise and tear down the compose deployment.")
    ap.add_argument("--batch", type=int, default=10, help="videos in the batch by path")
    ap.add_argument("--restart-batch", type=int, default=50, help="videos in the batch the worker restarts in")
    ap.add_argument("--keep", action="store_true", help="leave the deployment running (no down -v)")
    ap.add_argument("--keep-images", action="store_true", help="keep the built images (engine not started here)")
    ap.add_argument("--engine-dir", type=Path, default=os.environ.get("COMPOSE_TEST_ENGINE_DIR") or None,
                    help="data root for an engine started here, kept between runs as a cache "
                         "(default: a scratch folder, deleted)")  # fmt: skip
    ap.add_argument("--check-engine", action="store_true", help="only say whether an engine can be used (0/77)")
    args = ap.parse_args(argv)

    # SIGTERM/SIGINT (a timeout, ^C, a background job's kill) unwind through the `finally`s: down -v, engine stop
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # One compose test at a time per machine (they would share, and stop, one engine). Any user may take the lock.
    try:
        lock = open(LOCK, "a")  # noqa: SIM115 - held for the whole run
        with contextlib.suppress(OSError):
            os.chmod(LOCK, 0o666)
    except PermissionError:
        lock = open(LOCK)  # noqa: SIM115 - someone else's file: flock works on a read-only descriptor too
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if args.check_engine and os.geteuid() == 0:
            log(f"another compose test runs on this machine ({LOCK}): an engine is in use")
            return 0
        if not args.check_engine:  # (a user who is not root cannot start an engine: its check needs no lock)
            log(f"another compose test runs on this machine ({LOCK}); waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
    work = Path(tempfile.mkdtemp(prefix="vtct.", dir="/tmp"))
    engine = None
    test = None
    try:
        try:
            engine = find_or_start_engine(work, args.engine_dir)
            if args.check_engine:
                compose_client(engine)
                return 0
            test = ComposeTest(engine, work, args)
        except Skip as e:
            print(f"SKIP: {e}", flush=True)
            return EXIT_SKIP
        try:
            test.base_images()
            test.build()
            test.make_clips()
            test.start()
            test.check_config()
            test.check_flower()
            test.tag_upload()
            test.run_batch("batch", args.batch, restart=False)
            test.run_batch("restart", args.restart_batch, restart=True)
            test.redis_memory()
            ok = True
        except (Failed, subprocess.TimeoutExpired) as e:
            print(f"FAILED: {e}", flush=True)
            ok = False
        finally:
            test.teardown()
    finally:
        if engine is not None:
            engine.stop()
        shutil.rmtree(work, ignore_errors=True)
        if test is not None:
            test.figures["total_s"] = round(time.monotonic() - T0, 1)
            print("\nfigures:")
            for k, v in test.figures.items():
                print(f"  {k:24} {v}")
            print("COMPOSE_TEST_FIGURES " + json.dumps(test.figures), flush=True)
    print("PASSED" if ok else "FAILED", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
