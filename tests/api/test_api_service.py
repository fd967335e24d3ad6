"""The HTTP API against a running service (uvicorn + embedded Redis + real workers): auth (docs, schema, metrics
and detailed readiness included), size and length limits quoting the configured values, body and media-type
checks, path traversal and private-URL refusals, unicode upload names, and the schema of every response (strict
pydantic models)."""

from __future__ import annotations

import os
import re
import time
import urllib.parse
from pathlib import Path

import httpx
import pytest
from service_helpers import free_port, make_clips, make_weights, service_settings, start_service, wait_batch

from api.schemas import BatchOut, BatchResults, FramesOut, Health, JobOut, ModelsOut, Problem, Ready
from api.security import Refused, check_url, resolve_server_path

KEY = "test-key-1"
LIMIT = 200_000  # bytes: the upload limit of this test service
JSON_LIMIT = 8192  # and its other limits (small, to test them)
FILELIST_LIMIT = 20_000
MAX_ITEMS = 50
MAX_CHARS = 300


@pytest.fixture(scope="module")
def env(tmp_path_factory, default_weights):
    tmp = tmp_path_factory.mktemp("api")
    weights = make_weights(tmp / "weights", default_weights)
    root = tmp / "root"
    clips = make_clips(root / "clips", 3, prefix="api", frames=12)
    outside = tmp / "outside"
    outside.mkdir()
    secret = outside / "secret.mp4"
    secret.write_bytes(clips[0].read_bytes())
    (root / "link.mp4").symlink_to(secret)
    settings = service_settings(tmp, weights, path_roots=[root], api_keys=[KEY, "second-key"],
                                max_upload_bytes=LIMIT, allow_urls=True, allow_private_urls=False,
                                max_json_bytes=JSON_LIMIT, max_filelist_bytes=FILELIST_LIMIT,
                                max_batch_items=MAX_ITEMS, max_source_chars=MAX_CHARS)  # fmt: skip
    svc = start_service(settings)
    with httpx.Client(base_url=svc.api_url, timeout=60, headers={"X-API-Key": KEY}) as c:
        yield {"svc": svc, "client": c, "root": root, "clips": clips, "secret": secret, "tmp": tmp}
    svc.stop(worker_grace=10)


def problem(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    return Problem.model_validate(r.json()).detail


# ---- auth ---------------------------------------------------------------------------------------------------
def test_api_key_required(env):
    c = env["client"]
    url = env["svc"].api_url
    for method, path in (("get", "/v1/jobs/jx"), ("post", "/v1/jobs"), ("post", "/v1/tag"), ("post", "/v1/batches"),
                         ("get", "/v1/batches/bx"), ("get", "/v1/batches/bx/results"),
                         ("post", "/v1/batches/bx/repredict"), ("get", "/v1/jobs/jx/frames"),
                         ("get", "/v1/models")):  # fmt: skip
        r = httpx.request(method, url + path, json={"path": "x"})
        assert "missing API key" in problem(r, 401), path
        r = httpx.request(method, url + path, json={"path": "x"}, headers={"X-API-Key": "wrong"})
        assert problem(r, 401) == "invalid API key"
    r = httpx.get(url + "/v1/jobs/nope", headers={"X-API-Key": "second-key"})  # any configured key works
    assert "no job" in problem(r, 404)
    r = httpx.get(url + "/v1/jobs/nope", auth=("anyone", KEY))  # or the key as an HTTP Basic password
    assert "no job" in problem(r, 404)
    # open endpoints: liveness, public readiness, the page and the docs' static assets
    assert Health.model_validate(httpx.get(url + "/healthz").json()).status == "ok"
    for path in ("/readyz", "/", "/static/app.js", "/docs/assets/swagger-ui-bundle.js"):
        assert httpx.get(url + path).status_code == 200, path
    # with keys set: the schema, the docs, the metrics and the detailed readiness need one
    for path in ("/openapi.json", "/docs", "/metrics", "/readyz?verbose=true"):
        r = httpx.get(url + path)
        assert "missing API key" in problem(r, 401), path
        assert httpx.get(url + path, headers={"X-API-Key": "wrong"}).status_code == 401, path
        assert httpx.get(url + path, headers={"X-API-Key": KEY}).status_code == 200, path
    # a browser asked for /docs is asked for credentials (any user, the key as password), and gets them through
    r = httpx.get(url + "/docs")
    assert r.headers["www-authenticate"].startswith('Basic realm="videotag"')
    assert httpx.get(url + "/openapi.json", auth=("me", KEY)).json()["info"]["title"] == "videotag"
    assert c.get("/v1/jobs/nope").status_code == 404


def test_docs_work_offline(env):
    """/docs loads nothing from another host: its script, style and icon are served here."""
    c = env["client"]
    html = c.get("/docs").text
    assert "swagger-ui" in html and "cdn" not in html.lower()
    refs = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html) + re.findall(r"url: ?'([^']+)'", html)
    assert len(refs) >= 4, refs
    for ref in refs:
        assert ref.startswith("/"), ref  # same host
        r = c.get(ref)
        assert r.status_code == 200 and len(r.content) > 100, ref
    assert "SwaggerUIBundle" in c.get("/docs/assets/swagger-ui-bundle.js").text


def test_public_readiness_names_no_host_or_path(env):
    url = env["svc"].api_url
    public = httpx.get(url + "/readyz")
    ready = Ready.model_validate(public.json())
    assert ready.status == "ready" and ready.workers == {"extract": 1, "predict": 1} and ready.nodes is None
    assert "@" not in public.text and "/" not in public.text and "sock" not in public.text
    verbose = Ready.model_validate(env["client"].get("/readyz", params={"verbose": "true"}).json())
    assert all("@" in n for nodes in verbose.nodes.values() for n in nodes) and len(verbose.nodes["extract"]) == 1


# ---- models and languages -----------------------------------------------------------------------------------
def test_models_listed_and_languages_checked(env):
    c = env["client"]
    body = ModelsOut.model_validate(c.get("/v1/models").json())
    installed = {m.name: m for m in body.installed}
    fp = installed["imagenet_framepool"]
    assert body.default == "imagenet_framepool" and fp.kind == "predictor" and fp.classes == 1000
    assert fp.languages == ["en"] and fp.default_language == "en" and fp.size_bytes > 1_000_000
    assert installed["efficientnet_lite0"].kind == "backbone"
    assert {a.name for a in body.available} == {"default", "videotag"}
    r = c.post("/v1/tag", files={"file": ("a.mp4", env["clips"][0].read_bytes(), "video/mp4")},
               data={"topk": "3", "lang": "en"})  # fmt: skip
    job = JobOut.model_validate(r.json())
    assert r.status_code == 200 and job.lang == "en" and len(job.result.tags) == 3
    clip = str(env["clips"][1])
    assert "no 'zh' class names (it has: en)" in problem(c.post("/v1/jobs", json={"path": clip, "lang": "zh"}), 422)
    assert "lang" in problem(c.post("/v1/jobs", json={"path": clip, "lang": "../x"}), 422)
    r = c.post("/v1/batches", json={"paths": [clip], "lang": "zh"})
    assert "no 'zh' class names" in problem(r, 422)


# ---- uploads ------------------------------------------------------------------------------------------------
def test_upload_tag_returns_ranked_result(env):
    c = env["client"]
    data = env["clips"][0].read_bytes()
    r = c.post("/v1/tag", files={"file": ("my clip.mp4", data, "video/mp4")}, data={"topk": "4"})
    assert r.status_code == 200, r.text
    job = JobOut.model_validate(r.json())
    assert job.status == "done" and job.input == "upload" and job.filename == "my clip.mp4"
    assert job.result is not None and job.result.ok and len(job.result.tags) == 4
    probs = [t.probability for t in job.result.tags]
    assert probs == sorted(probs, reverse=True) and job.model == "imagenet_framepool"
    assert {"queue_extract_s", "extract_s", "predict_s", "total_s"} <= set(job.timings)
    assert r.headers["location"] == f"/v1/jobs/{job.job_id}"
    # raw body upload, same video: same content id
    r2 = c.post("/v1/tag", content=data, headers={"Content-Type": "application/octet-stream", "X-Filename": "a.mp4"})
    assert JobOut.model_validate(r2.json()).result.video_id == job.result.video_id
    frames = FramesOut.model_validate(c.get(f"/v1/jobs/{job.job_id}/frames").json())
    assert 1 <= len(frames.frames) <= 8 and all(f.data_url.startswith("data:image/jpeg;base64,") for f in frames.frames)


def test_upload_size_limit_enforced_while_streaming(env):
    c = env["client"]
    big = os.urandom(LIMIT + 10_000)
    before = set(Path(env["tmp"] / "data" / "uploads").glob("*"))
    # declared length over the limit: refused before reading
    assert "larger than the limit" in problem(c.post("/v1/jobs", files={"file": ("big.mp4", big)}), 413)

    def stream():  # no Content-Length: chunked; the server counts while reading
        for i in range(0, len(big), 16_384):
            yield big[i : i + 16_384]

    r = c.post("/v1/jobs", content=stream(), headers={"Content-Type": "application/octet-stream"})
    assert "larger than the limit" in problem(r, 413)
    time.sleep(0.2)
    assert set(Path(env["tmp"] / "data" / "uploads").glob("*")) == before  # partial uploads removed
    ok = c.post("/v1/jobs", files={"file": ("small.mp4", env["clips"][1].read_bytes())})
    assert ok.status_code == 202 and JobOut.model_validate(ok.json()).status in ("queued", "extracting")


def test_bad_upload_gets_specific_error(env, tmp_path):
    c = env["client"]
    r = c.post("/v1/tag", files={"file": ("notes.mp4", b"this is not a video\n" * 20)})
    assert r.status_code == 422, r.text
    job = JobOut.model_validate(r.json())
    assert job.status == "failed" and job.result is None
    assert job.error.code == "not_a_video" and job.error.stage == "extract" and job.error.reason
    assert "no file part" in problem(c.post("/v1/jobs", files={"other": ("x", b"")}, data={"file": "x"}), 422)
    r = c.post("/v1/jobs", files={"file": ("v.mp4", b"xx")}, data={"topk": "0"})
    assert "topk" in problem(r, 422)
    assert "not found" in problem(c.post("/v1/jobs", files={"file": ("v.mp4", b"x")}, data={"model": "nope"}), 404)
    r = c.post("/v1/jobs", json={"path": "clips/api_000.mp4", "model": "../x"})
    assert problem(r, 422).startswith("model: String should match pattern")


# ---- server-side paths --------------------------------------------------------------------------------------
def test_path_inputs_only_under_roots(env):
    c = env["client"]
    root = env["root"]
    r = c.post("/v1/tag", json={"path": "clips/api_001.mp4", "topk": 2})  # relative to the first root
    job = JobOut.model_validate(r.json())
    assert r.status_code == 200 and job.source == str((root / "clips/api_001.mp4").resolve())
    assert len(job.result.tags) == 2
    for bad in ("../outside/secret.mp4", "clips/../../outside/secret.mp4", str(env["secret"]), "/etc/passwd",
                "link.mp4"):  # fmt: skip
        detail = problem(c.post("/v1/jobs", json={"path": bad}), 403)
        assert "traversal" in detail or "outside the allowed roots" in detail, bad
    assert "exactly one" in problem(c.post("/v1/jobs", json={}), 422)
    assert "exactly one" in problem(c.post("/v1/jobs", json={"path": "a", "url": "http://b"}), 422)
    assert "not valid JSON" in problem(c.post("/v1/jobs", content=b"{", headers={"Content-Type": "application/json"}),
                                       400)  # fmt: skip
    r = c.post("/v1/batches", json={"paths": [str(env["clips"][0]), "../x.mp4", "/etc/hosts"]})
    detail = problem(r, 403)
    assert "2 refused" in detail and "line 2" in detail and "line 3" in detail


def test_a_directory_means_each_video_in_it(env):
    """As for `videotag tag DIR`: a batch item naming a directory becomes one item per video in it (sorted,
    recursive); what a directory holds is checked against the roots too; a single job cannot be a directory."""
    c, root = env["client"], env["root"]
    r = c.post("/v1/batches", json={"paths": ["clips"], "filelist": "# a comment\n\nclips/api_000.mp4\n", "topk": 1})
    assert r.status_code == 202, r.text
    b = wait_batch(c, r.json()["batch_id"])
    want = [str(p.resolve()) for p in sorted((root / "clips").glob("*.mp4"))]
    want.append(str((root / "clips" / "api_000.mp4").resolve()))
    assert b["total"] == 4 and b["done"] == 4, b
    items = BatchResults.model_validate(c.get(f"/v1/batches/{b['batch_id']}/results").json()).items
    assert [it.source for it in items] == want
    detail = problem(c.post("/v1/batches", json={"paths": [str(root)]}), 403)  # root/link.mp4 leads outside
    assert "found file" in detail and "outside the allowed roots" in detail
    (root / "empty").mkdir(exist_ok=True)
    assert "no video files" in problem(c.post("/v1/batches", json={"paths": ["empty"]}), 422)
    assert "is a directory" in problem(c.post("/v1/jobs", json={"path": "clips"}), 422)


def test_missing_file_under_root_fails_as_job(env):
    r = env["client"].post("/v1/tag", json={"path": "clips/nothing.mp4"})
    job = JobOut.model_validate(r.json())
    assert r.status_code == 422 and job.error.code == "missing"


# ---- URLs ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url,why",
    [
        ("http://127.0.0.1:8000/v.mp4", "loopback"),
        ("http://localhost/v.mp4", "loopback"),
        ("http://10.1.2.3/v.mp4", "private"),
        ("http://192.168.0.10/v.mp4", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[::1]/v.mp4", "loopback"),
        ("http://[fe80::1]/v.mp4", "link-local"),
        ("http://[::ffff:127.0.0.1]/v.mp4", "loopback"),
        ("http://0.0.0.0/v.mp4", "unspecified"),
        ("http://100.64.0.1/v.mp4", "non-public"),
    ],
)
def test_private_urls_refused(env, url, why):
    detail = problem(env["client"].post("/v1/jobs", json={"url": url}), 403)
    assert why in detail and "refused" in detail


def test_malformed_urls_refused(env):
    c = env["client"]
    assert "only http and https" in problem(c.post("/v1/jobs", json={"url": "ftp://example.com/v.mp4"}), 400)
    assert "only http and https" in problem(c.post("/v1/jobs", json={"url": "file:///etc/passwd"}), 400)
    assert "credentials" in problem(c.post("/v1/jobs", json={"url": "http://u:p@example.com/v.mp4"}), 400)
    assert "no host" in problem(c.post("/v1/jobs", json={"url": "http:///v.mp4"}), 400)


def test_security_helpers_directly(tmp_path):
    with pytest.raises(Refused, match="disabled"):
        check_url("https://example.com/v.mp4", allow_urls=False, allow_private=False)
    assert check_url("http://127.0.0.1/v.mp4", allow_urls=True, allow_private=True) == "http://127.0.0.1/v.mp4"
    with pytest.raises(Refused, match="disabled"):
        resolve_server_path("/x.mp4", [])
    with pytest.raises(Refused, match="NUL"):
        resolve_server_path("a\x00b", [tmp_path])
    assert resolve_server_path("a/b.mp4", [tmp_path]) == (tmp_path / "a/b.mp4").resolve()


# ---- jobs, batches and their schemas ------------------------------------------------------------------------
def test_async_job_lifecycle(env):
    c = env["client"]
    r = c.post("/v1/jobs", json={"path": "clips/api_002.mp4"})
    assert r.status_code == 202
    job = JobOut.model_validate(r.json())
    assert job.status == "queued" and job.kind == "job" and job.result is None
    deadline = time.monotonic() + 60
    while job.status not in ("done", "failed") and time.monotonic() < deadline:
        time.sleep(0.1)
        job = JobOut.model_validate(c.get(f"/v1/jobs/{job.job_id}").json())
    assert job.status == "done" and job.finished and job.result.ok and job.error is None


def test_tag_timeout_returns_202(env):
    r = env["client"].post("/v1/tag", params={"timeout": 0}, json={"path": "clips/api_000.mp4"})
    assert r.status_code == 202 and JobOut.model_validate(r.json()).status in ("queued", "extracting")
    assert "timeout" in problem(env["client"].post("/v1/tag", params={"timeout": -1}, json={"path": "a"}), 422)


def test_batches_json_text_and_multipart(env):
    c = env["client"]
    paths = [str(p) for p in env["clips"]]
    created = []
    r = c.post("/v1/batches", json={"paths": paths[:2], "topk": 3})
    created.append(r)
    r = c.post("/v1/batches", content="\n".join(paths) + "\n", headers={"Content-Type": "text/plain"})
    created.append(r)
    r = c.post("/v1/batches", files={"filelist": ("list.txt", "\n".join(paths).encode())}, data={"topk": "2"})
    created.append(r)
    expected = [(2, 3), (3, None), (3, 2)]
    for r, (n, k) in zip(created, expected, strict=True):
        assert r.status_code == 202, r.text
        b = BatchOut.model_validate(r.json())
        assert (b.total, b.topk, b.kind) == (n, k, "batch") and r.headers["location"] == f"/v1/batches/{b.batch_id}"
        done = BatchOut.model_validate(wait_batch(c, b.batch_id, 120))
        assert (done.done, done.failed, done.pending, done.progress) == (n, 0, 0, 1.0)
        page = BatchResults.model_validate(c.get(f"/v1/batches/{b.batch_id}/results", params={"limit": 2}).json())
        assert page.total == n and [i.index for i in page.items] == list(range(min(n, 2)))
        page2 = BatchResults.model_validate(
            c.get(f"/v1/batches/{b.batch_id}/results", params={"offset": 2, "limit": 2}).json()
        )
        assert [i.index for i in page2.items] == list(range(2, n))
        assert all(len(i.result.tags) == (k or 5) for i in page.items + page2.items)
    assert "empty" in problem(c.post("/v1/batches", json={"paths": []}), 422)
    assert "blank" in problem(c.post("/v1/batches", json={"filelist": " \n\t\n"}), 422)
    r = c.post("/v1/batches", content=b"x", headers={"Content-Type": "image/png"})
    assert "'image/png' is not accepted here: application/json" in problem(r, 415)
    assert "no batch" in problem(c.get("/v1/batches/bnope"), 404)
    assert "no batch" in problem(c.get("/v1/batches/bnope/results"), 404)
    assert "limit" in problem(c.get(f"/v1/batches/{b.batch_id}/results", params={"limit": 0}), 422)


def test_repredict_validation(env):
    c = env["client"]
    b = c.post("/v1/batches", json={"paths": [str(env["clips"][0])]}).json()
    wait_batch(c, b["batch_id"], 60)
    assert "not found" in problem(c.post(f"/v1/batches/{b['batch_id']}/repredict", json={"model": "nope"}), 404)
    assert "model" in problem(c.post(f"/v1/batches/{b['batch_id']}/repredict", json={}), 422)
    assert "no batch" in problem(c.post("/v1/batches/bnope/repredict", json={"model": "tiny_pool"}), 404)
    r = c.post(f"/v1/batches/{b['batch_id']}/repredict", json={"model": "tiny_pool"})
    child = BatchOut.model_validate(r.json())
    assert r.status_code == 202 and child.kind == "repredict" and child.parent == b["batch_id"]


def test_health_ready_metrics_openapi(env):
    c = env["client"]
    r = c.get("/readyz")
    ready = Ready.model_validate(r.json())
    assert r.status_code == 200 and ready.status == "ready" and ready.redis
    assert ready.workers["extract"] >= 1 and ready.workers["predict"] >= 1
    c.get("/v1/jobs/jnope")  # a templated route to count (the test must not depend on the ones before it)
    text = c.get("/metrics").text
    for name in ("videotag_http_requests_total", "videotag_queue_depth{queue=\"extract\"}",
                 "videotag_task_duration_seconds_bucket", "videotag_task_failures_total", "videotag_redis_up 1.0",
                 'route="/v1/jobs/{job_id}"'):  # fmt: skip
        assert name in text, name
    spec = c.get("/openapi.json").json()
    for path in (
        "/v1/tag",
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/batches",
        "/v1/batches/{batch_id}",
        "/v1/batches/{batch_id}/results",
        "/v1/batches/{batch_id}/repredict",
        "/healthz",
        "/readyz",
    ):
        assert path in spec["paths"], path
    assert "multipart/form-data" in spec["paths"]["/v1/tag"]["post"]["requestBody"]["content"]
    # every error body is {"detail": str}; the rules the server enforces are in the schema
    for path, ops in spec["paths"].items():
        for op in ops.values():
            for code, resp in op["responses"].items():
                if code.startswith(("4", "5")) and (path, code) != ("/readyz", "503") and (path, code) != (
                        "/v1/tag", "422"):  # fmt: skip
                    assert resp["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Problem"}
            if path.startswith("/v1/"):  # the job store is behind all but the model list
                assert {"401", "503"} <= set(op["responses"]) | ({"503"} if path == "/v1/models" else set()), path
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert {"415", "413", "422"} <= set(spec["paths"]["/v1/batches"]["post"]["responses"])
    assert spec["paths"]["/v1/tag"]["post"]["responses"]["503"]["headers"]["Retry-After"]
    schemas = spec["components"]["schemas"]
    inp = schemas["InputJSON"]
    assert [b["required"] for b in inp["oneOf"]] == [["url"], ["path"]]
    assert inp["properties"]["path"]["maxLength"] == MAX_CHARS and inp["properties"]["url"]["maxLength"] == MAX_CHARS
    topk = next(a for a in inp["properties"]["topk"]["anyOf"] if a["type"] == "integer")
    threshold = next(a for a in inp["properties"]["threshold"]["anyOf"] if a["type"] == "number")
    assert (topk["minimum"], topk["maximum"], threshold["minimum"], threshold["maximum"]) == (1, 1000, 0, 1)
    batch = schemas["BatchJSON"]
    assert batch["properties"]["paths"]["minItems"] == 1 and batch["properties"]["paths"]["maxItems"] == MAX_ITEMS
    assert batch["properties"]["filelist"]["maxLength"] == FILELIST_LIMIT
    assert schemas["RepredictJSON"]["required"] == ["model"]
    assert set(schemas["InputJSON"]["properties"]["model"]["enum"]) == {None, "", "imagenet_framepool", "tiny_pool"}
    assert set(spec["components"]["securitySchemes"]) == {"APIKey"}


def test_readyz_reports_missing_workers(tmp_path, default_weights):
    """API + Redis without workers: 503 naming the queues nobody consumes."""
    from workers.supervisor import Service

    settings = service_settings(tmp_path, make_weights(tmp_path / "w", default_weights))
    svc = Service(settings, port=free_port(), workers=False).start()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(svc.api_url + "/readyz", timeout=5)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        ready = Ready.model_validate(r.json())
        assert r.status_code == 503 and ready.status == "not_ready" and ready.redis
        assert "extract" in ready.detail and "predict" in ready.detail
    finally:
        svc.stop()


# ---- limits, bodies and media types -------------------------------------------------------------------------
def test_limits_quote_the_configured_values(env):
    c = env["client"]
    # JSON bodies: the declared length, and a chunked body counted while it is read
    big = {"path": "a" * (JSON_LIMIT + 10)}
    detail = problem(c.post("/v1/jobs", json=big), 413)
    assert f"larger than the limit of {JSON_LIMIT} bytes (set by VIDEOTAG_MAX_JSON_BYTES)" in detail

    def chunks():
        yield b'{"path": "' + b"a" * JSON_LIMIT
        yield b'"}'

    r = c.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert f"limit of {JSON_LIMIT} bytes" in problem(r, 413)
    # uploads quote max_upload_bytes itself, not the multipart allowance on top of it
    detail = problem(c.post("/v1/jobs", files={"file": ("big.mp4", os.urandom(LIMIT + 70_000))}), 413)
    assert re.search(rf"larger than the limit of {LIMIT} bytes \(set by VIDEOTAG_MAX_UPLOAD_BYTES\)$", detail), detail
    # path / URL length
    assert f"more than the limit of {MAX_CHARS}" in problem(c.post("/v1/jobs", json={"path": "p" * (MAX_CHARS + 1)}),
                                                            422)  # fmt: skip
    url = "https://example.com/" + "u" * MAX_CHARS
    assert "url: " in problem(c.post("/v1/tag", json={"url": url}), 422)
    # batches: items, line length, body size (JSON, text and multipart alike)
    detail = problem(c.post("/v1/batches", json={"paths": ["clips/api_000.mp4"] * (MAX_ITEMS + 1)}), 413)
    assert f"{MAX_ITEMS + 1} items; at most {MAX_ITEMS} per batch (VIDEOTAG_MAX_BATCH_ITEMS)" == detail
    detail = problem(c.post("/v1/batches", content="clips/api_000.mp4\n" + "x" * (MAX_CHARS + 1) + "\n",
                            headers={"Content-Type": "text/plain"}), 422)  # fmt: skip
    assert "longer than 300 characters" in detail and "line 2" in detail
    text = ("clips/api_000.mp4\n" * (FILELIST_LIMIT // 10)).encode()
    for r in (c.post("/v1/batches", content=text, headers={"Content-Type": "text/plain"}),
              c.post("/v1/batches", json={"filelist": text.decode()}),
              c.post("/v1/batches", files={"filelist": ("list.txt", text)})):  # fmt: skip
        detail = problem(r, 413)
        assert f"larger than the limit of {FILELIST_LIMIT} bytes (set by VIDEOTAG_MAX_FILELIST_BYTES)" in detail


def test_bodies_required_and_media_types_named(env):
    c = env["client"]
    for path in ("/v1/jobs", "/v1/tag"):
        detail = problem(c.post(path), 422)  # no body at all
        assert "a request body is required: multipart/form-data" in detail and "application/json" in detail
        r = c.post(path, content=b"<video/>", headers={"Content-Type": "application/xml"})
        detail = problem(r, 415)
        assert detail.startswith("Content-Type 'application/xml' is not accepted here: multipart/form-data"), detail
        assert "application/octet-stream" in detail
        assert "is empty" in problem(c.post(path, content=b" \n", headers={"Content-Type": "application/json"}), 422)
        assert "must be an object" in problem(c.post(path, json=["clips/api_000.mp4"]), 422)
        assert "topk: Input should be a valid integer" in problem(c.post(path, json={"path": "a", "topk": "3"}), 422)
        assert "uploaded file is empty" in problem(c.post(path, files={"file": ("v.mp4", b"")}), 422)
    assert "a request body is required" in problem(c.post("/v1/batches"), 422)
    b = c.post("/v1/batches", json={"paths": [str(env["clips"][0])]}).json()
    rp = f"/v1/batches/{b['batch_id']}/repredict"
    assert "a request body is required" in problem(c.post(rp), 422)
    assert "not accepted here: application/json" in problem(c.post(rp, content=b"model=x",
                                                                    headers={"Content-Type": "text/plain"}), 415)
    detail = problem(c.post(rp, json={"model": "efficientnet_lite0"}), 404)  # a backbone is not a predictor
    assert "'efficientnet_lite0' not found (installed predictors: imagenet_framepool, tiny_pool)" in detail
    assert "no file part" in problem(c.post("/v1/jobs", files={"notfile": ("v.mp4", b"x")}), 422)
    uploads = Path(env["tmp"] / "data" / "uploads")
    assert not [p for p in uploads.glob("*/*") if p.name == "v.mp4"]  # refused uploads leave nothing behind


def test_unicode_upload_name_kept(env):
    c = env["client"]
    data = env["clips"][2].read_bytes()
    name = "vidéo ü 名前 (1).mp4"
    job = JobOut.model_validate(c.post("/v1/jobs", files={"file": (name, data, "video/mp4")}).json())
    assert job.filename == name
    assert re.fullmatch(r"[A-Za-z0-9._-]+\.mp4", Path(job.source).name) and Path(job.source).is_file()  # safe
    raw = c.post("/v1/jobs", content=data, headers={"Content-Type": "video/mp4",
                                                    "X-Filename": urllib.parse.quote(name)})  # fmt: skip
    assert raw.status_code == 202 and JobOut.model_validate(raw.json()).filename == name
    weird = c.post("/v1/jobs", content=data, headers={"Content-Type": "application/octet-stream",
                                                      "X-Filename": urllib.parse.quote("../../etc/\x07bell\u200b.mp4")})
    assert JobOut.model_validate(weird.json()).filename == "bell.mp4"  # base name, no control characters
