"""A real HTTP server on 127.0.0.1 for download tests: serves files from a folder with HTTP Range support and
injectable faults (answer 5xx a few times, cut the connection part-way through a body)."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Faults:
    status_first: list[int] = field(default_factory=list)  # statuses answered, in order, before serving
    cut_after: int | None = None  # close the first full-body response after this many bytes
    ignore_range: bool = False
    requests: list[dict] = field(default_factory=list)  # what was asked: {"path", "range", "status"}


class FileServer:
    """`with FileServer(folder) as srv:` -> `srv.url`; `srv.faults` can be changed between requests."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.faults = Faults()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's API
                f = outer.faults
                rng = self.headers.get("Range")
                if f.status_first:
                    status = f.status_first.pop(0)
                    f.requests.append({"path": self.path, "range": rng, "status": status})
                    self.send_error(status)
                    return
                path = outer.root / self.path.lstrip("/")
                if not path.is_file():
                    f.requests.append({"path": self.path, "range": rng, "status": 404})
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start, status = 0, 200
                m = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if m and not f.ignore_range:
                    start, status = int(m.group(1)), 206
                    if start >= len(data):
                        f.requests.append({"path": self.path, "range": rng, "status": 416})
                        self.send_error(416)
                        return
                f.requests.append({"path": self.path, "range": rng, "status": status})
                body = data[start:]
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if f.cut_after is not None:
                    cut, f.cut_after = f.cut_after, None
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
