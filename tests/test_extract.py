"""Turning a fetched value into file content (bridge/engine/extract.py), through the engine: a
missing key fails only its file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.engines import fake_engine


def test_missing_key_fails_only_that_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A template naming a key the new value lacks keeps its last good file; the others update."""
    secrets = """  app.env:
    template: "P={{ db.pass }}"
    values: {db: {provider: fake, ref: creds}}
  user: {provider: fake, ref: creds, key: user}
"""
    engine, fake = fake_engine(tmp_path, secrets)
    fake.put("creds", b'{"user": "u1", "pass": "hunter2-first"}')
    engine.sync()
    fake.put("creds", b'{"user": "u2", "other": "hunter2-second"}')
    result = engine.cycle(engine.units.values())
    assert result.changed == ["user"] and list(result.failed) == ["app.env"]
    message = str(result.failed["app.env"])
    assert "pass" in message and "hunter2" not in message
    assert (tmp_path / "app.env").read_text() == "P=hunter2-first"
    assert "hunter2" not in caplog.text
