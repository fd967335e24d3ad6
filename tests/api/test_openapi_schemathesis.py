"""The published OpenAPI document is the truth: schemathesis runs every operation against a real service
(embedded Redis, uvicorn, extract and predict workers), all checks, all phases (examples, coverage, fuzzing,
stateful), a bounded number of examples per operation, and must find nothing.

Checks include: no 5xx; every status code, content type, header and body as documented; schema-valid requests
accepted and schema-violating ones rejected; missing or invalid API keys refused; unsupported methods answered
405 with an Allow header; created jobs and batches found again.

Two allowances, on purpose:
- POST /v1/tag answers 422 with the failed job when the video cannot be tagged (a well-formed request for a file
  that is not a video, or a path that does not exist): the schema cannot know which bytes decode, so 422 counts as
  a valid answer to a valid request there.
- A request over a size limit (more items than maxItems, a filelist longer than maxLength) is refused with 413,
  which counts as rejecting it, like 400/422 do.
Everything else uses schemathesis' defaults.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import httpx
import pytest
from service_helpers import make_clips, make_weights, service_settings, start_service

KEY = "schemathesis-key"
MAX_EXAMPLES = int(os.environ.get("VIDEOTAG_SCHEMATHESIS_EXAMPLES", "30"))
SEED = os.environ.get("VIDEOTAG_SCHEMATHESIS_SEED", "20261127")
CONFIG = """
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]

[[operations]]
include-path = "/v1/tag"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]
"""

pytest.importorskip("schemathesis", reason="schemathesis is in the test extras: pip install -e '.[test]'")


@pytest.fixture(scope="module")
def service(tmp_path_factory, default_weights):
    tmp = tmp_path_factory.mktemp("schemathesis")
    weights = make_weights(tmp / "weights", default_weights)
    root = tmp / "root"
    make_clips(root / "clips", 2, prefix="st", frames=8)
    settings = service_settings(tmp, weights, path_roots=[root], api_keys=[KEY], tag_timeout_s=3.0,
                                max_upload_bytes=1_000_000, max_filelist_bytes=200_000,
                                max_batch_items=500)  # fmt: skip
    svc = start_service(settings)
    yield svc, tmp
    svc.stop(worker_grace=10)


def test_schemathesis_all_operations_all_checks(service):
    svc, tmp = service
    spec = httpx.get(svc.api_url + "/openapi.json", headers={"X-API-Key": KEY}).json()
    operations = sum(len(ops) for ops in spec["paths"].values())
    config = tmp / "schemathesis.toml"
    config.write_text(CONFIG)
    report = tmp / "schemathesis-junit.xml"  # per-operation results, for a CI to show
    cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
           svc.api_url + "/openapi.json", "-H", f"X-API-Key: {KEY}", "--checks", "all", "--workers", "1",
           "--max-examples", str(MAX_EXAMPLES), "--seed", SEED, "--request-timeout", "60",
           "--report", "junit", "--report-junit-path", str(report)]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, cwd=tmp,
                         env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"})  # fmt: skip
    out = run.stdout + run.stderr
    summary = out[out.rfind("SUMMARY") :] if "SUMMARY" in out else out[-4000:]
    print(summary)  # shown with -s / on failure: operations, phases, generated cases
    assert run.returncode == 0, out[-20000:]
    tested = re.search(r"Tested:\s+(\d+)", summary)
    assert tested and int(tested.group(1)) == operations, summary
    counts = re.search(r"(\d+) generated, (\d+) passed", summary)  # the line says "N found M failures" otherwise
    assert counts and int(counts.group(1)) == int(counts.group(2)) >= operations * MAX_EXAMPLES, summary
    assert report.is_file()
