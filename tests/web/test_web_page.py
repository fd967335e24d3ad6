"""The web page in headless Chromium (Debian's `chromium`), driven over the DevTools protocol: real file
uploads through the page's form (one or several files, one row each), progress until done, ranked tags drawn as
bars and a strip of sampled frames; a failed job shown as failed (red step and bar, no "done").

Chromium comes from `apt-get install chromium` (scripts/install-system-deps.sh); the protocol client is the
small `websocket-client` package. The test is skipped only when no Chromium binary exists.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import pytest
import videogen
from PIL import Image
from service_helpers import make_weights, service_settings, start_service

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-allow-origins=*"]  # fmt: skip
KEY = "web-key"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")


class Browser:
    """Minimal Chrome DevTools protocol client for one page."""

    def __init__(self, profile: Path) -> None:
        import websocket

        self.proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                                      "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not start (no DevToolsActivePort)")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.ids = itertools.count(1)
        self.console: list[str] = []
        self.call("Runtime.enable")

    def call(self, method: str, **params: Any) -> dict:
        mid = next(self.ids)
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("method") == "Runtime.consoleAPICalled":
                self.console.append(" ".join(str(a.get("value", a.get("description"))) for a in msg["params"]["args"]))
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def js(self, expr: str) -> Any:
        res = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"JS error in {expr!r}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def wait(self, expr: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = self.js(expr)
            if v:
                return v
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expr}; console: {self.console}")

    def open_page(self, url: str) -> None:
        """Navigate and wait until the page's form is there."""
        self.call("Page.navigate", url=url)
        self.wait("document.readyState === 'complete' && !!document.getElementById('file')", 30)

    def choose_file(self, *paths: Path) -> None:
        """Put `paths` into the page's file input, as a user picking them would."""
        root = self.call("DOM.getDocument")["root"]["nodeId"]
        node = self.call("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
        self.call("DOM.setFileInputFiles", files=[str(p) for p in paths], nodeId=node)

    def pixel(self, selector: str, tmp: Path, x: float = 0.1) -> tuple[int, int, int]:
        """The colour drawn at `x` (a fraction of the width) across the middle of the element, from a screenshot."""
        r = self.js(f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
                    "el.scrollIntoView({block: 'center'}); const b = el.getBoundingClientRect();"
                    "return {x: b.x, y: b.y, w: b.width, h: b.height}; })()")  # fmt: skip
        shot = self.call("Page.captureScreenshot", format="png")["data"]
        path = tmp / "pixel.png"
        path.write_bytes(base64.b64decode(shot))
        with Image.open(path) as img:
            return img.convert("RGB").getpixel((int(r["x"] + x * r["w"]), int(r["y"] + r["h"] / 2)))

    def open_with_basic_auth(self, url: str, user: str, password: str, ready: str, timeout: float = 60) -> None:
        """Navigate to a page that answers 401 + `WWW-Authenticate: Basic`, answering the browser's credentials
        prompt as a person would, and wait until `ready` (a JS expression) is true."""
        self.call("Fetch.enable", handleAuthRequests=True, patterns=[{"urlPattern": "*"}])
        mid = next(self.ids)
        self.ws.send(json.dumps({"id": mid, "method": "Page.navigate", "params": {"url": url}}))
        asked = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            method, params = msg.get("method"), msg.get("params", {})
            if method == "Fetch.requestPaused":
                self.ws.send(json.dumps({"id": next(self.ids), "method": "Fetch.continueRequest",
                                         "params": {"requestId": params["requestId"]}}))  # fmt: skip
            elif method == "Fetch.authRequired":
                asked += 1
                answer = {"response": "ProvideCredentials", "username": user, "password": password}
                self.ws.send(json.dumps({"id": next(self.ids), "method": "Fetch.continueWithAuth",
                                         "params": {"requestId": params["requestId"],
                                                    "authChallengeResponse": answer}}))  # fmt: skip
            elif msg.get("id") == mid:
                break
        self.call("Fetch.disable")
        assert asked, "the page did not ask for credentials"
        self.wait(ready, timeout)

    def full_screenshot(self, path: Path) -> None:
        """The whole page, not only what the window shows."""
        size = self.js("({w: document.documentElement.scrollWidth, h: document.documentElement.scrollHeight})")
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": size["w"], "height": size["h"], "scale": 1})  # fmt: skip
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001 - best-effort teardown
            pass
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def service(tmp_path_factory, default_weights):
    tmp = tmp_path_factory.mktemp("web")
    weights = make_weights(tmp / "w", default_weights)
    bilingual = weights / "bilingual"  # the default model with a second vocabulary ("fr": "FR <name>")
    shutil.copytree(weights / "imagenet_framepool", bilingual)
    from videotag.core.manifest import add_vocabularies
    from videotag.core.vocab import Vocabulary

    en = Vocabulary.load(bilingual / "labels.txt")
    add_vocabularies(bilingual, "en", {"fr": Vocabulary(tuple(f"FR {n}" for n in en.names))}, "en")
    svc = start_service(service_settings(tmp, weights, api_keys=[KEY]))
    yield svc
    svc.stop(worker_grace=10)


@pytest.fixture
def browser(tmp_path):
    profile = tmp_path / "profile"  # a fresh profile per test
    profile.mkdir()
    b = Browser(profile)
    yield b
    b.close()


# What one row of the page shows (n: its position).
ROW = """(() => {{ const row = document.querySelectorAll('#jobs .job')[{n}]; return {{
    name: row.querySelector('.name').textContent,
    state: row.dataset.state,
    jobId: row.dataset.jobId,
    tags: [...row.querySelectorAll('.tags .tag')].map(li => ({{
        name: li.querySelector('.name').textContent,
        p: parseFloat(li.querySelector('.p').textContent),
        width: li.querySelector('.bar').getBoundingClientRect().width,
        track: li.querySelector('.track').getBoundingClientRect().width}})),
    frames: [...row.querySelectorAll('.frames img')].map(i => ({{w: i.naturalWidth, h: i.naturalHeight}})),
    progress: row.querySelector('.progress').value,
    barFailed: row.querySelector('.progress').classList.contains('failed'),
    steps: row.querySelectorAll('.steps span.on').length,
    on: [...row.querySelectorAll('.steps span.on')].map(s => s.dataset.step),
    failed: [...row.querySelectorAll('.steps span.fail')].map(s => s.dataset.step),
    failedColor: [...row.querySelectorAll('.steps span.fail')].map(s => getComputedStyle(s).backgroundColor),
    status: row.querySelector('.status').textContent,
    error: row.querySelector('.error').textContent,
    errorHidden: row.querySelector('.error').hidden,
    tagsHidden: row.querySelector('.tags-box').hidden,
}}; }})()"""


def test_upload_shows_progress_tags_and_frames(service, browser, tmp_path):
    clip = videogen.make_video(tmp_path / "upload me.mp4", frames=30, size=(160, 120), fps=10)
    browser.call("Page.enable")
    browser.open_page(service.api_url + "/")
    assert browser.js("document.title") == "videotag"

    browser.choose_file(clip)
    browser.js(f"document.getElementById('apikey').value = {json.dumps(KEY)}")
    browser.js("document.getElementById('topk').value = '6'")
    browser.js("document.getElementById('submit').click()")

    state = browser.wait("document.body.dataset.state", 90)
    assert state == "done", browser.js("document.querySelector('.job .error').textContent")
    page = browser.js(ROW.format(n=0))
    assert page["errorHidden"] and page["progress"] == 100 and page["steps"] == 5 and page["failed"] == []
    assert "done" in page["status"] and page["name"] == "upload me.mp4" and page["state"] == "done"
    tags = page["tags"]
    assert len(tags) == 6 and all(t["name"] for t in tags)
    assert [t["p"] for t in tags] == sorted((t["p"] for t in tags), reverse=True)
    for t in tags:  # bar length is the probability's share of the track
        assert abs(t["width"] - t["p"] * t["track"]) <= 2.0
    assert 1 <= len(page["frames"]) <= 8 and all(f["w"] == 160 and f["h"] == 120 for f in page["frames"])

    # the page's job is the API's job: same ranking
    job_id = page["status"].split()[1].rstrip(":")
    job = httpx.get(f"{service.api_url}/v1/jobs/{job_id}", headers={"X-API-Key": KEY}).json()
    assert [t["class_name"] for t in job["result"]["tags"]] == [t["name"] for t in tags]
    assert job["input"] == "upload" and job["filename"] == "upload me.mp4"  # the name as the user had it
    shot = browser.call("Page.captureScreenshot", format="png")["data"]
    (tmp_path / "page.png").write_bytes(base64.b64decode(shot))


def test_wrong_key_shows_error(service, browser, tmp_path):
    clip = videogen.make_video(tmp_path / "v.mp4", frames=10, size=(64, 48), fps=10)
    browser.open_page(service.api_url + "/")
    browser.choose_file(clip)
    browser.js("document.getElementById('apikey').value = 'nope'")
    browser.js("document.getElementById('submit').click()")
    assert browser.wait("document.body.dataset.state", 30) == "error"
    assert browser.js("document.querySelector('.job .error').textContent") == "401: invalid API key"


def test_model_and_language_pickers(service, browser, tmp_path):
    """The page lists the installed predictors (GET /v1/models) and each one's languages; the chosen pair is what
    the job uses."""
    clip = videogen.make_video(tmp_path / "pick.mp4", frames=20, size=(160, 120), fps=10)
    browser.open_page(service.api_url + "/")
    browser.js(f"(() => {{ const k = document.getElementById('apikey'); k.value = {json.dumps(KEY)};"
               "k.dispatchEvent(new Event('change')); })()")  # fmt: skip
    browser.wait("document.querySelectorAll('#model option').length === 3", 30)  # + tiny_pool (service_helpers)
    models = dict(browser.js("[...document.querySelectorAll('#model option')].map(o => [o.value, o.textContent])"))
    assert set(models) == {"", "bilingual", "tiny_pool"} and models[""].startswith("imagenet_framepool (default)")
    assert browser.js("[...document.querySelectorAll('#lang option')].map(o => o.value)") == [""]  # en only
    browser.js("(() => { const m = document.getElementById('model'); m.value = 'bilingual';"
               "m.dispatchEvent(new Event('change')); })()")  # fmt: skip
    langs = browser.js("[...document.querySelectorAll('#lang option')].map(o => o.textContent)")
    assert langs == ["en (default)", "fr"]
    browser.js("document.getElementById('lang').value = 'fr'")
    browser.choose_file(clip)
    browser.js("document.getElementById('topk').value = '3'")
    browser.js("document.getElementById('submit').click()")
    assert browser.wait("document.body.dataset.state", 90) == "done"
    names = browser.js("[...document.querySelectorAll('.job .tags .tag .name')].map(e => e.textContent)")
    assert len(names) == 3 and all(n.startswith("FR ") for n in names), names
    shot = browser.call("Page.captureScreenshot", format="png")["data"]
    (tmp_path / "pickers.png").write_bytes(base64.b64decode(shot))


def test_several_files_one_row_each_and_a_failed_job(service, browser, tmp_path):
    """Two files chosen at once: one row each; the good one (a unicode name) is tagged, the other is not a video
    and its row says failed: the extract step red, "done" not lit, the bar short of full and red."""
    good = videogen.make_video(tmp_path / "vidéo ü 名前.mp4", frames=20, size=(160, 120), fps=10)
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video\n" * 50)
    browser.open_page(service.api_url + "/")
    browser.choose_file(good, bad)
    browser.js(f"document.getElementById('apikey').value = {json.dumps(KEY)}")
    browser.js("document.getElementById('topk').value = '4'")
    browser.js("document.getElementById('submit').click()")
    assert browser.wait("document.body.dataset.state", 120) == "failed"  # not every file was tagged
    assert browser.js("document.querySelectorAll('#jobs .job').length") == 2

    ok = browser.js(ROW.format(n=0))
    assert ok["name"] == "vidéo ü 名前.mp4" and ok["state"] == "done" and ok["progress"] == 100
    assert ok["steps"] == 5 and ok["failed"] == [] and not ok["barFailed"] and len(ok["tags"]) == 4

    fail = browser.js(ROW.format(n=1))
    assert fail["name"] == "broken.mp4" and fail["state"] == "failed"
    assert fail["failed"] == ["extracting"] and fail["on"] == ["upload", "queued"]  # red step; no "done"
    assert fail["failedColor"] == ["rgb(217, 45, 32)"]
    assert fail["progress"] < 100 and fail["barFailed"] and "failed" in fail["status"]
    assert not fail["errorHidden"] and fail["error"].startswith("not_a_video: ") and fail["tagsHidden"]
    red = browser.pixel("#jobs .job:nth-child(2) .progress", tmp_path)
    blue = browser.pixel("#jobs .job:nth-child(1) .progress", tmp_path)
    assert red[0] > 180 and red[1] < 90 and red[2] < 90, red  # --fail: #d92d20
    assert blue[2] > 180 and blue[0] < 90, blue  # --accent: #2f6fde

    # the API keeps what the user named the file, unicode and spaces included
    jobs = [httpx.get(f"{service.api_url}/v1/jobs/{r['jobId']}", headers={"X-API-Key": KEY}).json() for r in (ok, fail)]
    assert [j["filename"] for j in jobs] == ["vidéo ü 名前.mp4", "broken.mp4"]
    assert [j["status"] for j in jobs] == ["done", "failed"] and jobs[1]["error"]["code"] == "not_a_video"
    browser.full_screenshot(tmp_path / "several.png")


def test_docs_render_offline_behind_the_key(service, browser, tmp_path):
    """/docs (Swagger UI served by the API itself; this browser has no internet) asks for credentials when the
    server has keys, then renders every operation of the OpenAPI document."""
    spec = httpx.get(f"{service.api_url}/openapi.json", headers={"X-API-Key": KEY}).json()
    operations = sum(len(ops) for ops in spec["paths"].values())
    browser.open_with_basic_auth(service.api_url + "/docs", "me", KEY,
                                 f"document.querySelectorAll('.opblock').length === {operations}")  # fmt: skip
    assert browser.js("document.querySelector('.info .title').textContent").startswith("videotag")
    assert not browser.js("!!document.querySelector('.errors-wrapper, .loading-container .errors')")
    browser.full_screenshot(tmp_path / "docs.png")
