"""The image, the Compose files and the standalone executable, built and run for real with podman
(scripts/build-image.sh, scripts/build-base.sh, scripts/build-standalone.sh). The image is built once
a session (its base and layers are cached); containers reach the session's OpenBao dev server on the
host's network. Skipped, saying why, only where podman cannot run at all."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import venv_binary

pytestmark = pytest.mark.container

ROOT = Path(__file__).resolve().parent.parent
IMAGE_UID = 10001
#: the image's HEALTHCHECK asks this port; on the host's network the bridge listens there on loopback
HEALTH_PORT = 9098
#: the uid of the app stand-ins (postgres' own uid in its image)
APP_UID = 999


def _run(*argv: str, timeout: float = 180, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=timeout, check=False, **kwargs)


def _podman(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return _run("podman", *args, timeout=timeout)


def _built(script: str, *args: str) -> str:
    """Runs a scripts/ builder; what it made is its last line. A build that fails fails the test."""
    proc = _run("bash", f"scripts/{script}", *args, timeout=1200)
    if proc.returncode != 0:
        pytest.fail(f"scripts/{script} {' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return proc.stdout.strip().splitlines()[-1]


def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.25)


@pytest.fixture(scope="session")
def podman() -> str:
    """podman's version, where it can run containers; else every test here skips saying why."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (scripts/install-system-deps.sh installs it, as root)")
    if os.getuid() != 0:
        pytest.skip("the container tests run as root (debootstrap, podman's system-wide store)")
    proc = _podman("version", "--format", "{{.Client.Version}}")
    if proc.returncode != 0:
        pytest.skip(f"podman cannot run here: {proc.stderr.strip()}")
    return proc.stdout.strip()


@pytest.fixture(scope="session")
def image(podman: str) -> str:
    """localhost/secrets-bridge:<version>, built by scripts/build-image.sh (a no-op when nothing changed)."""
    return _built("build-image.sh")


@pytest.fixture(scope="session")
def minimal_base(podman: str) -> str:
    """Debian bookworm minbase without Python (scripts/build-base.sh minimal, cached)."""
    return _built("build-base.sh", "minimal")


@pytest.fixture(scope="session")
def standalone() -> Path:
    """The standalone executable (scripts/build-standalone.sh), rebuilt when a source is newer."""
    executable = ROOT / "dist" / "secrets-bridge" / "secrets-bridge"
    sources = [*ROOT.glob("bridge/**/*.py"), *ROOT.glob("providers/**/*.py"), ROOT / "pyproject.toml",
               ROOT / "scripts" / "build-standalone.sh"]
    if not executable.exists() or max(p.stat().st_mtime for p in sources) > executable.stat().st_mtime:
        if shutil.which("pyinstaller", path=str(Path(venv_binary("python")).parent)) is None:
            pytest.skip("PyInstaller is not installed (pip install -e '.[standalone]')")
        executable = Path(_built("build-standalone.sh"))
    return executable


def _put(openbao: Any, path: str, password: str) -> None:
    openbao.client().secrets.kv.v2.create_or_update_secret(path=path, secret={"password": password},
                                                           mount_point="secret")


def _config(directory: Path, path: str, output_dir: str = "/run/secrets") -> Path:
    """A bridge config: one secret from secret/<path> with mode 0440, refreshed every second."""
    config = directory / "secrets-bridge.yaml"
    config.write_text(
        f'output_dir: {output_dir}\nrefresh_interval: 1s\nlisten: "127.0.0.1:{HEALTH_PORT}"\n'
        "providers:\n  vault: {type: vault, auth: {method: token}}\n"
        f'secrets:\n  db_password: {{provider: vault, ref: secret/{path}, key: password, mode: "0440"}}\n')
    config.chmod(0o644)
    return config


def _health_port_free() -> bool:
    return f":{HEALTH_PORT} " not in _run("ss", "-Hltn").stdout


@contextlib.contextmanager
def _container(*args: str) -> Iterator[str]:
    """`podman run -d` with a fresh name; removed afterwards."""
    name = f"sb-test-{uuid.uuid4().hex[:10]}"
    proc = _podman("run", "-d", "--name", name, *args)
    assert proc.returncode == 0, proc.stderr
    try:
        yield name
    finally:
        _podman("rm", "--force", name)


def _exec(name: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return _podman("exec", name, *argv, timeout=30)


def _error_lines(logs: str) -> list[str]:
    """Log lines at ERROR or above, JSON or text."""
    found = []
    for line in logs.splitlines():
        try:
            level = json.loads(line).get("level", "")
        except (ValueError, AttributeError):
            level = "ERROR" if re.search(r"\b(ERROR|CRITICAL)\b|Traceback", line) else ""
        if level in ("ERROR", "CRITICAL"):
            found.append(line)
    return found


# --- the image ---------------------------------------------------------------------------------

def test_image_runs_as_its_user_and_prints_its_version(image: str) -> None:
    """The built image runs as uid 10001 and `--version` prints the project's version."""
    version = re.search(r'^version = "(.*)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version is not None
    proc = _podman("run", "--rm", image, "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"secrets-bridge {version.group(1)}"
    ids = _podman("run", "--rm", "--entrypoint", "id", image, "-u")
    assert ids.stdout.strip() == str(IMAGE_UID)
    inspect = json.loads(_podman("image", "inspect", image).stdout)[0]
    assert inspect["Healthcheck"]["Test"][:2] == ["CMD", "python"]  # kept: built in Docker's format


def test_image_syncs_rotates_and_stops_cleanly_read_only(image: str, openbao: Any, tmp_path: Path) -> None:
    """Read-only root, no capabilities, a tmpfs at /run/secrets: the secret lands with its mode, the
    HEALTHCHECK fails until then and passes after, a new KV version reaches the container, and
    `podman stop` ends it with exit 0, no other ERROR line and no value or token in its logs."""
    path = f"container/{uuid.uuid4().hex[:8]}"
    config = _config(tmp_path, path)
    _until(_health_port_free, 60, f"port {HEALTH_PORT} to be free (another bridge on the host's network)")
    with _container("--network", "host", "--read-only", "--cap-drop", "all",
                    "--security-opt", "no-new-privileges",
                    "--tmpfs", "/run/secrets:rw,size=4m,mode=0755,U",
                    "--volume", f"{config}:/etc/secrets-bridge/secrets-bridge.yaml:ro",
                    "--env", f"VAULT_ADDR={openbao.address}", "--env", f"VAULT_TOKEN={openbao.root_token}",
                    image) as name:
        _until(lambda: _health_port_free() is False, 30, "the bridge to listen")
        assert _podman("healthcheck", "run", name).returncode != 0  # the secret is not in OpenBao yet
        _put(openbao, path, "first-pw-1")
        _until(lambda: _exec(name, "cat", "/run/secrets/db_password").stdout == "first-pw-1", 30,
               "the secret in the container")
        assert _exec(name, "stat", "-L", "-c", "%a %u", "/run/secrets/db_password").stdout.split() == \
            ["440", str(IMAGE_UID)]
        _until(lambda: _podman("healthcheck", "run", name).returncode == 0, 15, "the healthcheck to pass")
        _put(openbao, path, "second-pw-2")
        _until(lambda: _exec(name, "cat", "/run/secrets/db_password").stdout == "second-pw-2", 30,
               "the rotation in the container")
        assert _podman("stop", "--time", "20", name).returncode == 0
        state = json.loads(_podman("inspect", name).stdout)[0]["State"]
        logs = _podman("logs", name)
    assert state["ExitCode"] == 0, logs.stderr[-2000:]
    output = logs.stdout + logs.stderr
    assert output.strip(), "the bridge logged nothing"
    # the one ERROR allowed: the secret was missing from OpenBao while the healthcheck was failing
    assert [line for line in _error_lines(output) if "not found (not_found); no file yet" not in line] == []
    for value in ("first-pw-1", "second-pw-2", openbao.root_token):
        assert value not in output
