"""A fault-injecting HTTP proxy on loopback, in front of a real server (OpenBao, moto, the Azure fake).

Each request it receives is forwarded to the upstream unless the plan picks a fault for it:
- `reset`: the request is read, then the connection is closed with a TCP RST (SO_LINGER 0);
- `hang`: the request is read and never answered until `hang_seconds` pass (past the client's timeout);
- `5xx`: a 503 with a JSON body every provider's SDK parses as a server error;
- `429`: a 429 with `Retry-After: retry_after` seconds (and AWS's `ThrottlingException` type);
- `slow`: the upstream's answer is sent a few bytes at a time (each write well inside a read timeout).
A fault is picked by schedule (`schedule`, a list consumed one item per faultable request; None is no
fault) or at random (`rates`, kind -> probability, from a seeded generator).

It counts requests seen and faults injected by kind, and checks `Retry-After` from outside the code
under test: every 429 blocks the request's keys (`key_of`, e.g. the secret name in the path) until its
time has passed, and any request for a blocked key that arrives earlier is recorded in `early`.

Two ways in: a plain HTTP reverse proxy (`url`, for Vault's `address` or AWS's `endpoint_url`), or an
HTTPS_PROXY that answers CONNECT and terminates TLS with a certificate from the upstream's own CA
(`mitm`), so a TLS client keeps its production URLs (the Azure fake's `*.vault.azure.net`) while the
proxy sees each request. Upstream TLS is then verified against `upstream_ca`.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import ssl
import struct
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

KINDS = ("reset", "hang", "5xx", "429", "slow")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection",
               "proxy-authorization"}
_ERROR_BODY = (b'{"errors":["fault proxy: service unavailable"],"__type":"ServiceUnavailableException",'
               b'"message":"fault proxy","error":{"code":"ServiceUnavailable","message":"fault proxy"}}')
_THROTTLE_BODY = (b'{"errors":["fault proxy: rate limited"],"__type":"ThrottlingException",'
                  b'"message":"Rate exceeded","error":{"code":"Throttled","message":"Rate exceeded"}}')

#: (method, path, body) -> the keys a request concerns (for Retry-After and per-secret counts)
KeyOf = Callable[[str, str, bytes], Iterable[str]]


class FaultProxy:
    def __init__(self, upstream: str, *, key_of: KeyOf | None = None, faultable: Callable[[str], bool] | None = None,
                 mitm: Any = None, upstream_ca: str | None = None, seed: int = 0,
                 hang_seconds: float = 3.0, retry_after: float = 2.0) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or (443 if parsed.scheme == "https" else 80))
        self.upstream_tls = parsed.scheme == "https"
        self.key_of = key_of or (lambda method, path, body: [path.split("?")[0]])
        self.faultable = faultable or (lambda path: True)
        self.hang_seconds = hang_seconds
        self.retry_after = retry_after
        self.rates: dict[str, float] = {}
        self.schedule: list[str | None] = []
        self.seen: Counter[str] = Counter()  # "requests", and per key
        self.faults: Counter[str] = Counter()
        self.early: list[tuple[str, float]] = []  # (key, seconds before its Retry-After passed)
        self._blocked: dict[str, float] = {}
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._client_tls: ssl.SSLContext | None = None
        if self.upstream_tls:
            self._client_tls = ssl.create_default_context(cafile=upstream_ca)
            self._client_tls.check_hostname = False  # the upstream is reached by address; its CA is checked
        self._server_tls: ssl.SSLContext | None = None
        if mitm is not None:
            self._server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            mitm.configure_cert(self._server_tls)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._server.handle_error = lambda request, address: None  # type: ignore[method-assign]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    # -- the plan --------------------------------------------------------------------------------

    def inject(self, rates: dict[str, float] | None = None, schedule: Iterable[str | None] = ()) -> None:
        """Faults from now on: at `rates` (kind -> probability), after the `schedule` runs out."""
        assert set(rates or {}) <= set(KINDS) and set(schedule) - {None} <= set(KINDS)
        with self._lock:
            self.rates = dict(rates or {})
            self.schedule = list(schedule)

    def heal(self) -> None:
        """No more faults (requests in a hang stay hung until their time)."""
        self.inject({})

    def requests(self) -> int:
        return self.seen["requests"]

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()

    def _pick(self, method: str, path: str, body: bytes) -> str | None:
        keys = list(self.key_of(method, path, body))
        now = time.monotonic()
        with self._lock:
            self.seen["requests"] += 1
            for key in keys:
                self.seen[key] += 1
                until = self._blocked.pop(key, None)
                if until is not None and now < until:
                    self.early.append((key, until - now))
            fault: str | None = None
            if self.faultable(path):
                if self.schedule:
                    fault = self.schedule.pop(0)
                else:
                    roll = self._random.random()
                    for kind, rate in self.rates.items():
                        if roll < rate:
                            fault = kind
                            break
                        roll -= rate
            if fault is not None:
                self.faults[fault] += 1
            if fault == "429":
                for key in keys:
                    self._blocked[key] = now + self.retry_after
            return fault

    # -- the server ------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_CONNECT(self) -> None:
                if proxy._server_tls is None:
                    self.send_error(405)
                    return
                self.send_response(200, "Connection established")
                self.end_headers()
                self.wfile.flush()
                try:
                    tls = proxy._server_tls.wrap_socket(self.connection, server_side=True)
                except (ssl.SSLError, OSError):
                    self.close_connection = True
                    return
                self.connection = tls
                self.rfile = tls.makefile("rb")
                self.wfile = tls.makefile("wb")
                self.close_connection = False

            def _serve(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fault = proxy._pick(self.command, self.path, body)
                if fault == "reset":
                    self._reset()
                elif fault == "hang":
                    proxy._closing.wait(proxy.hang_seconds)
                    self._reset()
                elif fault == "5xx":
                    self._reply(503, {"Content-Type": "application/json",
                                      "x-amzn-ErrorType": "ServiceUnavailableException"}, _ERROR_BODY)
                elif fault == "429":
                    self._reply(429, {"Content-Type": "application/json", "x-amzn-ErrorType": "ThrottlingException",
                                      "Retry-After": f"{proxy.retry_after:g}"}, _THROTTLE_BODY)
                else:
                    status, headers, data = self._forward(body)
                    self._reply(status, headers, data, slow=fault == "slow")

            def _forward(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
                host, port = proxy.upstream
                upstream: http.client.HTTPConnection
                if proxy._client_tls is not None:
                    upstream = http.client.HTTPSConnection(host, port, timeout=60, context=proxy._client_tls)
                else:
                    upstream = http.client.HTTPConnection(host, port, timeout=60)
                try:
                    forward = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                    upstream.request(self.command, self.path, body=body if body else None, headers=forward)
                    response = upstream.getresponse()
                    data = response.read()
                    headers = {k: v for k, v in response.getheaders()
                               if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length"}
                    return response.status, headers, data
                finally:
                    upstream.close()

            def _reply(self, status: int, headers: dict[str, str], data: bytes, *, slow: bool = False) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not slow:
                    self.wfile.write(data)
                    return
                self.wfile.flush()
                step = max(1, len(data) // 8)  # eight writes 0.1 s apart: slow, never a read timeout
                for start in range(0, len(data), step):
                    self.wfile.write(data[start:start + step])
                    self.wfile.flush()
                    time.sleep(0.1)

            def _reset(self) -> None:
                self.close_connection = True
                try:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                except OSError:
                    pass

            def finish(self) -> None:
                with contextlib.suppress(OSError, ValueError):  # the connection was reset on purpose
                    super().finish()

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_LIST = _serve

        return Handler
