"""Bad option values are refused before any work: exit 2 with one line naming the option, never a traceback per
video (and never 999 tags for `--topk -1`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def videotag(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "videotag", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})})  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tag", "--topk", "-1"], "--topk: Input should be greater than or equal to 1 (got -1)"),
        (["tag", "--frames", "0"], "--frames: Input should be greater than or equal to 1"),
        (["tag", "--threshold", "2"], "--threshold: Input should be less than or equal to 1"),
        (["extract", "--sampling", "nope"], "--sampling: Input should be 'uniform', 'segment' or 'timestamp'"),
        (["tag", "--batch-size", "-3"], "--batch-size: Input should be greater than or equal to 0"),
        (["predict", "x.h5", "--topk", "0"], "--topk: Input should be greater than or equal to 1"),
    ],
)
def test_bad_values_exit_2_with_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    clip = tmp_path / "never-decoded.mp4"  # refused before any input is looked at
    r = videotag(*args, str(clip))
    err = " ".join(r.stderr.split())
    assert r.returncode == 2 and message in err and "Traceback" not in err, r.stderr
    assert err.count("error:") == 1


def test_bad_environment_value_is_named_as_such() -> None:
    r = videotag("tag", "x.mp4", env={"VIDEOTAG_TOPK": "0"})
    assert r.returncode == 2 and "VIDEOTAG_TOPK: Input should be greater than or equal to 1" in r.stderr


def test_version_and_defaults_in_help() -> None:
    r = videotag("--version")
    assert r.returncode == 0 and r.stdout.startswith("videotag 0.")
    out = " ".join(videotag("tag", "--help").stdout.split())
    for text in ("Tags per video [default: 20]", "Frames sampled uniformly per video [default: 300]",
                 "[default: --topk, all that are kept]"):  # fmt: skip
        assert text in out, text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--predict-workers", "2"], "--predict-workers 2: 2 pool processes asked for, but this worker "
         "shares one model among 16 threads"),
        (["serve", "--extract-workers", "2", "--decoders", "3"], "--extract-workers 2: 2 pool processes asked for"),
        (["worker", "--queues", "predict", "-c", "3"], "--concurrency 3: 3 pool processes asked for"),
        (["tag", "--decoders", "-1"], "--decoders: Input should be greater than or equal to 0"),
        (["serve", "--predict-batch", "0"], "--predict-batch: Input should be greater than or equal to 1"),
    ],
)
def test_worker_pools_refused_before_anything_starts(args: list[str], message: str, tmp_path: Path) -> None:
    """Processes where videos share one model (threads) are refused at once, naming the option; no Redis, no
    worker was started (the data dir stays empty)."""
    r = videotag(*args, "--data-dir", str(tmp_path / "data")) if args[0] != "tag" else videotag(*args, "x.mp4")
    err = " ".join(r.stderr.split())
    assert r.returncode == 2 and message in err and "Traceback" not in err, r.stderr
    assert not (tmp_path / "data").exists()
