"""The HTTP endpoints of `run`: /healthz, /readyz, /metrics."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from bridge.errors import ConfigError
from bridge.server import HealthServer, parse_listen
from tests.test_cli import _get
from tests.test_engine import make_engine


def test_endpoints(tmp_path: Path) -> None:
    """/readyz names what is missing until it is written; /healthz and /metrics answer."""
    engine, fake = make_engine(tmp_path, "  a: {provider: fake, ref: r1}\n")
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
    engine, _ = make_engine(tmp_path, "  a: {provider: fake, ref: r1}\n")
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
