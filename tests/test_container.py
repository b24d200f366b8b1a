"""The image, the Compose files and the standalone executable, built and run for real with podman
(scripts/build-image.sh, scripts/build-base.sh, scripts/build-standalone.sh). The image is built once
a session (its base and layers are cached); containers reach the session's OpenBao dev server on the
host's network. Skipped, saying why, only where podman cannot run at all."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import containers as ct
from tests.servers import venv_binary

pytestmark = pytest.mark.container


@pytest.fixture(scope="session")
def podman() -> str:
    """podman's version where it is installed and answers (as root); else every test here skips saying why."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (scripts/install-system-deps.sh installs it, as root)")
    if os.getuid() != 0:
        pytest.skip("the container tests run as root (debootstrap, podman's system-wide store)")
    proc = ct.podman("version", "--format", "{{.Client.Version}}")
    if proc.returncode != 0:
        pytest.skip(f"podman cannot run here: {proc.stderr.strip()}")
    return proc.stdout.strip()


@pytest.fixture(scope="session")
def image(podman: str) -> str:
    """The id of localhost/secrets-bridge:<version>, built by scripts/build-image.sh (cached layers make
    it quick when nothing changed); the id, because another checkout may build the same tag."""
    with ct.machine_lock("image"):
        name = ct.built("build-image.sh")
        return ct.podman("image", "inspect", "--format", "{{.Id}}", name).stdout.strip()


@pytest.fixture(scope="session")
def minimal_base(podman: str) -> str:
    """Debian bookworm minbase without Python (scripts/build-base.sh minimal, cached)."""
    return ct.built("build-base.sh", "minimal")


@pytest.fixture(scope="session")
def standalone() -> Path:
    """The standalone executable (scripts/build-standalone.sh), rebuilt when a source is newer."""
    executable = ct.ROOT / "dist" / "secrets-bridge" / "secrets-bridge"
    sources = [*ct.ROOT.glob("bridge/**/*.py"), *ct.ROOT.glob("providers/**/*.py"), ct.ROOT / "pyproject.toml",
               ct.ROOT / "scripts" / "build-standalone.sh"]
    with ct.machine_lock("standalone"):
        if not executable.exists() or max(p.stat().st_mtime for p in sources) > executable.stat().st_mtime:
            if shutil.which("pyinstaller", path=str(Path(venv_binary("python")).parent)) is None:
                pytest.skip("PyInstaller is not installed (pip install -e '.[standalone]')")
            executable = Path(ct.built("build-standalone.sh"))
    return executable


# --- the image ---------------------------------------------------------------------------------

def test_image_runs_as_its_user_and_prints_its_version(image: str) -> None:
    """The built image runs as uid 10001 and `--version` prints the project's version."""
    proc = ct.podman("run", "--rm", image, "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"secrets-bridge {ct.project_version()}"
    ids = ct.podman("run", "--rm", "--entrypoint", "id", image, "-u")
    assert ids.stdout.strip() == str(ct.IMAGE_UID)
    inspect = json.loads(ct.podman("image", "inspect", image).stdout)[0]
    assert inspect["Healthcheck"]["Test"][:2] == ["CMD", "python"]  # kept: built in Docker's format


def test_image_syncs_rotates_and_stops_cleanly_read_only(image: str, openbao: Any, tmp_path: Path) -> None:
    """Read-only root, no capabilities, a tmpfs at /run/secrets: the secret lands with its mode, the
    HEALTHCHECK fails until then and passes after, a new KV version reaches the container, and
    `podman stop` ends it with exit 0, no other ERROR line and no value or token in its logs."""
    path = f"container/{uuid.uuid4().hex[:8]}"
    config = ct.write_config(tmp_path, path, listen=True)
    run_args = ["--network", "host", "--read-only", "--cap-drop", "all", "--security-opt", "no-new-privileges",
                "--tmpfs", "/run/secrets:rw,size=4m,mode=0755,U",
                "--volume", f"{config}:/etc/secrets-bridge/secrets-bridge.yaml:ro",
                "--env", f"VAULT_ADDR={openbao.address}", "--env", f"VAULT_TOKEN={openbao.root_token}", image]
    with ct.health_port(), ct.container(*run_args) as name:
        ct.until(lambda: ct.health_port_free() is False, 30, "the bridge to listen")
        assert ct.podman("healthcheck", "run", name).returncode != 0  # the secret is not in OpenBao yet
        ct.put(openbao, path, "first-pw-1")
        ct.until(lambda: ct.exec_in(name, "cat", "/run/secrets/db_password").stdout == "first-pw-1", 30,
                 "the secret in the container")
        assert ct.exec_in(name, "stat", "-L", "-c", "%a %u", "/run/secrets/db_password").stdout.split() == \
            ["440", str(ct.IMAGE_UID)]
        ct.until(lambda: ct.podman("healthcheck", "run", name).returncode == 0, 15, "the healthcheck to pass")
        ct.put(openbao, path, "second-pw-2")
        ct.until(lambda: ct.exec_in(name, "cat", "/run/secrets/db_password").stdout == "second-pw-2", 30,
                 "the rotation in the container")
        assert ct.podman("stop", "--time", "20", name).returncode == 0
        state = json.loads(ct.podman("inspect", name).stdout)[0]["State"]
        logs = ct.podman("logs", name)
    assert state["ExitCode"] == 0, logs.stderr[-2000:]
    output = logs.stdout + logs.stderr
    assert output.strip(), "the bridge logged nothing"
    # the one ERROR allowed: the secret was missing from OpenBao while the healthcheck was failing
    assert [line for line in ct.error_lines(output) if "not found (not_found); no file yet" not in line] == []
    for value in ("first-pw-1", "second-pw-2", openbao.root_token):
        assert value not in output


@pytest.fixture
def sidecar_stack(image: str, minimal_base: str, openbao: Any, tmp_path: Path) -> Iterator[ct.Compose]:
    """deploy/compose.yaml with ct.write_override's override, its secret written into OpenBao; taken down after."""
    ct.put(openbao, "app/db", "compose-sidecar-pw")
    override = ct.write_override(tmp_path, minimal_base, image)
    compose = ct.Compose([ct.ROOT / "deploy" / "compose.yaml", override],
                         {"VAULT_ADDR": openbao.address, "VAULT_TOKEN": openbao.root_token,
                          "BRIDGE_IMAGE": image, "APP_IMAGE": minimal_base})
    with ct.health_port():
        try:
            yield compose
        finally:
            compose.down()


def test_compose_app_reads_the_secret_as_its_own_uid(sidecar_stack: ct.Compose) -> None:
    """The Compose bridge becomes healthy, and the app then reads the secret from the shared tmpfs
    volume as its own uid (999). The test runs the healthcheck and starts the app itself (see the next
    test for Compose doing both)."""
    proc = sidecar_stack("up", "-d", "bridge")
    assert proc.returncode == 0, proc.stderr
    bridge = sidecar_stack.container("bridge")
    ct.until(lambda: ct.healthy(bridge), 60, "the bridge's healthcheck to pass")
    proc = sidecar_stack("up", "-d", "app")
    assert proc.returncode == 0, proc.stderr
    status, output = ct.app_output(sidecar_stack)
    assert status == 0, output
    assert output.split() == [str(ct.APP_UID), "compose-sidecar-pw"]


def test_compose_starts_the_app_once_the_bridge_is_healthy(podman: str, sidecar_stack: ct.Compose) -> None:
    """`up` holds the app back until the bridge's healthcheck passes (condition: service_healthy); a
    thread runs the healthcheck each second, as systemd's timer does where there is one."""
    if tuple(int(p) for p in re.findall(r"\d+", podman)[:2]) < (4, 6):
        pytest.skip(f"podman-compose ignores `condition: service_healthy` with podman < 4.6 (here {podman}): "
                    "the app would start at once")
    import threading

    stop = threading.Event()
    healthy: list[bool] = []

    def drive() -> None:  # the app reads the file only if it started after the bridge wrote it
        while not stop.wait(1.0):
            names = ct.podman("ps", "--format", "{{.Names}}",
                              "--filter", f"label=io.podman.compose.project={sidecar_stack.project}",
                              "--filter", "label=com.docker.compose.service=bridge").stdout.split()
            if names and ct.healthy(names[0]):
                healthy.append(True)

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    try:
        proc = sidecar_stack("up", "-d")
    finally:
        stop.set()
        driver.join(timeout=40)
    assert proc.returncode == 0, proc.stderr
    assert healthy, "the bridge never became healthy"
    status, output = ct.app_output(sidecar_stack)
    assert status == 0 and output.split() == [str(ct.APP_UID), "compose-sidecar-pw"], output


def test_init_container_recipe_syncs_before_the_app(standalone: Path, minimal_base: str, openbao: Any,
                                                    tmp_path: Path) -> None:
    """docs/init-container.md's Compose recipe, in an image without Python: `sync` with the standalone
    executable exits 0, then the application's command runs as its uid, reads the secret, and does not
    see the bridge's token; with the secret missing, the application's command never runs."""
    files = ct.doc_recipe_stack(tmp_path, "init-container.md", "secrets-bridge.yaml sync &&", minimal_base)
    env = {"VAULT_ADDR": openbao.address, "VAULT_TOKEN": openbao.root_token,
           "BRIDGE_DIR": str(standalone.parent)}
    ct.put(openbao, "app/db", "compose-oneshot-pw")
    status, output = ct.up_once(files, env)
    openbao.client().secrets.kv.v2.delete_metadata_and_all_versions(path="app/db", mount_point="secret")
    missing_status, missing_output = ct.up_once(files, env)
    assert status == 0, output
    lines = [line for line in output.splitlines() if not line.startswith("{")]  # the bridge's JSON logs
    assert lines == [str(ct.APP_UID), "compose-oneshot-pw", "token:unset"]
    assert openbao.root_token not in output
    assert missing_status == 1
    assert "compose-oneshot-pw" not in missing_output and "token:" not in missing_output


def test_exec_compose_recipe_runs_the_app_through_the_bridge(standalone: Path, minimal_base: str, openbao: Any,
                                                             tmp_path: Path) -> None:
    """docs/exec.md's Compose recipe (entrypoint override), in an image without Python: the app runs
    as the bridge's child once the secret is written, reads it, does not see the token, and its exit
    status ends the container."""
    files = ct.doc_recipe_stack(tmp_path, "exec.md", '"exec", "--"]', minimal_base)
    env = {"VAULT_ADDR": openbao.address, "VAULT_TOKEN": openbao.root_token,
           "BRIDGE_DIR": str(standalone.parent)}
    ct.put(openbao, "app/db", "compose-exec-pw")
    with ct.health_port():  # the shipped config listens on 127.0.0.1:9098, as exec serves /readyz
        status, output = ct.up_once(files, env)
    assert status == 0, output
    lines = [line for line in output.splitlines() if not line.startswith("{")]
    assert lines == [str(ct.APP_UID), "compose-exec-pw", "token:unset"]
    assert openbao.root_token not in output


# --- the standalone executable ---------------------------------------------------------------------

def test_standalone_runs_with_an_empty_environment(standalone: Path, openbao: Any, tmp_path: Path) -> None:
    """Under `env -i` (no PATH, so no Python to find), the standalone executable prints its version, a
    `sync` writes the secret from OpenBao, and `exec` gives it to a shell as a variable, without the token."""
    version = ct.run("env", "-i", str(standalone), "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("secrets-bridge ")
    path = f"standalone/{uuid.uuid4().hex[:8]}"
    ct.put(openbao, path, "standalone-pw")
    output = Path(tempfile.mkdtemp(prefix="sb-standalone-", dir="/dev/shm"))  # a tmpfs, as required
    try:
        config = ct.write_config(tmp_path, path, output_dir=str(output))
        proc = ct.run("env", "-i", f"VAULT_ADDR={openbao.address}", f"VAULT_TOKEN={openbao.root_token}",
                      str(standalone), "--config", str(config), "sync")
        assert proc.returncode == 0, proc.stderr
        assert (output / "db_password").read_text() == "standalone-pw"
        assert openbao.root_token not in proc.stdout + proc.stderr
        with config.open("a") as more:
            more.write(f"env:\n  VAR: {{provider: vault, ref: secret/{path}, key: password}}\n")
        child = 'echo "$VAR"; echo "token:${VAULT_TOKEN:-unset}"'
        proc = ct.run("env", "-i", f"VAULT_ADDR={openbao.address}", f"VAULT_TOKEN={openbao.root_token}",
                      str(standalone), "--config", str(config), "exec", "--", "/bin/sh", "-c", child)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines() == ["standalone-pw", "token:unset"]
    finally:
        shutil.rmtree(output)


#: one entry per built-in provider, each pointed at a closed loopback port (no credential chain can
#: reach further: explicit credentials, no instance metadata), and one the env provider fills
_EVERY_PROVIDER = """\
listen: null
providers:
  vault: {type: vault, address: "http://127.0.0.1:1", auth: {method: token}}
  aws: {type: aws-secretsmanager, region: us-east-1, endpoint_url: "http://127.0.0.1:1"}
  ssm: {type: aws-ssm, region: us-east-1, endpoint_url: "http://127.0.0.1:1"}
  azure: {type: azure-keyvault, vault_url: "https://127.0.0.1:1", authority_host: "https://127.0.0.1:1",
          credential: {method: client_secret, tenant_id: t, client_id: c, client_secret: s}}
  gcp: {type: gcp-secretmanager, project: p, endpoint: "http://127.0.0.1:1"}
  env: {type: env}
secrets:
  from_vault: {provider: vault, ref: secret/x, key: k}
  from_aws: {provider: aws, ref: x}
  from_ssm: {provider: ssm, ref: /x}
  from_azure: {provider: azure, ref: x}
  from_gcp: {provider: gcp, ref: x}
  from_env: {provider: env, ref: GREETING}
"""


def test_standalone_bundles_every_provider(standalone: Path, tmp_path: Path) -> None:
    """Every built-in provider loads in the standalone executable (found through BUILT_IN, its SDK
    bundled): each remote one gets as far as its endpoint, and the env one writes its file."""
    output = Path(tempfile.mkdtemp(prefix="sb-standalone-", dir="/dev/shm"))
    try:
        config = tmp_path / "every.yaml"
        config.write_text(f"output_dir: {output}\n" + _EVERY_PROVIDER)
        proc = ct.run("env", "-i", "GREETING=hello", "VAULT_TOKEN=t", "AWS_ACCESS_KEY_ID=a",
                      "AWS_SECRET_ACCESS_KEY=b", "AWS_EC2_METADATA_DISABLED=true",
                      str(standalone), "--config", str(config), "--log-format", "text", "sync")
        assert proc.returncode == 1, proc.stderr  # the remote ones fail: nothing listens
        assert (output / "from_env").read_text() == "hello"
    finally:
        shutil.rmtree(output)
    failed = {m.group(1): m.group(2) for m in re.finditer(r"secret (from_\w+): .*\((\w+)\); no file yet", proc.stderr)}
    assert failed == dict.fromkeys(["from_vault", "from_aws", "from_ssm", "from_azure", "from_gcp"], "unavailable")


def test_standalone_runs_in_an_image_without_python(standalone: Path, minimal_base: str, openbao: Any,
                                                   tmp_path: Path) -> None:
    """As the Kubernetes recipe does it: the executable's directory copied into a memory volume of a
    Debian minbase container without Python (read-only root, uid 10001, no capabilities), where
    `--version` and a `sync` work."""
    path = f"standalone/{uuid.uuid4().hex[:8]}"
    ct.put(openbao, path, "no-python-pw")
    config = ct.write_config(tmp_path, path)
    script = ("! command -v python3 && ! command -v python && cp -a /dist/. /bridge/"
              " && /bridge/secrets-bridge --version"
              " && /bridge/secrets-bridge --config /etc/secrets-bridge/secrets-bridge.yaml sync"
              " && cat /run/secrets/db_password")
    proc = ct.podman("run", "--rm", "--network", "host", "--read-only", "--cap-drop", "all",
                     "--user", f"{ct.IMAGE_UID}:{ct.IMAGE_UID}",
                     "--tmpfs", "/bridge:rw,exec,size=256m,mode=0755,U",
                     "--tmpfs", "/run/secrets:rw,size=4m,mode=0755,U",
                     "--volume", f"{standalone.parent}:/dist:ro",
                     "--volume", f"{config}:/etc/secrets-bridge/secrets-bridge.yaml:ro",
                     "--env", f"VAULT_ADDR={openbao.address}", "--env", f"VAULT_TOKEN={openbao.root_token}",
                     minimal_base, "sh", "-c", script)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split()[-3:-1] == ["secrets-bridge", ct.project_version()]
    assert proc.stdout.endswith("no-python-pw")
    assert openbao.root_token not in proc.stdout + proc.stderr


def test_standalone_exec_in_an_image_without_python(standalone: Path, minimal_base: str, openbao: Any,
                                                    tmp_path: Path) -> None:
    """As the Kubernetes recipe runs it: the standalone executable, copied into a memory volume of a
    minbase container without Python, runs `exec -- /bin/sh -c 'echo $VAR'`; the child gets the value
    from OpenBao but not the bridge's token, and its exit status (3) is the container's."""
    path = f"standalone/{uuid.uuid4().hex[:8]}"
    ct.put(openbao, path, "exec-env-pw")
    config = tmp_path / "secrets-bridge.yaml"
    config.write_text("output_dir: /run/secrets\nlisten: null\n"
                      "providers:\n  vault: {type: vault, auth: {method: token}}\n"
                      f"env:\n  VAR: {{provider: vault, ref: secret/{path}, key: password}}\n")
    config.chmod(0o644)
    child = "echo \"$VAR\"; echo \"token:${VAULT_TOKEN:-unset}\"; exit 3"
    script = ("cp -a /dist/. /bridge/ && exec /bridge/secrets-bridge"
              " --config /etc/secrets-bridge/secrets-bridge.yaml exec -- /bin/sh -c '" + child + "'")
    proc = ct.podman("run", "--rm", "--network", "host", "--read-only", "--cap-drop", "all",
                     "--user", f"{ct.IMAGE_UID}:{ct.IMAGE_UID}",
                     "--tmpfs", "/bridge:rw,exec,size=256m,mode=0755,U",
                     "--tmpfs", "/run/secrets:rw,size=4m,mode=0755,U",
                     "--volume", f"{standalone.parent}:/dist:ro",
                     "--volume", f"{config}:/etc/secrets-bridge/secrets-bridge.yaml:ro",
                     "--env", f"VAULT_ADDR={openbao.address}", "--env", f"VAULT_TOKEN={openbao.root_token}",
                     minimal_base, "sh", "-c", script)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == ["exec-env-pw", "token:unset"]
    assert openbao.root_token not in proc.stdout + proc.stderr
    assert "exec-env-pw" not in proc.stderr
