"""A loopback (127.0.0.1) HTTP server for the weights tests: Range requests, cut connections,
slow responses and a Google Drive style confirmation page, with a log of every request."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class ZooServer:
    """Serves ``files`` (name -> bytes) at ``/<name>``; ``cut`` names are cut halfway once;
    ``delay`` seconds are slept per 4 KiB chunk; ``/uc`` mimics Drive's confirmation step."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: set[str] = set()
        self.delay = 0.0
        self.ignore_range = False  # answer a resume with the whole file (200), as some hosts do
        self.log: list[dict[str, Any]] = []
        self.drive: dict[str, bytes] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:  # noqa: N802
                server.log.append({"path": self.path, "range": self.headers.get("Range")})
                if self.path.startswith("/uc"):
                    return self._drive()
                if self.path.startswith("/download"):
                    return self._drive_confirmed()
                name = self.path.lstrip("/")
                if name not in server.files:
                    self.send_error(404)
                    return
                self._send(name, server.files[name])

            def _send(self, name: str, data: bytes) -> None:
                start = 0
                rng = self.headers.get("Range")
                if rng and not server.ignore_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if name in server.cut:
                    server.cut.discard(name)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                for i in range(0, len(body), 4096):
                    self.wfile.write(body[i:i + 4096])
                    if server.delay:
                        time.sleep(server.delay)

            def _drive(self) -> None:
                page = (b'<html><form id="download-form" action="/download" method="get">'
                        b'<input type="hidden" name="confirm" value="t0k3n">'
                        b'<input type="hidden" name="uuid" value="u-1"></form></html>')
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def _drive_confirmed(self) -> None:
                from urllib.parse import parse_qs, urlparse

                q = parse_qs(urlparse(self.path).query)
                if q.get("confirm") != ["t0k3n"] or q.get("uuid") != ["u-1"] or q["id"][0] not in server.drive:
                    self.send_error(403)
                    return
                self._send("drive:" + q["id"][0], server.drive[q["id"][0]])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def gets(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.log if r["path"] == "/" + name]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def extra_table(path: Path, entries: list[dict[str, Any]]) -> Path:
    """Write a POSELIFT_ZOO_EXTRA table with defaults for the fields a test does not care about."""
    base = {"urls": ["https://example.invalid/never-used"], "sha256": "unknown", "licence": "test",
            "noncommercial": False, "loader": "test", "contract": "test"}
    path.write_text(json.dumps({"entries": [{**base, **e} for e in entries]}))
    return path
