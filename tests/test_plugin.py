"""A provider shipped as a separate pip package (tests/plugin): installed beside the bridge, it is
found through its entry point and works end to end, with no edit in bridge/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.harness import Bridge

PLUGIN = Path(__file__).parent / "plugin"


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin package installed by pip into a folder of its own (put on PYTHONPATH)."""
    target = tmp_path_factory.mktemp("plugin-site")
    build = tmp_path_factory.mktemp("plugin-build")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--target", str(target), str(PLUGIN)],
                   check=True, capture_output=True, env={**os.environ, "TMPDIR": str(build)})
    return target


def _run(plugin_path: Path, tmp_path: Path, config: str, *args: str, token: str = "let-me-in"):
    (tmp_path / "c.yaml").write_text(config)
    bridge = Bridge(tmp_path / "c.yaml", env={"PYTHONPATH": str(plugin_path), "EXAMPLE_MEMORY_TOKEN": token})
    return bridge(*args, check=None)


def _config(tmp_path: Path, out: Path, secrets: str) -> str:
    store = tmp_path / "store.json"
    store.write_text(json.dumps({"app/db": ["first-password", "second-password"]}))
    return (f"output_dir: {out}\nrequire_tmpfs: false\nlisten: null\n"
            f"providers:\n  mem: {{type: example-memory, path: {store}}}\n  env: {{type: env}}\n"
            f"secrets:\n{secrets}")


def test_a_pip_installed_provider_syncs_with_its_declared_capabilities(plugin_path: Path, tmp_path: Path) -> None:
    """`type: example-memory` from the plugin's entry point: latest and `previous` written, ls and
    check work, nothing printed holds a value or its credential."""
    out = tmp_path / f"out-{uuid.uuid4().hex}"
    config = _config(tmp_path, out, "  db: {provider: mem, ref: app/db}\n"
                                    "  db.old: {provider: mem, ref: app/db, version: previous}\n")
    runs = [_run(plugin_path, tmp_path, config, cmd) for cmd in ("sync", "check", "ls")]
    assert [r.returncode for r in runs] == [0, 0, 0], [r.stderr for r in runs]
    assert (out / "db").read_text() == "second-password" and (out / "db.old").read_text() == "first-password"
    printed = "".join(r.stdout + r.stderr for r in runs)
    assert "app/db" in printed
    assert "password" not in printed and "let-me-in" not in printed


def test_a_pip_installed_providers_credential_is_never_written_by_env(plugin_path: Path, tmp_path: Path) -> None:
    """The plugin's declared `credential_env` is one of the bridge's own: the env provider refuses it."""
    out = tmp_path / f"out-{uuid.uuid4().hex}"
    config = _config(tmp_path, out, "  db: {provider: mem, ref: app/db}\n"
                                    "  stolen: {provider: env, ref: EXAMPLE_MEMORY_TOKEN}\n")
    proc = _run(plugin_path, tmp_path, config, "sync")
    assert proc.returncode == 1 and (out / "db").exists() and not (out / "stolen").exists()
    assert "EXAMPLE_MEMORY_TOKEN" in proc.stderr and "let-me-in" not in proc.stdout + proc.stderr


def test_capabilities_a_plugin_does_not_declare_are_config_errors(plugin_path: Path, tmp_path: Path) -> None:
    """`params` on a provider without `capabilities.params` is refused with one line, exit 2; an
    unknown type lists the plugin's among the known ones."""
    out = tmp_path / f"out-{uuid.uuid4().hex}"
    proc = _run(plugin_path, tmp_path, _config(tmp_path, out, "  db: {provider: mem, ref: app/db, params: {a: 1}}\n"),
                "check")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "takes no params" in proc.stderr
    unknown = _run(plugin_path, tmp_path, "providers: {x: {type: nope}}\nsecrets: {}\n", "check")
    assert unknown.returncode == 2 and "example-memory" in unknown.stderr
