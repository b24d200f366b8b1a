"""The shipped Dockerfile, Compose file, kustomize base and overlays, and every config and YAML block
of the docs are valid as written, name only objects and flags that exist, and the Compose file's
tmpfs options let the image's user write."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bridge.config.loader import parse_config
from tests.harness import skip_unless_others_reach_the_checkout
from tests.polling import wait_for
from tests.servers import free_port, venv_binary, wait_http

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(p.name for p in (KUBERNETES / "overlays").iterdir() if (p / "kustomization.yaml").exists())
SIDECARS = ["base", *(o for o in OVERLAYS if o != "init-only")]
#: the image's user (Dockerfile USER), which the manifests and the Compose tmpfs must match
IMAGE_UID = 10001
#: the lowest Kubernetes with native sidecars on by default; the docs name it
MIN_KUBERNETES = "1.29.0"
#: a rendered kustomization: its name, its objects, and the file they were written to
Rendered = tuple[str, list[dict[str, Any]], Path]


def _run(*argv: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=120, check=False, **kwargs)


def _cli_accepts(args: list[str]) -> bool:
    """The bridge's CLI parses these arguments: run with the config path pointing nowhere, it stops at
    loading the config instead of printing a usage error (`--help` would hide unknown flags)."""
    args = list(args)
    if "--config" in args:
        args[args.index("--config") + 1] = "/nonexistent/secrets-bridge.yaml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECRETS_BRIDGE_")}
    with tempfile.TemporaryDirectory() as empty:  # no ./secrets-bridge.yaml to find
        proc = subprocess.run([venv_binary("secrets-bridge"), *args], capture_output=True, text=True, cwd=empty,
                              env={**env, "PYTHONPATH": str(ROOT)}, timeout=60, check=False)
    return proc.returncode == 2 and "usage:" not in proc.stderr and "secrets-bridge.yaml" in proc.stderr


# --- the image ---------------------------------------------------------------------------------

def test_dockerfile_lints_clean() -> None:
    """hadolint finds nothing in the Dockerfile, which silences no rule inline."""
    proc = _run(venv_binary("hadolint"), "Dockerfile")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "hadolint ignore" not in (ROOT / "Dockerfile").read_text()


def test_dockerfile_runs_as_the_uid_the_manifests_use() -> None:
    """The image's USER is the uid that the Compose file and the Kubernetes manifests run the bridge as."""
    users = re.findall(r"^USER\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert users == [f"{IMAGE_UID}:{IMAGE_UID}"]


def _lock_module() -> Any:
    spec = importlib.util.spec_from_file_location("lock_requirements", ROOT / "deploy" / "lock_requirements.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_image_requirements_pin_every_runtime_dependency() -> None:
    """deploy/requirements.txt pins every run-time dependency of secrets-bridge[all], each within pyproject's bounds."""
    pins: dict[str, str] = {}
    for line in (ROOT / "deploy" / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep, f"not an exact pin: {line}"
            pins[canonicalize_name(name)] = version
    missing = set(_lock_module().closure()) - set(pins)
    assert not missing, f"run `python deploy/lock_requirements.py > deploy/requirements.txt`: {sorted(missing)}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for text in [*project["dependencies"], *extras["vault"], *extras["aws"], *extras["azure"], *extras["gcp"]]:
        req = Requirement(text)
        assert req.specifier.contains(pins[canonicalize_name(req.name)]), f"{text} vs the pin"


# --- Compose ---------------------------------------------------------------------------------

def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    return data


def test_compose_file_matches_compose_spec() -> None:
    """deploy/compose.yaml validates against the Compose specification's schema."""
    proc = _run(venv_binary("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "deploy/compose.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_app_waits_for_a_ready_bridge() -> None:
    """The app depends on the bridge being healthy, and the bridge's healthcheck asks /readyz."""
    services = _compose()["services"]
    assert services["app"]["depends_on"]["bridge"]["condition"] == "service_healthy"
    assert "/readyz" in " ".join(services["bridge"]["healthcheck"]["test"])


def test_compose_tmpfs_belongs_to_the_bridge_user() -> None:
    """The Compose bridge runs as the image's uid, and the shared tmpfs is mounted owned by that uid and gid."""
    assert _compose()["services"]["bridge"]["user"] == f"{IMAGE_UID}:{IMAGE_UID}"
    options = _tmpfs_options().split(",")
    assert f"uid={IMAGE_UID}" in options and f"gid={IMAGE_UID}" in options and "mode=0755" in options


def test_compose_names_only_what_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bridge's command is accepted by the CLI, and the config file it mounts is shipped and valid."""
    bridge = _compose()["services"]["bridge"]
    assert bridge["environment"]["VAULT_ADDR"].startswith("${VAULT_ADDR:?")  # the config relies on it
    monkeypatch.setenv("VAULT_ADDR", "https://vault.example:8200")
    assert _cli_accepts(bridge["command"])
    config_at = bridge["command"][bridge["command"].index("--config") + 1]
    sources = {m.split(":")[1]: m.split(":")[0] for m in bridge["volumes"]}
    shipped = ROOT / "deploy" / sources[config_at]
    assert parse_config(shipped.read_text(), source=str(shipped)).settings.secrets


def _tmpfs_options() -> str:
    options: str = _compose()["volumes"]["secrets"]["driver_opts"]["o"]
    return options


@contextlib.contextmanager
def _tmpfs(options: str) -> Iterator[Path]:
    where = Path(tempfile.mkdtemp(prefix="compose-tmpfs-"))
    proc = _run("mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where))
    if proc.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield where
    finally:
        _run("umount", str(where))
        where.rmdir()


def _bridge_env(mountpoint: Path, openbao: Any) -> dict[str, str]:
    """The environment Compose gives the bridge, with the tmpfs mounted at `mountpoint` instead."""
    return {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1",
            "HOME": "/nonexistent", "VAULT_ADDR": openbao.address, "VAULT_TOKEN": openbao.root_token,
            "SECRETS_BRIDGE_OUTPUT_DIR": str(mountpoint)}


#: Runs the bridge CLI as uid:gid 10001. The switch happens inside Python, after the interpreter and
#: every module the bridge needs are loaded, because the interpreter may live where only root can
#: read (a pyenv under /root); a container starts as that uid from the first instruction instead.
_AS_IMAGE_USER = """
import os, sys
import bridge.cli, bridge.runtime.runner, bridge.runtime.server
import providers.vault, providers.vault_auth, hvac, bridge.runtime.watch
import encodings.idna, http.client, json, logging.handlers, ssl, urllib.request
import bridge.engine.cycle, concurrent.futures.thread, pydantic_settings  # loaded on demand, for these runs
os.setgroups([]); os.setgid(int(sys.argv[1])); os.setuid(int(sys.argv[1]))
sys.exit(bridge.cli.main(sys.argv[2:]))
"""


def _bridge_argv(command: str) -> list[str]:
    """The Compose bridge's command as uid 10001 (its last word replaced by `command`), with the shipped config."""
    skip_unless_others_reach_the_checkout(IMAGE_UID)
    args = [a.replace("/etc/secrets-bridge/secrets-bridge.yaml", str(ROOT / "deploy" / "secrets-bridge.yaml"))
            for a in _compose()["services"]["bridge"]["command"]]
    return [sys.executable, "-c", _AS_IMAGE_USER, str(IMAGE_UID), *args[:-1], command]


def _put_db_password(openbao: Any) -> None:
    openbao.client().secrets.kv.v2.create_or_update_secret(
        path="app/db", secret={"password": "compose-pw"}, mount_point="secret")


@pytest.mark.skipif(os.getuid() != 0, reason="mounting a tmpfs and switching uid need root")
def test_compose_tmpfs_options_let_the_image_user_write(openbao: Any) -> None:
    """With the Compose volume's tmpfs options, the bridge as uid 10001 syncs, and another uid can read the file."""
    _put_db_password(openbao)
    with _tmpfs(_tmpfs_options()) as mountpoint:
        proc = _run(*_bridge_argv("sync"), env=_bridge_env(mountpoint, openbao))
        assert proc.returncode == 0, proc.stderr
        target = mountpoint / "db_password"
        assert target.resolve().stat().st_uid == IMAGE_UID
        postgres = _run("cat", str(target), user=999, group=999, extra_groups=[])  # the app's own user
        assert postgres.stdout == "compose-pw"


@pytest.mark.skipif(os.getuid() != 0, reason="mounting a tmpfs and switching uid need root")
def test_root_owned_tmpfs_is_not_writable_by_the_image_user(openbao: Any) -> None:
    """Without uid/gid options (the tmpfs root-owned, as before), the same sync as uid 10001 fails."""
    _put_db_password(openbao)
    without_owner = ",".join(o for o in _tmpfs_options().split(",") if not o.startswith(("uid=", "gid=")))
    with _tmpfs(without_owner) as mountpoint:
        proc = _run(*_bridge_argv("sync"), env=_bridge_env(mountpoint, openbao))
        assert proc.returncode != 0
        assert "Permission denied" in proc.stderr
        assert not (mountpoint / "db_password").exists()


@pytest.mark.skipif(os.getuid() != 0, reason="mounting a tmpfs and switching uid need root")
def test_compose_healthcheck_passes_once_the_bridge_is_ready(openbao: Any) -> None:
    """The Compose healthcheck command exits 0 against the running bridge once it wrote its secrets."""
    _put_db_password(openbao)
    port = free_port()
    test = _compose()["services"]["bridge"]["healthcheck"]["test"]
    assert test[0] == "CMD" and ":9098/" in test[-1]
    assert test[1] == "python"  # the image's interpreter; here, the one running the tests
    check = [sys.executable, *test[2:-1], test[-1].replace(":9098/", f":{port}/")]
    with _tmpfs(_tmpfs_options()) as mountpoint:
        env = {**_bridge_env(mountpoint, openbao), "SECRETS_BRIDGE_LISTEN": f"127.0.0.1:{port}"}
        bridge = subprocess.Popen(_bridge_argv("run"), env=env, cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", proc=bridge)
            # a wait, not an assertion: /readyz is 503 until the first commit
            wait_for(lambda: _run(*check).returncode == 0 or bridge.poll() is not None, 30, step=0.1)
            assert _run(*check).returncode == 0
            assert (mountpoint / "db_password").read_text() == "compose-pw"
        finally:
            bridge.terminate()
            bridge.wait(timeout=20)


# --- Kubernetes ------------------------------------------------------------------------------

def _render(name: str) -> list[dict[str, Any]]:
    path = KUBERNETES / "base" if name == "base" else KUBERNETES / "overlays" / name
    proc = _run("kubectl", "kustomize", str(path))
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}"
    return found[0]


def _bridge(pod: dict[str, Any]) -> dict[str, Any]:
    bridge: dict[str, Any] = next(c for c in pod["initContainers"] if c["name"] == "secrets-bridge")
    return bridge


@pytest.fixture(scope="module", params=["base", *OVERLAYS])
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """One kustomization rendered with `kubectl kustomize`, and the file it rendered to."""
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl is needed to render the kustomizations")
    docs = _render(request.param)
    out = tmp_path_factory.mktemp("kustomize") / f"{request.param}.yaml"
    out.write_text(yaml.safe_dump_all(docs))
    return request.param, docs, out


@pytest.mark.parametrize("version", ["default", MIN_KUBERNETES])
def test_kustomization_validates_strictly(rendered: Rendered, version: str) -> None:
    """The rendered base or overlay validates strictly against the API schemas (default and oldest supported)."""
    _, _, out = rendered
    pinned = [] if version == "default" else ["-k", version]
    proc = _run(venv_binary("kubernetes-validate"), "--strict", *pinned, str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Couldn't find schema" not in proc.stdout + proc.stderr


def test_kustomization_names_only_what_exists(rendered: Rendered) -> None:
    """Service account, ConfigMaps, volumes and the config file the bridge reads all exist in the render."""
    _, docs, _ = rendered
    pod = _one(docs, "Deployment")["spec"]["template"]["spec"]
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("ServiceAccount", pod["serviceAccountName"]) in names
    volumes = {v["name"]: v for v in pod["volumes"]}
    for volume in volumes.values():
        if "configMap" in volume:
            assert ("ConfigMap", volume["configMap"]["name"]) in names
    for container in pod["initContainers"] + pod["containers"]:
        assert {m["name"] for m in container.get("volumeMounts", [])} <= set(volumes)
    bridge = _bridge(pod)
    assert _cli_accepts(bridge["args"])
    config_at = Path(bridge["args"][bridge["args"].index("--config") + 1])
    mount = next(m for m in bridge["volumeMounts"] if Path(m["mountPath"]) == config_at.parent)
    config_map = _one(docs, "ConfigMap")
    assert volumes[mount["name"]]["configMap"]["name"] == config_map["metadata"]["name"]
    assert config_at.name in config_map["data"]


def test_kustomization_bridge_config_is_valid(rendered: Rendered) -> None:
    """The rendered ConfigMap's bridge config passes the bridge's validation and writes to the memory volume."""
    name, docs, _ = rendered
    config_map = _one(docs, "ConfigMap")
    (text,) = config_map["data"].values()
    settings = parse_config(text, source=f"{name}:ConfigMap").settings
    assert settings.secrets
    pod = _one(docs, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mount = next(m for m in _bridge(pod)["volumeMounts"] if Path(m["mountPath"]) == settings.output_dir)
    assert volumes[mount["name"]]["emptyDir"]["medium"] == "Memory"
    assert settings.require_tmpfs


def test_kustomization_locks_the_bridge_down(rendered: Rendered) -> None:
    """The bridge runs as the image's non-root uid, read-only root, no capabilities, RuntimeDefault seccomp."""
    _, docs, _ = rendered
    pod = _one(docs, "Deployment")["spec"]["template"]["spec"]
    context = _bridge(pod)["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] == IMAGE_UID
    assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True


@pytest.mark.parametrize("name", SIDECARS)
def test_sidecar_is_native_with_probes(name: str) -> None:
    """Base and identity overlays run a native sidecar: readiness on /readyz, liveness on /healthz, port 9098."""
    docs = _render(name)
    pod = _one(docs, "Deployment")["spec"]["template"]["spec"]
    bridge = _bridge(pod)
    assert bridge["restartPolicy"] == "Always"
    assert bridge["args"][-1] == "run"
    ports = {p["name"]: p["containerPort"] for p in bridge["ports"]}
    probes = {kind: (bridge[kind]["httpGet"]["path"], ports[bridge[kind]["httpGet"]["port"]])
              for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes == {"startupProbe": ("/readyz", 9098), "readinessProbe": ("/readyz", 9098),
                      "livenessProbe": ("/healthz", 9098)}
    (text,) = _one(docs, "ConfigMap")["data"].values()
    assert parse_config(text).settings.listen == "0.0.0.0:9098"


@pytest.mark.skipif(os.getuid() != 0, reason="mounting a tmpfs and switching uid need root")
def test_base_pod_app_reads_through_fs_group() -> None:
    """The base pod as kubelet sets it up: the bridge (its uid, env and config) syncs into an fsGroup
    emptyDir, the app's uid reads the file through the fsGroup, and a uid outside the group cannot."""
    docs = _render("base")
    pod = _one(docs, "Deployment")["spec"]["template"]["spec"]
    bridge, app = _bridge(pod), pod["containers"][0]
    fs_group = pod["securityContext"]["fsGroup"]
    # kubelet's memory emptyDir with fsGroup: a tmpfs, group fsGroup, group-writable, setgid
    with tempfile.TemporaryDirectory() as etc, _tmpfs(f"size=4m,mode=2777,gid={fs_group}") as emptydir:
        Path(etc).chmod(0o755)  # the ConfigMap volume, readable by the bridge's uid
        config = Path(etc) / "secrets-bridge.yaml"
        config.write_text(next(iter(_one(docs, "ConfigMap")["data"].values())))
        args = [str(config) if a.startswith("/etc/secrets-bridge/") else a for a in bridge["args"]]
        env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1",
               "SECRETS_BRIDGE_OUTPUT_DIR": str(emptydir), **{e["name"]: e["value"] for e in bridge["env"]}}
        uid = bridge["securityContext"]["runAsUser"]
        skip_unless_others_reach_the_checkout(uid)
        proc = _run(sys.executable, "-c", _AS_IMAGE_USER, str(uid), *args[:-1], "sync", env=env)
        assert proc.returncode == 0, proc.stderr
        target = str(emptydir / "db_password")
        app_uid, app_gid = app["securityContext"]["runAsUser"], app["securityContext"]["runAsGroup"]
        as_app = _run("cat", target, user=app_uid, group=app_gid, extra_groups=[fs_group])
        assert as_app.returncode == 0 and as_app.stdout == bridge["env"][0]["value"]
        outsider = _run("cat", target, user=app_uid, group=app_gid, extra_groups=[])
        assert outsider.returncode != 0 and "Permission denied" in outsider.stderr


def test_init_only_overlay_syncs_once_without_a_sidecar() -> None:
    """init-only runs the bridge as a plain init container: `sync`, no restartPolicy, no probes."""
    pod = _one(_render("init-only"), "Deployment")["spec"]["template"]["spec"]
    bridge = _bridge(pod)
    assert bridge["args"][-1] == "sync"
    assert not {"restartPolicy", "startupProbe", "readinessProbe", "livenessProbe"} & set(bridge)
    assert all(c["name"] != "secrets-bridge" for c in pod["containers"])


def test_vault_overlay_logs_in_with_a_projected_token() -> None:
    """vault-kubernetes-auth: Kubernetes auth reads the projected token (audience vault) mounted for the bridge."""
    docs = _render("vault-kubernetes-auth")
    pod = _one(docs, "Deployment")["spec"]["template"]["spec"]
    (text,) = _one(docs, "ConfigMap")["data"].values()
    (vault,) = parse_config(text).providers.values()
    auth = vault[1].auth  # type: ignore[attr-defined]
    assert auth.method == "kubernetes" and auth.role
    mount = next(m for m in _bridge(pod)["volumeMounts"] if Path(m["mountPath"]) == auth.jwt_file.parent)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    (source,) = volume["projected"]["sources"]
    assert source["serviceAccountToken"]["path"] == auth.jwt_file.name
    assert source["serviceAccountToken"]["audience"] == "vault"


def test_aws_overlay_uses_irsa() -> None:
    """aws-irsa: the IRSA role annotation on the service account, a region, and aws-secretsmanager in the config."""
    docs = _render("aws-irsa")
    annotations = _one(docs, "ServiceAccount")["metadata"]["annotations"]
    assert annotations["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    env = {e["name"]: e.get("value") for e in _bridge(_one(docs, "Deployment")["spec"]["template"]["spec"])["env"]}
    assert env["AWS_REGION"]
    assert "DEMO_DB_PASSWORD" not in env
    (text,) = _one(docs, "ConfigMap")["data"].values()
    assert {s["type"] for s in parse_config(text).settings.providers.values()} == {"aws-secretsmanager"}


def test_aws_ssm_overlay_uses_irsa() -> None:
    """aws-ssm-irsa: the aws-irsa overlay's role annotation and region, with aws-ssm in the config."""
    docs = _render("aws-ssm-irsa")
    annotations = _one(docs, "ServiceAccount")["metadata"]["annotations"]
    assert annotations["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    env = {e["name"]: e.get("value") for e in _bridge(_one(docs, "Deployment")["spec"]["template"]["spec"])["env"]}
    assert env["AWS_REGION"] and "DEMO_DB_PASSWORD" not in env
    (text,) = _one(docs, "ConfigMap")["data"].values()
    assert {s["type"] for s in parse_config(text).settings.providers.values()} == {"aws-ssm"}


def test_azure_overlay_uses_workload_identity() -> None:
    """azure-workload-identity: client-id annotation, the pod label the webhook needs, credential workload_identity."""
    docs = _render("azure-workload-identity")
    assert _one(docs, "ServiceAccount")["metadata"]["annotations"]["azure.workload.identity/client-id"]
    deployment = _one(docs, "Deployment")
    assert deployment["spec"]["template"]["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert "azure.workload.identity/use" not in deployment["spec"]["selector"]["matchLabels"]
    (text,) = _one(docs, "ConfigMap")["data"].values()
    (azure,) = parse_config(text).providers.values()
    assert azure[1].credential.method == "workload_identity"  # type: ignore[attr-defined]


def test_gke_overlay_uses_workload_identity() -> None:
    """gke-workload-identity: the Google service account annotation, a Workload Identity node pool, and
    gcp-secretmanager in the config with no credentials file (the metadata server answers)."""
    docs = _render("gke-workload-identity")
    annotations = _one(docs, "ServiceAccount")["metadata"]["annotations"]
    assert annotations["iam.gke.io/gcp-service-account"].endswith(".iam.gserviceaccount.com")
    pod = _one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"]["iam.gke.io/gke-metadata-server-enabled"] == "true"
    assert "DEMO_DB_PASSWORD" not in {e["name"] for e in _bridge(pod).get("env", [])}
    (text,) = _one(docs, "ConfigMap")["data"].values()
    (gcp,) = parse_config(text).providers.values()
    assert gcp[1].type == "gcp-secretmanager" and gcp[1].credentials_file is None  # type: ignore[attr-defined]


# --- configs and YAML blocks of the docs -------------------------------------------------------
#
# A docs YAML block preceded by the line `<!-- test: same as PATH -->` is that shipped file, byte for
# byte (a kustomize patch is not a whole object to validate on its own).

_BLOCK = re.compile(r"(?:<!-- test: (.*?) -->\n)?```yaml\n(.*?)```", re.S)


def _doc_blocks() -> list[tuple[str, str, str]]:
    """(where, text, marker) of every YAML block in README.md and docs/."""
    found = []
    for doc in sorted(ROOT.glob("*.md")) + sorted((ROOT / "docs").glob("*.md")):
        for i, match in enumerate(_BLOCK.finditer(doc.read_text())):
            found.append((f"{doc.relative_to(ROOT)}#{i}", match.group(2), match.group(1) or ""))
    return found


def _is_bridge_config(text: str) -> bool:
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError:
        return "secrets:" in text  # let the bridge's parser say what is wrong
    return len(docs) == 1 and isinstance(docs[0], dict) and "secrets" in docs[0] \
        and not {"services", "apiVersion"} & set(docs[0])


def _configs() -> list[tuple[str, str]]:
    found = [(str(p.relative_to(ROOT)), p.read_text()) for p in sorted((ROOT / "examples").glob("*.yaml"))]
    for path in sorted(KUBERNETES.rglob("secrets-bridge.yaml")):
        found.append((str(path.relative_to(ROOT)), path.read_text()))
    found += [(where, text) for where, text, _ in _doc_blocks() if _is_bridge_config(text)]
    return found


@pytest.mark.parametrize(("where", "text"), _configs(), ids=[w for w, _ in _configs()])
def test_example_configs_are_valid(where: str, text: str) -> None:
    """Each example config, kustomize config and bridge config in the docs passes the bridge's own validation."""
    config = parse_config(text, source=where)
    assert config.settings.secrets


def _bridge_commands(node: Any) -> Iterator[list[str]]:
    """The args (Kubernetes) or command (Compose) of every container or service running the bridge's image."""
    if isinstance(node, dict):
        if str(node.get("image", "")).startswith(("secrets-bridge", "${BRIDGE_IMAGE")):
            argv = node.get("args", node.get("command"))
            if isinstance(argv, list):
                yield [str(a) for a in argv]
        for value in node.values():
            yield from _bridge_commands(value)
    elif isinstance(node, list):
        for item in node:
            yield from _bridge_commands(item)


def test_bridge_commands_are_found_and_checked() -> None:
    """The docs check finds a bridge container's args, and the CLI refuses a flag that does not exist."""
    block = yaml.safe_load("containers: [{name: b, image: secrets-bridge:0.1.0, args: [sync, --migrate]}]")
    (argv,) = _bridge_commands(block)
    assert argv == ["sync", "--migrate"] and not _cli_accepts(argv)


@pytest.mark.parametrize(("where", "text", "marker"), _doc_blocks(), ids=[w for w, _, _ in _doc_blocks()])
def test_doc_yaml_blocks_are_valid(where: str, text: str, marker: str, tmp_path: Path) -> None:
    """Every docs YAML block parses; Compose files match the Compose spec, Kubernetes objects validate strictly."""
    assert marker == "" or marker.startswith("same as "), f"{where}: unknown marker {marker!r}"
    if marker.startswith("same as "):
        assert text == (ROOT / marker.removeprefix("same as ")).read_text(), f"{where} differs from {marker}"
        return
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    assert docs, f"{where} is empty"
    for argv in _bridge_commands(docs):
        assert _cli_accepts(argv), f"{where}: the CLI refuses {argv}"
    out = tmp_path / "block.yaml"
    if isinstance(docs[0], dict) and "services" in docs[0]:
        out.write_text(text)
        proc = _run(venv_binary("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(out))
        assert proc.returncode == 0, proc.stdout + proc.stderr
    objects = [d for d in docs if isinstance(d, dict) and {"apiVersion", "kind", "metadata"} <= set(d)]
    core = [d for d in objects if "." not in d["apiVersion"].split("/")[0]]  # v1, apps/v1: not a CRD group
    if core:
        out.write_text(yaml.safe_dump_all(core))
        proc = _run(venv_binary("kubernetes-validate"), "--strict", str(out))
        assert proc.returncode == 0, proc.stdout + proc.stderr
