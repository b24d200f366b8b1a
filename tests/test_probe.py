"""Found by probing the bridge as an attacker and as an unlucky operator would: each test ran the
real `secrets-bridge` process against the `file` provider and failed before its fix."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from bridge.fields import LEASE_FILE, STATE_FILE
from bridge.writer import is_memory_backed
from tests.servers import venv_binary

SECRET = "S3CRET-probe-value"


@pytest.fixture
def out_dir():
    """An output directory on tmpfs, so the default require_tmpfs: true holds."""
    if not is_memory_backed(Path("/dev/shm")):
        pytest.skip("no tmpfs at /dev/shm")
    d = Path("/dev/shm") / f"sb-probe-{uuid.uuid4().hex}"
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SECRETS_BRIDGE_")}
    return subprocess.run([venv_binary("secrets-bridge"), *args], env=clean, capture_output=True, text=True,
                          timeout=30)


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
    proc = _cli("sync", "--config", str(config))
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
    proc = _cli("sync", "--config", str(config))
    assert proc.returncode == 1 and "t.txt" in proc.stderr and "missing" in proc.stderr, proc.stderr
    ls = _cli("inspect", "t.txt", "--config", str(config))
    for text in (proc.stdout, proc.stderr, ls.stdout, ls.stderr, (out_dir / STATE_FILE).read_text()):
        assert SECRET not in text


def test_template_missing_key_written_in_it_is_still_named(tmp_path: Path, out_dir: Path) -> None:
    """A missing key written in the template itself is named in the error, as issue 7 asks."""
    config = _config(tmp_path, out_dir, "  t.txt:\n    template: 'x={{ db.nokey }}'\n"
                                        "    values: {db: {provider: dev, ref: db.json}}\n",
                     {"db.json": json.dumps({"password": SECRET})})
    proc = _cli("sync", "--config", str(config))
    assert proc.returncode == 1 and "'nokey'" in proc.stderr, proc.stderr


@pytest.mark.parametrize("statement", ['{% include "x" %}', '{% import "x" as y %}', '{% extends "x" %}'])
def test_template_loading_another_template_is_a_config_error(tmp_path: Path, out_dir: Path, statement: str) -> None:
    """include/import/extends have nothing to load: a config error (exit 2), not a render failure later."""
    config = _config(tmp_path, out_dir, f"  t.txt:\n    template: '{statement}'\n"
                                        "    values: {db: {provider: dev, ref: db.json}}\n", {"db.json": "{}"})
    proc = _cli("sync", "--config", str(config))
    assert proc.returncode == 2 and "secrets.t.txt.template" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def _plant_lease(out_dir: Path, **fields: object) -> None:
    record = {"value": base64.b64encode(b"PLANTED").decode(), "version": "1", "content_type": None,
              "expires_at": 9e9, "lease_id": None, "lease_seconds": None, "renewable": False,
              "obtained_at": None, "issued_at": 0, "asked_seconds": None, **fields}
    out_dir.mkdir(exist_ok=True)
    key = json.dumps(["dev", "plain", None, None])
    (out_dir / LEASE_FILE).write_text(json.dumps({"leases": {key: record}}))


@pytest.mark.parametrize("fields", [{"value": "!!not base64"}, {"expires_at": "soon"}, {"issued_at": None},
                                    {"renewable": "yes"}, {"lease_id": 7}])
def test_an_edited_lease_store_does_not_stop_the_bridge(tmp_path: Path, out_dir: Path, fields: dict) -> None:
    """A lease store with a field of the wrong type is ignored with a warning, never `internal error`."""
    config = _config(tmp_path, out_dir, "  other: {provider: dev, ref: plain}\n", {"plain": "plain-value"})
    _plant_lease(out_dir, **fields)
    proc = _cli("sync", "--config", str(config))
    assert proc.returncode == 0 and "internal error" not in proc.stderr, proc.stderr
    assert (out_dir / "other").read_text() == "plain-value"


def test_a_lease_record_never_replaces_a_polled_value(tmp_path: Path, out_dir: Path) -> None:
    """A record in the lease store for a unit that is neither leased nor issued is not resumed."""
    config = _config(tmp_path, out_dir, "  other: {provider: dev, ref: plain}\n", {"plain": "plain-value"})
    _plant_lease(out_dir)
    proc = _cli("sync", "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    assert (out_dir / "other").read_text() == "plain-value"


@pytest.mark.parametrize("name", [LEASE_FILE, STATE_FILE])
def test_a_fifo_planted_as_a_bridge_file_hangs_nothing(tmp_path: Path, out_dir: Path, name: str) -> None:
    """A FIFO under the state or lease file's name neither hangs `sync` nor `ls` (open blocked before)."""
    config = _config(tmp_path, out_dir, "  other: {provider: dev, ref: plain}\n", {"plain": "plain-value"})
    out_dir.mkdir()
    os.mkfifo(out_dir / name)
    if name == STATE_FILE:
        assert _cli("ls", "--config", str(config)).returncode == 2
    proc = _cli("sync", "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    assert (out_dir / "other").read_text() == "plain-value"
