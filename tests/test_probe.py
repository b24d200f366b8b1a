"""Found by probing the bridge as an attacker and as an unlucky operator would: each test ran the
real `secrets-bridge` process against the `file` provider and failed before its fix."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from bridge.config.fields import LEASE_FILE, STATE_FILE
from bridge.writer.atomic import is_memory_backed
from tests.harness import Bridge, vault_env
from tests.polling import wait_for
from tests.servers import free_port, venv_binary

SECRET = "S3CRET-probe-value"


@pytest.fixture
def out_dir():
    """An output directory on tmpfs, so the default require_tmpfs: true holds."""
    if not is_memory_backed(Path("/dev/shm")):
        pytest.skip("no tmpfs at /dev/shm")
    d = Path("/dev/shm") / f"sb-probe-{uuid.uuid4().hex}"
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


def _config(tmp_path: Path, out_dir: Path, secrets: str, sources: dict[str, str]) -> Path:
    source = tmp_path / "source"
    source.mkdir(exist_ok=True)
    for name, text in sources.items():
        (source / name).write_text(text)
    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: {out_dir}\nlisten: null\nlog_format: text\n"
                      f"providers:\n  dev: {{type: file, base_dir: {source}}}\nsecrets:\n{secrets}")
    return config


def test_star_keys_that_clash_as_file_and_folder_fail_only_their_entry(tmp_path: Path, out_dir: Path) -> None:
    """`files: "*"` with keys "b" and "b/c" fails that entry alone; the other entries are still written."""
    config = _config(tmp_path, out_dir, "  star: {provider: dev, ref: star.json, files: '*'}\n"
                                        "  other: {provider: dev, ref: plain}\n",
                     {"star.json": json.dumps({"b": "1", "b/c": "2"}), "plain": "plain-value"})
    proc = Bridge(config)("sync", check=None)
    assert proc.returncode == 1, proc.stderr
    assert (out_dir / "other").read_text() == "plain-value"
    assert "'b/c'" in proc.stderr and "cannot commit" not in proc.stderr
    assert not (out_dir / "star").exists()


def test_template_error_never_repeats_a_key_taken_from_a_value(tmp_path: Path, out_dir: Path) -> None:
    """A template looking up a key named by a secret value fails without that value in the log or state."""
    template = "{{ db[db.password] }} {{ db.password|attr(db.user) }}"
    config = _config(tmp_path, out_dir, f"  t.txt:\n    template: '{template}'\n"
                                        "    values: {db: {provider: dev, ref: db.json}}\n",
                     {"db.json": json.dumps({"password": SECRET, "user": SECRET + "-user"})})
    proc = Bridge(config)("sync", check=None)
    assert proc.returncode == 1 and "t.txt" in proc.stderr and "missing" in proc.stderr, proc.stderr
    ls = Bridge(config)("inspect", "t.txt", check=None)
    for text in (proc.stdout, proc.stderr, ls.stdout, ls.stderr, (out_dir / STATE_FILE).read_text()):
        assert SECRET not in text


def test_template_missing_key_written_in_it_is_still_named(tmp_path: Path, out_dir: Path) -> None:
    """A missing key written in the template itself is named in the error, as issue 7 asks."""
    config = _config(tmp_path, out_dir, "  t.txt:\n    template: 'x={{ db.nokey }}'\n"
                                        "    values: {db: {provider: dev, ref: db.json}}\n",
                     {"db.json": json.dumps({"password": SECRET})})
    proc = Bridge(config)("sync", check=None)
    assert proc.returncode == 1 and "'nokey'" in proc.stderr, proc.stderr


@pytest.mark.parametrize("statement", ['{% include "x" %}', '{% import "x" as y %}', '{% extends "x" %}'])
def test_template_loading_another_template_is_a_config_error(tmp_path: Path, out_dir: Path, statement: str) -> None:
    """include/import/extends have nothing to load: a config error (exit 2), not a render failure later."""
    config = _config(tmp_path, out_dir, f"  t.txt:\n    template: '{statement}'\n"
                                        "    values: {db: {provider: dev, ref: db.json}}\n", {"db.json": "{}"})
    proc = Bridge(config)("sync", check=None)
    assert proc.returncode == 2 and "secrets.t.txt.template" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def _plant_lease(out_dir: Path, **fields: object) -> None:
    record = {"value": base64.b64encode(b"PLANTED").decode(), "version": "1", "content_type": None,
              "expires_at": 9e9, "lease_id": None, "lease_seconds": None, "renewable": False,
              "obtained_at": None, "issued_at": 0, "asked_seconds": None, **fields}
    out_dir.mkdir(exist_ok=True)
    key = json.dumps(["dev", "plain", None, None, None])
    (out_dir / LEASE_FILE).write_text(json.dumps({"leases": {key: record}}))


@pytest.mark.parametrize("fields", [{"value": "!!not base64"}, {"expires_at": "soon"}, {"issued_at": None},
                                    {"renewable": "yes"}, {"lease_id": 7}])
def test_an_edited_lease_store_does_not_stop_the_bridge(tmp_path: Path, out_dir: Path, fields: dict) -> None:
    """A lease store with a field of the wrong type is ignored with a warning, never `internal error`."""
    config = _config(tmp_path, out_dir, "  other: {provider: dev, ref: plain}\n", {"plain": "plain-value"})
    _plant_lease(out_dir, **fields)
    proc = Bridge(config)("sync", check=None)
    assert proc.returncode == 0 and "internal error" not in proc.stderr, proc.stderr
    assert (out_dir / "other").read_text() == "plain-value"


def test_a_lease_record_never_replaces_a_polled_value(tmp_path: Path, out_dir: Path) -> None:
    """A record in the lease store for a unit that is neither leased nor issued is not resumed."""
    config = _config(tmp_path, out_dir, "  other: {provider: dev, ref: plain}\n", {"plain": "plain-value"})
    _plant_lease(out_dir)
    proc = Bridge(config)("sync", check=None)
    assert proc.returncode == 0, proc.stderr
    assert (out_dir / "other").read_text() == "plain-value"


@pytest.mark.parametrize("name", [LEASE_FILE, STATE_FILE])
def test_a_fifo_planted_as_a_bridge_file_hangs_nothing(tmp_path: Path, out_dir: Path, name: str) -> None:
    """A FIFO under the state or lease file's name neither hangs `sync` nor `ls` (open blocked before)."""
    config = _config(tmp_path, out_dir, "  other: {provider: dev, ref: plain}\n", {"plain": "plain-value"})
    out_dir.mkdir()
    os.mkfifo(out_dir / name)
    if name == STATE_FILE:
        assert Bridge(config)("ls", check=None).returncode == 2
    proc = Bridge(config)("sync", check=None)
    assert proc.returncode == 0, proc.stderr
    assert (out_dir / "other").read_text() == "plain-value"


def _readyz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def _run(config: Path, env: dict[str, str] | None = None) -> Bridge:
    """`run` on `config` through the one harness."""
    bridge = Bridge(config, env=env)
    bridge.start()
    return bridge


def _stop(bridge: Bridge) -> str:
    """SIGTERM; it must exit 0 within 20 s. Everything it printed."""
    status = bridge.stop(timeout=20)
    out = bridge.output()
    assert status == 0, out
    return out


def test_readyz_fails_when_a_required_file_cannot_be_rendered_for_max_staleness(tmp_path: Path, out_dir: Path) -> None:
    """A required template whose key vanished keeps its last file, and /readyz turns 503 after max_staleness."""
    port = free_port()
    config = _config(tmp_path, out_dir, "  t.txt: {template: 'P={{ db.password }}',"
                                        " values: {db: {provider: dev, ref: r.json}}}\n"
                                        "  p: {provider: dev, ref: r.json, key: password}\n",
                     {"r.json": json.dumps({"password": "one"})})
    config.write_text(config.read_text().replace("listen: null", f"listen: '127.0.0.1:{port}'\n"
                                                 "refresh_interval: 200ms\nmax_staleness: 1s"))
    bridge = _run(config)
    try:
        assert wait_for(lambda: _readyz(port)[0] == 200, 15, step=0.2)
        (tmp_path / "source" / "r.json").write_text(json.dumps({"pw": "two"}))
        assert wait_for(lambda: _readyz(port)[0] == 503, 15, step=0.2), _readyz(port)
        assert "t.txt" in _readyz(port)[1] and "p" in _readyz(port)[1]
        assert (out_dir / "t.txt").read_text() == "P=one"
        (tmp_path / "source" / "r.json").write_text(json.dumps({"password": "three"}))
        assert wait_for(lambda: _readyz(port)[0] == 200, 15, step=0.2)
    finally:
        _stop(bridge)


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A 256 KiB tmpfs of its own, so the test can fill it."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_tmpfs_is_logged_once_and_fails_readiness(tmp_path: Path, small_tmpfs: Path) -> None:
    """ENOSPC: one line per kind of failure (not one per cycle), /readyz 503 after max_staleness, then recovery."""
    port, out = free_port(), small_tmpfs / "out"
    config = _config(tmp_path, out, "  w: {provider: dev, ref: w}\n", {"w": "one"})
    config.write_text(config.read_text().replace("listen: null", f"listen: '127.0.0.1:{port}'\n"
                                                 "refresh_interval: 100ms\nmax_staleness: 1s"))
    bridge = _run(config)
    try:
        assert wait_for(lambda: _readyz(port)[0] == 200, 15, step=0.2)
        fd = os.open(small_tmpfs / "fill", os.O_WRONLY | os.O_CREAT, 0o600)
        with contextlib.suppress(OSError):  # until ENOSPC
            while os.write(fd, b"\0" * 4096):
                pass
        os.close(fd)
        (tmp_path / "source" / "w").write_text("two")
        assert wait_for(lambda: _readyz(port)[0] == 503, 15, step=0.2), _readyz(port)
        assert "commits to" in _readyz(port)[1]
        time.sleep(1)  # several cycles while full
        (small_tmpfs / "fill").unlink()
        assert wait_for(lambda: (out / "w").read_text() == "two", 15, step=0.2)
        assert wait_for(lambda: _readyz(port)[0] == 200, 15, step=0.2)
    finally:
        printed = _stop(bridge)
    assert printed.count("cannot write the state file") <= 1, printed
    assert printed.count("cannot commit") == 1, printed


def test_a_folder_planted_at_a_secrets_name_fails_readiness_until_it_is_gone(tmp_path: Path, out_dir: Path) -> None:
    """A folder someone made at a secret's name before the bridge linked it: the secret is written,
    but /readyz is 503 naming it (the bridge never replaces a folder it did not make), until the
    folder is removed and the drift sweep makes the link."""
    port = free_port()
    config = _config(tmp_path, out_dir, "  v: {provider: dev, ref: v}\n  w: {provider: dev, ref: w}\n",
                     {"v": "zero", "w": "one"})
    config.write_text(config.read_text().replace("listen: null", f"listen: '127.0.0.1:{port}'\n"
                                                 "refresh_interval: 100ms"))
    (out_dir / "w").mkdir(parents=True)
    bridge = _run(config)
    try:
        assert wait_for(lambda: (out_dir / "v").exists() and _readyz(port)[0] == 503, 15, step=0.2), _readyz(port)
        assert "unlinked: w in the output directory is a folder" in _readyz(port)[1]
        (out_dir / "w").rmdir()
        assert wait_for(lambda: _readyz(port)[0] == 200, 15, step=0.2), _readyz(port)
        assert (out_dir / "w").read_text() == "one"
    finally:
        _stop(bridge)


def test_a_reload_that_removes_a_leased_entry_drops_its_expiry_gauge(openbao, vault_pki, tmp_path: Path,
                                                                        out_dir: Path) -> None:
    """After a reload removes a certificate entry, /metrics no longer has its expiry (a frozen gauge
    would fire the expiry alert forever); the entry still configured keeps its gauge."""
    port = free_port()
    config = tmp_path / "c.yaml"
    issue = (f"{{provider: vault, ref: {vault_pki.mount}/issue/{vault_pki.role}, "
             f"params: {{common_name: a.{vault_pki.domain}, ttl: 1h}}")
    both = (f"output_dir: {out_dir}\nlisten: '127.0.0.1:{port}'\nrefresh_interval: 200ms\n"
            f"providers:\n  vault: {{type: vault}}\nsecrets:\n"
            f"  kept: {issue}, key: certificate}}\n  gone: {issue}, key: private_key}}\n")
    config.write_text(both)
    bridge = _run(config, vault_env(openbao))

    def gauges() -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return ""
        return "\n".join(line for line in text.splitlines() if line.startswith("secrets_bridge_lease_expiry"))

    try:
        assert wait_for(lambda: 'secret="gone"' in gauges() and 'secret="kept"' in gauges(), 15, step=0.2)
        config.write_text(both.split("  gone:")[0])
        # one scrape that has the kept gauge and not the removed one (a scrape while the reloaded
        # engine resumes its lease may have neither)
        assert wait_for(lambda: 'secret="gone"' not in (g := gauges()) and 'secret="kept"' in g, 15, step=0.2), gauges()
    finally:
        _stop(bridge)


def test_the_audit_event_of_a_removed_file_says_what_was_removed(tmp_path: Path, out_dir: Path) -> None:
    """A file removed because its entry left the config is audited with its provider, ref and old version."""
    config = _config(tmp_path, out_dir, "  a: {provider: dev, ref: one}\n  b: {provider: dev, ref: two}\n",
                     {"one": "1", "two": "2"})
    assert Bridge(config)("sync", check=None).returncode == 0
    version = json.loads(Bridge(config)("inspect", "b", check=None).stdout)[0]["version"]
    audit = tmp_path / "audit.jsonl"
    config.write_text(config.read_text().split("  b:")[0].replace("listen: null", f"listen: null\naudit_log: {audit}"))
    assert Bridge(config)("sync", check=None).returncode == 0
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(e["file"], e["provider"], e["ref"], e["old_version"], e["new_version"]) for e in events] == \
        [("b", "dev", "two", version, None)]


@pytest.mark.parametrize(("rule", "named"), [
    ('{key: a, mode: "9999"}', "secrets.e.files.a.mode: invalid file mode"),
    ("{key: a, uid: 99999999999}", "secrets.e.files.a.uid:"),
    ("{key: a, bogus: 1}", "secrets.e.files.a.bogus: unknown field"),
    ('{mode: "0400"}', "secrets.e.files.a.key: required field missing"),
])
def test_a_bad_file_rule_is_named_by_its_field(tmp_path: Path, out_dir: Path, rule: str, named: str) -> None:
    """A bad option of one file of a `files:` entry is named by its path, not by pydantic's union branch."""
    config = _config(tmp_path, out_dir, f"  e: {{provider: dev, ref: x.json, files: {{a: {rule}}}}}\n",
                     {"x.json": "{}"})
    proc = Bridge(config)("check", check=None)
    assert proc.returncode == 2 and proc.stderr.startswith(f"secrets-bridge: {named}"), proc.stderr
    assert "literal[" not in proc.stderr


@pytest.mark.parametrize("name", ["..data", "..2026_11_28_00_00_00.0", ".."])
def test_a_files_name_is_checked_as_a_name_of_its_own(tmp_path: Path, out_dir: Path, name: str) -> None:
    """`files: {"..data": key}` is refused as a `files: "*"` key of that name is (names beginning with `..`)."""
    config = _config(tmp_path, out_dir, f"  e: {{provider: dev, ref: x.json, files: {{'{name}': a}}}}\n",
                     {"x.json": "{}"})
    proc = Bridge(config)("check", check=None)
    assert proc.returncode == 2 and "secrets.e.files" in proc.stderr, proc.stderr


def test_a_lease_from_another_vault_is_not_resumed(openbao, vault_pki, tmp_path: Path, out_dir: Path) -> None:
    """When the provider's address changes, the certificate issued by the old server is not resumed
    (before, `sync` kept serving the old CA's certificate until its re-issue time)."""
    config = tmp_path / "c.yaml"

    def write(address: str) -> None:
        config.write_text(f"output_dir: {out_dir}\nlisten: null\n"
                          f"providers:\n  vault: {{type: vault, address: '{address}'}}\n"
                          f"secrets:\n  crt: {{provider: vault, ref: {vault_pki.mount}/issue/{vault_pki.role}, "
                          f"key: certificate, params: {{common_name: a.{vault_pki.domain}, ttl: 1h}}}}\n")

    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("SECRETS_BRIDGE_", "VAULT_", "BAO_"))},
           "VAULT_TOKEN": openbao.root_token}

    def sync() -> str:
        proc = subprocess.run([venv_binary("secrets-bridge"), "sync", "--config", str(config)], env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return (out_dir / "crt").read_text()

    write(openbao.address)
    first = sync()
    assert sync() == first  # the same server: resumed, not issued again
    # The same server under another name (localhost for 127.0.0.1) stands in for another server.
    write(openbao.address.replace("127.0.0.1", "localhost"))
    assert sync() != first


@pytest.mark.parametrize(("field", "value"), [("updated", "garbage"), ("updated", 12), ("version", ["x"]),
                                              ("size", "big"), ("uid", None)])
def test_an_edited_state_file_does_not_stop_the_bridge(tmp_path: Path, out_dir: Path, field: str,
                                                       value: object) -> None:
    """A state record with a field of the wrong shape is left out: `sync` still works (it ended in
    `internal error (ValueError)` before) and `ls` shows no garbage."""
    config = _config(tmp_path, out_dir, "  other: {provider: dev, ref: plain}\n", {"plain": "plain-value"})
    assert Bridge(config)("sync", check=None).returncode == 0
    state = out_dir / STATE_FILE
    doc = json.loads(state.read_text())
    doc["secrets"]["other"][field] = value
    state.write_text(json.dumps(doc))
    (tmp_path / "source" / "plain").write_text("new-value")
    proc = Bridge(config)("sync", check=None)
    assert proc.returncode == 0 and "internal error" not in proc.stderr, proc.stderr
    assert (out_dir / "other").read_text() == "new-value"
    listed = Bridge(config)("ls", check=None)
    assert listed.returncode == 0 and "garbage" not in listed.stdout and "big" not in listed.stdout


@pytest.mark.parametrize("name", [STATE_FILE, LEASE_FILE])
def test_a_deeply_nested_state_file_or_lease_store_does_not_stop_the_bridge(tmp_path: Path, out_dir: Path,
                                                                            name: str) -> None:
    """200 KB of nested JSON arrays planted as the state file or the lease store: `sync` and `ls` go
    on (both ended in `internal error (RecursionError)` before)."""
    config = _config(tmp_path, out_dir, "  other: {provider: dev, ref: plain}\n", {"plain": "plain-value"})
    assert Bridge(config)("sync", check=None).returncode == 0
    (out_dir / name).write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "source" / "plain").write_text("new-value")
    for command in ("sync", "ls"):
        proc = Bridge(config)(command, check=None)
        assert "internal error" not in proc.stderr and proc.returncode in (0, 2), (command, proc.stderr)
    assert (out_dir / "other").read_text() == "new-value"


@pytest.mark.parametrize("name", [STATE_FILE, LEASE_FILE, "other", "..data"])
def test_audit_log_naming_a_file_the_bridge_manages_is_a_config_error(tmp_path: Path, out_dir: Path,
                                                                       name: str) -> None:
    """audit_log on the state file (or a target, ..data) is refused: appends corrupted the state so
    that `ls` said "no state"."""
    config = _config(tmp_path, out_dir, "  other: {provider: dev, ref: plain}\n", {"plain": "plain-value"})
    config.write_text(config.read_text().replace("listen: null", f"listen: null\naudit_log: {out_dir / name}"))
    proc = Bridge(config)("sync", check=None)
    assert proc.returncode == 2 and "audit_log:" in proc.stderr, proc.stderr
    out_dir.mkdir()
    beside = tmp_path / "c2.yaml"
    beside.write_text(config.read_text().replace(str(out_dir / name), str(out_dir / "audit.jsonl")))
    assert Bridge(beside)("sync", check=None).returncode == 0


def test_readyz_is_green_for_a_star_entry_over_an_empty_map(tmp_path: Path, out_dir: Path) -> None:
    """`files: "*"` over `{}` makes no file and is ready (sync exits 0; /readyz said "missing" forever),
    while a star entry that cannot be fetched is still missing."""
    port = free_port()
    config = _config(tmp_path, out_dir, "  e: {provider: dev, ref: empty.json, files: '*'}\n", {"empty.json": "{}"})
    config.write_text(config.read_text().replace("listen: null", f"listen: '127.0.0.1:{port}'\n"
                                                 "refresh_interval: 200ms"))
    bridge = _run(config)
    try:
        assert wait_for(lambda: _readyz(port)[0] == 200, 15, step=0.2), _readyz(port)
        (tmp_path / "source" / "empty.json").unlink()
        config.write_text(config.read_text().replace("ref: empty.json", "ref: gone.json"))
        assert wait_for(lambda: "missing: e" in _readyz(port)[1], 15, step=0.2), _readyz(port)
    finally:
        _stop(bridge)


def test_inspect_a_files_entry_by_its_name(tmp_path: Path, out_dir: Path) -> None:
    """`inspect NAME` of a `files:` entry lists each of its files (it said "no secret named" before)."""
    config = _config(tmp_path, out_dir, "  star: {provider: dev, ref: x.json, files: '*'}\n",
                     {"x.json": json.dumps({"a": "1", "b": "2"})})
    assert Bridge(config)("sync", check=None).returncode == 0
    proc = Bridge(config)("inspect", "star", check=None)
    assert proc.returncode == 0, proc.stderr
    assert [r["name"] for r in json.loads(proc.stdout)] == ["star/a", "star/b"]
    assert Bridge(config)("inspect", "sta", check=None).returncode == 1
