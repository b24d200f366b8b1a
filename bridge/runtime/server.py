"""The HTTP endpoints of `run`: /healthz (the loop is alive), /readyz (every required secret
written, none stale, each at its visible name), /metrics (Prometheus). Responses name secrets,
never values.

One thread serves every connection with a selector, so idle or slow clients cost a file descriptor,
never a thread: at most `MAX_CONNECTIONS` are open (a new one closes the oldest), and each has
`CONNECTION_SECONDS` to send its request and read the answer. A request is a GET or HEAD with a
small head and no body; every answer closes the connection.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bridge.config import fields
from bridge.engine.cycle import Engine
from bridge.errors import ConfigError
from bridge.observe.metrics import registry

log = logging.getLogger("secrets_bridge.server")

#: /healthz fails when the loop has not come round for this long
HEALTHY_WITHIN_SECONDS = 60.0
MAX_CONNECTIONS = 64
CONNECTION_SECONDS = 5.0
_MAX_HEAD_BYTES = 8192
_TEXT = "text/plain; charset=utf-8"
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 503: "Service Unavailable"}


def parse_listen(listen: str) -> tuple[str, int]:
    """The config's own rule (validated there already); a ConfigError here for direct callers."""
    try:
        return fields.parse_listen(listen)
    except ValueError as exc:
        raise ConfigError(f"listen: {exc}") from None


@dataclass(eq=False)
class _Connection:
    sock: socket.socket
    deadline: float
    received: bytearray = field(default_factory=bytearray)
    reply: bytes | None = None


class HealthServer:
    """Serves the endpoints for whichever engine `current_engine` returns (it changes on reload)."""

    def __init__(self, current_engine: Callable[[], Engine], listen: str, *,
                 connection_seconds: float = CONNECTION_SECONDS) -> None:
        host, port = parse_listen(listen)
        self.current_engine = current_engine
        self.connection_seconds = connection_seconds
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind((host, port))
            self._listener.listen(128)
        except OSError:
            self._listener.close()
            raise
        self._listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._open: dict[socket.socket, _Connection] = {}  # insertion order: oldest first
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()
        log.info("serving /healthz /readyz /metrics on %s:%d", *self.address)

    def stop(self) -> None:
        self._stopping = True
        self._wake_w.send(b"\0")
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        for conn in list(self._open.values()):
            self._close(conn)
        self._selector.close()
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()

    # -- the loop ----------------------------------------------------------------------------

    def _serve(self) -> None:
        while not self._stopping:
            try:
                self._serve_once()
            except Exception:  # a bug here must not end the endpoints for good
                log.exception("http: serving loop failed; going on")
                time.sleep(0.1)

    def _serve_once(self) -> None:
        # Idle with nothing open: block until a client or stop() comes (no timer wake-ups).
        first = min((c.deadline for c in self._open.values()), default=None)
        timeout = None if first is None else max(0.0, first - time.monotonic())
        for key, events in self._selector.select(timeout):
            if key.fileobj is self._listener:
                self._accept()
            elif key.fileobj is self._wake_r:
                continue
            else:
                conn = self._open.get(key.fileobj)  # type: ignore[call-overload]
                if conn is not None:
                    self._step(conn, events)
        now = time.monotonic()
        for conn in [c for c in self._open.values() if c.deadline <= now]:
            self._close(conn)

    def _accept(self) -> None:
        for _ in range(MAX_CONNECTIONS):  # a bounded batch, so a flood cannot starve the rest
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE and the like: free our oldest connection and pause, rather than spin on a
                # listener that stays readable; the client waits in the backlog meanwhile.
                log.debug("http: accept failed: %s", exc.strerror)
                if self._open:
                    self._close(next(iter(self._open.values())))
                time.sleep(0.05)
                return
            if len(self._open) >= MAX_CONNECTIONS:
                self._close(next(iter(self._open.values())))
            sock.setblocking(False)
            conn = _Connection(sock, time.monotonic() + self.connection_seconds)
            self._open[sock] = conn
            self._selector.register(sock, selectors.EVENT_READ)

    def _step(self, conn: _Connection, events: int) -> None:
        try:
            if conn.reply is None and events & selectors.EVENT_READ:
                data = conn.sock.recv(4096)
                if not data:
                    self._close(conn)
                    return
                conn.received += data
                reply = self._reply_to(conn.received)
                if reply is not None:
                    conn.reply = reply
                    self._selector.modify(conn.sock, selectors.EVENT_WRITE)
            elif conn.reply is not None and events & selectors.EVENT_WRITE:
                sent = conn.sock.send(conn.reply)
                conn.reply = conn.reply[sent:]
                if not conn.reply:
                    conn.sock.shutdown(socket.SHUT_WR)
                    self._close(conn)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close(conn)

    def _close(self, conn: _Connection) -> None:
        self._open.pop(conn.sock, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        conn.sock.close()

    # -- requests ----------------------------------------------------------------------------

    def _reply_to(self, received: bytearray) -> bytes | None:
        """The whole answer once the request head is in, else None."""
        end = received.find(b"\r\n\r\n")
        if end < 0:
            end = received.find(b"\n\n")
        if end < 0:
            return _response(431, "request head too large\n") if len(received) > _MAX_HEAD_BYTES else None
        words = bytes(received[:end]).split(b"\n", 1)[0].split()
        if len(words) != 3 or not words[2].startswith(b"HTTP/"):
            return _response(400, "bad request\n")
        method, target = words[0], words[1].decode("latin-1")
        if method not in (b"GET", b"HEAD"):
            return _response(405, "only GET and HEAD\n")
        try:
            status, body, content_type = self._answer(target.split("?", 1)[0])
        except Exception:  # a bug here must not end the endpoint thread
            log.exception("http: cannot answer %r", target[:100])
            status, body, content_type = 503, b"internal error\n", _TEXT
        return _response(status, body, content_type, head_only=method == b"HEAD")

    def _answer(self, path: str) -> tuple[int, bytes, str]:
        engine = self.current_engine()
        if path == "/healthz":
            age = engine.stalled_seconds()
            ok = age < HEALTHY_WITHIN_SECONDS
            return (200, b"ok\n", _TEXT) if ok else (503, f"loop stalled for {age:.0f}s\n".encode(), _TEXT)
        if path == "/readyz":
            missing, stale, unlinked = engine.missing_required(), engine.stale(), engine.unlinked()
            if not missing and not stale and unlinked is None:
                return 200, b"ok\n", _TEXT
            lines = [f"missing: {', '.join(missing)}"] if missing else []
            lines += [f"stale: {', '.join(stale)}"] if stale else []
            lines += [f"unlinked: {unlinked}"] if unlinked is not None else []
            return 503, ("\n".join(lines) + "\n").encode(), _TEXT
        if path == "/metrics":
            return 200, generate_latest(registry()), CONTENT_TYPE_LATEST
        return 404, b"not found\n", _TEXT


def _response(status: int, body: str | bytes, content_type: str = _TEXT, *, head_only: bool = False) -> bytes:
    data = body.encode() if isinstance(body, str) else body
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode()
    return head if head_only else head + data
