"""The image, the Compose files and the standalone executable, built and run for real with podman
(scripts/build-image.sh, scripts/build-base.sh, scripts/build-standalone.sh). The image is built once
a session (its base and layers are cached); containers reach the session's OpenBao dev server on the
host's network. Skipped, saying why, only where podman cannot run at all."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
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
    """Runs a scripts/ builder; what it made is its last line. A build that fails fails the test; one
    that cannot start for want of debootstrap skips it, saying so."""
    proc = _run("bash", f"scripts/{script}", *args, timeout=1200)
    if proc.returncode != 0 and "debootstrap is not installed" in proc.stderr:
        pytest.skip(f"scripts/{script}: debootstrap is not installed (scripts/install-system-deps.sh installs it)")
    if proc.returncode != 0:
        pytest.fail(f"scripts/{script} {' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return proc.stdout.strip().splitlines()[-1]


def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.25)


@contextlib.contextmanager
def _machine_lock(name: str, timeout: float = 600) -> Iterator[None]:
    """An exclusive lock shared by every checkout and xdist worker on this machine: the image tag,
    the standalone build and port 9098 on the host's network are one each per machine."""
    with open(f"/run/lock/secrets-bridge-tests-{name}.lock", "w") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"timed out after {timeout:.0f} s waiting for the {name} lock")
                time.sleep(0.5)
        yield


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
    """The id of localhost/secrets-bridge:<version>, built by scripts/build-image.sh (cached layers make
    it quick when nothing changed); the id, because another checkout may build the same tag."""
    with _machine_lock("image"):
        name = _built("build-image.sh")
        return _podman("image", "inspect", "--format", "{{.Id}}", name).stdout.strip()


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
    with _machine_lock("standalone"):
        if not executable.exists() or max(p.stat().st_mtime for p in sources) > executable.stat().st_mtime:
            if shutil.which("pyinstaller", path=str(Path(venv_binary("python")).parent)) is None:
                pytest.skip("PyInstaller is not installed (pip install -e '.[standalone]')")
            executable = Path(_built("build-standalone.sh"))
    return executable


def _project_version() -> str:
    found = re.search(r'^version = "(.*)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert found is not None
    return found.group(1)


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
def _health_port() -> Iterator[None]:
    """Port 9098 on the host's network, for one test at a time, once nothing else listens there."""
    with _machine_lock("port-9098"):
        _until(_health_port_free, 60, f"port {HEALTH_PORT} to be free (another process on the host's network)")
        yield


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
    proc = _podman("run", "--rm", image, "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"secrets-bridge {_project_version()}"
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
    with _health_port(), _container("--network", "host", "--read-only", "--cap-drop", "all",
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


# --- Compose, with podman-compose ----------------------------------------------------------------
#
# The override adapts the shipped files to this machine and nothing else: the bridge on the host's
# network (OpenBao listens on the host's loopback), the app a stand-in that prints its uid and the
# secret, and two things podman 4.3 (Debian 12) refuses: `size=` in a local volume's options (it takes
# it for an XFS project quota) and the healthcheck's `start_interval` (--health-startup-interval).

def _override(directory: Path, bridge: str, volume: str, app_image: str, bridge_image: str) -> Path:
    override = directory / "override.yaml"
    healthcheck = "    healthcheck:\n      start_interval: !reset null\n" if bridge == "bridge" else ""
    override.write_text(f"""\
services:
  {bridge}:
    image: {bridge_image}
    network_mode: host
{healthcheck}  app:
    image: {app_image}
    network_mode: none
    user: "{APP_UID}:{APP_UID}"
    command: ["sh", "-c", "id -u; cat /run/secrets/db_password"]
    restart: "no"
volumes:
  {volume}:
    driver_opts:
      o: "uid={IMAGE_UID},gid={IMAGE_UID},mode=0755"
""")
    return override


class _Compose:
    """podman-compose on a project of its own, with the files and environment given."""

    def __init__(self, files: list[Path], env: dict[str, str]) -> None:
        self.project = f"sbtest{uuid.uuid4().hex[:8]}"
        self.files = [arg for f in files for arg in ("-f", str(f))]
        self.env = {**os.environ, **env}

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _run(venv_binary("podman-compose"), "-p", self.project, *self.files, *args, env=self.env, timeout=120)

    def container(self, service: str) -> str:
        proc = _podman("ps", "-a", "--format", "{{.Names}}",
                       "--filter", f"label=io.podman.compose.project={self.project}",
                       "--filter", f"label=com.docker.compose.service={service}")
        names = proc.stdout.split()
        assert len(names) == 1, f"{service}: {proc.stdout} {proc.stderr}"
        return names[0]

    def down(self) -> None:
        self("down", "--volumes")


def _state(name: str) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(_podman("inspect", name).stdout)[0]["State"]
    return state


def _started_at(state: dict[str, Any]) -> str:
    return str(state["StartedAt"])


def _app_output(compose: _Compose) -> tuple[int, str]:
    app = compose.container("app")
    _until(lambda: _state(app)["Status"] == "exited", 30, "the app stand-in to exit")
    logs = _podman("logs", app)
    return _state(app)["ExitCode"], logs.stdout + logs.stderr


@pytest.fixture
def sidecar_stack(image: str, minimal_base: str, openbao: Any, tmp_path: Path) -> Iterator[_Compose]:
    """deploy/compose.yaml (and the override above), its secret written into OpenBao; taken down after."""
    _put(openbao, "app/db", "compose-sidecar-pw")
    override = _override(tmp_path, "bridge", "secrets", minimal_base, image)
    compose = _Compose([ROOT / "deploy" / "compose.yaml", override],
                       {"VAULT_ADDR": openbao.address, "VAULT_TOKEN": openbao.root_token,
                        "SECRETS_BRIDGE_IMAGE": image, "APP_IMAGE": minimal_base})
    with _health_port():
        try:
            yield compose
        finally:
            compose.down()


def _healthy(name: str) -> bool:
    """One run of the container's healthcheck, as systemd's timer would run it."""
    return _podman("healthcheck", "run", name, timeout=30).returncode == 0


def test_compose_app_reads_the_secret_as_its_own_uid(sidecar_stack: _Compose) -> None:
    """The Compose bridge becomes healthy, and the app then reads the secret from the shared tmpfs
    volume as its own uid (999). The test runs the healthcheck and starts the app itself (see the next
    test for Compose doing both)."""
    proc = sidecar_stack("up", "-d", "bridge")
    assert proc.returncode == 0, proc.stderr
    bridge = sidecar_stack.container("bridge")
    _until(lambda: _healthy(bridge), 60, "the bridge's healthcheck to pass")
    proc = sidecar_stack("up", "-d", "app")
    assert proc.returncode == 0, proc.stderr
    status, output = _app_output(sidecar_stack)
    assert status == 0, output
    assert output.split() == [str(APP_UID), "compose-sidecar-pw"]


def test_compose_starts_the_app_once_the_bridge_is_healthy(podman: str, sidecar_stack: _Compose) -> None:
    """`up` holds the app back until the bridge's healthcheck passes (condition: service_healthy); a
    thread runs the healthcheck each second, as systemd's timer does where there is one."""
    if tuple(int(p) for p in re.findall(r"\d+", podman)[:2]) < (4, 6):
        pytest.skip(f"podman-compose ignores `condition: service_healthy` with podman < 4.6 (here {podman}): "
                    "the app would start at once")
    import threading

    stop = threading.Event()
    healthy_at: list[str] = []

    def drive() -> None:
        while not stop.wait(1.0):
            names = _podman("ps", "--format", "{{.Names}}", "--filter",
                            f"label=io.podman.compose.project={sidecar_stack.project}",
                            "--filter", "label=com.docker.compose.service=bridge").stdout.split()
            if names and _healthy(names[0]) and not healthy_at:
                healthy_at.append(_podman("inspect", "--format", "{{.State.StartedAt}}", names[0]).stdout)
                healthy_at.append(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()))

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    try:
        proc = sidecar_stack("up", "-d")
    finally:
        stop.set()
        driver.join(timeout=40)
    assert proc.returncode == 0, proc.stderr
    assert healthy_at, "the bridge never became healthy"
    status, output = _app_output(sidecar_stack)
    assert status == 0 and output.split() == [str(APP_UID), "compose-sidecar-pw"], output


def _doc_compose_block(doc: Path, marker: str) -> str:
    """The YAML block of `doc` that holds `marker`."""
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", doc.read_text(), re.S) if marker in b]
    assert len(blocks) == 1, f"{doc}: {len(blocks)} blocks with {marker}"
    return blocks[0]


def test_init_container_recipe_syncs_before_the_app(standalone: Path, minimal_base: str, openbao: Any,
                                                    tmp_path: Path) -> None:
    """docs/init-container.md's Compose recipe, in an image without Python: `sync` with the standalone
    executable exits 0, then the application's command runs as its uid, reads the secret, and does not
    see the bridge's token; with the secret missing, the application's command never runs."""
    stack = tmp_path / "compose.yaml"
    stack.write_text(_doc_compose_block(ROOT / "docs" / "init-container.md", "secrets-bridge.yaml sync &&"))
    shutil.copy(ROOT / "deploy" / "secrets-bridge.yaml", tmp_path / "secrets-bridge.yaml")
    (tmp_path / "secrets-bridge.yaml").chmod(0o644)
    override = tmp_path / "override.yaml"
    override.write_text(f"""\
services:
  app:
    image: {minimal_base}
    network_mode: host
    command: ["sh", "-c", "id -u; cat /run/secrets/db_password; echo; echo token:$${{VAULT_TOKEN:-unset}}"]
    restart: "no"
""")
    env = {"VAULT_ADDR": openbao.address, "VAULT_TOKEN": openbao.root_token,
           "SECRETS_BRIDGE_DIR": str(standalone.parent)}
    outcomes = []
    for password in ["compose-oneshot-pw", None]:
        if password is None:  # the second run: the secret gone from OpenBao
            openbao.client().secrets.kv.v2.delete_metadata_and_all_versions(path="app/db", mount_point="secret")
        else:
            _put(openbao, "app/db", password)
        compose = _Compose([stack, override], env)
        try:
            proc = compose("up", "-d")
            assert proc.returncode == 0, proc.stderr
            outcomes.append(_app_output(compose))
        finally:
            compose.down()
    (status, output), (missing_status, missing_output) = outcomes
    assert status == 0, output
    lines = [line for line in output.splitlines() if not line.startswith("{")]  # the bridge's JSON logs
    assert lines == [str(APP_UID), "compose-oneshot-pw", "token:unset"]
    assert openbao.root_token not in output
    assert missing_status == 1
    assert "compose-oneshot-pw" not in missing_output and "token:" not in missing_output


# --- the standalone executable ---------------------------------------------------------------------

def test_standalone_runs_with_an_empty_environment(standalone: Path, openbao: Any, tmp_path: Path) -> None:
    """Under `env -i` (no PATH, so no Python to find), the standalone executable prints its version and
    a `sync` writes the secret from OpenBao."""
    version = _run("env", "-i", str(standalone), "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("secrets-bridge ")
    path = f"standalone/{uuid.uuid4().hex[:8]}"
    _put(openbao, path, "standalone-pw")
    output = Path(tempfile.mkdtemp(prefix="sb-standalone-", dir="/dev/shm"))  # a tmpfs, as required
    try:
        config = _config(tmp_path, path, output_dir=str(output))
        proc = _run("env", "-i", f"VAULT_ADDR={openbao.address}", f"VAULT_TOKEN={openbao.root_token}",
                    str(standalone), "--config", str(config), "sync")
        assert proc.returncode == 0, proc.stderr
        assert (output / "db_password").read_text() == "standalone-pw"
        assert openbao.root_token not in proc.stdout + proc.stderr
    finally:
        shutil.rmtree(output)


def test_standalone_runs_in_an_image_without_python(standalone: Path, minimal_base: str, openbao: Any,
                                                   tmp_path: Path) -> None:
    """As the Kubernetes recipe does it: the executable's directory copied into a memory volume of a
    Debian minbase container without Python (read-only root, uid 10001, no capabilities), where
    `--version` and a `sync` work."""
    path = f"standalone/{uuid.uuid4().hex[:8]}"
    _put(openbao, path, "no-python-pw")
    config = _config(tmp_path, path)
    script = ("! command -v python3 && ! command -v python && cp -a /dist/. /bridge/"
              " && /bridge/secrets-bridge --version"
              " && /bridge/secrets-bridge --config /etc/secrets-bridge/secrets-bridge.yaml sync"
              " && cat /run/secrets/db_password")
    proc = _podman("run", "--rm", "--network", "host", "--read-only", "--cap-drop", "all",
                   "--user", f"{IMAGE_UID}:{IMAGE_UID}",
                   "--tmpfs", "/bridge:rw,exec,size=256m,mode=0755,U",
                   "--tmpfs", "/run/secrets:rw,size=4m,mode=0755,U",
                   "--volume", f"{standalone.parent}:/dist:ro",
                   "--volume", f"{config}:/etc/secrets-bridge/secrets-bridge.yaml:ro",
                   "--env", f"VAULT_ADDR={openbao.address}", "--env", f"VAULT_TOKEN={openbao.root_token}",
                   minimal_base, "sh", "-c", script)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split()[-3:-1] == ["secrets-bridge", _project_version()]
    assert proc.stdout.endswith("no-python-pw")
    assert openbao.root_token not in proc.stdout + proc.stderr
