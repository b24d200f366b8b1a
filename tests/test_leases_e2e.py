"""Leased secrets end to end, as a user runs them: `secrets-bridge run`/`sync` as processes against
OpenBao's database engine in front of a real PostgreSQL, its PKI engine, and a real nginx."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.conftest import DatabaseEngine, OpenBao, PkiEngine
from tests.harness import Bridge, vault_env
from tests.polling import wait_for
from tests.servers import Postgres

pytestmark = pytest.mark.slow


@pytest.fixture
def out(tmp_path: Path):
    """An output directory on tmpfs."""
    d = Path("/dev/shm") / f"sb-lease-{uuid.uuid4().hex}"
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


def _no_leak(bridge: Bridge, *secrets: str) -> None:
    """None of `secrets` in anything the bridge printed."""
    text = bridge.output()
    for secret in secrets:
        assert secret not in text


def write_config(path: Path, out: Path, secrets: str, *, extra: str = "", provider: str = "") -> Path:
    path.write_text(f"output_dir: {out}\nrefresh_interval: 1h\nlisten: null\n{extra}"
                    f"providers:\n  vault: {{type: vault{provider}}}\nsecrets:\n{secrets}")
    return path


def creds_entry(ref: str) -> str:
    return f"  db:\n    provider: vault\n    ref: {ref}\n    files: {{username: username, password: password}}\n"


def read_generation(out: Path, *names: str) -> tuple[str, ...] | None:
    """Files read through one resolved `..data`, as an application holding a generation would."""
    try:
        generation = out / os.readlink(out / "..data")
        return tuple((generation / name).read_text() for name in names)
    except OSError:
        return None


def leases_under(openbao: OpenBao, ref: str) -> list[str]:
    try:
        return openbao.client().sys.list_leases(prefix=ref + "/")["data"]["keys"]
    except Exception:  # hvac raises InvalidPath when there are none
        return []


def test_db_creds_renew_then_reissue_without_a_bad_moment(
    openbao: OpenBao, vault_database: DatabaseEngine, postgres: Postgres, out: Path, tmp_path: Path
) -> None:
    """The credentials log in; renewal keeps the username past several TTLs; at max_ttl both files
    switch in one generation; a reader polling the files never holds credentials that fail."""
    ref = vault_database.role(default_ttl="6s", max_ttl="20s")
    bridge = Bridge(write_config(tmp_path / "c.yaml", out, creds_entry(ref)), env=vault_env(openbao))
    bridge.start()
    seen: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            pair = read_generation(out, "db/username", "db/password")
            if pair is not None:
                if not seen or seen[-1] != pair[0]:
                    seen.append(pair[0])
                if not postgres.can_login(*pair):
                    failures.append(pair[0])
            time.sleep(0.25)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        time.sleep(28)  # 4+ TTLs: renewals, then the max_ttl re-issue (at ~17-18s) and a renewal of the new lease
    finally:
        stop.set()
        poller.join()
        assert bridge.stop() == 0, bridge.output()[-3000:]
    assert failures == []
    assert len(seen) == 2, seen  # the first username lived past three TTLs; exactly one re-issue
    log = bridge.output()
    assert "renewal gave" in log and "issued" in log
    _no_leak(bridge, *(read_generation(out, "db/password") or ()))


def test_sync_then_run_and_sigkill_keep_one_lease(
    openbao: OpenBao, vault_database: DatabaseEngine, postgres: Postgres, out: Path, tmp_path: Path
) -> None:
    """An init container's `sync`, then `run`, then SIGKILL and a restart: the same credentials, one lease."""
    ref = vault_database.role(default_ttl="2m", max_ttl="10m")
    bridge = Bridge(write_config(tmp_path / "c.yaml", out, creds_entry(ref)), env=vault_env(openbao))
    bridge("sync")
    first = read_generation(out, "db/username", "db/password")
    assert first is not None and postgres.can_login(*first)
    assert (out / ".secrets-bridge-leases.json").stat().st_mode & 0o777 == 0o600
    for _ in range(2):
        proc = bridge.start()
        time.sleep(3)
        assert read_generation(out, "db/username", "db/password") == first
        proc.kill()
        proc.wait(timeout=10)
    bridge("sync")
    assert read_generation(out, "db/username", "db/password") == first
    assert len(leases_under(openbao, ref)) == 1
    state = (out / ".secrets-bridge-state.json").read_text()
    assert first[1] not in state
    _no_leak(bridge, first[1])


def test_revoke_on_exit(openbao: OpenBao, vault_database: DatabaseEngine, postgres: Postgres,
                        out: Path, tmp_path: Path) -> None:
    """With revoke_on_exit, SIGTERM revokes the lease: the credentials stop working."""
    ref = vault_database.role(default_ttl="2m", max_ttl="10m")
    bridge = Bridge(write_config(tmp_path / "c.yaml", out, creds_entry(ref),
                                          provider=", revoke_on_exit: true"), env=vault_env(openbao))
    bridge.start()
    wait_for(lambda: read_generation(out, "db/username", "db/password") is not None, timeout=20, step=0.2)
    creds = read_generation(out, "db/username", "db/password")
    assert creds is not None and postgres.can_login(*creds)
    assert bridge.stop() == 0
    assert not postgres.can_login(*creds)
    assert leases_under(openbao, ref) == []


def test_template_and_files_share_one_lease(openbao: OpenBao, vault_database: DatabaseEngine,
                                            postgres: Postgres, out: Path, tmp_path: Path) -> None:
    """A template and a files: entry on one leased ref agree on the username: exactly one lease."""
    ref = vault_database.role(default_ttl="2m", max_ttl="10m")
    secrets = creds_entry(ref) + (
        '  app.env:\n    template: "DATABASE_URL=postgres://{{ db.username }}:{{ db.password | urlencode }}@db/app"\n'
        f"    values: {{db: {{provider: vault, ref: {ref}}}}}\n")
    bridge = Bridge(write_config(tmp_path / "c.yaml", out, secrets), env=vault_env(openbao))
    bridge("sync")
    user, password, env = read_generation(out, "db/username", "db/password", "app.env") or ("", "", "")
    assert env.startswith(f"DATABASE_URL=postgres://{user}:") and postgres.can_login(user, password)
    assert len(leases_under(openbao, ref)) == 1


def test_bad_leased_ref_fails_its_own_files(openbao: OpenBao, vault_database: DatabaseEngine,
                                            out: Path, tmp_path: Path) -> None:
    """A leased ref with no such role fails its entry alone, in one clear line; the rest is written."""
    good = vault_database.role(default_ttl="2m", max_ttl="10m")
    secrets = creds_entry(good) + "  bad:\n    provider: vault\n    ref: database/creds/no-such-role\n" \
        "    files: {username: username}\n"
    bridge = Bridge(write_config(tmp_path / "c.yaml", out, secrets), env=vault_env(openbao))
    proc = bridge("sync", check=None)
    assert proc.returncode == 1
    assert (out / "db" / "username").exists() and not (out / "bad").exists()
    lines = [line for line in proc.stderr.splitlines() if "no-such-role" in line]
    assert len(lines) == 1 and "Traceback" not in proc.stderr


def _pki_config(tmp_path: Path, out: Path, pki: PkiEngine, ttl: str, on_change: str) -> Path:
    secrets = (f"  tls:\n    provider: vault\n    ref: {pki.issue_ref}\n"
               f"    params: {{common_name: web.{pki.domain}, ttl: {ttl}}}\n"
               "    files: {tls.crt: certificate, tls.key: {key: private_key, mode: \"0400\"}, ca.crt: issuing_ca}\n")
    return write_config(tmp_path / "c.yaml", out, secrets, extra=f"on_change:\n{on_change}")


def _matches(cert_pem: str, key_pem: str) -> bool:
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    key = serialization.load_pem_private_key(key_pem.encode(), None)
    return cert.public_key().public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]


def test_pki_reissued_before_expiry_and_always_matching(openbao: OpenBao, vault_pki: PkiEngine,
                                                       out: Path, tmp_path: Path) -> None:
    """A short-lived certificate is re-issued before it expires; certificate and key read through one
    `..data` always match; on_change fires once per re-issue."""
    hook_log = tmp_path / "hook.log"
    hook = tmp_path / "hook.py"
    hook.write_text("import os, sys\n"
                    "open(sys.argv[1], 'a').write(os.environ.get('SECRETS_BRIDGE_CHANGED', '') + '|')\n")
    on_change = f'  - {{exec: ["{sys.executable}", "{hook}", "{hook_log}"]}}\n'
    bridge = Bridge(_pki_config(tmp_path, out, vault_pki, "8s", on_change), env=vault_env(openbao))
    bridge.start()
    serials: list[int] = []
    mismatches = 0
    deadline = time.monotonic() + 22
    try:
        while time.monotonic() < deadline:
            pair = read_generation(out, "tls/tls.crt", "tls/tls.key")
            if pair is not None:
                cert = x509.load_pem_x509_certificate(pair[0].encode())
                assert cert.not_valid_after_utc.timestamp() > time.time()  # never expired on disk
                mismatches += not _matches(*pair)
                if not serials or serials[-1] != cert.serial_number:
                    serials.append(cert.serial_number)
            time.sleep(0.1)
    finally:
        assert bridge.stop() == 0, bridge.output()[-3000:]
    assert mismatches == 0 and len(serials) >= 3, serials  # 8s certificates over 22s
    fired = [x for x in hook_log.read_text().split("|") if x]
    assert len(fired) == len(serials)  # the first issue and each re-issue, once each
    _no_leak(bridge, "PRIVATE KEY")


def test_nginx_serves_each_new_certificate_without_a_failed_request(
    openbao: OpenBao, vault_pki: PkiEngine, nginx, out: Path, tmp_path: Path
) -> None:
    """nginx serves the bridge's certificate; on each re-issue the bridge signals it through its pid
    file; a client making HTTPS requests throughout sees the new serial and no failed request."""
    pid_file = tmp_path / "nginx-started.pid"
    on_change = f"  - {{secrets: [tls], signal: SIGHUP, pid_file: {pid_file}}}\n"
    bridge = Bridge(_pki_config(tmp_path, out, vault_pki, "8s", on_change), env=vault_env(openbao))
    bridge("sync")
    server = nginx(out / "tls" / "tls.crt", out / "tls" / "tls.key")
    pid_file.write_text(server.pid_file.read_text())
    ca = tmp_path / "ca.pem"
    ca.write_text(vault_pki.ca_pem)
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    bridge.start()
    serials: list[int] = []
    failed = requests = 0
    deadline = time.monotonic() + 22
    try:
        while time.monotonic() < deadline:
            requests += 1
            try:
                with urllib.request.urlopen(server.url, context=context, timeout=5) as response:
                    response.read()
                serial = server.served_certificate().serial_number
                if not serials or serials[-1] != serial:
                    serials.append(serial)
            except OSError:
                failed += 1
            time.sleep(0.05)
    finally:
        assert bridge.stop() == 0, bridge.output()[-3000:]
    assert failed == 0 and requests > 100
    assert len(serials) >= 3, serials


def _hook(tmp_path: Path) -> tuple[str, Path]:
    hook_log, hook = tmp_path / "hook.log", tmp_path / "hook.py"
    hook.write_text("import sys\nopen(sys.argv[1], 'a').write('|')\n")
    hook_log.write_text("")
    return f'  - {{exec: ["{sys.executable}", "{hook}", "{hook_log}"]}}\n', hook_log


def test_pki_with_the_clock_two_hours_ahead_issues_once(openbao: OpenBao, vault_pki: PkiEngine,
                                                        out: Path, tmp_path: Path) -> None:
    """A bridge whose clock is 2 h ahead of Vault's issues a 30 s certificate once in 10 s, not in a loop."""
    on_change, hook_log = _hook(tmp_path)
    bridge = Bridge(_pki_config(tmp_path, out, vault_pki, "30s", on_change), env=vault_env(openbao), clock="+2h")
    bridge.start()
    try:
        time.sleep(10)
    finally:
        assert bridge.stop() == 0, bridge.output()[-3000:]
    log = bridge.output()
    assert log.count(": issued") == 1, log.count(": issued")
    assert hook_log.read_text().count("|") == 1
    _no_leak(bridge, "PRIVATE KEY")


def test_pki_with_the_clock_a_minute_behind_never_serves_an_expired_certificate(
    openbao: OpenBao, vault_pki: PkiEngine, out: Path, tmp_path: Path
) -> None:
    """A bridge whose clock is 60 s behind Vault's re-issues an 8 s certificate before it expires."""
    bridge = Bridge(_pki_config(tmp_path, out, vault_pki, "8s", "  []\n"), env=vault_env(openbao), clock="-60s")
    bridge.start()
    serials: list[int] = []
    expired = 0
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            pair = read_generation(out, "tls/tls.crt", "tls/tls.key")
            if pair is not None:
                cert = x509.load_pem_x509_certificate(pair[0].encode())
                expired += cert.not_valid_after_utc.timestamp() <= time.time()  # this test's clock is Vault's
                if not serials or serials[-1] != cert.serial_number:
                    serials.append(cert.serial_number)
            time.sleep(0.1)
    finally:
        assert bridge.stop() == 0, bridge.output()[-3000:]
    assert expired == 0 and len(serials) >= 2, (expired, serials)  # 8 s certificates over 20 s


@pytest.mark.parametrize("edited", ["+10y", "Infinity"])
def test_edited_store_never_keeps_an_expired_certificate(openbao: OpenBao, vault_pki: PkiEngine,
                                                         out: Path, tmp_path: Path, edited: str) -> None:
    """A lease store whose expires_at was edited to 10 years (or Infinity) on: once the certificate
    itself has expired, a restart issues a new one, and the edited time is not written back."""
    bridge = Bridge(_pki_config(tmp_path, out, vault_pki, "3s", "  []\n"), env=vault_env(openbao))
    bridge("sync")
    first = x509.load_pem_x509_certificate((out / "tls" / "tls.crt").read_bytes())
    store = out / ".secrets-bridge-leases.json"
    text = store.read_text()
    doc = json.loads(text)
    for record in doc["leases"].values():
        record["expires_at"] = time.time() + 10 * 365 * 86400 if edited == "+10y" else float("inf")
    store.write_text(json.dumps(doc))
    time.sleep(max(0.0, first.not_valid_after_utc.timestamp() - time.time()) + 1)
    bridge("sync")
    cert = x509.load_pem_x509_certificate((out / "tls" / "tls.crt").read_bytes())
    assert cert.serial_number != first.serial_number and cert.not_valid_after_utc.timestamp() > time.time()
    for record in json.loads(store.read_text())["leases"].values():
        assert record["expires_at"] < time.time() + 3600


def test_sigkill_with_under_a_third_of_the_ttl_left_renews_the_lease(
    openbao: OpenBao, vault_database: DatabaseEngine, postgres: Postgres, out: Path, tmp_path: Path
) -> None:
    """A bridge SIGKILLed and started again with 14 s left of a 45 s lease renews that lease: the
    same credentials, still one lease, working past the old lease's end. (14 s: on a loaded machine,
    the container tests beside it, a restart took most of 9 s and found the lease gone.)"""
    ref = vault_database.role(default_ttl="45s", max_ttl="10m")
    bridge = Bridge(write_config(tmp_path / "c.yaml", out, creds_entry(ref)), env=vault_env(openbao))
    proc = bridge.start()
    wait_for(lambda: read_generation(out, "db/username", "db/password") is not None, timeout=20, step=0.05)
    issued = time.monotonic()
    first = read_generation(out, "db/username", "db/password")
    assert first is not None
    time.sleep(1)
    proc.kill()
    proc.wait(timeout=10)
    time.sleep(max(0.0, issued + 31 - time.monotonic()))  # under a third of the TTL is left
    proc = bridge.start()
    try:
        time.sleep(16)  # past the end of the lease as it stood at the kill
        assert read_generation(out, "db/username", "db/password") == first
        assert postgres.can_login(*first)
    finally:
        assert bridge.stop() == 0, bridge.output()[-3000:]
    assert len(leases_under(openbao, ref)) == 1
    _no_leak(bridge, first[1])
