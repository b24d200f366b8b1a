"""on_change actions: a signal to a pid file's process, a command, an HTTP call; run on the notifier's
own thread, folded by `wait`, refused when a pid file would signal a group; failures never raise."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bridge.config.sections import OnChange
from bridge.observe.changes import Change
from bridge.observe.metrics import REGISTRY
from bridge.runtime.notify import Notifier, _read_pid
from tests.harness import Bridge
from tests.polling import wait_for

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


def _change(file: str, entry: str | None = None) -> Change:
    return Change(file=file, entry=entry or file, provider="dev", ref=file, old_version="1", new_version="2")


def _count(action: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value("secrets_bridge_notifications_total", {"action": action, "outcome": outcome})
    return value or 0.0


def _recorder(tmp_path: Path, name: str = "ran") -> tuple[list[str], Path]:
    """An exec action appending SECRETS_BRIDGE_CHANGED and a separator to a file per run."""
    out = tmp_path / name
    code = f"import os; open({str(out)!r}, 'a').write(os.environ['SECRETS_BRIDGE_CHANGED'] + '\\x1e')"
    return [sys.executable, "-c", code], out


def _runs(out: Path) -> list[str]:
    return out.read_text().split("\x1e")[:-1] if out.exists() else []


@pytest.fixture
def notifiers() -> Iterator[list[Notifier]]:
    made: list[Notifier] = []
    yield made
    for notifier in made:
        notifier.close(5)


def test_signal_to_pid_file(tmp_path: Path, notifiers: list[Notifier]) -> None:
    """A signal action reads the pid file and signals that process."""
    proc = subprocess.Popen([sys.executable, "-c", WAITER], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
    (tmp_path / "app.pid").write_text(f"{proc.pid}\n")
    before = _count("signal", "ok")
    notifier = Notifier([OnChange(signal="HUP", pid_file=tmp_path / "app.pid")])
    notifiers.append(notifier)
    notifier([_change("a")])
    assert proc.stdout.readline().strip() == "HUP"
    proc.wait(timeout=10)
    assert wait_for(lambda: _count("signal", "ok") == before + 1)


def test_action_filters_by_entry_or_file(tmp_path: Path, notifiers: list[Notifier]) -> None:
    """An action naming secrets runs only when a change's entry or file is among them."""
    argv, out = _recorder(tmp_path)
    notifier = Notifier([OnChange(secrets=["tls", "db/password"], exec=argv)])
    notifiers.append(notifier)
    notifier([_change("other")])
    notifier([_change("tls/cert.pem", entry="tls")])
    assert wait_for(lambda: len(_runs(out)) == 1)
    notifier([_change("db/password", entry="db"), _change("db/username", entry="db")])
    assert wait_for(lambda: len(_runs(out)) == 2)
    notifier.close(5)
    assert _runs(out) == ["tls/cert.pem", "db/password"]


def test_http_action_posts(tmp_path: Path, notifiers: list[Notifier]) -> None:
    """An http action sends its request to the application."""
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
        notifier = Notifier([OnChange.model_validate({"http": {"url": url}})])
        notifiers.append(notifier)
        notifier([_change("a")])
        assert wait_for(lambda: seen == [("POST", "/-/reload")])
    finally:
        server.shutdown()


def test_http_action_does_not_follow_redirects(tmp_path: Path) -> None:
    """A redirect answer is a failed call, never followed off the configured URL."""
    seen: list[str] = []

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(self.path)
            self.send_response(307)
            self.send_header("Location", "/elsewhere")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    before = _count("http", "failed")
    try:
        notifier = Notifier([OnChange.model_validate({"http": {"url": f"http://127.0.0.1:{server.server_port}/r"}})])
        notifier([_change("a")])
        notifier.close(10)
    finally:
        server.shutdown()
    assert seen == ["/r"] and _count("http", "failed") == before + 1


def test_reload_keeps_or_flushes_pending_changes(tmp_path: Path) -> None:
    """On reload an action that stays keeps its pending changes; one that goes announces its own at once."""
    argv_kept, kept_out = _recorder(tmp_path, "kept")
    argv_gone, gone_out = _recorder(tmp_path, "gone")
    kept = OnChange.model_validate({"exec": argv_kept, "wait": {"min": "1s", "max": "10s"}})
    gone = OnChange.model_validate({"exec": argv_gone, "wait": {"min": "30s", "max": "60s"}})
    notifier = Notifier([kept, gone])
    notifier([_change("a")])
    notifier.replace([kept])
    assert wait_for(lambda: _runs(gone_out) == ["a"])  # not 30s later
    notifier([_change("b")])
    assert wait_for(lambda: _runs(kept_out) == ["a\nb"])
    notifier([_change("c")])
    notifier.close(5)
    assert _runs(kept_out) == ["a\nb", "c"] and _runs(gone_out) == ["a"]


def test_failures_are_logged_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A failing command and a refused connection are each one warning and a failed count; nothing raises."""
    before = (_count("exec", "failed"), _count("http", "failed"))
    notifier = Notifier([
        OnChange(exec=[sys.executable, "-c", "raise SystemExit(3)"]),
        OnChange.model_validate({"http": {"url": "http://127.0.0.1:9/"}, "timeout": "1s"}),
    ])
    notifier([_change("a")])
    notifier.close(10)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2 and any("exit status 3" in w for w in warnings)
    assert (_count("exec", "failed"), _count("http", "failed")) == (before[0] + 1, before[1] + 1)


def test_wait_folds_a_burst_into_one_notification(tmp_path: Path) -> None:
    """With `wait`, twenty changes in quick succession make one run that names every changed file."""
    argv, out = _recorder(tmp_path)
    notifier = Notifier([OnChange.model_validate({"exec": argv, "wait": {"min": "500ms", "max": "5s"}})])
    for i in range(20):
        notifier([_change(f"s{i}")])
        time.sleep(0.01)
    assert wait_for(lambda: len(_runs(out)) == 1)
    time.sleep(1.0)  # a second run would come 500ms after the last change
    notifier.close(5)
    (run,) = _runs(out)
    assert sorted(run.split("\n")) == sorted(f"s{i}" for i in range(20))


def test_wait_max_bounds_a_steady_stream(tmp_path: Path) -> None:
    """Changes that never pause for `min` still fire once `max` has passed since the first."""
    argv, out = _recorder(tmp_path)
    notifier = Notifier([OnChange.model_validate({"exec": argv, "wait": {"min": "1s", "max": "1500ms"}})])
    streaming = time.monotonic() + 4
    i = 0
    while time.monotonic() < streaming:  # a change every 200ms: never a 1s pause
        notifier([_change(f"s{i}")])
        i += 1
        time.sleep(0.2)
    during = len(_runs(out))
    notifier.close(5)
    assert during >= 1
    assert len(_runs(out)) > during  # close() announced what was still pending


def test_slow_action_never_blocks_and_close_is_bounded(tmp_path: Path) -> None:
    """A command that hangs does not block the caller; close() returns and stops it."""
    started = tmp_path / "started"
    code = f"import os, time; open({str(started)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    before = _count("exec", "failed")
    notifier = Notifier([OnChange(exec=[sys.executable, "-c", code], timeout=120)])
    notifier([_change("a")])  # returns at once: the command runs on the notifier's thread
    assert wait_for(lambda: started.exists() and started.read_text() != "")
    pid = int(started.read_text())
    notifier([_change("b")])  # queued behind the hanging one
    notifier.close(0.5)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert _count("exec", "failed") >= before + 1


@pytest.mark.parametrize("content", ["0", "-1", "-42", "abc", "", "12 34", "9" * 80, "self"])
def test_pid_file_that_would_signal_a_group_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str
) -> None:
    """A pid file holding 0, a negative number, no number, or the bridge's own pid is refused with one
    error line, and nothing is signalled."""
    pid_file = tmp_path / "app.pid"
    pid_file.write_text(str(os.getpid()) if content == "self" else content)
    got: list[int] = []
    # SIGURG is ignored by default everywhere, so even an unguarded kill(-1) would harm nothing.
    previous = signal.signal(signal.SIGURG, lambda signum, frame: got.append(signum))
    try:
        before = _count("signal", "failed")
        notifier = Notifier([OnChange(signal="SIGURG", pid_file=pid_file)])
        notifier.started()
        notifier([_change("a")])
        notifier.close(5)
        time.sleep(0.1)
    finally:
        signal.signal(signal.SIGURG, previous)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "refused" in errors[0] and "\n" not in errors[0]
    assert got == []
    assert _count("signal", "failed") == before + 1


def test_pid_file_that_is_a_fifo_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A FIFO planted as the pid file is refused at once instead of hanging the notifier."""
    os.mkfifo(tmp_path / "app.pid")
    notifier = Notifier([OnChange(signal="SIGURG", pid_file=tmp_path / "app.pid")])
    notifier.started()
    notifier([_change("a")])
    notifier.close(5)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "not a regular file" in errors[0]


def test_pid_1_stays_valid(tmp_path: Path) -> None:
    """PID 1 is a valid target: in a shared PID namespace it is often the application."""
    (tmp_path / "app.pid").write_text("1\n")
    assert _read_pid(OnChange(signal="HUP", pid_file=tmp_path / "app.pid"), at_start=False) == 1


def test_missing_pid_file_at_start_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A pid file that does not exist yet at the first sync is logged at info and skipped; later it is
    a warning."""
    skipped, failed = _count("signal", "skipped"), _count("signal", "failed")
    notifier = Notifier([OnChange(signal="HUP", pid_file=tmp_path / "not-yet.pid")])
    notifier([_change("a")])
    assert wait_for(lambda: _count("signal", "skipped") == skipped + 1)
    assert not [r for r in caplog.records if r.levelno >= 30]
    notifier.started()
    notifier([_change("a")])
    notifier.close(5)
    assert _count("signal", "failed") == failed + 1
    assert [r.levelname for r in caplog.records if r.levelno >= 30] == ["WARNING"]


def test_changed_names_are_one_per_line(tmp_path: Path) -> None:
    """SECRETS_BRIDGE_CHANGED holds one file per line, so a name with a comma stays one name."""
    argv, out = _recorder(tmp_path)
    notifier = Notifier([OnChange(exec=argv)])
    notifier([_change("a,b"), _change("c")])
    notifier.close(5)
    assert [run.split("\n") for run in _runs(out)] == [["a,b", "c"]]


def test_bad_http_url_exits_2_in_one_line(tmp_path: Path) -> None:
    """The CLI refuses a non-http URL before doing anything: exit 2, one line naming the field."""
    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: {tmp_path / 'out'}\non_change:\n  - {{http: {{url: 'file:///etc/shadow'}}}}\n")
    proc = Bridge(config)("sync", check=2)
    assert proc.stderr == "secrets-bridge: on_change.0.http.url: expected an http:// or https:// URL\n"
    assert not (tmp_path / "out").exists()


class _Dribble(BaseHTTPRequestHandler):
    """Answers a byte every half second: each read is quick, the whole answer takes 45 s."""

    def do_POST(self) -> None:
        answer = b"HTTP/1.1 204 No Content\r\n" + b"X-Pad: " + b"x" * 60 + b"\r\n\r\n"
        try:
            for byte in answer:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.5)
        except OSError:
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def dribble() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Dribble)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/reload"
    server.shutdown()


def test_http_timeout_is_a_deadline_for_the_whole_call(dribble: str, caplog: pytest.LogCaptureFixture) -> None:
    """An endpoint answering a byte a second fails the call at `timeout`, not after the whole answer."""
    before = _count("http", "failed")
    notifier = Notifier([OnChange.model_validate({"http": {"url": dribble}, "timeout": "1s"})])
    started = time.monotonic()
    notifier([_change("a")])
    assert wait_for(lambda: _count("http", "failed") == before + 1, timeout=8)
    assert time.monotonic() - started < 3
    notifier.close(5)
    assert "no answer within 1s" in caplog.text


def test_a_slow_action_never_delays_another(tmp_path: Path, dribble: str) -> None:
    """Beside a hanging command and a hanging HTTP call, a debounced action still fires on time."""
    argv, out = _recorder(tmp_path)
    hanging = [sys.executable, "-c", "import time; time.sleep(60)"]
    notifier = Notifier([OnChange(exec=hanging, timeout=60),
                         OnChange.model_validate({"http": {"url": dribble}, "timeout": "60s"}),
                         OnChange.model_validate({"exec": argv, "wait": {"min": "200ms", "max": "1s"}})])
    try:
        notifier([_change("a")])
        time.sleep(0.3)
        started = time.monotonic()
        notifier([_change("b")])  # the first two are still hanging
        assert wait_for(lambda: _runs(out) == ["a\nb"] or len(_runs(out)) == 2, timeout=5)
        assert time.monotonic() - started < 2.5
    finally:
        notifier.close(1)


def test_idle_notifier_holds_no_thread(tmp_path: Path) -> None:
    """An action's worker ends once it has nothing pending: threads stay bounded by the entries."""
    argv, out = _recorder(tmp_path)
    baseline = threading.active_count()
    notifier = Notifier([OnChange(exec=argv), OnChange(exec=argv)])
    notifier([_change("a")])
    assert wait_for(lambda: len(_runs(out)) == 2)
    assert wait_for(lambda: threading.active_count() == baseline)
    notifier.close(5)


def test_failing_request_never_logs_url_credentials(caplog: pytest.LogCaptureFixture) -> None:
    """A request that fails logs no user, password or query of its URL, whatever the error text."""
    from bridge.config.sections import HttpHook

    # Built without validation: the config refuses such a URL; the notifier must hold up anyway.
    url = "http://admin:s3cret-pw@127.0.0.1/hook?token=t0ps3cret"
    hook = OnChange.model_construct(http=HttpHook.model_construct(url=url, method="POST"), timeout=2.0)
    before = _count("http", "failed")
    notifier = Notifier([hook])
    notifier([_change("a")])
    notifier.close(5)
    assert _count("http", "failed") == before + 1
    assert "failed" in caplog.text
    for secret in ("s3cret-pw", "t0ps3cret", "admin"):
        assert secret not in caplog.text


