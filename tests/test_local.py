"""The `file` and `env` providers (Compose's file and environment secret sources)."""

from __future__ import annotations

import base64
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from bridge.errors import AccessDenied, SecretNotFound, Unavailable
from bridge.provider import Fetched, Request
from providers.local import EnvProvider, EnvSettings, FileProvider, FileSettings, file_version
from tests.conformance import ProviderConformance
from tests.engines import make_engine
from tests.versions import latest, latest_one


class FileBackend:
    """Writes files under base_dir as an operator (or a Compose bind mount) would."""

    text_fields: dict[str, Any] = {}
    binary_fields: dict[str, Any] = {}
    unsupported = {"history": "a file keeps only its latest version"}

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir

    def new_ref(self) -> str:
        return f"conformance/{uuid.uuid4().hex}"

    def put_binary(self, ref: str, data: bytes) -> str:
        path = self.base_dir / ref
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_bytes(data)
        temporary.replace(path)
        return file_version(os.stat(path))

    def put(self, ref: str, value: str) -> str:
        return self.put_binary(ref, value.encode())

    def credentials(self) -> list[str]:
        return []

    @contextmanager
    def outage(self) -> Iterator[None]:
        """base_dir is gone (a volume not mounted) while inside."""
        away = self.base_dir.with_name(self.base_dir.name + ".away")
        self.base_dir.rename(away)
        try:
            yield
        finally:
            away.rename(self.base_dir)

    def calls(self) -> int | None:
        return None  # a filesystem counts no requests


class EnvBackend:
    """Sets environment variables of this process (undone after the test)."""

    text_fields: dict[str, Any] = {}
    binary_fields: dict[str, Any] = {"encoding": "base64"}  # a variable holds text, never a NUL byte
    unsupported = {
        "pins": "an environment variable has no versions to pin",
        "history": "an environment variable has no versions",
        "versions": "env reports no version ids; the engine compares content instead",
        "outage": "the process environment cannot become unavailable",
    }

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch

    def new_ref(self) -> str:
        return f"SB_CONFORMANCE_{uuid.uuid4().hex.upper()}"

    def put(self, ref: str, value: str) -> str:
        self.monkeypatch.setenv(ref, value)
        return None  # type: ignore[return-value]  # env has no version ids

    def put_binary(self, ref: str, data: bytes) -> str:
        return self.put(ref, base64.b64encode(data).decode())

    def credentials(self) -> list[str]:
        return []


class TestFileConformance(ProviderConformance):
    """The shared provider cases for `file`, on a real directory."""

    @pytest.fixture
    def provider(self, tmp_path: Path) -> FileProvider:
        (tmp_path / "src").mkdir()
        return FileProvider("dev", FileSettings(base_dir=tmp_path / "src"))

    @pytest.fixture
    def backend(self, tmp_path: Path) -> FileBackend:
        return FileBackend(tmp_path / "src")


class TestEnvConformance(ProviderConformance):
    """The shared provider cases for `env`, on this process's environment."""

    @pytest.fixture
    def provider(self) -> EnvProvider:
        return EnvProvider("env", EnvSettings())

    @pytest.fixture
    def backend(self, monkeypatch: pytest.MonkeyPatch) -> EnvBackend:
        return EnvBackend(monkeypatch)


def test_file_reads_bytes_with_mtime_version(tmp_path: Path) -> None:
    """A file under base_dir is read as raw bytes; its version starts with its modification time."""
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "key").write_bytes(bytes(range(256)))
    p = FileProvider("dev", FileSettings(base_dir=tmp_path))
    fetched = p.fetch(Request("tls/key"))
    assert fetched.value == bytes(range(256))
    assert fetched.version == latest_one(p, "tls/key") == file_version(os.stat(tmp_path / "tls" / "key"))
    assert fetched.version.startswith(f"{os.stat(tmp_path / 'tls' / 'key').st_mtime_ns}-")


def test_file_change_moves_version(tmp_path: Path) -> None:
    """Rewriting the file gives a new version, so the engine sees the change."""
    path = tmp_path / "a"
    path.write_text("one")
    p = FileProvider("dev", FileSettings(base_dir=tmp_path))
    v1 = latest_one(p, "a")
    time.sleep(0.01)
    path.write_text("two")
    os.utime(path, ns=(time.time_ns(), time.time_ns()))
    assert latest_one(p, "a") != v1


def test_file_missing_and_escaping(tmp_path: Path) -> None:
    """A missing file is SecretNotFound; a ref leaving base_dir is refused."""
    p = FileProvider("dev", FileSettings(base_dir=tmp_path))
    with pytest.raises(SecretNotFound, match="dev: nope: no such file"):
        p.fetch(Request("nope"))
    for ref in ("../etc/passwd", "/etc/passwd", "a/../../x", ""):
        with pytest.raises(SecretNotFound, match="relative to base_dir"):
            p.fetch(Request(ref))


def test_file_refuses_symlinks_out_of_base_dir(tmp_path: Path) -> None:
    """A ref whose file resolves outside base_dir, through any link, is AccessDenied for that ref alone;
    links that stay inside base_dir (a Kubernetes volume's ..data) are followed."""
    base, outside = tmp_path / "src", tmp_path / "elsewhere"
    base.mkdir()
    outside.mkdir()
    (outside / "shadow").write_text("not yours")
    (base / "leak").symlink_to(outside / "shadow")
    (base / "dir").symlink_to(outside)
    (base / "..2026_11_28").mkdir()
    (base / "..2026_11_28" / "tls.key").write_text("KEY")
    (base / "..data").symlink_to("..2026_11_28")
    (base / "tls.key").symlink_to("..data/tls.key")
    (base / "fine").write_text("fine")
    p = FileProvider("dev", FileSettings(base_dir=base))
    requests = [Request("leak"), Request("dir/shadow"), Request("tls.key"), Request("fine")]
    got = p.fetch_many(requests)
    for request in requests[:2]:
        outcome = got[request]
        assert isinstance(outcome, AccessDenied) and "outside base_dir" in str(outcome)
        assert request.ref in str(outcome) and "not yours" not in repr(outcome)
    assert [o.value for o in (got[requests[2]], got[requests[3]]) if isinstance(o, Fetched)] == [b"KEY", b"fine"]


def test_file_base_dir_through_a_symlink(tmp_path: Path) -> None:
    """base_dir may itself be a link: files under its target are inside it."""
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a").write_text("A")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    p = FileProvider("dev", FileSettings(base_dir=tmp_path / "link"))
    assert p.fetch(Request("a")).value == b"A"


def test_file_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    """A FIFO, a directory or a link loop is SecretNotFound at once: nothing blocks, nothing crashes."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    p = FileProvider("dev", FileSettings(base_dir=tmp_path))
    done: dict[Request, object] = {}
    worker = threading.Thread(target=lambda: done.update(p.fetch_many(
        [Request("fifo"), Request("folder"), Request("loop")])))
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "reading a FIFO blocked"
    assert all(isinstance(o, SecretNotFound) for o in done.values()) and len(done) == 3


def test_file_missing_base_dir_is_unavailable(tmp_path: Path) -> None:
    """A base_dir that is not there (a volume not mounted yet) is Unavailable, not a missing secret."""
    p = FileProvider("dev", FileSettings(base_dir=tmp_path / "not-mounted"))
    with pytest.raises(Unavailable, match="base_dir .* does not exist"):
        p.fetch(Request("a"))
    assert isinstance(latest(p, ["a"])["a"], Unavailable)
    shutil.rmtree(tmp_path, ignore_errors=True)


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
    engine = make_engine(tmp_path / "out", """  site.key: {provider: dev, ref: site.key, mode: "0400"}
  api_token: {provider: env, ref: API_TOKEN}
""", providers=f"  dev: {{type: file, base_dir: {tmp_path / 'src'}}}\n  env: {{type: env}}\n")
    assert sorted(engine.sync().changed) == ["api_token", "site.key"]
    assert (tmp_path / "out" / "site.key").read_text() == "KEY"
    assert (tmp_path / "out" / "api_token").read_text() == "tok"


def test_env_never_writes_the_bridges_own_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`{provider: env, ref: VAULT_TOKEN}` beside a vault provider is refused: the bridge's own token
    never lands in a file (the vault provider declares it in `credential_env`)."""
    from bridge.errors import AccessDenied
    from bridge.provider import provider_class
    from providers.local import EnvProvider, EnvSettings

    provider_class("vault")  # configured beside it: its credentials are the bridge's own

    monkeypatch.setenv("VAULT_TOKEN", "hvs.own-token-never-written")
    monkeypatch.setenv("APP_TOKEN", "app")
    provider = EnvProvider("env", EnvSettings())
    outcomes = provider.fetch_many([Request("VAULT_TOKEN"), Request("APP_TOKEN")])
    assert isinstance(outcomes[Request("VAULT_TOKEN")], AccessDenied)
    assert "hvs." not in str(outcomes[Request("VAULT_TOKEN")])
    assert outcomes[Request("APP_TOKEN")].value == b"app"


@pytest.mark.parametrize("how", ["in place (cp -p)", "renamed over (rsync -t)"])
def test_content_replaced_with_its_mtime_kept_moves_the_version(tmp_path: Path, how: str) -> None:
    """New content of the same size with the old mtime put back (`cp -p`, `rsync -t`, `tar x`)
    moves the version (the ctime, and for a rename the inode, change), so the change is fetched."""
    path = tmp_path / "v"
    path.write_text("first")
    p = FileProvider("dev", FileSettings(base_dir=tmp_path))
    before = p.fetch(Request("v"))
    kept = os.stat(path)
    time.sleep(0.01)
    if how.startswith("in place"):
        path.write_text("other")
    else:
        (tmp_path / "v.tmp").write_text("other")
        (tmp_path / "v.tmp").replace(path)
    os.utime(path, ns=(kept.st_atime_ns, kept.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == kept.st_mtime_ns
    assert latest_one(p, "v") != before.version
    after = p.fetch(Request("v"))
    assert (after.value, after.version) == (b"other", latest_one(p, "v"))


def test_file_past_the_size_limit_is_refused_without_reading_it(tmp_path: Path) -> None:
    """A 3 GiB sparse source file is that ref's error (named, the limit said), read no further than
    the limit; the others in the batch are read."""
    import tracemalloc

    with open(tmp_path / "huge", "wb") as f:
        f.truncate(3 << 30)
    (tmp_path / "small").write_text("ok")
    p = FileProvider("dev", FileSettings(base_dir=tmp_path))
    tracemalloc.start()
    try:
        outcomes = p.fetch_many([Request("huge"), Request("small")])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(outcomes[Request("huge")], SecretNotFound) and "64 MiB" in str(outcomes[Request("huge")])
    assert outcomes[Request("small")].value == b"ok"
    assert peak < 200 * 2**20, peak
