"""files: and template: entries through the engine against moto (AWS) and the TLS Key Vault fake
(Azure): one fetch per unit, and a rotation changes every file of the entry in one generation."""

# ruff: noqa: F811
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import boto3

from bridge.engine.cycle import Engine
from tests.azure_fixtures import (  # noqa: F401 - fixtures
    VAULT_URL,
    KeyVaultBackend,
    azure_env,
    backend,
    ca_file,
    fake,
)
from tests.engines import make_engine
from tests.test_aws_secretsmanager import REGION, aws_env, counted, moto_url, proxy  # noqa: F401 - fixtures

SHAPES = """  db:
    provider: {p}
    ref: {ref}
    files: {{username: username, password: {{key: password, mode: "0400"}}}}
  all: {{provider: {p}, ref: {ref}, files: "*"}}
  app.env:
    template: "URL=postgres://{{{{ db.username }}}}:{{{{ db.password | urlencode }}}}@db/app\\n"
    values: {{db: {{provider: {p}, ref: {ref}}}}}
"""


def _engine(out: Path, provider: str, secrets: str) -> Engine:
    return make_engine(out, secrets, providers=f"  {provider}\n")


def _check_rotation(engine: Engine, out: Path, rotate) -> None:
    assert not engine.sync().failed
    assert (out / "db" / "username").read_text() == "app" and (out / "all" / "password").read_text() == "p w1"
    assert (out / "app.env").read_text() == "URL=postgres://app:p%20w1@db/app\n"
    generation = os.readlink(out / "..data")
    rotate()
    result = engine.cycle(engine.units.values())
    assert sorted(result.changed) == ["all/password", "app.env", "db/password"]
    assert os.readlink(out / "..data") != generation
    assert (out / "db" / "password").read_text() == (out / "all" / "password").read_text() == "p w2"


def test_aws_files_and_template(moto_url: str, counted, tmp_path: Path) -> None:
    """AWS: three entries on one secret cost one value call; a rotation moves them together."""
    ref = f"entries/{uuid.uuid4().hex}"
    sm = boto3.client("secretsmanager", region_name=REGION, endpoint_url=moto_url)
    sm.create_secret(Name=ref, SecretString=json.dumps({"username": "app", "password": "p w1"}))
    out = tmp_path / "out"
    engine = _engine(out, f"aws: {{type: aws-secretsmanager, region: {REGION}, endpoint_url: '{counted.url}'}}",
                     SHAPES.format(p="aws", ref=ref))
    try:
        counted.reset()
        _check_rotation(engine, out, lambda: sm.put_secret_value(
            SecretId=ref, SecretString=json.dumps({"username": "app", "password": "p w2"})))
        assert counted.value_calls() == 2  # one cold, one after the rotation
    finally:
        engine.close()


def test_azure_files_and_template(backend: KeyVaultBackend, ca_file: Path, tmp_path: Path) -> None:
    """Azure: files: and template: from one Key Vault secret, rotated together."""
    ref = backend.new_ref()
    backend.put(ref, json.dumps({"username": "app", "password": "p w1"}))
    out = tmp_path / "out"
    engine = _engine(out, f"azure: {{type: azure-keyvault, vault_url: '{VAULT_URL}', ca_cert: '{ca_file}'}}",
                     SHAPES.format(p="azure", ref=ref))
    try:
        _check_rotation(engine, out, lambda: backend.put(ref, json.dumps({"username": "app", "password": "p w2"})))
    finally:
        engine.close()
