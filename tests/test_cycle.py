"""The engine's cycle (bridge/engine/cycle.py) with an in-memory fake of our own Provider interface
(the wire is tested per provider): one commit per cycle, readiness and staleness, outputs sharing
a fetch, scale. Schedule, failures, phases and extraction have test files of their own."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from bridge.errors import Unavailable
from bridge.provider import Request
from tests.engines import FakeProvider, fake_engine, make_engine

SECRETS = """  a: {provider: fake, ref: r1}
  b: {provider: fake, ref: r1, version: 1}
  c: {provider: fake, ref: r2, mode: "0400"}
"""


def test_sync_writes_all_in_one_commit(tmp_path: Path) -> None:
    """sync fetches every secret and commits them together."""
    engine, fake = fake_engine(tmp_path, SECRETS)
    fake.put("r1", b"one")
    fake.put("r2", b"two")
    result = engine.sync()
    assert sorted(result.changed) == ["a", "b", "c"] and not result.failed
    assert (tmp_path / "a").read_bytes() == b"one" and (tmp_path / "c").read_bytes() == b"two"
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("..2")]) == 1


def test_cheap_check_then_fetch_only_changed(tmp_path: Path) -> None:
    """A cycle checks unpinned secrets in one batch call and fetches only what moved; pins stay."""
    engine, fake = fake_engine(tmp_path, SECRETS)
    fake.put("r1", b"one")
    fake.put("r2", b"two")
    engine.sync()
    fake.fetches.clear()
    engine.cycle(engine.units.values())
    assert fake.fetches == [] and fake.checks[-1] == ["r1", "r2"]
    fake.put("r1", b"one-v2")
    result = engine.cycle(engine.units.values())
    assert fake.fetches == [Request("r1")]
    assert result.changed == ["a"]
    assert (tmp_path / "a").read_bytes() == b"one-v2" and (tmp_path / "b").read_bytes() == b"one"


def test_readiness(tmp_path: Path) -> None:
    """Ready only when every required secret is written; optional ones do not block."""
    secrets = "  a: {provider: fake, ref: r1}\n  o: {provider: fake, ref: nope, optional: true}\n"
    engine, fake = fake_engine(tmp_path, secrets)
    assert not engine.ready()
    fake.put("r1", b"one")
    engine.sync()
    assert engine.ready() and engine.missing_required() == []


def test_stale_after_max_staleness(tmp_path: Path) -> None:
    """A secret failing for longer than max_staleness makes the bridge not ready."""
    engine, fake = fake_engine(tmp_path, "  a: {provider: fake, ref: r1}\n", max_staleness="100ms")
    fake.put("r1", b"one")
    engine.sync()
    fake.failure = Unavailable("down")
    engine.cycle(engine.units.values())
    time.sleep(0.2)
    assert engine.stale() == ["a"] and not engine.ready()


def test_restart_keeps_files_when_provider_down(tmp_path: Path) -> None:
    """A restart with the provider down keeps the files from the previous run."""
    engine, fake = fake_engine(tmp_path, "  a: {provider: fake, ref: r1}\n")
    fake.put("r1", b"one")
    engine.sync()
    engine.close()
    engine2, fake2 = fake_engine(tmp_path, "  a: {provider: fake, ref: r1}\n")
    fake2.failure = Unavailable("down")
    result = engine2.sync()
    assert "a" in result.failed and engine2.ready()
    assert (tmp_path / "a").read_bytes() == b"one"


def test_removed_secret_leaves_directory(tmp_path: Path) -> None:
    """A secret no longer in the config is removed at the next commit."""
    engine, fake = fake_engine(tmp_path, "  a: {provider: fake, ref: r1}\n  b: {provider: fake, ref: r1}\n")
    fake.put("r1", b"one")
    engine.sync()
    engine.close()
    engine2, fake2 = fake_engine(tmp_path, "  a: {provider: fake, ref: r1}\n")
    fake2.put("r1", b"one")
    assert engine2.sync().changed == ["b"]
    assert not (tmp_path / "b").exists()


@pytest.fixture
def tiny_tmpfs(tmp_path: Path):
    """A 64 KiB tmpfs, to fill up (needs root, as in CI)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                      capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_tmpfs_keeps_last_generation(tiny_tmpfs: Path) -> None:
    """When the tmpfs is full the commit fails, the last good files stay, and the next cycle retries."""
    engine, fake = fake_engine(tiny_tmpfs, "  a: {provider: fake, ref: r1}\n", require_tmpfs="true")
    fake.put("r1", b"small")
    assert engine.sync().changed == ["a"]
    fake.put("r1", b"x" * 200_000)
    result = engine.cycle(engine.units.values())
    assert result.write_error is not None and result.changed == []
    assert (tiny_tmpfs / "a").read_bytes() == b"small"
    assert [p.name for p in tiny_tmpfs.iterdir() if p.name.startswith("..2")] == [os.readlink(tiny_tmpfs / "..data")]
    fake.put("r1", b"fits again")
    assert engine.cycle(engine.units.values()).changed == ["a"]
    assert (tiny_tmpfs / "a").read_bytes() == b"fits again"
    engine.close()


# -- entries that make several files, templates, shared fetch units ------------------------------

SHAPES = """  db:
    provider: fake
    ref: creds
    files:
      username: user
      password: {key: pass, mode: "0400"}
  app.env:
    template: "URL=postgres://{{ db.user }}:{{ db.pass | urlencode }}@db/app\\nQ={{ db.pass | shell_quote }}\\n"
    values:
      db: {provider: fake, ref: creds}
  all: {provider: fake, ref: creds, files: "*"}
"""


def test_files_and_template_share_one_fetch(tmp_path: Path) -> None:
    """Three entries naming one unit cost one fetch; files: and template: render from it."""
    engine, fake = fake_engine(tmp_path, SHAPES)
    fake.put("creds", b'{"user": "u1", "pass": "p/1 x"}')
    result = engine.sync()
    assert not result.failed and fake.fetches == [Request("creds")]
    assert (tmp_path / "db" / "username").read_bytes() == b"u1"
    assert (tmp_path / "db" / "password").read_bytes() == b"p/1 x"
    assert (tmp_path / "db" / "password").stat().st_mode & 0o777 == 0o400
    assert (tmp_path / "app.env").read_text() == "URL=postgres://u1:p%2F1%20x@db/app\nQ='p/1 x'\n"
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == ["pass", "user"]


def test_rotation_changes_all_files_in_one_generation(tmp_path: Path) -> None:
    """A rotation of a files: entry changes both files in one commit, announced as records."""
    engine, fake = fake_engine(tmp_path, SHAPES)
    fake.put("creds", b'{"user": "u1", "pass": "p1"}')
    engine.sync()
    seen: list[list] = []
    engine.subscribers.append(seen.append)
    generation = os.readlink(tmp_path / "..data")
    fake.put("creds", b'{"user": "u2", "pass": "p2"}')
    result = engine.cycle(engine.units.values())
    assert sorted(result.changed) == ["all/pass", "all/user", "app.env", "db/password", "db/username"]
    assert os.readlink(tmp_path / "..data") != generation and len(seen) == 1
    record = next(c for c in seen[0] if c.file == "db/password")
    assert (record.entry, record.provider, record.ref, record.old_version, record.new_version) == (
        "db", "fake", "creds", "1", "2")
    assert record.generation == os.readlink(tmp_path / "..data")


def test_files_entry_is_all_or_nothing(tmp_path: Path) -> None:
    """When one key of a files: entry is missing, none of its files change (no key beside a
    certificate from another issue)."""
    secrets = "  tls: {provider: fake, ref: pki, files: {tls.crt: cert, tls.key: key}}\n"
    engine, fake = fake_engine(tmp_path, secrets)
    fake.put("pki", b'{"cert": "C1", "key": "K1"}')
    engine.sync()
    fake.put("pki", b'{"cert": "C2"}')
    result = engine.cycle(engine.units.values())
    assert result.changed == [] and "tls.key" in str(result.failed["tls"])
    assert (tmp_path / "tls" / "tls.crt").read_text() == "C1"


def test_star_files_follow_the_keys(tmp_path: Path) -> None:
    """files: "*" adds and removes files as the map's keys come and go; a bad key name fails the entry."""
    engine, fake = fake_engine(tmp_path, '  cfg: {provider: fake, ref: m, files: "*"}\n')
    fake.put("m", b'{"a": "1", "b": {"n": 2}}')
    engine.sync()
    assert (tmp_path / "cfg" / "b").read_text() == '{"n":2}'
    fake.put("m", b'{"a": "1", "c": "3"}')
    assert sorted(engine.cycle(engine.units.values()).changed) == ["cfg/b", "cfg/c"]
    assert not (tmp_path / "cfg" / "b").exists()
    fake.put("m", b'{"..data": "x"}')
    result = engine.cycle(engine.units.values())
    assert "cfg" in result.failed and (tmp_path / "cfg" / "c").read_text() == "3"


@pytest.mark.parametrize("template", [
    "{{ db.__class__.__mro__[1].__subclasses__() }}",
    "{{ db.pop('user') }}",
    "{{ cycler.__init__.__globals__ }}",
])
def test_template_sandbox(tmp_path: Path, template: str) -> None:
    """A template that reaches for Python internals or mutates a value is refused by the sandbox:
    that entry fails saying so, and the file is not written."""
    secrets = f'  t:\n    template: "{template}"\n    values: {{db: {{provider: fake, ref: creds}}}}\n'
    engine, fake = fake_engine(tmp_path, secrets)
    fake.put("creds", b'{"user": "u1"}')
    result = engine.sync()
    assert "refused by the sandbox" in str(result.failed["t"]) and not (tmp_path / "t").exists()


@pytest.mark.parametrize(("entry", "message"), [
    ('  t: {template: "{{ a.x ", values: {a: {provider: fake, ref: r}}}',
     "secrets.t.template: template does not parse"),
    ('  t: {template: "{{ b.x }}", values: {a: {provider: fake, ref: r}}}', "template names b, not declared"),
    ('  t: {template: "x"}', "template needs values"),
    ('  t: {template: "x", provider: fake, ref: r, values: {a: {provider: fake, ref: r}}}', "not provider, ref"),
    ("  t: {provider: fake, ref: r, key: k, files: [a]}", "secrets.t.files"),
    ("  t: {provider: fake, ref: r, key: k, files: {a: a}}", "key goes on each file"),
    ("  t: {provider: fake, ref: r, files: {../a: a}}", "secrets.t.files.../a: target must not contain"),
    ("  t: {provider: fake, ref: r, version: previous}", "secrets.t.version: provider 'fake' keeps no previous"),
    ("  t: {provider: fake, ref: r, params: {a: 1}}", "secrets.t.params: provider 'fake' takes no params"),
])
def test_entry_shape_errors(tmp_path: Path, entry: str, message: str) -> None:
    """A template that does not parse or names an undeclared value, or a mixed shape, is one config line."""
    from bridge.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        fake_engine(tmp_path, entry + "\n")
    assert message in str(info.value) and "\n" not in str(info.value)


# -- scale --------------------------------------------------------------------------------------


class CountingFake(FakeProvider):
    def __init__(self) -> None:
        super().__init__()
        self.resolve_calls = 0

    def versions(self, requests):
        self.resolve_calls += 1
        return super().versions(requests)


def test_ten_thousand_entries_idle_and_one_change(tmp_path: Path) -> None:
    """At 10,000 entries an idle cycle is one batch check and no commit; one change writes one file."""
    n = 10_000
    secrets = "".join(f"  s{i}: {{provider: fake, ref: r{i}}}\n" for i in range(n))
    fake = CountingFake()
    for i in range(n):
        fake.put(f"r{i}", f"v{i}".encode())
    engine = make_engine(tmp_path, secrets, instances={"fake": fake})
    engine.sync()
    inodes = {p.name: p.stat().st_ino for p in (tmp_path / "..data").iterdir()}
    fake.fetches.clear()
    fake.resolve_calls = 0
    assert engine.cycle(engine.units.values()).changed == []
    assert fake.resolve_calls == 1 and fake.fetches == []
    fake.put("r77", b"new")
    assert engine.cycle(engine.units.values()).changed == ["s77"]
    assert fake.fetches == [Request("r77")]
    after = {p.name: p.stat().st_ino for p in (tmp_path / "..data").iterdir()}
    assert [name for name in after if after[name] != inodes[name]] == ["s77"]
    engine.close()


def test_last_refresh_metric_per_entry(tmp_path: Path) -> None:
    """/metrics gives each entry's last successful refresh, read at scrape time."""
    from prometheus_client import generate_latest

    from bridge.observe.metrics import REGISTRY

    engine, fake = fake_engine(tmp_path, SECRETS)
    fake.put("r1", b"one")
    fake.put("r2", b"two")
    before = time.time()
    engine.sync()
    text = generate_latest(REGISTRY).decode()
    name = "secrets_bridge_secret_last_refresh_timestamp_seconds{secret=\"c\"}"
    line = next(x for x in text.splitlines() if x.startswith(name))
    assert float(line.split()[-1]) >= before - 1


@pytest.mark.parametrize("template", [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    '{{ "x" * 200000000 }}',
    "{% for i in range(90000) %}{{ db.user * 20 }}{% endfor %}",
    "{{ 2 ** 100000000 }}",
])
def test_runaway_template_fails_its_file_fast(tmp_path: Path, template: str) -> None:
    """A template that would loop for ever or fill memory fails its own file quickly; others are written."""
    secrets = (f"  t:\n    template: '{template}'\n    values: {{db: {{provider: fake, ref: creds}}}}\n"
               "  plain: {provider: fake, ref: creds}\n")
    engine, fake = fake_engine(tmp_path, secrets)
    fake.put("creds", b'{"user": "u1"}')
    started = time.monotonic()
    result = engine.sync()
    assert time.monotonic() - started < 5
    assert "too big" in str(result.failed["t"]) and result.changed == ["plain"]


