"""A moto server and a counting HTTP proxy in front of it, for the AWS tests and bench/aws_calls.py.

The proxy counts every request by its operation (the `X-Amz-Target` header of JSON APIs such as
Secrets Manager and SSM, or the `Action` form field of query APIs such as STS), outside the code under test,
and can answer chosen operations with an AWS error instead of forwarding them. Loopback only.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.polling import wait_for

_HOP_BY_HOP = {
    "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection",
}
_KEY_ID = re.compile(r"Credential=([A-Z0-9]+)/")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    """Start `moto_server` from this interpreter's environment on a free loopback port; wait for it."""
    binary = Path(sys.executable).parent / "moto_server"
    port = free_port()
    process = subprocess.Popen(
        [str(binary), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=1):
                return True
        except OSError:
            if process.poll() is not None:
                raise RuntimeError("moto_server exited at start") from None
            return False

    if not wait_for(answers, 30, step=0.1):
        process.kill()
        raise RuntimeError("moto_server did not start")
    return process, url


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class CountingProxy:
    """Forwards to `upstream`, counting operations; `fail` maps an operation (or "*") to an AWS error."""

    def __init__(self, upstream: str) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.counts: Counter[str] = Counter()
        #: operation -> (HTTP status, AWS error code, Retry-After header or None)
        self.fail: dict[str, tuple[int, str, str | None]] = {}
        #: operation -> (text, failure): that failure only for requests whose body holds the text
        #: (IAM refusing a call that names one resource outside the policy)
        self.fail_containing: dict[str, tuple[str, tuple[int, str, str | None]]] = {}
        #: access key ids that signed each operation
        self.key_ids: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()
            self.key_ids.clear()
            self.fail.clear()
            self.fail_containing.clear()

    def value_calls(self) -> int:
        return self.counts["GetSecretValue"] + self.counts["BatchGetSecretValue"]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _record(self, operation: str, authorization: str, body: bytes) -> tuple[int, str, str | None] | None:
        with self._lock:
            self.counts[operation] += 1
            match = _KEY_ID.search(authorization)
            if match:
                self.key_ids.setdefault(operation, set()).add(match.group(1))
            text, failure = self.fail_containing.get(operation, ("", None))
            if failure is not None and text.encode() in body:
                return failure
            return self.fail.get(operation) or self.fail.get("*")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body go out in separate writes: without this, Nagle + delayed ACK add ~40ms
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _serve(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                target = self.headers.get("X-Amz-Target", "")
                operation = target.rpartition(".")[2]
                if not operation:
                    form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
                    operation = (form.get("Action") or ["?"])[0]
                failure = proxy._record(operation, self.headers.get("Authorization", ""), body)
                if failure is not None:
                    status, code, retry_after = failure
                    payload = json.dumps({"__type": code, "message": "Rate exceeded"
                                          if "Throttl" in code else f"{code} (test proxy)"}).encode()
                    headers = {"Content-Type": "application/x-amz-json-1.1", "x-amzn-ErrorType": code}
                    if retry_after is not None:
                        headers["Retry-After"] = retry_after
                    self._reply(status, headers, payload)
                    return
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    forward = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                    upstream.request(self.command, self.path, body=body, headers=forward)
                    response = upstream.getresponse()
                    data = response.read()
                    headers = {k: v for k, v in response.getheaders()
                               if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length"}
                    self._reply(response.status, headers, data)
                finally:
                    upstream.close()

            def _reply(self, status: int, headers: dict[str, str], data: bytes) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

        return Handler


class ProxiedBackend:
    """What a conformance backend behind a CountingProxy shares: an outage, and the calls counted."""

    proxy: CountingProxy

    @contextmanager
    def outage(self) -> Iterator[None]:
        """The proxy answers every call with 503 ServiceUnavailable while inside."""
        self.proxy.fail["*"] = (503, "ServiceUnavailable", None)
        try:
            yield
        finally:
            self.proxy.fail.clear()

    def calls(self) -> int:
        return sum(self.proxy.counts.values())
