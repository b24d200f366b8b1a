"""Session fixtures: a real OpenBao dev server, and an environment that stays on loopback."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.servers import free_port, venv_binary, wait_http


@dataclass(frozen=True)
class OpenBao:
    address: str
    root_token: str

    def client(self):  # type: ignore[no-untyped-def]
        import hvac

        return hvac.Client(url=self.address, token=self.root_token)


@pytest.fixture(scope="session")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBao]:
    """`bao server -dev` on a free loopback port, for the whole session."""
    port = free_port()
    token = f"root-{uuid.uuid4().hex}"
    log = tmp_path_factory.mktemp("bao") / "bao.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [venv_binary("bao"), "server", "-dev", f"-dev-root-token-id={token}",
             f"-dev-listen-address=127.0.0.1:{port}", "-dev-no-store-token"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )
    address = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{address}/v1/sys/health", proc=proc)
        yield OpenBao(address, token)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """No credential chain may leave loopback or pick up the developer's own settings."""
    for name in list(os.environ):
        if name.startswith(("VAULT_", "BAO_", "SECRETS_BRIDGE_")) or name.lower() in ("http_proxy", "https_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
