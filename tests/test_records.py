"""The engine's record of every managed file and the state records built from it
(bridge/engine/records.py): what each render and commit changes, the Change of each file, what
a restart takes back, and the state file's records per file, with errors and removed files dropped."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bridge.config.fields import STATE_FILE
from bridge.config.loader import parse_config
from bridge.engine.cycle import Engine
from bridge.engine.records import ManagedFiles, StateRecords
from bridge.errors import Unavailable, WriteError
from bridge.writer.atomic import FileSpec, Writer
from bridge.writer.state import SecretRecord, State, read_state
from tests.engines import FakeProvider, config_text

SECRETS = ('  db: {provider: fake, ref: db/creds, mode: "0440"}\n'
           '  bundle: {provider: fake, ref: app/bundle, files: "*"}\n')


def _engine(tmp_path: Path, secrets: str = SECRETS) -> Engine:
    """An engine not started: its outputs and owner index, nothing written."""
    fake = FakeProvider()
    return Engine(parse_config(config_text(tmp_path / "out", secrets, instances={"fake": fake})),
                  providers={"fake": fake})


def _spec(content: bytes) -> FileSpec:
    return FileSpec(content, 0o400, 0, 0)


def test_a_new_file_is_added_with_its_version(tmp_path: Path) -> None:
    """A first render is an update; its commit is an "added" Change from no version to the rendered one."""
    engine = _engine(tmp_path)
    files, db = ManagedFiles(engine._owner), engine.entries["db"]
    updates = files.rendered(db, {"db": _spec(b"one")}, "1")
    assert updates == {"db": _spec(b"one")}
    changes = files.committed(["db"], updates, "..gen1")
    assert [(c.file, c.entry, c.provider, c.ref, c.old_version, c.new_version, c.generation, c.action)
            for c in changes] == [("db", "db", "fake", "db/creds", None, "1", "..gen1", "added")]
    assert files.spec("db") == _spec(b"one") and files.version("db") == "1" and files.updated("db") is not None
    assert set(db.files) == {"db"}


def test_same_content_new_version_is_no_update_but_moves_the_version(tmp_path: Path) -> None:
    """A new version with the same bytes writes nothing, and the next change starts from that version."""
    engine = _engine(tmp_path)
    files, db = ManagedFiles(engine._owner), engine.entries["db"]
    files.committed(["db"], files.rendered(db, {"db": _spec(b"one")}, "1"), None)
    assert files.rendered(db, {"db": _spec(b"one")}, "2") == {}
    updates = files.rendered(db, {"db": _spec(b"two")}, "3")
    [change] = files.committed(["db"], updates, None)
    assert (change.action, change.old_version, change.new_version) == ("updated", "2", "3")
    assert files.spec("db") == _spec(b"two")


def test_a_file_an_entry_no_longer_makes_is_removed(tmp_path: Path) -> None:
    """A `files: "*"` entry rendering fewer keys asks to remove the rest; the commit forgets them."""
    engine = _engine(tmp_path)
    files, bundle = ManagedFiles(engine._owner), engine.entries["bundle"]
    first = files.rendered(bundle, {"bundle/a": _spec(b"a"), "bundle/b": _spec(b"b")}, "1")
    files.committed(sorted(first), first, None)
    updates = files.rendered(bundle, {"bundle/a": _spec(b"a")}, "2")
    assert updates == {"bundle/b": None}
    [change] = files.committed(["bundle/b"], updates, None)
    assert (change.file, change.entry, change.action, change.old_version, change.new_version) == (
        "bundle/b", "bundle", "removed", "1", None)
    assert set(bundle.files) == {"bundle/a"} and files.spec("bundle/b") is None and "bundle/b" not in files.by_name


def _record(name: str, entry: str, ref: str, version: str, updated: str | None = "2026-01-02T03:04:05+00:00",
            key: str | None = None) -> SecretRecord:
    return SecretRecord(name, entry, "fake", "fake", ref, key, None, version, 3, "0400", 0, 0, updated, None)


def test_adopt_keeps_versions_of_files_from_the_same_source(tmp_path: Path) -> None:
    """A restart takes the files in the directory as committed, with the recorded version and time
    only where the record's source is still the entry's."""
    engine = _engine(tmp_path)
    files = ManagedFiles(engine._owner)
    files.adopt({"db": _spec(b"one"), "bundle/a": _spec(b"a")},
                {"db": _record("db", "db", "db/creds", "7"), "bundle/a": _record("bundle/a", "bundle", "old/ref", "4")})
    assert files.version("db") == "7" and files.updated("db") == 1767323045.0 and files.spec("db") == _spec(b"one")
    assert files.version("bundle/a") is None and files.spec("bundle/a") == _spec(b"a")
    assert set(engine.entries["db"].files) == {"db"} and files.pending == {}


def test_adopt_removes_orphans_naming_where_they_came_from(tmp_path: Path) -> None:
    """A file no entry makes is removed at the first commit, its Change naming the recorded source and version."""
    engine = _engine(tmp_path)
    files = ManagedFiles(engine._owner)
    files.adopt({"old": _spec(b"x"), "stray": _spec(b"y")}, {"old": _record("old", "old", "gone/ref", "9")})
    assert files.pending == {"old": None, "stray": None}
    changes = files.committed(["old", "stray"], files.pending, None)
    assert [(c.file, c.entry, c.provider, c.ref, c.old_version, c.action) for c in changes] == [
        ("old", "old", "fake", "gone/ref", "9", "removed"), ("stray", "stray", "", "", None, "removed")]
    assert files.by_name == {}


def _records(tmp_path: Path, engine: Engine) -> tuple[StateRecords, Writer]:
    writer = Writer(tmp_path / "out", require_tmpfs=False)
    writer.prepare()
    return StateRecords(State(writer), engine.settings), writer


def test_state_records_per_file_with_version_size_mode(tmp_path: Path) -> None:
    """Each committed file has a record: its entry, provider and its configured type, ref, version, size, mode, time."""
    engine = _engine(tmp_path)
    files, db = ManagedFiles(engine._owner), engine.entries["db"]
    files.committed(["db"], files.rendered(db, {"db": FileSpec(b"12345", 0o440, 0, 0)}, "3"), None)
    records, writer = _records(tmp_path, engine)
    records.update([db], files)
    assert records.save()
    [(name, record)] = read_state(writer.output_dir / STATE_FILE).items()
    assert (name, record.entry, record.provider, record.provider_type, record.ref, record.version, record.size,
            record.mode, record.error) == ("db", "db", "fake", "env", "db/creds", "3", 5, "0440", None)
    assert record.updated is not None and record.updated.endswith("+00:00")


def test_an_entry_without_files_is_recorded_by_name_with_its_error(tmp_path: Path) -> None:
    """An entry that has made nothing yet has one record under its name, with its failing unit's code
    and message and no version or size."""
    engine = _engine(tmp_path)
    bundle = engine.entries["bundle"]
    bundle.units[""].error = Unavailable("the server is down")
    records, writer = _records(tmp_path, engine)
    records.update([bundle], ManagedFiles(engine._owner))
    records.save()
    record = read_state(writer.output_dir / STATE_FILE)["bundle"]
    assert record.error == {"code": "unavailable", "message": "the server is down"}
    assert record.version is None and record.size is None


def test_removed_files_leave_the_state(tmp_path: Path) -> None:
    """When an entry's files shrink, the dropped file's record leaves the state file; the others stay."""
    engine = _engine(tmp_path)
    files, bundle = ManagedFiles(engine._owner), engine.entries["bundle"]
    first = files.rendered(bundle, {"bundle/a": _spec(b"a"), "bundle/b": _spec(b"b")}, "1")
    files.committed(sorted(first), first, None)
    records, writer = _records(tmp_path, engine)
    records.update([bundle], files)
    records.save()
    assert sorted(read_state(writer.output_dir / STATE_FILE)) == ["bundle/a", "bundle/b"]
    files.committed(["bundle/b"], files.rendered(bundle, {"bundle/a": _spec(b"a")}, "2"), None)
    records.update([bundle], files)
    records.save()
    assert sorted(read_state(writer.output_dir / STATE_FILE)) == ["bundle/a"]


def test_an_entry_recorded_by_name_keeps_one_record_as_its_files_come_and_go(tmp_path: Path) -> None:
    """An entry recorded under its name while it has nothing loses that record once it has files,
    and gets it back when they are gone: never both, never neither."""
    engine = _engine(tmp_path)
    files, bundle = ManagedFiles(engine._owner), engine.entries["bundle"]
    records, writer = _records(tmp_path, engine)
    records.update([bundle], files)
    records.save()
    assert sorted(read_state(writer.output_dir / STATE_FILE)) == ["bundle"]
    first = files.rendered(bundle, {"bundle/a": _spec(b"a")}, "1")
    files.committed(sorted(first), first, None)
    records.update([bundle], files)
    records.save()
    assert sorted(read_state(writer.output_dir / STATE_FILE)) == ["bundle/a"]
    files.committed(["bundle/a"], files.rendered(bundle, {}, "2"), None)
    records.update([bundle], files)
    records.save()
    assert sorted(read_state(writer.output_dir / STATE_FILE)) == ["bundle"]


class _FullWriter(Writer):
    """A writer whose state file cannot be written while `full` is set."""

    full = True

    def write_state(self, name: str, data: bytes, mode: int = 0o644) -> None:
        if self.full:
            raise WriteError("no space left on device")
        super().write_state(name, data, mode)


def test_state_write_failure_logged_once_until_it_works(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A state file that cannot be written is logged once however often it fails, and its return is logged."""
    engine = _engine(tmp_path)
    writer = _FullWriter(tmp_path / "out", require_tmpfs=False)
    writer.prepare()
    records = StateRecords(State(writer), engine.settings)
    caplog.set_level(logging.INFO, logger="secrets_bridge.engine")
    assert not records.save() and not records.save()
    writer.full = False
    assert records.save()
    messages = [r.getMessage() for r in caplog.records if r.name == "secrets_bridge.engine"]
    assert messages == ["cannot write the state file: no space left on device", "the state file is written again"]
