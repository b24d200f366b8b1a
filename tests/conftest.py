"""Session fixtures: a real OpenBao dev server (with its database engine in front of a real
PostgreSQL, and a PKI engine), nginx as a TLS consumer, and an environment that stays on loopback;
the tmpfs directories the writer's tests write to (`shm_dir`, `tiny_tmpfs`)."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.writer.generation import is_memory_backed
from tests.servers import (
    Nginx,
    Postgres,
    free_port,
    nginx_binary,
    postgres_bindir,
    running_postgres,
    start_nginx,
    venv_binary,
    wait_http,
)


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
    for name in ("GCE_METADATA_HOST", "GCE_METADATA_IP"):  # Google's chain: a closed loopback port, or
        if name not in os.environ:  # the fake's (tests/gcp_fixtures.py sets it before google-auth loads)
            monkeypatch.setenv(name, "127.0.0.1:9")


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """PostgreSQL 15 from Debian's packages, started as the `postgres` user on a free loopback port."""
    if postgres_bindir() is None:
        pytest.skip("PostgreSQL is not installed (pg_config missing; .ci/run installs postgresql-15)")
    with running_postgres() as server:
        yield server


@dataclass(frozen=True)
class DatabaseEngine:
    """OpenBao's database secrets engine at `mount`, connected to `postgres` as its superuser."""

    openbao: OpenBao
    postgres: Postgres
    mount: str = "database"
    connection: str = "pg"

    def role(self, default_ttl: str = "1m", max_ttl: str = "10m") -> str:
        """A new role minting LOGIN roles VALID UNTIL the lease's end; returns its creds ref."""
        name = f"app{uuid.uuid4().hex[:8]}"
        create = ['CREATE ROLE "{{name}}" WITH LOGIN PASSWORD \'{{password}}\' VALID UNTIL \'{{expiration}}\';',
                  'GRANT CONNECT ON DATABASE postgres TO "{{name}}";']
        self.openbao.client().write(f"{self.mount}/roles/{name}", db_name=self.connection,
                                    creation_statements=create, default_ttl=default_ttl, max_ttl=max_ttl)
        return f"{self.mount}/creds/{name}"


@pytest.fixture(scope="session")
def vault_database(openbao: OpenBao, postgres: Postgres) -> DatabaseEngine:
    """The database engine with the built-in postgresql-database-plugin in front of `postgres`."""
    engine = DatabaseEngine(openbao, postgres)
    client = openbao.client()
    if f"{engine.mount}/" not in client.sys.list_mounted_secrets_engines()["data"]:
        client.sys.enable_secrets_engine("database", path=engine.mount)
    client.write(f"{engine.mount}/config/{engine.connection}", plugin_name="postgresql-database-plugin",
                 connection_url=postgres.connection_url(), username=postgres.admin,
                 password=postgres.admin_password, allowed_roles="*", verify_connection=True)
    return engine


@dataclass(frozen=True)
class PkiEngine:
    """OpenBao's PKI engine at `mount` with a root CA; `role` issues for `domain` and its subdomains."""

    mount: str
    role: str
    domain: str
    ca_pem: str

    @property
    def issue_ref(self) -> str:
        return f"{self.mount}/issue/{self.role}"


@pytest.fixture(scope="session")
def vault_pki(openbao: OpenBao) -> PkiEngine:
    """A PKI mount with a root CA and a role `web` (default TTL 30s, max 1h) for *.test.internal."""
    client = openbao.client()
    mount = "pki"
    if f"{mount}/" not in client.sys.list_mounted_secrets_engines()["data"]:
        client.sys.enable_secrets_engine("pki", path=mount, config={"max_lease_ttl": "24h"})
    root = client.write(f"{mount}/root/generate/internal", common_name="secrets-bridge test CA", ttl="24h",
                        key_type="ec", key_bits=256)
    client.write(f"{mount}/roles/web", allowed_domains=["test.internal"], allow_subdomains=True,
                 allow_bare_domains=True, ttl="30s", max_ttl="1h", key_type="ec", key_bits=256)
    return PkiEngine(mount, "web", "test.internal", root["data"]["certificate"])


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Callable[[Path, Path], Nginx]]:
    """Starts nginx serving HTTPS with the given cert/key files: `nginx(cert_file, key_file)`.
    Each one is stopped after the test."""
    if nginx_binary() is None:
        pytest.skip("nginx is not installed (.ci/run installs Debian's nginx)")
    started: list[Nginx] = []

    def start(cert_file: Path, key_file: Path) -> Nginx:
        server = start_nginx(tmp_path / f"nginx{len(started)}", cert_file, key_file)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def shm_dir(tmp_path: Path):
    """A directory on tmpfs (/dev/shm), as /run/secrets is in a container."""
    base = Path("/dev/shm")
    if not base.is_dir() or not is_memory_backed(base):
        pytest.skip("no tmpfs at /dev/shm")
    d = base / f"sb-test-{os.getpid()}-{tmp_path.name}"
    d.mkdir()
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


@pytest.fixture
def tiny_tmpfs(tmp_path: Path):
    """A 256 KiB tmpfs of our own (root only), to fill up or remount read-only."""
    d = tmp_path / "tiny"
    d.mkdir()
    if os.getuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(d)],
                                          capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)
