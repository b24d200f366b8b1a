"""The `file` and `env` providers (Compose's file and environment secret sources)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from bridge.config import parse_config
from bridge.engine import Engine
from bridge.errors import SecretNotFound
from bridge.provider import Request
from providers.local import EnvProvider, EnvSettings, FileProvider, FileSettings


def test_file_reads_bytes_with_mtime_version(tmp_path: Path) -> None:
    """A file under base_dir is read as raw bytes; its version is its modification time."""
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "key").write_bytes(bytes(range(256)))
    p = FileProvider("dev", FileSettings(base_dir=tmp_path))
    fetched = p.fetch(Request("tls/key"))
    assert fetched.value == bytes(range(256))
    assert fetched.version == p.current_version("tls/key") == str(os.stat(tmp_path / "tls" / "key").st_mtime_ns)


def test_file_change_moves_version(tmp_path: Path) -> None:
    """Rewriting the file gives a new version, so the engine sees the change."""
    path = tmp_path / "a"
    path.write_text("one")
    p = FileProvider("dev", FileSettings(base_dir=tmp_path))
    v1 = p.current_version("a")
    time.sleep(0.01)
    path.write_text("two")
    os.utime(path, ns=(time.time_ns(), time.time_ns()))
    assert p.current_version("a") != v1


def test_file_missing_and_escaping(tmp_path: Path) -> None:
    """A missing file is SecretNotFound; a ref leaving base_dir is refused."""
    p = FileProvider("dev", FileSettings(base_dir=tmp_path))
    with pytest.raises(SecretNotFound, match="dev: nope: no such file"):
        p.fetch(Request("nope"))
    with pytest.raises(SecretNotFound, match="relative to base_dir"):
        p.fetch(Request("../etc/passwd"))


def test_env_reads_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """An environment variable is read; absent is SecretNotFound; there is no version."""
    monkeypatch.setenv("SB_TEST_VALUE", "from-env")
    p = EnvProvider("env", EnvSettings())
    fetched = p.fetch(Request("SB_TEST_VALUE"))
    assert (fetched.value, fetched.version) == (b"from-env", None)
    assert "from-env" not in repr(fetched) + repr(p)
    with pytest.raises(SecretNotFound):
        p.fetch(Request("SB_TEST_MISSING"))


def test_compose_parity_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """file and env sources land in the output directory like Compose secrets."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "site.key").write_text("KEY")
    monkeypatch.setenv("API_TOKEN", "tok")
    config = parse_config(f"""
output_dir: {tmp_path / "out"}
require_tmpfs: false
providers:
  dev: {{type: file, base_dir: {tmp_path / "src"}}}
  env: {{type: env}}
secrets:
  site.key: {{provider: dev, ref: site.key, mode: "0400"}}
  api_token: {{provider: env, ref: API_TOKEN}}
""")
    engine = Engine(config)
    engine.start()
    assert sorted(engine.sync().changed) == ["api_token", "site.key"]
    assert (tmp_path / "out" / "site.key").read_text() == "KEY"
    assert (tmp_path / "out" / "api_token").read_text() == "tok"
