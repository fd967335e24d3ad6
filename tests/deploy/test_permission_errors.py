"""A data directory the worker may not write (a root-owned volume, a read-only mount) fails the job at once with
`permission_denied`; it is not retried as a transient I/O error (which took 42 s and four retries per video to
end in the same error). Other OS errors are still retried."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from celery.exceptions import Ignore

from workers import tasks


class RetryCalled(Exception):
    pass


class FakeJobStore:
    def __init__(self) -> None:
        self.recorded: list[dict] = []
        self.observed: list[tuple] = []

    def observe_task(self, stage, seconds, ok, code=None):
        self.observed.append((stage, ok, code))

    def record(self, job_id, error=None, result=None, timings=None):
        self.recorded.append({"job_id": job_id, "error": error})
        return 1  # not the batch's last item: no finalize


class FakeTask:
    max_retries = tasks.MAX_RETRIES
    soft_time_limit = None

    def __init__(self, retries: int = 0) -> None:
        self.request = SimpleNamespace(retries=retries)
        self.retried: list[BaseException] = []

    def retry(self, exc, countdown):
        self.retried.append(exc)
        return RetryCalled()


@pytest.fixture
def fake_jobstore(monkeypatch):
    st = FakeJobStore()
    monkeypatch.setattr(tasks, "jobstore", lambda: st)
    return st


def _run(exc: BaseException, retries: int = 0) -> tuple[FakeTask, BaseException]:
    task = FakeTask(retries)
    job = SimpleNamespace(id="job1", timings={}, batch_id=None)
    with pytest.raises((Ignore, RetryCalled)) as ei:
        with tasks._guard(task, job, "extract"):
            raise exc
    return task, ei.value


@pytest.mark.parametrize(
    "exc",
    [
        PermissionError(errno.EACCES, "Permission denied", "/data/features/efficientnet_lite0"),
        # what h5py raises for a shard it may not create
        PermissionError(errno.EACCES, "Unable to synchronously create file (unable to open file: name = "
                        "'/data/features/x/.y.h5.tmp', errno = 13, error message = 'Permission denied')"),
        OSError(errno.EPERM, "Operation not permitted", "/data/results/b1"),
        OSError(errno.EROFS, "Read-only file system", "/data/uploads/a.mp4"),
    ],
    ids=["eacces", "h5py", "eperm", "erofs"],
)
def test_permission_errors_fail_at_once(fake_jobstore, exc):
    task, raised = _run(exc)
    assert isinstance(raised, Ignore) and task.retried == []
    (rec,) = fake_jobstore.recorded
    err = rec["error"]
    assert err["code"] == "permission_denied" and err["stage"] == "extract"
    assert str(exc.strerror or exc) in err["reason"] and "not retried" in err["reason"]
    assert f"uid {os.getuid()}" in err["reason"]
    assert fake_jobstore.observed == [("extract", False, "permission_denied")]


@pytest.mark.parametrize(
    "exc", [OSError(errno.EIO, "Input/output error"), ConnectionResetError(), TimeoutError(), OSError("no errno")],
    ids=["eio", "connreset", "timeout", "plain"],
)
def test_other_os_errors_are_still_retried(fake_jobstore, exc):
    task, raised = _run(exc)
    assert isinstance(raised, RetryCalled) and task.retried == [exc] and fake_jobstore.recorded == []
    task, raised = _run(exc, retries=tasks.MAX_RETRIES)  # retries used up: recorded as io_error
    assert isinstance(raised, Ignore) and fake_jobstore.recorded[0]["error"]["code"] == "io_error"


def _as_nobody(fn, *args) -> str:
    """Run fn(*args) in a forked child that dropped root for uid/gid 65534; return what it returned (text)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no exec, so the interpreter and the loaded modules stay usable
        os.close(r)
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            out = fn(*args)
        except BaseException as e:  # noqa: BLE001
            out = f"child error {type(e).__name__}: {e}"
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    os.waitpid(pid, 0)
    return out


def _create_shard(path: str) -> str:
    from videotag.core.feature_store import ShardWriter

    try:
        ShardWriter(path)
    except BaseException as e:  # noqa: BLE001
        return f"{type(e).__name__} {tasks._not_transient(e)}"
    return "no error"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another uid (and root may write anywhere)")
def test_feature_store_raises_what_the_guard_classifies():
    """As a user who may not write the features directory (the compose defect), creating a shard raises an
    error `_guard` treats as permanent, not a wrapped or transient one."""
    import videotag.core.feature_store  # noqa: F401 - loaded before the fork

    root = Path(tempfile.mkdtemp(prefix="vt-perm-"))  # under /tmp: every parent is traversable by others
    try:
        features, open_dir = root / "features", root / "open"
        features.mkdir()
        open_dir.mkdir()
        os.chmod(root, 0o755)
        os.chmod(features, 0o755)  # root's, like a volume Docker created for a missing image directory
        os.chmod(open_dir, 0o777)
        assert _as_nobody(_create_shard, str(open_dir / "b" / "x.h5")) == "no error"  # the control
        for target in (features / "x.h5", features / "efficientnet_lite0" / "x.h5"):  # h5py's create, then mkdir
            assert _as_nobody(_create_shard, str(target)) == "PermissionError True", target
    finally:
        shutil.rmtree(root, ignore_errors=True)
