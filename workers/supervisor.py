"""`videotag serve`: one command for the whole service on one machine.

Starts, in order: the embedded Redis (unless VIDEOTAG_REDIS_URL is set), the API (uvicorn), one extract worker
and one predict worker (Celery prefork pools). It watches them and restarts any that dies; when the single
worker of a queue died, the messages it had taken but not acknowledged are put back at once (no other worker
can hold them). The embedded Redis is supervised the same way: if it dies (even SIGKILL) it is reaped and started
again on the same data directory and socket/port (its append-only file brings the job store and the queues back);
then every delivered-but-unacked message is requeued and every unfinished job without a message gets one
(`workers.submit.resume`), while the workers and the API reconnect by themselves within seconds (same URL). If
Redis cannot be brought back (5 deaths within a minute), `run()` stops the whole service and returns 1, so an
init system or orchestrator restarts it: nothing can be served without the job store.

Shutdown (SIGINT/SIGTERM, or `stop()`): API first (no new jobs), then the workers (warm: the running task
finishes), then Redis (SHUTDOWN flushes the append-only file), so a restart resumes the batch.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from videotag.core.settings import Settings
from workers.celery_app import SERVICE_FILE, restore_unacked
from workers.redis_server import EmbeddedRedis, _die_with_parent

log = logging.getLogger(__name__)


def settings_env(settings: Settings) -> dict[str, str | None]:
    """Settings as VIDEOTAG_* variables (None = unset), so child processes see exactly this configuration."""
    out: dict[str, str | None] = {}
    for name, value in settings.model_dump(mode="json").items():
        key = f"VIDEOTAG_{name.upper()}"
        if value is None:
            out[key] = None
        elif isinstance(value, list | dict):
            out[key] = json.dumps(value)
        else:
            out[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


class _Dead:
    """Stands for a Redis process that could not be started: `poll()` says it exited, so the next poll retries."""

    pid = 0
    returncode = -1

    def poll(self) -> int:
        return -1

    def kill(self) -> None:
        pass

    def wait(self, timeout: float | None = None) -> int:
        return -1


@dataclass
class Child:
    name: str
    argv: list[str]
    queue: str | None = None  # the queue a worker consumes
    proc: subprocess.Popen | None = None
    restarts: list[float] = field(default_factory=list)


class Service:
    """The supervisor. `start()` returns once everything is launched; `wait_ready()`; `run()` blocks."""

    def __init__(
        self,
        settings: Settings,
        host: str = "127.0.0.1",
        port: int = 8000,
        extract_concurrency: int = 1,
        predict_concurrency: int = 1,
        redis_port: int | None = None,
        workers: bool = True,
        api: bool = True,
        loglevel: str = "INFO",
    ) -> None:
        self.data_dir = Path(settings.data_dir).resolve()
        # children run with cwd=data_dir: hand them absolute paths
        self.settings = settings.model_copy(update={
            "data_dir": self.data_dir,
            "weights_dir": Path(settings.weights_dir).resolve(),
            "path_roots": [Path(p).resolve() for p in settings.path_roots],
        })  # fmt: skip
        self.host, self.port = host, port
        self.redis: EmbeddedRedis | None = None
        self.redis_port = redis_port
        self.redis_url: str | None = settings.redis_url
        self.log_dir = self.data_dir / "logs"
        self.children: list[Child] = []
        py = sys.executable
        if api:
            self.children.append(Child("api", [py, "-m", "uvicorn", "api.main:create_app", "--factory", "--host",
                                               host, "--port", str(port), "--log-level", "warning",
                                               "--timeout-graceful-shutdown", "5"]))  # fmt: skip
        if workers:
            for queue, n in (("extract", extract_concurrency), ("predict", predict_concurrency)):
                argv = [py, "-m", "workers", "--queues", queue, "--concurrency", str(n), "--loglevel", loglevel,
                        "--hostname", f"{queue}-{os.getpid()}@%h"]  # fmt: skip
                self.children.append(Child(f"{queue}-worker", argv, queue=queue))
        self._stopping = False
        self.redis_restarts: list[float] = []
        self.redis_failed = False  # gave up bringing the embedded Redis back: run() stops and returns 1

    @property
    def api_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    # ---- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> Service:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if not self.redis_url:
            self.redis = EmbeddedRedis(self.data_dir / "redis", port=self.redis_port,
                                       maxmemory=self.settings.redis_maxmemory, binary=self.settings.redis_server)
            self.redis_url = self.redis.start()
            n = restore_unacked(self.redis_url)  # we own every worker: deliveries still unacked are orphans
            if n:
                log.warning("requeued %d message(s) taken by workers of the previous run that never finished", n)
        env = dict(os.environ)
        for k, v in {**settings_env(self.settings), "VIDEOTAG_REDIS_URL": self.redis_url}.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        env["PYTHONUNBUFFERED"] = "1"
        repo = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._env = env
        self._write_service_file()
        for child in self.children:
            self._spawn(child)
        return self

    def _write_service_file(self) -> None:
        info = {"redis_url": self.redis_url, "api_url": self.api_url, "pid": os.getpid(), "started": time.time(),
                "embedded_redis": self.redis is not None}  # fmt: skip
        tmp = self.data_dir / (SERVICE_FILE + ".tmp")
        tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.data_dir / SERVICE_FILE)

    def _spawn(self, child: Child) -> None:
        with open(self.log_dir / f"{child.name}.log", "ab") as logf:
            child.proc = subprocess.Popen(child.argv, env=self._env, cwd=self.data_dir, stdout=logf,
                                          stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)  # fmt: skip
        log.info("started %s (pid %d)", child.name, child.proc.pid)

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    def poll(self) -> list[str]:
        """Restart the embedded Redis and children that exited (at most 5 times a minute each). Returns the names
        restarted ("redis" for the embedded server)."""
        restarted: list[str] = []
        if self._stopping:
            return restarted
        if self._poll_redis():
            restarted.append("redis")
        for c in self.children:
            if c.proc is None or c.proc.poll() is None:
                continue
            now = time.time()
            c.restarts = [t for t in c.restarts if now - t < 60]
            if len(c.restarts) >= 5:
                continue  # crash loop: leave it down; readyz reports the missing queue
            log.warning("%s exited with %s; restarting (log: %s)", c.name, c.proc.returncode,
                        self.log_dir / f"{c.name}.log")  # fmt: skip
            if c.queue and self.redis is not None:  # its taken-but-unacked messages have no other owner
                try:
                    restore_unacked(self.redis_url or "", (c.queue,))
                except Exception as e:  # noqa: BLE001 - Redis down too: its restart requeues everything
                    log.warning("could not requeue %s's messages now (%s); left to the Redis recovery", c.name, e)
            c.restarts.append(now)
            self._spawn(c)
            restarted.append(c.name)
        return restarted

    def _poll_redis(self) -> bool:
        """If the embedded Redis died: reap it, start it again (same data dir, AOF), requeue what was in flight.
        True when it was restarted."""
        rs = self.redis
        if rs is None or self.redis_failed or rs.proc is None or rs.proc.poll() is None:  # poll() reaps it
            return False
        died = time.monotonic()
        now = time.time()
        self.redis_restarts = [t for t in self.redis_restarts if now - t < 60]
        if len(self.redis_restarts) >= 5:
            log.error("the embedded Redis died %d times within a minute; giving up (log: %s)",
                      len(self.redis_restarts) + 1, rs.data_dir / "redis.log")  # fmt: skip
            self.redis_failed = True
            return False
        log.warning("the embedded Redis (pid %d) exited with %s; restarting it on %s (log: %s)", rs.proc.pid,
                    rs.proc.returncode, rs.data_dir, rs.data_dir / "redis.log")  # fmt: skip
        self.redis_restarts.append(now)
        rs.proc = None
        try:
            url = rs.start()
        except RuntimeError as e:  # counted above; the next poll tries again (or gives up after 5 in a minute)
            log.error("could not restart the embedded Redis: %s", e)
            if rs.proc is None:
                rs.proc = _Dead()  # type: ignore[assignment]
            return False
        assert url == self.redis_url, (url, self.redis_url)
        self._recover_after_redis_restart()
        log.warning("the embedded Redis is back after %.1f s", time.monotonic() - died)
        return True

    def _recover_after_redis_restart(self) -> None:
        """Our workers lost their connections (and cancelled running tasks): whatever they held is requeued now,
        and any unfinished job the crash left without a message gets one. Duplicates are harmless (idempotent
        stages, exactly-once records); a missing message would not be."""
        from workers.jobstore import JobStore
        from workers.submit import resume

        try:
            n = restore_unacked(self.redis_url or "")
            st = JobStore.from_url(self.redis_url or "")
            try:
                counts = resume(st, include_unacked=True, redis_url=self.redis_url)  # our app has no broker
            finally:
                st.r.close()
            log.warning("after the Redis restart: %d in-flight message(s) requeued, resume: %s", n, counts)
        except Exception:  # noqa: BLE001 - the API's next start-up resume and the visibility timeout remain
            log.exception("recovery after the Redis restart failed")

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until GET /readyz says ready (Redis + a worker on each queue), or raise with the reason."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for c in self.children:
                if c.proc is not None and c.proc.poll() is not None:
                    tail = (self.log_dir / f"{c.name}.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{c.name} exited with {c.proc.returncode} during start-up:\n{tail}")
            try:
                with urllib.request.urlopen(self.api_url + "/readyz", timeout=3) as r:
                    if r.status == 200:
                        return
            except Exception as e:  # noqa: BLE001 - not up yet
                last = str(e)
            time.sleep(0.25)
        raise RuntimeError(f"service not ready after {timeout:.0f} s ({last}); logs in {self.log_dir}")

    def run(self) -> int:
        """Supervise until SIGINT/SIGTERM (returns 0), or until the embedded Redis cannot be kept up (returns 1),
        then stop everything in order."""

        def handler(signum, frame) -> None:
            self._stopping = True

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
        try:
            while not self._stopping and not self.redis_failed:
                self.poll()
                time.sleep(0.5)
        finally:
            self.stop()
        return 1 if self.redis_failed else 0

    def _terminate(self, child: Child, timeout: float) -> None:
        p = child.proc
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)  # uvicorn: graceful; celery: warm shutdown (finish the running task)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0f s; killing it (its task will be redelivered)", child.name, timeout)
            try:
                os.killpg(p.pid, signal.SIGKILL)  # the whole group: the worker and its pool processes
            except ProcessLookupError:
                pass
            p.wait()

    def stop(self, worker_grace: float = 60.0) -> None:
        """API, then workers (warm shutdown, then kill after `worker_grace` s), then Redis."""
        self._stopping = True
        for c in self.children:
            if c.name == "api":
                self._terminate(c, 10)
        for c in self.children:
            if c.name != "api" and c.proc is not None and c.proc.poll() is None:
                c.proc.send_signal(signal.SIGTERM)
        for c in self.children:
            if c.name != "api":
                self._terminate(c, worker_grace)
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        (self.data_dir / SERVICE_FILE).unlink(missing_ok=True)

    def kill(self, redis: bool = False) -> None:
        """Crash (tests of restart/resume): SIGKILL every child at once; Redis too if `redis`, else SHUTDOWN."""
        self._stopping = True
        for c in self.children:
            if c.proc is not None and c.proc.poll() is None:
                try:
                    os.killpg(c.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                c.proc.wait()
        if self.redis is not None and not redis:
            self.redis.stop()
            self.redis = None
        if self.redis is not None and self.redis.proc is not None:
            self.redis.proc.kill()
            self.redis.proc.wait()
            self.redis.proc = None
            self.redis = None

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
