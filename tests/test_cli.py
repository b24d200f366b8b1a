"""The CLI as a user runs it: subprocesses against a real OpenBao, scanned for leaks."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.cli import _parser
from bridge.writer.atomic import is_memory_backed
from tests.config_strategies import cli_environments, config_documents, to_yaml
from tests.harness import Bridge
from tests.polling import wait_for
from tests.servers import free_port, venv_binary


@pytest.fixture
def out_dir(tmp_path: Path):
    """An output directory on tmpfs, so the default require_tmpfs: true holds."""
    if not is_memory_backed(Path("/dev/shm")):
        pytest.skip("no tmpfs at /dev/shm")
    d = Path("/dev/shm") / f"sb-cli-{uuid.uuid4().hex}"
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


def _vault_bridge(openbao, config: Path, **kw) -> Bridge:
    """The one harness with Vault's address and token in its environment."""
    return Bridge(config, env={"VAULT_ADDR": openbao.address, "VAULT_TOKEN": openbao.root_token}, **kw)


def _put(openbao, path: str, **data: str) -> int:
    result = openbao.client().secrets.kv.v2.create_or_update_secret(path=path, secret=data, mount_point="secret")
    return int(result["data"]["version"])


def _config(path: Path, out_dir: Path, port: int | None, extra: str = "") -> Path:
    listen = f'"127.0.0.1:{port}"' if port else "null"
    path.write_text(f"""
output_dir: {out_dir}
refresh_interval: 1s
listen: {listen}
providers:
  vault: {{type: vault}}
{extra}""")
    return path


def test_sync_run_rotate_ls_inspect(openbao, out_dir: Path, tmp_path: Path) -> None:
    """The core scenario: sync three Vault secrets, rotate under `run`, pinned stays, ls/inspect, no leaks."""
    app = f"app-{uuid.uuid4().hex[:8]}"
    p1, p2 = f"pw1-{uuid.uuid4().hex}", f"pw2-{uuid.uuid4().hex}"
    _put(openbao, f"{app}/db", username="app", password=p1)
    port = free_port()
    config = _config(tmp_path / "c.yaml", out_dir, port, f"""
secrets:
  db_password: {{provider: vault, ref: secret/{app}/db, key: password, mode: "0400"}}
  db.json: {{provider: vault, ref: secret/{app}/db}}
  db_v1: {{provider: vault, ref: secret/{app}/db, key: password, version: 1, mode: 0440}}
""")
    bridge = _vault_bridge(openbao, config)
    bridge("sync")
    assert (out_dir / "db_password").read_text() == p1
    assert json.loads((out_dir / "db.json").read_text()) == {"password": p1, "username": "app"}
    assert (os.stat(out_dir / "db_password").st_mode & 0o777, os.stat(out_dir / "db_v1").st_mode & 0o777) == (
        0o400, 0o440)

    bridge.start()
    try:
        assert wait_for(lambda: _get(port, "/readyz")[0] == 200)
        _put(openbao, f"{app}/db", username="app", password=p2)
        assert wait_for(lambda: (out_dir / "db_password").read_text() == p2, timeout=8)
        assert json.loads((out_dir / "db.json").read_text())["password"] == p2
        assert (out_dir / "db_v1").read_text() == p1
        metrics = _get(port, "/metrics")[1]
        assert "secrets_bridge_provider_requests_total" in metrics
        bridge.keep(metrics)
    finally:
        assert bridge.stop(timeout=20) == 0

    bridge("--debug", "sync")  # debug output is scanned too
    bridge("--debug", "check")
    table = bridge("ls").stdout
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:]}
    assert rows["db_password"][3] == "2" and rows["db_v1"][3] == "1"
    (doc,) = json.loads(bridge("inspect", "db_v1").stdout)
    assert (doc["version"], doc["pinned_version"], doc["mode"], doc["size"]) == ("1", "1", "0440", len(p1))
    assert bridge("inspect", "nope", check=1).stderr.count("\n") == 1

    state = (out_dir / ".secrets-bridge-state.json").read_text()
    for text in [bridge.output(), state]:
        for secret in (p1, p2, openbao.root_token):
            assert secret not in text


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def test_typo_exits_2_with_one_line(openbao, out_dir: Path, tmp_path: Path) -> None:
    """A config typo exits 2 with one line and no traceback, and writes nothing."""
    config = _config(tmp_path / "c.yaml", out_dir, None, "secrets:\n  a: {provider: vault, ref: secret/x, kee: y}\n")
    for command in ("sync", "run", "check"):
        proc = _vault_bridge(openbao, config)(command, check=2)
        assert proc.stderr.strip() == "secrets-bridge: secrets.a.kee: unknown field"
        assert "Traceback" not in proc.stderr
    assert not out_dir.exists()


def test_sync_partial_failure(openbao, out_dir: Path, tmp_path: Path) -> None:
    """sync exits 1 when a required secret fails and still writes the rest; optional ones don't count."""
    app = f"app-{uuid.uuid4().hex[:8]}"
    _put(openbao, f"{app}/ok", value="fine")
    config = _config(tmp_path / "c.yaml", out_dir, None, f"""
secrets:
  ok: {{provider: vault, ref: secret/{app}/ok, key: value}}
  gone: {{provider: vault, ref: secret/{app}/missing}}
  maybe: {{provider: vault, ref: secret/{app}/missing2, optional: true}}
""")
    proc = _vault_bridge(openbao, config)("sync", check=1)
    assert (out_dir / "ok").read_text() == "fine"
    assert not (out_dir / "gone").exists()
    assert f"secret/{app}/missing" in proc.stderr and "not_found" in proc.stderr


def test_check_writes_nothing(openbao, out_dir: Path, tmp_path: Path) -> None:
    """check resolves every version into a table and writes no file."""
    app = f"app-{uuid.uuid4().hex[:8]}"
    value = f"v-{uuid.uuid4().hex}"
    _put(openbao, f"{app}/a", value=value)
    _put(openbao, f"{app}/a", value=value + "2")
    config = _config(tmp_path / "c.yaml", out_dir, None, f"""
secrets:
  a: {{provider: vault, ref: secret/{app}/a, key: value}}
  b: {{provider: vault, ref: secret/{app}/a, version: 1}}
""")
    proc = _vault_bridge(openbao, config)("check")
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()[1:]}
    assert rows["a"][3:] == ["2", "ok"] and rows["b"][3:] == ["1", "ok"]
    assert value not in proc.stdout + proc.stderr
    assert not out_dir.exists()


def test_ls_without_state(openbao, out_dir: Path, tmp_path: Path) -> None:
    """ls before any sync exits 2 saying what to do."""
    config = _config(tmp_path / "c.yaml", out_dir, None)
    assert "run `secrets-bridge sync` first" in _vault_bridge(openbao, config)("ls", check=2).stderr


def test_disk_output_dir_refused(openbao, tmp_path: Path) -> None:
    """The default require_tmpfs refuses a disk directory with a hint, exit 1."""
    if is_memory_backed(tmp_path):
        pytest.skip("tmp_path is on tmpfs")
    config = _config(tmp_path / "c.yaml", tmp_path / "out", None, "secrets: {}\n")
    proc = _vault_bridge(openbao, config)("sync", check=1)
    assert "mount -t tmpfs" in proc.stderr and proc.stderr.count("\n") == 1


def test_version_flag() -> None:
    """--version prints the version and exits 0."""
    proc = subprocess.run([venv_binary("secrets-bridge"), "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("secrets-bridge ")


def test_on_change_exec_and_sighup_reload(openbao, out_dir: Path, tmp_path: Path) -> None:
    """A change runs the exec hook without the bridge's token; a bad config is rejected, an edited one applied."""
    app = f"app-{uuid.uuid4().hex[:8]}"
    _put(openbao, f"{app}/a", value="one")
    marker = tmp_path / "hook.out"
    hook = tmp_path / "hook.py"
    hook.write_text("import os, sys\nopen(sys.argv[1], 'a').write(os.environ['SECRETS_BRIDGE_CHANGED'] + "
                    "('|TOKEN' if any('TOKEN' in k for k in os.environ) else '') + '\\n')\n")
    base = f"""
secrets:
  a: {{provider: vault, ref: secret/{app}/a, key: value}}
on_change:
  - {{exec: ["{sys.executable}", "{hook}", "{marker}"]}}
"""
    config = _config(tmp_path / "c.yaml", out_dir, None, base)
    bridge = _vault_bridge(openbao, config)
    proc = bridge.start()
    try:
        assert wait_for(lambda: marker.exists() and marker.read_text() == "a\n")
        _config(config, out_dir, None, base + "  - {bogus: 1}\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(1)
        _put(openbao, f"{app}/b", value="two")
        entry_b = f"  b: {{provider: vault, ref: secret/{app}/b, key: value}}\n"
        _config(config, out_dir, None, base.replace("on_change:", entry_b + "on_change:"))  # no SIGHUP: watched
        assert wait_for(lambda: (out_dir / "b").exists() and (out_dir / "b").read_text() == "two")
        assert (out_dir / "a").read_text() == "one"
    finally:
        assert bridge.stop(timeout=20) == 0
    log = bridge.output()
    assert "config reload rejected" in log and "on_change.1.bogus: unknown field" in log
    assert marker.read_text().splitlines() == ["a", "b"]


def test_reload_that_cannot_build_keeps_running(openbao, out_dir: Path, tmp_path: Path) -> None:
    """A config that validates but whose provider cannot be built (AWS without a region) is rejected;
    the running config keeps syncing."""
    app = f"app-{uuid.uuid4().hex[:8]}"
    _put(openbao, f"{app}/a", value="one")
    base = f"secrets:\n  a: {{provider: vault, ref: secret/{app}/a, key: value}}\n"
    config = _config(tmp_path / "c.yaml", out_dir, None, base)
    bridge = _vault_bridge(openbao, config)
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_CONFIG_FILE"):
        bridge.env.pop(name, None)
    bridge.env["AWS_CONFIG_FILE"] = str(tmp_path / "no-aws-config")
    proc = bridge.start()
    try:
        assert wait_for(lambda: (out_dir / "a").exists())
        config.write_text(config.read_text().replace("providers:\n", "providers:\n  aws: {type: aws-secretsmanager}\n"))
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.5)
        _put(openbao, f"{app}/a", value="two")
        assert wait_for(lambda: (out_dir / "a").read_text() == "two")
    finally:
        assert bridge.stop(timeout=20) == 0
    assert "config reload rejected" in bridge.output() and "region" in bridge.output()


def test_configmap_style_updates_are_all_seen(openbao, out_dir: Path, tmp_path: Path) -> None:
    """A config mounted like a ConfigMap (a link into a `..data` folder swapped on update) is reloaded
    on every update, not only the first."""
    app = f"app-{uuid.uuid4().hex[:8]}"
    for name in ("a", "b", "c"):
        _put(openbao, f"{app}/{name}", value=name)
    mount = tmp_path / "configmap"
    mount.mkdir()

    def publish(version: int, names: list[str]) -> None:
        folder = mount / f"..v{version}"
        folder.mkdir()
        secrets = "".join(f"  {n}: {{provider: vault, ref: secret/{app}/{n}, key: value}}\n" for n in names)
        _config(folder / "config.yaml", out_dir, None, "secrets:\n" + secrets)
        (mount / "..data_tmp").symlink_to(folder.name)
        os.replace(mount / "..data_tmp", mount / "..data")
        if not (mount / "config.yaml").is_symlink():
            (mount / "config.yaml").symlink_to("..data/config.yaml")

    publish(1, ["a"])
    bridge = _vault_bridge(openbao, mount / "config.yaml", log=tmp_path / "bridge.log")
    bridge.start()
    try:
        assert wait_for(lambda: (out_dir / "a").exists())
        publish(2, ["a", "b"])
        assert wait_for(lambda: (out_dir / "b").exists())
        publish(3, ["a", "b", "c"])
        assert wait_for(lambda: (out_dir / "c").exists())
    finally:
        assert bridge.stop(timeout=20) == 0


def test_cleanup_on_exit_removes_files(openbao, out_dir: Path, tmp_path: Path) -> None:
    """With cleanup_on_exit, SIGTERM leaves the output directory empty, as Docker does on task stop."""
    app = f"app-{uuid.uuid4().hex[:8]}"
    _put(openbao, f"{app}/a", value="one")
    config = _config(tmp_path / "c.yaml", out_dir, None,
                     f"cleanup_on_exit: true\nsecrets:\n  a: {{provider: vault, ref: secret/{app}/a, key: value}}\n")
    bridge = _vault_bridge(openbao, config)
    bridge.start()
    assert wait_for(lambda: (out_dir / "a").exists())
    assert bridge.stop(timeout=20) == 0
    assert list(out_dir.iterdir()) == []


def test_second_writer_refused(openbao, out_dir: Path, tmp_path: Path) -> None:
    """A `sync` while `run` holds the directory is refused in one line, and the files stay."""
    app = f"app-{uuid.uuid4().hex[:8]}"
    _put(openbao, f"{app}/a", value="one")
    entry = f"secrets:\n  a: {{provider: vault, ref: secret/{app}/a, key: value}}\n"
    bridge = _vault_bridge(openbao, _config(tmp_path / "c.yaml", out_dir, None, entry))
    bridge.start()
    try:
        assert wait_for(lambda: (out_dir / "a").exists())
        refused = bridge("sync", check=1)
        assert "another secrets-bridge is writing" in refused.stderr and refused.stderr.count("\n") == 1
        assert (out_dir / "a").read_text() == "one"
    finally:
        assert bridge.stop(timeout=20) == 0


def test_check_reports_a_missing_key(openbao, out_dir: Path, tmp_path: Path) -> None:
    """check applies `key` as sync would: a key the secret lacks fails the check (exit 1), named."""
    app = f"app-{uuid.uuid4().hex[:8]}"
    _put(openbao, f"{app}/a", value="v")
    config = _config(tmp_path / "c.yaml", out_dir, None,
                     f"secrets:\n  a: {{provider: vault, ref: secret/{app}/a, key: passwrd}}\n")
    proc = _vault_bridge(openbao, config)("check", check=1)
    assert "bad_value" in proc.stdout and "'passwrd'" in proc.stdout


@pytest.mark.skipif(os.getuid() != 0, reason="switching to the app's uid needs root")
def test_app_uid_reads_only_its_files(openbao, out_dir: Path, tmp_path: Path) -> None:
    """An application running as another uid (a container sharing the tmpfs) reads the file given to
    its uid with mode 0400, and not one left to root."""
    app = f"app-{uuid.uuid4().hex[:8]}"
    _put(openbao, f"{app}/a", value="for-the-app")
    config = _config(tmp_path / "c.yaml", out_dir, None, f"""
secrets:
  mine: {{provider: vault, ref: secret/{app}/a, key: value, mode: "0400", uid: 999, gid: 999}}
  tls/root_only: {{provider: vault, ref: secret/{app}/a, key: value, mode: "0400"}}
""")
    _vault_bridge(openbao, config)("sync")

    def read_as_app(name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["cat", str(out_dir / name)], capture_output=True, text=True,
                              user=999, group=999, extra_groups=[], check=False)

    assert read_as_app("mine").stdout == "for-the-app"
    denied = read_as_app("tls/root_only")
    assert denied.returncode != 0 and "Permission denied" in denied.stderr


# --- CLI conventions and fail-closed start (issues 9 and 10), with the `file` provider ---

def _cli(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SECRETS_BRIDGE_")}
    return subprocess.run([venv_binary("secrets-bridge"), *args], env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=60, **kw)


def _local(tmp_path: Path, out_dir: Path, extra: str = "", secrets: str = "  a: {provider: dev, ref: one}\n") -> Path:
    source = tmp_path / "source"
    source.mkdir(exist_ok=True)
    for name in ("one", "two"):
        if not (source / name).exists():
            (source / name).write_text(f"value-{name}")
    config = tmp_path / "c.yaml"
    interval = "" if "refresh_interval" in extra else "refresh_interval: 200ms\n"
    config.write_text(f"output_dir: {out_dir}\n{interval}listen: null\n"
                      f"providers:\n  dev: {{type: file, base_dir: {source}}}\n{extra}secrets:\n{secrets}")
    return config


def test_options_before_or_after_the_command(tmp_path: Path) -> None:
    """--config, --debug and --log-format work before or after the command, and one given before is kept."""
    assert _parser().parse_args(["sync", "--config", "c.yaml", "--debug", "--log-format", "text"]) == \
        _parser().parse_args(["--config", "c.yaml", "--debug", "--log-format", "text", "sync"])
    before = _parser().parse_args(["--config", "c.yaml", "--debug", "--log-format", "json", "inspect", "x"])
    assert (before.config, before.debug, before.log_format, before.names) == ("c.yaml", True, "json", ["x"])
    missing = str(tmp_path / "nope.yaml")
    for args in (["ls", "--config", missing, "--debug"], ["--debug", "ls", "--config", missing]):
        proc = _cli(*args)
        assert proc.returncode == 2 and "Traceback" in proc.stderr and "nope.yaml" in proc.stderr
    assert "Traceback" not in _cli("ls", "--config", missing).stderr


def test_every_command_has_help() -> None:
    """`--help` is written for users at the top and for each command, listing its options and exit statuses."""
    top = _cli("--help")
    assert top.returncode == 0 and "Keep a directory of files" in top.stdout
    assert "The command line:" not in top.stdout and "exit status:" in top.stdout
    for command in ("run", "sync", "check", "ls", "inspect"):
        proc = _cli(command, "--help")
        assert proc.returncode == 0 and proc.stdout.startswith(f"usage: secrets-bridge {command}")
        for option in ("--config", "--debug", "--log-format", "exit status:"):
            assert option in proc.stdout, (command, option)


def test_ls_and_inspect_exit_statuses(out_dir: Path, tmp_path: Path) -> None:
    """ls and inspect exit 2 without state; after a sync, ls 0, inspect 0, an unknown name 1 (README table)."""
    config = str(_local(tmp_path, out_dir))
    assert _cli("--config", config, "ls").returncode == 2
    no_state = _cli("--config", config, "inspect", "a")
    assert no_state.returncode == 2 and "run `secrets-bridge sync` first" in no_state.stderr
    assert _cli("--config", config, "sync").returncode == 0
    assert _cli("--config", config, "ls").returncode == 0
    assert _cli("--config", config, "inspect", "a").returncode == 0
    unknown = _cli("--config", config, "inspect", "b")
    assert unknown.returncode == 1 and unknown.stderr.count("\n") == 1


@pytest.mark.parametrize("command", ["sync", "run"])
def test_refused_disk_output_dir_leaves_no_directory(tmp_path: Path, command: str) -> None:
    """Refusing a disk-backed output_dir (exit 1) creates nothing, not even its missing parents."""
    if is_memory_backed(tmp_path):
        pytest.skip("tmp_path is on tmpfs")
    config = _local(tmp_path, tmp_path / "a" / "b" / "out")
    proc = _cli("--config", str(config), command)
    assert proc.returncode == 1 and "mount -t tmpfs" in proc.stderr and proc.stderr.count("\n") == 1
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(("extra", "env", "field"), [
    ("defaults: {uid: 4294967296}\n", {}, "defaults.uid"),
    ("", {"SECRETS_BRIDGE_DEFAULTS__GID": "99999999999999999999"}, "defaults.gid"),
    ("refresh_interval: 1e400\n", {}, "refresh_interval"),
    ("jitter: .nan\n", {}, "jitter"),
    ("", {"SECRETS_BRIDGE_LISTEN": "[::1]:99999"}, "listen"),
    ("", {"SECRETS_BRIDGE_PROVIDERS": '{"dev": {"type": "file", "token": "hunter2-in-env"'},
     "SECRETS_BRIDGE_PROVIDERS"),
    ("", {"SECRETS_BRIDGE_SECRETS__A__UID": "1" * 5000}, "secrets.a.uid"),
])
def test_bad_values_exit_2_in_one_line(out_dir: Path, tmp_path: Path, extra: str, env: dict[str, str],
                                       field: str) -> None:
    """Out-of-range ids, non-finite numbers, a bad listen and malformed env JSON: exit 2, one line naming the
    field, never `internal error`, never the value; nothing written."""
    config = _local(tmp_path, out_dir, extra)
    for command in ("sync", "check", "run"):
        proc = _cli("--config", str(config), command, env=env)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(f"secrets-bridge: {field}: ") and proc.stderr.count("\n") == 1
        assert "internal error" not in proc.stderr and "hunter2" not in proc.stderr
    assert not out_dir.exists()


def test_empty_config_removes_nothing(out_dir: Path, tmp_path: Path) -> None:
    """An empty config (or only comments) is an error exit 2, and the files of the last sync stay."""
    config = _local(tmp_path, out_dir)
    assert _cli("--config", str(config), "sync").returncode == 0
    for text in ("", "# emptied by a bad deploy\n"):
        config.write_text(text)
        proc = _cli("--config", str(config), "sync", env={"SECRETS_BRIDGE_OUTPUT_DIR": str(out_dir)})
        assert proc.returncode == 2 and "the config file is empty" in proc.stderr
    assert (out_dir / "a").read_text() == "value-one"


def test_reload_with_an_out_of_range_uid_keeps_running(out_dir: Path, tmp_path: Path) -> None:
    """A reload whose uid the OS cannot take is rejected at validation; the running bridge keeps syncing."""
    config = _local(tmp_path, out_dir)
    bridge = Bridge(config, log=tmp_path / "bridge.log")
    bridge.start()
    try:
        assert wait_for(lambda: (out_dir / "a").exists())
        config.write_text(config.read_text().replace("ref: one}", "ref: one, uid: 4294967296}"))
        bridge.signal(signal.SIGHUP)
        time.sleep(1)
        (tmp_path / "source" / "one").write_text("rotated")
        assert wait_for(lambda: (out_dir / "a").read_text() == "rotated")
    finally:
        status = bridge.stop(timeout=20)
    out = bridge.output()
    assert status == 0, out
    assert "config reload rejected" in out and "secrets.a.uid" in out and "internal error" not in out


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def test_log_format(out_dir: Path, tmp_path: Path) -> None:
    """auto is JSON lines when stderr is not a terminal; log_format: text and --log-format override it."""
    config = _local(tmp_path, out_dir)
    records = _json_lines(_cli("--config", str(config), "sync").stderr)
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert any(r["logger"] == "secrets_bridge" and "sync:" in str(r["message"]) for r in records)
    config.write_text("log_format: text\n" + config.read_text())
    text = _cli("--config", str(config), "sync").stderr
    assert " INFO secrets_bridge: sync:" in text and not text.lstrip().startswith("{")
    assert _json_lines(_cli("--config", str(config), "--log-format", "json", "sync").stderr)


def test_log_format_auto_on_a_terminal(out_dir: Path, tmp_path: Path) -> None:
    """auto is text when stderr is a terminal (a person reading)."""
    config = _local(tmp_path, out_dir)
    controller, terminal = os.openpty()
    try:
        proc = subprocess.run([venv_binary("secrets-bridge"), "--config", str(config), "sync"], stderr=terminal,
                              stdout=subprocess.DEVNULL, timeout=60, check=False)
        os.close(terminal)
        printed = b""
        with contextlib.suppress(OSError):  # EIO once the terminal's last writer is gone
            while chunk := os.read(controller, 65536):
                printed += chunk
    finally:
        os.close(controller)
    assert proc.returncode == 0
    assert b" INFO secrets_bridge: sync:" in printed and not printed.lstrip().startswith(b"{")


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_configs_through_the_cli(data: st.DataObject) -> None:
    """Random configs and SECRETS_BRIDGE_* environments through `check` and `sync`: exit 2 in one line, or
    a valid run (0, or 1 with a named failure); never a traceback or `internal error`."""
    with tempfile.TemporaryDirectory() as tmp:
        base, out = Path(tmp) / "source", Path(tmp) / "out"
        base.mkdir()
        for name in ("one", "two"):
            (base / name).write_text(f"value-{name}")
        doc = data.draw(config_documents(base_dir=str(base), output_dir=str(out)))
        env = data.draw(cli_environments)
        (Path(tmp) / "c.yaml").write_text(to_yaml(doc))
        for command in ("check", "sync"):
            proc = _cli("--config", str(Path(tmp) / "c.yaml"), command, env=env)
            assert proc.returncode in (0, 1, 2), proc.stderr
            assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
            if proc.returncode == 2:
                assert proc.stderr.startswith("secrets-bridge: ") and proc.stderr.count("\n") == 1, proc.stderr
            elif command == "sync" and proc.returncode == 0:
                assert all((out / name).exists() for name, entry in doc["secrets"].items()
                           if entry.get("optional") is not True and not env)


def test_reader_that_leaves_early(out_dir: Path, tmp_path: Path) -> None:
    """`ls | head` that closes the pipe at once: no traceback, no `Exception ignored`, no internal error."""
    entries = "".join(f"  s{i}: {{provider: dev, ref: one}}\n" for i in range(50))
    config = str(_local(tmp_path, out_dir, secrets=entries))
    assert _cli("--config", config, "sync").returncode == 0
    bridge = Bridge(Path(config), log=tmp_path / "ls.log")
    proc = bridge.start("ls", stdout=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.close()
    status, err = bridge.wait(60), bridge.output()
    assert status in (0, 1) and "Traceback" not in err and "Exception ignored" not in err, err
    assert "internal error" not in err


def test_control_characters_never_reach_the_terminal(out_dir: Path, tmp_path: Path) -> None:
    """A ref holding an escape sequence and a newline is printed escaped by check and ls, in text logs too."""
    config = _local(tmp_path, out_dir, secrets='  a: {provider: dev, ref: "x\\e[2J\\nFAKE"}\n')
    (tmp_path / "source" / "x\x1b[2J\nFAKE").write_text("value")
    outputs = [_cli("--config", str(config), "check"), _cli("--config", str(config), "--log-format", "text", "sync"),
               _cli("--config", str(config), "ls")]
    assert [p.returncode for p in outputs] == [0, 0, 0], [p.stderr for p in outputs]
    for proc in outputs:
        assert "\x1b" not in proc.stdout + proc.stderr
    assert outputs[0].stdout.count("\n") == 2 and "x\\x1b[2J\\x0aFAKE" in outputs[0].stdout
    assert outputs[2].stdout.count("\n") == 2


def test_audit_events_in_json_logs_and_the_audit_file(openbao, out_dir: Path, tmp_path: Path) -> None:
    """Each changed file is one secret_changed event, on stderr as JSON lines (not a terminal) and
    appended to audit_log (0600); an unchanged sync adds none; no value anywhere."""
    app = f"app-{uuid.uuid4().hex[:8]}"
    p1, p2 = f"pw1-{uuid.uuid4().hex}", f"pw2-{uuid.uuid4().hex}"
    _put(openbao, f"{app}/db", username="app", password=p1)
    audit = tmp_path / "audit" / "events.jsonl"
    audit.parent.mkdir()
    config = _config(tmp_path / "c.yaml", out_dir, None, f"""audit_log: {audit}
secrets:
  db: {{provider: vault, ref: secret/{app}/db, files: {{username: username, password: password}}}}
""")
    bridge = _vault_bridge(openbao, config)
    first = bridge("sync")
    events = [json.loads(line) for line in first.stderr.splitlines() if '"secret_changed"' in line]
    assert sorted(e["file"] for e in events) == ["db/password", "db/username"]
    assert {(e["secret"], e["provider"], e["ref"], e["old_version"], e["new_version"]) for e in events} == {
        ("db", "vault", f"secret/{app}/db", None, "1")}
    assert all(e["generation"] == os.readlink(out_dir / "..data") for e in events)
    assert audit.stat().st_mode & 0o777 == 0o600 and len(audit.read_text().splitlines()) == 2
    bridge("sync")
    assert len(audit.read_text().splitlines()) == 2
    _put(openbao, f"{app}/db", username="app", password=p2)
    bridge("sync")
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(e["file"], e["old_version"], e["new_version"]) for e in lines[2:]] == [("db/password", "1", "2")]
    for text in [bridge.output(), audit.read_text()]:
        assert p1 not in text and p2 not in text and openbao.root_token not in text


def test_check_before_any_sync_warns_of_nothing(out_dir: Path, tmp_path: Path) -> None:
    """`check` with no output_dir yet and no leased secret prints no warning (no "lease store is unreadable")."""
    config = _local(tmp_path, out_dir)
    proc = _cli("--config", str(config), "--log-format", "text", "check")
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" not in proc.stderr and "lease store" not in proc.stderr
    assert not out_dir.exists()


def _summary(stderr: str) -> str:
    (line,) = [line for line in stderr.splitlines() if "sync: " in line and " entries" in line]
    return line[line.index("sync: "):]


def test_sync_and_run_print_one_summary_format(out_dir: Path, tmp_path: Path) -> None:
    """`sync` and `run` print the same summary line, an optional missing secret counted apart from failures."""
    config = _local(tmp_path, out_dir, secrets="  a: {provider: dev, ref: one}\n"
                                                "  b: {provider: dev, ref: absent, optional: true}\n")
    sync = _cli("--config", str(config), "--log-format", "text", "sync")
    assert sync.returncode == 0, sync.stderr
    assert _summary(sync.stderr) == "sync: 2 entries, 0 failed, 1 optional missing"
    bridge = Bridge(config, options=("--log-format", "text"), log=tmp_path / "run.log")
    bridge.start()
    try:
        assert wait_for(lambda: " entries" in bridge.output())
    finally:
        bridge.stop(timeout=20)
    assert _summary(bridge.output()) == _summary(sync.stderr)


def _small_files() -> None:
    """In the child: files over 2,000 bytes cannot be written (EFBIG, not SIGXFSZ)."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))


@pytest.mark.parametrize("command", ["sync", "run"])
def test_a_failed_commit_is_in_the_summary(out_dir: Path, tmp_path: Path, command: str) -> None:
    """When the commit fails, the summary says so (before, `run` said "1 secrets, 0 failed")."""
    config = _local(tmp_path, out_dir)
    (tmp_path / "source" / "one").write_text("x" * 5000)
    bridge = Bridge(config, options=("--log-format", "text"), log=tmp_path / "out.log")
    bridge.start(command, preexec_fn=_small_files)
    try:
        assert wait_for(lambda: " entries" in bridge.output()), bridge.output()
    finally:
        status = bridge.stop(timeout=20)
    line = _summary(bridge.output())
    assert line.startswith("sync: 1 entries, 0 failed, 0 optional missing; commit failed"), line
    if command == "sync":
        assert status == 1


def test_ls_quiet_json_and_template(out_dir: Path, tmp_path: Path) -> None:
    """`ls -q` prints names, `--format json` one object a line, `--format TEMPLATE` fills {{.Field}}
    placeholders (\\t as a tab) with no control character from a value; a bad placeholder exits 2."""
    secrets = "  a: {provider: dev, ref: one}\n  'b\\u001b[31m': {provider: dev, ref: two}\n"
    config = str(_local(tmp_path, out_dir, secrets=secrets))
    if _cli("--config", config, "sync").returncode != 0:
        secrets = "  a: {provider: dev, ref: one}\n  b: {provider: dev, ref: two}\n"  # names refused: plain
        config = str(_local(tmp_path, out_dir, secrets=secrets))
        assert _cli("--config", config, "sync").returncode == 0
    quiet = _cli("--config", config, "ls", "-q")
    assert quiet.returncode == 0 and len(quiet.stdout.splitlines()) == 2 and quiet.stdout.startswith("a\n")
    lines = _cli("--config", config, "ls", "--format", "json").stdout.splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["ref"] for r in records] == ["one", "two"] and records[0]["size"] == len("value-one")
    filled = _cli("--config", config, "ls", "--format", r"{{.Name}}\t{{ .Ref }}:{{.Size}}").stdout
    assert filled.splitlines()[0] == "a\tone:9" and "\x1b" not in filled
    for bad in ("{{.Nope}}", "{{json .}}", "{{.Name | printf}}"):
        proc = _cli("--config", config, "ls", "--format", bad)
        assert proc.returncode == 2 and proc.stderr.startswith("secrets-bridge: --format: ")
        assert proc.stderr.count("\n") == 1 and proc.stdout == ""


def test_inspect_several_names(out_dir: Path, tmp_path: Path) -> None:
    """`inspect a b` prints both in one JSON array; an unknown name among them is one line and exit 1."""
    secrets = "  a: {provider: dev, ref: one}\n  b: {provider: dev, ref: two}\n"
    config = str(_local(tmp_path, out_dir, secrets=secrets))
    assert _cli("--config", config, "sync").returncode == 0
    both = _cli("--config", config, "inspect", "a", "b")
    assert both.returncode == 0 and [r["name"] for r in json.loads(both.stdout)] == ["a", "b"]
    partly = _cli("--config", config, "inspect", "b", "nope")
    assert partly.returncode == 1 and [r["name"] for r in json.loads(partly.stdout)] == ["b"]
    assert partly.stderr.count("\n") == 1 and "'nope'" in partly.stderr


@pytest.mark.parametrize("command", ["sync", "run", "check", "ls", "inspect"])
def test_version_after_a_command(command: str) -> None:
    """`secrets-bridge COMMAND --version` prints the version and exits 0, as `--version` does."""
    proc = _cli(command, "--version")
    assert proc.returncode == 0 and proc.stdout.startswith("secrets-bridge ")

def _memory_limit(megabytes: int):  # type: ignore[no-untyped-def]
    """A preexec_fn capping the child's address space (`ulimit -v`)."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (megabytes << 20, megabytes << 20))

    return limit


def test_oversize_state_and_lease_files_are_refused_in_one_line(out_dir: Path, tmp_path: Path) -> None:
    """A 3 GiB sparse state file and lease store (under a 1 GiB memory limit): `ls` says in one line
    the state file is too large; `sync` warns about both, naming the limit, and still writes."""
    config = str(_local(tmp_path, out_dir))
    assert _cli("--config", config, "sync").returncode == 0
    for name in (".secrets-bridge-state.json", ".secrets-bridge-leases.json"):
        with open(out_dir / name, "ab") as f:
            f.truncate(3 << 30)
    listed = _cli("--config", config, "ls", preexec_fn=_memory_limit(1024))
    assert listed.returncode != 0 and "larger than 64 MiB" in listed.stderr, listed.stderr
    assert listed.stderr.count("\n") == 1 and "internal error" not in listed.stderr
    (tmp_path / "source" / "one").write_text("rotated")
    synced = _cli("--config", config, "sync", preexec_fn=_memory_limit(1024))
    assert synced.returncode == 0, synced.stderr
    assert "lease store is unreadable" in synced.stderr and "state file is unreadable" in synced.stderr
    assert synced.stderr.count("larger than 64 MiB") == 2
    assert (out_dir / "a").read_text() == "rotated"


def test_small_memory_limit_says_what_is_wrong(out_dir: Path, tmp_path: Path) -> None:
    """Under a small `ulimit -v` `run` either runs or stops with one line saying the limit is too
    low, never "internal error" (thread stacks of the default 8 MiB ran out at 300 MB)."""
    config = str(_local(tmp_path, out_dir, extra=f"listen: 127.0.0.1:{free_port()}\n").read_text()
                 .replace("listen: null\n", ""))
    path = tmp_path / "small.yaml"
    path.write_text(config)
    for megabytes in (45, 100, 300):
        bridge = Bridge(path, log=tmp_path / f"run-{megabytes}.log")
        proc = bridge.start(preexec_fn=_memory_limit(megabytes))
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            bridge.stop(timeout=20)
        out = bridge.output()
        if "failed to map segment" in out:  # too small for the interpreter's own modules
            continue
        assert "internal error" not in out and "Traceback" not in out, (megabytes, out[-2000:])
        if proc.returncode != 0:
            assert "the memory limit (ulimit -v" in out, (megabytes, out[-2000:])


def test_sync_fails_while_a_folder_sits_at_a_secrets_name(tmp_path: Path, out_dir: Path) -> None:
    """A folder someone planted at a secret's name: `sync` writes every secret and links the others,
    but exits 1 saying which name has no visible link; once the folder is gone, `sync` links it, 0."""
    config = _local(tmp_path, out_dir, secrets="  a: {provider: dev, ref: one}\n  b: {provider: dev, ref: two}\n")
    (out_dir / "b").mkdir(parents=True)
    (out_dir / "b" / "theirs").write_text("kept")
    bridge = Bridge(config)
    failed = bridge("sync", check=1)
    assert "sync: a secret has no visible link" in failed.stderr
    assert "b in the output directory is a folder" in failed.stderr
    assert "Traceback" not in failed.stderr and (out_dir / "a").read_text() == "value-one"
    assert (out_dir / "b" / "theirs").read_text() == "kept"
    shutil.rmtree(out_dir / "b")
    bridge("sync", check=0)
    assert (out_dir / "b").read_text() == "value-two"
