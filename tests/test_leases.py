"""The lease lifecycle in the engine, with a fake of our own Provider interface that leases
values (the wire is tested against OpenBao in test_vault_leases.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

from bridge.engine.cycle import Engine
from bridge.engine.leases import LEASE_FILE
from bridge.errors import Unavailable
from bridge.provider import Capabilities, Fetched, Provider, ProviderSettings, Request
from tests.engines import make_engine


class LeaseSettings(ProviderSettings):
    revoke_on_exit: bool = False


class LeasingFake(Provider):
    """Mints a new username per fetch with a lease; renews up to max_ttl; counts everything."""

    capabilities = Capabilities(params=True, leases=True)

    def __init__(self, ttl: float = 30.0, max_ttl: float = 90.0, revoke_on_exit: bool = False) -> None:
        super().__init__("db", LeaseSettings(type="fake", revoke_on_exit=revoke_on_exit))
        self.ttl, self.max_ttl = ttl, max_ttl
        self.minted = 0
        self.leases: dict[str, float] = {}  # lease id -> hard expiry (max_ttl)
        self.renewals: list[str] = []
        self.revoked: list[str] = []
        self.lookups: list[str] = []
        self.down = False

    def fetch(self, request: Request) -> Fetched:
        if self.down:
            raise Unavailable("down")
        self.minted += 1
        now = time.time()
        lease_id = f"database/creds/app/{self.minted}"
        self.leases[lease_id] = now + self.max_ttl
        value = json.dumps({"username": f"user{self.minted}", "password": f"pw{self.minted}"}).encode()
        return Fetched(value, lease_id, expires_at=now + self.ttl, lease_id=lease_id, lease_seconds=self.ttl,
                       renewable=True, obtained_at=now)

    def renew(self, fetched: Fetched, increment_seconds: float | None) -> Fetched:
        if self.down:
            raise Unavailable("down")
        assert fetched.lease_id is not None
        self.renewals.append(fetched.lease_id)
        now = time.time()
        granted = min(increment_seconds or self.ttl, self.leases[fetched.lease_id] - now)
        from dataclasses import replace

        return replace(fetched, lease_seconds=granted, expires_at=now + granted, obtained_at=now)

    def lease_alive(self, lease_id: str) -> float | None:
        self.lookups.append(lease_id)
        left = self.leases.get(lease_id, 0) - time.time()
        return left if left > 0 and lease_id not in self.revoked else None

    def origin(self) -> str | None:
        return "fake"

    @property
    def revoke_on_exit(self) -> bool:
        return bool(self.settings.revoke_on_exit)

    def revoke(self, lease_id: str) -> None:
        self.revoked.append(lease_id)


SECRETS = """  db:
    provider: db
    ref: database/creds/app
    files: {username: username, password: {key: password, mode: "0400"}}
  app.env:
    template: "U={{ db.username }} P={{ db.password }}"
    values: {db: {provider: db, ref: database/creds/app}}
"""


def make(out: Path, fake: LeasingFake) -> Engine:
    return make_engine(out, SECRETS, instances={"db": fake}, refresh_interval="1h")


def lease_of(engine: Engine):
    return engine.entries["db"].units[""].lease


def make_due(engine: Engine) -> None:
    """Pretend the lease's next step has come."""
    unit = engine.entries["db"].units[""]
    unit.lease = dataclasses.replace(unit.lease, at=time.monotonic())
    engine.schedule.at(unit, 0)


def test_one_lease_for_a_files_entry_and_a_template(tmp_path: Path) -> None:
    """Two entries naming one leased unit share one issue; they agree on the username."""
    fake = LeasingFake()
    engine = make(tmp_path, fake)
    engine.sync()
    assert fake.minted == 1
    assert (tmp_path / "db" / "username").read_text() == "user1"
    assert (tmp_path / "app.env").read_text() == "U=user1 P=pw1"
    store = tmp_path / LEASE_FILE
    assert store.stat().st_mode & 0o777 == 0o600
    assert "pw1" not in (tmp_path / ".secrets-bridge-state.json").read_text()


def test_renews_at_two_thirds_then_reissues_at_max_ttl(tmp_path: Path) -> None:
    """Renewal at ~2/3 of the TTL keeps the username; a short renewal plans a new issue at
    85-90% of the lifetime, which switches both files in one generation."""
    fake = LeasingFake(ttl=30, max_ttl=300)
    engine = make(tmp_path, fake)
    engine.sync()
    lease = lease_of(engine)
    issued = lease.issued
    assert lease.action == "renew" and abs(lease.at - (issued + 20)) < 1
    make_due(engine)
    assert engine.cycle().changed == [] and fake.renewals == ["database/creds/app/1"]
    # max_ttl reached: only 12s of lifetime in all
    fake.leases["database/creds/app/1"] = time.time() + 12 - (time.monotonic() - issued)
    make_due(engine)
    engine.cycle()
    lease = lease_of(engine)
    assert lease.action == "reissue" and issued + 12 * 0.85 - 0.5 <= lease.at <= issued + 12 * 0.90 + 0.5
    generation = os.readlink(tmp_path / "..data")
    make_due(engine)
    result = engine.cycle()
    assert sorted(result.changed) == ["app.env", "db/password", "db/username"] and fake.minted == 2
    assert os.readlink(tmp_path / "..data") != generation
    assert (tmp_path / "db" / "username").read_text() == "user2" and fake.revoked == []


def test_restart_resumes_the_lease(tmp_path: Path) -> None:
    """sync then run (a new engine) takes the lease back after a lookup: nothing is minted again."""
    fake = LeasingFake()
    engine = make(tmp_path, fake)
    engine.sync()
    engine.close()
    engine2 = make(tmp_path, fake)
    assert fake.lookups == ["database/creds/app/1"]
    assert engine2.sync().changed == [] and fake.minted == 1
    assert lease_of(engine2).action == "renew"
    engine2.close()


def test_lost_lease_is_issued_anew(tmp_path: Path) -> None:
    """A stored lease the vault no longer knows is replaced by a new issue at start."""
    fake = LeasingFake()
    engine = make(tmp_path, fake)
    engine.sync()
    engine.close()
    fake.leases.clear()
    engine2 = make(tmp_path, fake)
    assert sorted(engine2.sync().changed) == ["app.env", "db/password", "db/username"] and fake.minted == 2
    engine2.close()


def test_failed_renewal_backs_off_within_the_time_left(tmp_path: Path) -> None:
    """A renewal failing near expiry retries well before the lease lapses, keeping the files."""
    fake = LeasingFake(ttl=8, max_ttl=100)
    engine = make(tmp_path, fake)
    engine.sync()
    unit = engine.entries["db"].units[""]
    fake.down = True
    make_due(engine)
    now = time.monotonic()
    result = engine.cycle()
    assert "db" in result.failed and (tmp_path / "db" / "username").read_text() == "user1"
    assert engine.schedule.next_due(unit) - now <= 8 / 4 + 0.5


def test_revoke_on_exit(tmp_path: Path) -> None:
    """revoke_leases() revokes the leases of a provider with revoke_on_exit."""
    fake = LeasingFake(revoke_on_exit=True)
    engine = make(tmp_path, fake)
    engine.sync()
    engine.revoke_leases()
    assert fake.revoked == ["database/creds/app/1"]


def test_check_takes_running_leases_and_returns_its_own(tmp_path: Path) -> None:
    """check reads the running bridge's lease instead of minting; what it mints itself it revokes."""
    fake = LeasingFake()
    checker = Engine(make(tmp_path / "fresh", fake).config, providers={"db": fake})
    assert checker.check() == {} and fake.minted == 1 and fake.revoked == ["database/creds/app/1"]
    engine = make(tmp_path / "out", fake)
    engine.sync()
    engine.close()
    checker = Engine(engine.config, providers={"db": fake})
    assert checker.check() == {} and fake.minted == 2 and fake.revoked == ["database/creds/app/1"]
