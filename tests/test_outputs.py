"""Outputs as kinds (bridge/engine/outputs.py): each `secrets:` shape is its own class, and `env:`
variables share fetch units with files (one read, one lease), against a real OpenBao."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.config.fields import STATE_FILE
from bridge.config.loader import parse_config
from bridge.engine.cycle import Engine
from bridge.engine.outputs import EnvVar, EveryKey, NamedFiles, PlainFile, TemplateFile, build
from bridge.errors import ConfigError
from tests.conftest import OpenBao
from tests.engines import make_engine
from tests.test_entries_vault import PathCounter


@pytest.fixture
def counted(openbao: OpenBao) -> Iterator[PathCounter]:
    proxy = PathCounter(openbao.address)
    yield proxy
    proxy.close()


def _engine(tmp_path: Path, address: str, token: str, body: str) -> Engine:
    """A started engine with `env: True` on one Vault provider; `body`: its secrets: and env: sections."""
    token_file = tmp_path / "token"
    token_file.write_text(token)
    vault = f"  vault: {{type: vault, address: '{address}', auth: {{method: token, token_file: '{token_file}'}}}}\n"
    return make_engine(tmp_path / "out", "", providers=vault, sections=body, engine_args={"env": True})


def test_each_shape_is_its_kind() -> None:
    """A plain, a named files:, a files: "*", a template entry and an env variable build as five kinds."""
    config = parse_config("""
providers: {local: {type: env}}
secrets:
  a: {provider: local, ref: A}
  b: {provider: local, ref: B, files: {x: k}}
  c: {provider: local, ref: B, files: "*"}
  d: {template: "{{ v }}", values: {v: {provider: local, ref: A}}}
env:
  E: {provider: local, ref: A}
""")
    units, outputs = build(config, config.build_providers(), env=True)
    kinds = {name: type(output) for name, output in outputs.items()}
    assert kinds == {"a": PlainFile, "b": NamedFiles, "c": EveryKey, "d": TemplateFile, "$E": EnvVar}
    assert len(units) == 2  # A is read once for a, d and E
    assert sorted(next(u for u in units.values() if u.request.ref == "A").entries) == ["$E", "a", "d"]
    assert build(config, config.build_providers())[1].keys() == {"a", "b", "c", "d"}  # run and sync: no env


def test_env_shares_the_fetch_with_files(openbao: OpenBao, counted: PathCounter, tmp_path: Path) -> None:
    """An env variable, a template variable and a files: entry on one KV secret cost one read per
    cycle; a rotation changes the files and both variables in the same cycle, as env Changes."""
    ref = f"app/{uuid.uuid4().hex}"
    client = openbao.client()
    client.secrets.kv.v2.create_or_update_secret(path=ref, secret={"username": "app", "password": "pw one"})
    body = f"""secrets:
  db: {{provider: vault, ref: secret/{ref}, files: {{password: password}}}}
env:
  DB_PASSWORD: {{provider: vault, ref: secret/{ref}, key: password}}
  DATABASE_URL:
    template: "postgres://{{{{ db.username }}}}:{{{{ db.password | urlencode }}}}@db/app"
    values: {{db: {{provider: vault, ref: secret/{ref}}}}}
"""
    engine = _engine(tmp_path, counted.url, openbao.root_token, body)
    try:
        result = engine.sync()
        assert not result.failed
        assert counted.reads_of(f"/v1/secret/data/{ref}") == 1
        assert engine.env.values() == {"DB_PASSWORD": b"pw one", "DATABASE_URL": b"postgres://app:pw%20one@db/app"}
        assert {(c.file, c.kind, c.action) for c in result.changes} == {
            ("db/password", "file", "added"), ("$DB_PASSWORD", "env", "added"), ("$DATABASE_URL", "env", "added")}

        counted.seen.clear()
        assert engine.cycle(engine.units.values()).changes == []  # unchanged: no env Change either

        client.secrets.kv.v2.create_or_update_secret(path=ref, secret={"username": "app", "password": "pw two"})
        counted.seen.clear()
        result = engine.cycle(engine.units.values())
        assert counted.reads_of(f"/v1/secret/data/{ref}") == 1
        env = {c.file: (c.old_version, c.new_version) for c in result.changes if c.kind == "env"}
        assert env == {"$DB_PASSWORD": ("1", "2"), "$DATABASE_URL": ("db=1", "db=2")}
        assert engine.env.values()["DB_PASSWORD"] == b"pw two"
        state = (tmp_path / "out" / STATE_FILE).read_text()
        assert "DB_PASSWORD" not in state and "pw two" not in state  # the state file lists files only
    finally:
        engine.close()


def test_env_value_with_nul_fails_that_variable(openbao: OpenBao, tmp_path: Path) -> None:
    """A value holding a NUL byte fails its variable with a clear error; the others render."""
    ref = f"app/{uuid.uuid4().hex}"
    openbao.client().secrets.kv.v2.create_or_update_secret(path=ref, secret={"bad": "a\u0000b", "good": "fine"})
    body = f"""env:
  BAD: {{provider: vault, ref: secret/{ref}, key: bad}}
  GOOD: {{provider: vault, ref: secret/{ref}, key: good}}
"""
    engine = _engine(tmp_path, openbao.address, openbao.root_token, body)
    try:
        result = engine.sync()
        assert list(result.failed) == ["$BAD"] and "NUL byte" in str(result.failed["$BAD"])
        assert engine.env.values() == {"GOOD": b"fine"}
        assert engine.missing_required() == ["$BAD"]
    finally:
        engine.close()


@pytest.mark.parametrize(("env", "message"), [
    ("1ABC: {provider: local, ref: A}", "env.1ABC: not a POSIX variable name"),
    ("A-B: {provider: local, ref: A}", "env.A-B: not a POSIX variable name"),
    ("A: {provider: nope, ref: A}", "env.A.provider: no provider named 'nope'"),
    ("A: {provider: local}", "env.A: give provider and ref"),
    ("A: {template: '{{ x }}', values: {y: {provider: local, ref: A}}}", "env.A.template: template names x"),
    ("A: {provider: local, ref: A, version: previous}", "env.A.version: provider 'local' keeps no previous"),
])
def test_env_config_errors(env: str, message: str) -> None:
    """A bad env: entry is one config error naming it."""
    with pytest.raises(ConfigError) as caught:
        parse_config(f"providers: {{local: {{type: env}}}}\nenv:\n  {env}\n")
    assert str(caught.value).startswith(message), str(caught.value)


def test_check_resolves_env_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """`check` lists each env variable as $NAME with its status, never its value; a failing one exits 1."""
    from bridge.cli import main

    config = tmp_path / "c.yaml"
    config.write_text("providers: {local: {type: env}}\nsecrets: {}\n"
                      "env:\n  GOOD: {provider: local, ref: SOURCE_GOOD}\n"
                      "  BAD: {provider: local, ref: SOURCE_UNSET}\n")
    monkeypatch.setenv("SOURCE_GOOD", "value-never-printed")
    monkeypatch.delenv("SOURCE_UNSET", raising=False)
    assert main(["--config", str(config), "check"]) == 1
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows.keys() == {"$GOOD", "$BAD"}
    assert rows["$GOOD"].endswith("ok") and "not_found" in rows["$BAD"]
    assert "value-never-printed" not in "".join(rows.values())
