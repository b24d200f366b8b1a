"""on_change hooks: a signal to a pid file's process, a command, an HTTP call; failures never raise."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bridge.config import OnChange
from bridge.notify import Notifier

WAITER = textwrap.dedent("""
    import signal, sys, time
    got = []
    signal.signal(signal.SIGHUP, lambda *a: got.append(1))
    print("READY", flush=True)
    deadline = time.monotonic() + 20
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    print("HUP" if got else "NONE", flush=True)
""")


def test_signal_to_pid_file(tmp_path: Path) -> None:
    """A signal hook reads the pid file and signals that process."""
    proc = subprocess.Popen([sys.executable, "-c", WAITER], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
    (tmp_path / "app.pid").write_text(f"{proc.pid}\n")
    Notifier([OnChange(signal="HUP", pid_file=tmp_path / "app.pid")])(["a"])
    assert proc.stdout.readline().strip() == "HUP"
    proc.wait(timeout=10)


def test_hook_filters_by_secret(tmp_path: Path) -> None:
    """A hook naming secrets runs only when one of them changed."""
    out = tmp_path / "ran"
    hook = OnChange(secrets=["tls.crt"], exec=[sys.executable, "-c", f"open({str(out)!r}, 'a').write('x')"])
    Notifier([hook])(["db_password"])
    assert not out.exists()
    Notifier([hook])(["db_password", "tls.crt"])
    assert out.read_text() == "x"


def test_http_hook_posts(tmp_path: Path) -> None:
    """An http hook sends its request to the application."""
    seen: list[tuple[str, str]] = []

    class Reload(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append((self.command, self.path))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Reload)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/-/reload"
        Notifier([OnChange.model_validate({"http": {"url": url}})])(["a"])
    finally:
        server.shutdown()
    assert seen == [("POST", "/-/reload")]


def test_failures_are_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A missing pid file, a failing command and a refused connection are each one warning."""
    hooks = [
        OnChange(signal="SIGHUP", pid_file=tmp_path / "nope.pid"),
        OnChange(exec=[sys.executable, "-c", "raise SystemExit(3)"]),
        OnChange.model_validate({"http": {"url": "http://127.0.0.1:9/"}, "timeout": "1s"}),
    ]
    started = time.monotonic()
    Notifier(hooks)(["a"])
    assert time.monotonic() - started < 10
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 3 and "exit status 3" in warnings[1]


def test_signal_name_forms() -> None:
    """SIGHUP, HUP and hup are the same signal."""
    for name in ("SIGHUP", "HUP", "hup"):
        assert OnChange(signal=name, pid_file=Path("/x")).signal == name
    assert signal.SIGHUP.name == "SIGHUP"
