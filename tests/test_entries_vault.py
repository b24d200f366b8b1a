"""Entries against a real OpenBao: files:, template: and plain entries sharing one fetch unit,
counted by a proxy in front of the server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.engine.cycle import Engine
from tests.conftest import OpenBao
from tests.engines import make_engine
from tests.fault_proxy import FaultProxy


class PathCounter(FaultProxy):
    """The fault proxy with no faults: it counts requests by path."""

    def reads_of(self, fragment: str) -> int:
        return sum(n for path, n in self.seen.items() if path != "requests" and fragment in path)


@pytest.fixture
def counted(openbao: OpenBao) -> Iterator[PathCounter]:
    proxy = PathCounter(openbao.address)
    yield proxy
    proxy.close()


def _engine(tmp_path: Path, address: str, token_file: Path, secrets: str) -> Engine:
    return make_engine(tmp_path, secrets, providers=f"  vault: {{type: vault, address: '{address}', "
                                                    f"auth: {{method: token, token_file: '{token_file}'}}}}\n")


def test_three_entries_one_fetch_and_one_generation(openbao: OpenBao, counted: PathCounter, tmp_path: Path) -> None:
    """A plain, a files: and a template entry on one KV secret cost one read per cycle; a rotation
    changes all their files in one generation."""
    ref = f"app/{uuid.uuid4().hex}"
    client = openbao.client()
    client.secrets.kv.v2.create_or_update_secret(path=ref, secret={"username": "app", "password": "pw one"})
    token_file = tmp_path.parent / f"{tmp_path.name}-token"
    token_file.write_text(openbao.root_token)
    secrets = f"""  pw: {{provider: vault, ref: secret/{ref}, key: password, mode: "0400"}}
  db:
    provider: vault
    ref: secret/{ref}
    files: {{username: username, password: {{key: password, mode: "0400"}}}}
  app.env:
    template: "DATABASE_URL=postgres://{{{{ db.username }}}}:{{{{ db.password | urlencode }}}}@db/app\\n"
    values: {{db: {{provider: vault, ref: secret/{ref}}}}}
"""
    out = tmp_path / "out"
    engine = _engine(out, counted.url, token_file, secrets)
    try:
        result = engine.sync()
        assert not result.failed
        assert counted.reads_of(f"/v1/secret/data/{ref}") == 1
        assert (out / "db" / "password").read_text() == "pw one" and (out / "pw").read_text() == "pw one"
        assert (out / "app.env").read_text() == "DATABASE_URL=postgres://app:pw%20one@db/app\n"
        generation = os.readlink(out / "..data")

        counted.seen.clear()
        assert engine.cycle(engine.units.values()).changed == []
        assert counted.reads_of(f"/v1/secret/metadata/{ref}") == 1 and counted.reads_of("/data/") == 0

        client.secrets.kv.v2.create_or_update_secret(path=ref, secret={"username": "app", "password": "pw two"})
        counted.seen.clear()
        result = engine.cycle(engine.units.values())
        assert sorted(result.changed) == ["app.env", "db/password", "pw"]
        assert counted.reads_of(f"/v1/secret/data/{ref}") == 1
        assert os.readlink(out / "..data") != generation
        assert (out / "db" / "password").read_text() == (out / "pw").read_text() == "pw two"
        assert {c.new_version for c in result.changes} == {"2", "db=2"}
    finally:
        engine.close()


def test_template_missing_key_keeps_last_file(openbao: OpenBao, tmp_path: Path) -> None:
    """A KV update that drops a key the template uses fails that file alone, naming the key."""
    ref = f"app/{uuid.uuid4().hex}"
    client = openbao.client()
    client.secrets.kv.v2.create_or_update_secret(path=ref, secret={"token": "tok-first-7f3"})
    token_file = tmp_path / "token"
    token_file.write_text(openbao.root_token)
    secrets = f"""  cfg.ini:
    template: "token={{{{ api.token }}}}\\n"
    values: {{api: {{provider: vault, ref: secret/{ref}}}}}
  api.json: {{provider: vault, ref: secret/{ref}}}
"""
    out = tmp_path / "out"
    engine = _engine(out, openbao.address, token_file, secrets)
    try:
        engine.sync()
        client.secrets.kv.v2.create_or_update_secret(path=ref, secret={"renamed": "tok-second-9a1"})
        result = engine.cycle(engine.units.values())
        assert result.changed == ["api.json"] and "token" in str(result.failed["cfg.ini"])
        assert "tok-" not in str(result.failed["cfg.ini"])
        assert (out / "cfg.ini").read_text() == "token=tok-first-7f3\n"
    finally:
        engine.close()
