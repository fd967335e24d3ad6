"""URL downloads: redirects followed, limits enforced, and (service mode) every redirect hop re-checked."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest

from videotag import pipeline
from videotag.core import netguard
from videotag.core.errors import VideoError
from videotag.core.settings import Settings


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        port = self.server.server_address[1]
        if self.path == "/to-internal":  # a "public" name redirecting to an internal address
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{port}/clip.bin")
            self.end_headers()
        elif self.path == "/relative":
            self.send_response(301)
            self.send_header("Location", "/clip.bin")
            self.end_headers()
        elif self.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.end_headers()
        elif self.path == "/clip.bin":
            body = b"x" * 5000
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(404)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()


def test_redirects_and_limits(server, tmp_path):
    s = Settings()
    p = pipeline.fetch_url(f"http://127.0.0.1:{server}/relative", tmp_path, s)
    assert Path(p).read_bytes() == b"x" * 5000
    with pytest.raises(VideoError, match="more than 5 redirects"):
        pipeline.fetch_url(f"http://127.0.0.1:{server}/loop", tmp_path, s)
    with pytest.raises(VideoError, match="larger than 1000 bytes"):
        small = s.model_copy(update={"max_download_bytes": 1000})
        pipeline.fetch_url(f"http://127.0.0.1:{server}/clip.bin", tmp_path, small)
    with pytest.raises(VideoError, match="HTTP 404"):
        pipeline.fetch_url(f"http://127.0.0.1:{server}/nope", tmp_path, s)
    assert [x for x in tmp_path.iterdir() if x.name.startswith(".dl-")] == [p]  # failed downloads leave nothing


def test_public_only_checks_every_hop(server, tmp_path, monkeypatch):
    s = Settings()
    with pytest.raises(VideoError, match="loopback address"):
        pipeline.fetch_url(f"http://127.0.0.1:{server}/clip.bin", tmp_path, s, public_only=True)
    # Pretend "localhost" is a public name so the first hop passes; its redirect to 127.0.0.1 must not.
    real = netguard.non_public_target
    monkeypatch.setattr(netguard, "non_public_target", lambda u: None if "//localhost:" in u else real(u))
    with pytest.raises(VideoError, match=r"loopback address.*redirected to http://127\.0\.0\.1"):
        pipeline.fetch_url(f"http://localhost:{server}/to-internal", tmp_path, s, public_only=True)
    assert not any(x.name.startswith(".dl-") for x in tmp_path.iterdir())
