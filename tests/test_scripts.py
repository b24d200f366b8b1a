"""The README's test command installs the system packages the tests need itself, through one guarded
installer (scripts/install-system-deps.sh) that is a no-op when they are present, and CI runs exactly
that command."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: what the installer looks for, as `command -v` finds it or where Debian puts it
_PROGRAMS = ("nginx", "strace", "podman", "runc", "debootstrap")


def _commands(script: Path) -> list[str]:
    """The script's command lines: no comments, blank lines or `set` lines."""
    lines = [line.strip() for line in script.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith(("#", "set "))]


def test_test_command_installs_first_and_ci_runs_only_it() -> None:
    """scripts/test.sh runs the installer before anything else, and .ci/run runs scripts/test.sh alone."""
    assert _commands(ROOT / "scripts" / "test.sh")[0].startswith('bash "$(dirname "$0")/install-system-deps.sh"')
    assert _commands(ROOT / ".ci" / "run") == ['cd "$(dirname "$0")/.."', "bash scripts/test.sh"]


@pytest.mark.skipif(os.getuid() != 0, reason="the installer only installs as root")
def test_installer_is_a_no_op_when_everything_is_present(tmp_path: Path) -> None:
    """With every package present the installer calls no apt-get, prints nothing and exits 0."""
    missing = [p for p in _PROGRAMS if shutil.which(p) is None and not Path(f"/usr/sbin/{p}").exists()]
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        missing.append("postgresql")
    if not Path("/etc/containers/containers.conf").exists():
        missing.append("/etc/containers/containers.conf")
    if missing:
        pytest.skip(f"not everything is set up here: {', '.join(missing)}")
    stub = tmp_path / "apt-get"
    stub.write_text(f"#!/bin/sh\necho called >> {tmp_path / 'calls'}\n")
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "install-system-deps.sh")], capture_output=True,
                          text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 0
    assert proc.stderr == ""
    assert not (tmp_path / "calls").exists()
