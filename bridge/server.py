"""The HTTP endpoints of `run`: /healthz (the loop is alive), /readyz (every required secret
written and none stale), /metrics (Prometheus). Responses name secrets, never values."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bridge.engine import HEARTBEAT_SECONDS, Engine
from bridge.errors import ConfigError
from bridge.metrics import REGISTRY

log = logging.getLogger("secrets_bridge.server")

#: /healthz fails when the loop has not come round for this long
HEALTHY_WITHIN_SECONDS = max(60.0, 12 * HEARTBEAT_SECONDS)


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"listen: expected HOST:PORT, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class HealthServer:
    """Serves the endpoints for whichever engine `current_engine` returns (it changes on reload)."""

    def __init__(self, current_engine: Callable[[], Engine], listen: str) -> None:
        host, port = parse_listen(listen)
        handler = type("Handler", (_Handler,), {"current_engine": staticmethod(current_engine)})
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server = type("Server", (ThreadingHTTPServer,), {"address_family": family})
        self.httpd = server((host, port), handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()
        log.info("serving /healthz /readyz /metrics on %s:%d", *self.address)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    current_engine: Callable[[], Engine]

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        engine = self.current_engine()
        if path == "/healthz":
            age = time.monotonic() - engine.heartbeat
            ok = age < HEALTHY_WITHIN_SECONDS
            self._send(200 if ok else 503, "ok\n" if ok else f"loop stalled for {age:.0f}s\n")
        elif path == "/readyz":
            missing, stale = engine.missing_required(), engine.stale()
            if not missing and not stale:
                self._send(200, "ok\n")
            else:
                lines = [f"missing: {', '.join(missing)}"] if missing else []
                lines += [f"stale: {', '.join(stale)}"] if stale else []
                self._send(503, "\n".join(lines) + "\n")
        elif path == "/metrics":
            self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
        else:
            self._send(404, "not found\n")

    def _send(self, status: int, body: str | bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("http: " + format, *args)
