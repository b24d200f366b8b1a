"""Support for the container tests (tests/test_container.py): running podman, podman-compose and the
scripts/ builders, machine-wide locks (an image tag, a standalone build and port 9098 on the host's
network exist once per machine, whatever the checkout or xdist worker), and bridge configs for them."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.polling import wait_for
from tests.servers import venv_binary

ROOT = Path(__file__).resolve().parent.parent
IMAGE_UID = 10001
#: the image's HEALTHCHECK asks this port; on the host's network the bridge listens there on loopback
HEALTH_PORT = 9098
#: the uid of the app stand-ins (postgres' own uid in its image)
APP_UID = 999


def run(*argv: str, timeout: float = 180, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=timeout, check=False, **kwargs)


def podman(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return run("podman", *args, timeout=timeout)


def built(script: str, *args: str) -> str:
    """Runs a scripts/ builder; what it made is its last line. A build that fails fails the test; one
    that cannot start for want of debootstrap skips it, saying so."""
    proc = run("bash", f"scripts/{script}", *args, timeout=1200)
    if proc.returncode != 0 and "debootstrap is not installed" in proc.stderr:
        pytest.skip(f"scripts/{script}: debootstrap is not installed (scripts/install-system-deps.sh installs it)")
    if proc.returncode != 0:
        pytest.fail(f"scripts/{script} {' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return proc.stdout.strip().splitlines()[-1]


def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    if not wait_for(check, timeout, step=0.25):
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


@contextlib.contextmanager
def machine_lock(name: str, timeout: float = 600) -> Iterator[None]:
    """An exclusive lock shared by every checkout and xdist worker on this machine: the image tag,
    the standalone build and port 9098 on the host's network are one each per machine."""
    where = "/run/lock" if os.path.isdir("/run/lock") else tempfile.gettempdir()
    with open(f"{where}/secrets-bridge-tests-{name}.lock", "w") as lock:

        def taken() -> bool:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False

        if not wait_for(taken, timeout, step=0.5):
            pytest.fail(f"timed out after {timeout:.0f} s waiting for the {name} lock")
        yield


def project_version() -> str:
    found = re.search(r'^version = "(.*)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert found is not None
    return found.group(1)


def put(openbao: Any, path: str, password: str) -> None:
    openbao.client().secrets.kv.v2.create_or_update_secret(path=path, secret={"password": password},
                                                           mount_point="secret")


def write_config(directory: Path, path: str, output_dir: str = "/run/secrets", *, listen: bool = False) -> Path:
    """A bridge config: one secret from secret/<path> with mode 0440, refreshed every second; with
    `listen`, serving /readyz on 127.0.0.1:9098 for the image's HEALTHCHECK (hold health_port())."""
    config = directory / "secrets-bridge.yaml"
    address = f'"127.0.0.1:{HEALTH_PORT}"' if listen else "null"
    config.write_text(
        f"output_dir: {output_dir}\nrefresh_interval: 1s\nlisten: {address}\n"
        "providers:\n  vault: {type: vault, auth: {method: token}}\n"
        f'secrets:\n  db_password: {{provider: vault, ref: secret/{path}, key: password, mode: "0440"}}\n')
    config.chmod(0o644)
    return config


def health_port_free() -> bool:
    return f":{HEALTH_PORT} " not in run("ss", "-Hltn").stdout


@contextlib.contextmanager
def health_port() -> Iterator[None]:
    """Port 9098 on the host's network, for one test at a time, once nothing else listens there."""
    with machine_lock("port-9098"):
        until(health_port_free, 60, f"port {HEALTH_PORT} to be free (another process on the host's network)")
        yield


@contextlib.contextmanager
def container(*args: str) -> Iterator[str]:
    """`podman run -d` with a fresh name; removed afterwards."""
    name = f"sb-test-{uuid.uuid4().hex[:10]}"
    proc = podman("run", "-d", "--name", name, *args)
    assert proc.returncode == 0, proc.stderr
    try:
        yield name
    finally:
        podman("rm", "--force", name)


def exec_in(name: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return podman("exec", name, *argv, timeout=30)


def error_lines(logs: str) -> list[str]:
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


# --- Compose, with podman-compose ----------------------------------------------------------------

def write_override(directory: Path, app_image: str, bridge_image: str) -> Path:
    """An override of deploy/compose.yaml that adapts it to this machine and nothing else: the bridge
    on the host's network (OpenBao listens on the host's loopback), the app a stand-in printing its uid
    and the secret, and two things podman 4.3 (Debian 12) refuses: `size=` in a local volume's options
    (it takes it for an XFS project quota) and the healthcheck's `start_interval`."""
    override = directory / "override.yaml"
    override.write_text(f"""\
services:
  bridge:
    image: {bridge_image}
    network_mode: host
    healthcheck:
      start_interval: !reset null
    restart: "no"              # a bridge that fails is seen failing, not restarted in a loop
  app:
    image: {app_image}
    network_mode: none
    user: "{APP_UID}:{APP_UID}"
    command: ["sh", "-c", "id -u; cat /run/secrets/db_password"]
    restart: "no"
volumes:
  secrets:
    driver_opts:
      o: "uid={IMAGE_UID},gid={IMAGE_UID},mode=0755"
""")
    return override


class Compose:
    """podman-compose on a project of its own, with the files and environment given."""

    def __init__(self, files: list[Path], env: dict[str, str]) -> None:
        self.project = f"sbtest{uuid.uuid4().hex[:8]}"
        self.files = [arg for f in files for arg in ("-f", str(f))]
        self.env = {**os.environ, **env}

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run(venv_binary("podman-compose"), "-p", self.project, *self.files, *args, env=self.env, timeout=120)

    def container(self, service: str) -> str:
        proc = podman("ps", "-a", "--format", "{{.Names}}",
                      "--filter", f"label=io.podman.compose.project={self.project}",
                      "--filter", f"label=com.docker.compose.service={service}")
        names = proc.stdout.split()
        assert len(names) == 1, f"{service}: {proc.stdout} {proc.stderr}"
        return names[0]

    def down(self) -> None:
        """`down --volumes`, then whatever it left behind (a container in a restart loop can outlive it)."""
        self("down", "--volumes")
        label = f"label=io.podman.compose.project={self.project}"
        for kind, listing in (("container", ["--all"]), ("volume", [])):
            left = podman(kind, "ls", *listing, "--quiet", "--filter", label).stdout.split()
            if left:
                podman(kind, "rm", "--force", *left)
        podman("pod", "rm", "--force", "--ignore", f"pod_{self.project}")


def container_state(name: str) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(podman("inspect", name).stdout)[0]["State"]
    return state


def app_output(compose: Compose) -> tuple[int, str]:
    app = compose.container("app")
    until(lambda: container_state(app)["Status"] == "exited", 30, "the app stand-in to exit")
    logs = podman("logs", app)
    return container_state(app)["ExitCode"], logs.stdout + logs.stderr


def healthy(name: str) -> bool:
    """One run of the container's healthcheck, as systemd's timer would run it."""
    return podman("healthcheck", "run", name, timeout=30).returncode == 0


def doc_compose_block(doc: Path, marker: str) -> str:
    """The YAML block of `doc` that holds `marker`."""
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", doc.read_text(), re.S) if marker in b]
    assert len(blocks) == 1, f"{doc}: {len(blocks)} blocks with {marker}"
    return blocks[0]


#: what the app stand-in of a docs recipe runs: its uid, the secret file, whether it sees the token
#: (`$$`: Compose's own interpolation would fill in the test's variable)
RECIPE_APP_COMMAND = ["sh", "-c", "id -u; cat /run/secrets/db_password; echo; echo token:$${VAULT_TOKEN:-unset}"]


def doc_recipe_stack(directory: Path, doc: str, marker: str, app_image: str) -> list[Path]:
    """The Compose block of docs/`doc` holding `marker`, beside the shipped bridge config, and an
    override running it here: the app a stand-in image on the host's network, as uid 999, running
    RECIPE_APP_COMMAND."""
    stack = directory / "compose.yaml"
    stack.write_text(doc_compose_block(ROOT / "docs" / doc, marker))
    shutil.copy(ROOT / "deploy" / "secrets-bridge.yaml", directory / "secrets-bridge.yaml")
    (directory / "secrets-bridge.yaml").chmod(0o644)
    override = directory / "override.yaml"
    override.write_text(f"""\
services:
  app:
    image: {app_image}
    network_mode: host
    user: "{APP_UID}:{APP_UID}"
    command: {json.dumps(RECIPE_APP_COMMAND)}
    restart: "no"
""")
    return [stack, override]


def up_once(files: list[Path], env: dict[str, str]) -> tuple[int, str]:
    """`up -d` of a stack whose app runs to its end: the app's exit status and output; then `down`."""
    compose = Compose(files, env)
    try:
        proc = compose("up", "-d")
        assert proc.returncode == 0, proc.stderr
        return app_output(compose)
    finally:
        compose.down()
