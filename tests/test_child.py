"""The child of `exec` (bridge/runtime/child.py): its environment without credentials, its start
errors as a shell's statuses, signals passed on, a stop that kills after its timeout, orphans
reaped as PID 1 reaps them, and the quiet period that folds a burst of changes into one restart."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bridge.runtime.child import Child, Quiet, StartError, child_environment, exit_status
from tests.polling import wait_for


def test_environment_drops_credentials_and_own_settings() -> None:
    """Credential variables (any case) and SECRETS_BRIDGE_* never reach the child; env values win."""
    base = {b"PATH": b"/bin", b"VAULT_TOKEN": b"hunter2", b"aws_secret_access_key": b"k",
            b"SECRETS_BRIDGE_LISTEN": b":9098", b"DB_PASSWORD": b"old", b"HOME": b"/root"}
    env = child_environment(base, {"DB_PASSWORD": b"new", "API_KEY": b"k2"},
                            ["VAULT_TOKEN", "AWS_SECRET_ACCESS_KEY"])
    assert env == {b"PATH": b"/bin", b"HOME": b"/root", b"DB_PASSWORD": b"new", b"API_KEY": b"k2"}


@pytest.mark.parametrize(("returncode", "status"), [(0, 0), (3, 3), (-9, 137), (-15, 143)])
def test_exit_status_as_a_shell_says(returncode: int, status: int) -> None:
    """An exit code stays; an end by signal N is 128+N."""
    assert exit_status(returncode) == status


def test_start_errors_are_127_and_126(tmp_path: Path) -> None:
    """A command that is not there is 127, one that cannot be executed 126, each one line naming it."""
    with pytest.raises(StartError) as missing:
        Child([str(tmp_path / "nope")]).start({})
    assert missing.value.exit_status == 127 and str(missing.value).endswith("command not found")
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    with pytest.raises(StartError) as denied:
        Child([str(script)]).start({})
    assert denied.value.exit_status == 126 and str(denied.value).endswith("permission denied")


def test_child_runs_with_its_environment_in_its_own_group(tmp_path: Path) -> None:
    """The child gets exactly the environment given and a process group of its own; poll() reads its status."""
    out = tmp_path / "out"
    child = Child([sys.executable, "-c", textwrap.dedent(f"""
        import os, sys
        open({str(out)!r}, "w").write(os.environ.get("DB_PASSWORD", "") + " " + str(os.getpgrp() == os.getpid()))
        sys.exit(4)
    """)])
    child.start({b"DB_PASSWORD": b"from-exec"})
    wait_for(lambda: child.poll() is not None, 30, step=0.05)
    assert child.poll() == 4 and not child.running()
    assert out.read_text() == "from-exec True"


def test_signals_are_passed_on_and_stop_kills_after_its_timeout(tmp_path: Path) -> None:
    """forward() delivers a signal the child handles; stop() of a child ignoring it kills it after
    the timeout (137); forward() to an exited child says there is none."""
    ready = tmp_path / "ready"
    child = Child([sys.executable, "-c", textwrap.dedent(f"""
        import signal, time
        signal.signal(signal.SIGUSR1, lambda *a: open({str(tmp_path / 'usr1')!r}, "w").close())
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open({str(ready)!r}, "w").close()
        while True:
            time.sleep(0.05)
    """)])
    child.start({})
    assert wait_for(ready.exists, 30, step=0.05)
    assert child.forward(signal.SIGUSR1)
    assert wait_for((tmp_path / "usr1").exists, 30, step=0.05)
    started = time.monotonic()
    assert child.stop(signal.SIGTERM, timeout=0.5) == 128 + signal.SIGKILL
    assert 0.4 < time.monotonic() - started < 10
    assert not child.forward(signal.SIGUSR1) and not child.running()


REAPER = textwrap.dedent("""
    import ctypes, os, subprocess, time
    from bridge.runtime.child import Child, reap_orphans
    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans come to us, as to PID 1
    # two orphans: a shell that starts `sleep` twice in the background and exits at once
    subprocess.run(["sh", "-c", "sleep 0.2 & sleep 0.2 & exit 0"], check=True)
    child = Child(["sh", "-c", "exit 5"])
    child.start({})
    time.sleep(1.0)
    first = reap_orphans(child)
    kept = os.posix_spawn("/bin/true", ["true"], os.environ)  # a process its own thread waits for
    time.sleep(0.5)
    second = reap_orphans(child, keep=lambda: frozenset({kept}))
    print(first, child.poll(), second, os.waitpid(kept, 0)[0] == kept)
""")


def test_orphans_are_reaped_but_not_the_child_nor_a_kept_pid() -> None:
    """As a subreaper (as PID 1), exited orphans are reaped; the child's status stays its own and a
    pid someone waits for is left to them (run in a process of its own: reaping is process-wide)."""
    root = Path(__file__).parent.parent
    proc = subprocess.run([sys.executable, "-c", REAPER], capture_output=True, text=True, timeout=60, cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["2", "5", "0", "True"]


def test_quiet_folds_a_burst_into_one_restart() -> None:
    """A restart is due `min` after the last change, but never later than `max` after the first."""
    quiet = Quiet()
    assert not quiet.ready(0.0)
    assert quiet.add(0.0, 2.0, 8.0) == 2.0
    assert quiet.add(1.5, 2.0, 8.0) == 3.5 and not quiet.ready(3.0) and quiet.ready(3.5)
    for now in (3.0, 5.0, 7.0):
        due = quiet.add(now, 2.0, 8.0)
    assert due == 8.0  # bounded by the first change + max
    quiet.clear()
    assert not quiet.ready(100.0) and quiet.add(100.0, 2.0, 1.0) == 102.0  # max below min: min wins
