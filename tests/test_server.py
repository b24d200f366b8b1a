"""The HTTP endpoints of `run`: /healthz, /readyz, /metrics."""

from __future__ import annotations

import os
import resource
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from bridge.errors import ConfigError
from bridge.runtime.server import CONNECTION_SECONDS, MAX_CONNECTIONS, HealthServer, parse_listen
from tests.engines import fake_engine
from tests.polling import wait_for
from tests.servers import free_port
from tests.test_cli import _get
from tests.test_runner import Dev, out_dir  # noqa: F401 - out_dir is a fixture


def test_endpoints(tmp_path: Path) -> None:
    """/readyz names what is missing until it is written; /healthz and /metrics answer."""
    engine, fake = fake_engine(tmp_path, "  a: {provider: fake, ref: r1}\n")
    server = HealthServer(lambda: engine, "127.0.0.1:0")
    server.start()
    port = server.address[1]
    try:
        assert _get(port, "/healthz") == (200, "ok\n")
        assert _get(port, "/readyz") == (503, "missing: a\n")
        fake.put("r1", b"value-that-must-not-show")
        engine.sync()
        assert _get(port, "/readyz") == (200, "ok\n")
        status, metrics = _get(port, "/metrics")
        assert status == 200 and "secrets_bridge_commits_total" in metrics
        assert "value-that-must-not-show" not in metrics
        assert _get(port, "/nope")[0] == 404
        engine.heartbeat -= 3600
        assert _get(port, "/healthz")[0] == 503
    finally:
        server.stop()


@pytest.mark.parametrize("listen", ["9098", "host:", "host:99999", ""])
def test_bad_listen(listen: str) -> None:
    """A malformed listen address is a config error naming the field."""
    with pytest.raises(ConfigError, match="^listen: "):
        parse_listen(listen)


def test_listen_forms() -> None:
    """IPv4, IPv6 and a bare port with a colon are understood."""
    assert parse_listen("0.0.0.0:9098") == ("0.0.0.0", 9098)
    assert parse_listen("[::1]:9098") == ("::1", 9098)
    assert parse_listen(":9098") == ("0.0.0.0", 9098)


def test_ipv6_listen(tmp_path: Path) -> None:
    """An IPv6 listen address binds and serves."""
    engine, _ = fake_engine(tmp_path, "  a: {provider: fake, ref: r1}\n")
    try:
        server = HealthServer(lambda: engine, "[::1]:0")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    server.start()
    try:
        with urllib.request.urlopen(f"http://[::1]:{server.address[1]}/healthz", timeout=5) as r:
            assert r.status == 200
    finally:
        server.stop()


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_idle_connections_cannot_exhaust_the_bridge(tmp_path: Path, out_dir: Path) -> None:  # noqa: F811
    """500 idle connections, with the bridge limited to 256 file descriptors, leave /healthz answering a
    new client, the bridge alive and refreshing, and its descriptors and threads bounded."""
    port = free_port()
    dev = Dev(tmp_path, out_dir)
    bridge = dev.bridge
    bridge.config.write_text(bridge.config.read_text().replace("listen: null", f'listen: "127.0.0.1:{port}"'))
    proc = bridge.start(preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)))
    idle: list[socket.socket] = []
    try:
        assert dev.ready() and _get(port, "/healthz") == (200, "ok\n")
        for _ in range(500):
            sock = socket.socket()
            sock.settimeout(5)
            try:
                sock.connect(("127.0.0.1", port))
            except OSError:
                sock.close()  # a full backlog may refuse some: that is the bridge's right
                continue
            idle.append(sock)
        assert len(idle) >= 200
        assert wait_for(lambda: _get(port, "/healthz") == (200, "ok\n"), timeout=10)
        (dev.src / "a").write_text("a-after-the-flood")
        assert dev.ready(), bridge.output()
        assert proc.poll() is None
        assert _fd_count(proc.pid) <= MAX_CONNECTIONS + 40
        assert len(os.listdir(f"/proc/{proc.pid}/task")) <= 10
        assert bridge.stop(timeout=5) == 0
    finally:
        for sock in idle:
            sock.close()
        bridge.kill()
    assert " ERROR " not in bridge.output()


def test_slow_request_is_closed_after_its_time(tmp_path: Path) -> None:
    """A client that sends half a request and stalls is disconnected after its time (here 1 s; by
    default CONNECTION_SECONDS), and a request sent in pieces is answered."""
    engine, _ = fake_engine(tmp_path, "  a: {provider: fake, ref: r1}\n")
    server = HealthServer(lambda: engine, "127.0.0.1:0", connection_seconds=1.0)
    server.start()
    try:
        with socket.create_connection(server.address, timeout=CONNECTION_SECONDS + 5) as stalled:
            stalled.sendall(b"GET /healthz HTTP/1.1\r\n")
            started = time.monotonic()
            assert stalled.recv(100) == b""  # closed by the server, not by our timeout
            assert 0.9 <= time.monotonic() - started < CONNECTION_SECONDS
        with socket.create_connection(server.address, timeout=5) as pieces:
            for part in (b"GET /hea", b"lthz HTTP/1.1\r\nHost: x\r\n", b"\r\n"):
                pieces.sendall(part)
                time.sleep(0.05)
            reply = pieces.recv(1000)
        assert reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(b"\r\n\r\nok\n")
        with socket.create_connection(server.address, timeout=5) as post:
            post.sendall(b"POST /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
            assert post.recv(100).startswith(b"HTTP/1.1 405 ")
    finally:
        server.stop()
