"""The state file (bridge/writer/state.py): records saved sorted through the held directory and
read back, removed names dropped, a record edited into a wrong shape left out, and a state file
that is not a regular file read as empty, never a hang."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bridge.config.fields import STATE_FILE
from bridge.writer.atomic import Writer
from bridge.writer.state import SecretRecord, State, parse_state, read_state


def _record(name: str, **changes: Any) -> SecretRecord:
    record = SecretRecord(name=name, entry=name, provider="dev", provider_type="file", ref=f"refs/{name}",
                          key=None, pinned_version=None, version="3", size=12, mode="0444", uid=0, gid=0,
                          updated="2026-12-06T00:00:00+00:00", error=None)
    return record._replace(**changes)


def _state(out: Path) -> State:
    writer = Writer(out, require_tmpfs=False)
    writer.prepare()
    return State(writer)


def test_records_saved_and_read_back(tmp_path: Path) -> None:
    """Saved records come back equal, sorted by name, and a removed name is gone after the next save."""
    state = _state(tmp_path)
    records = [_record("b"), _record("a", error={"code": "not_found", "message": "gone"}), _record("d/c")]
    state.update(records)
    state.save()
    doc = json.loads((tmp_path / STATE_FILE).read_text())
    assert list(doc["secrets"]) == ["a", "b", "d/c"] and doc["output_dir"] == str(tmp_path)
    assert read_state(tmp_path / STATE_FILE) == {r.name: r for r in records}
    assert state.load() == {r.name: r for r in records}
    state.update([_record("b", version="4")], removed=["a"])
    state.save()
    assert read_state(tmp_path / STATE_FILE) == {"b": _record("b", version="4"), "d/c": _record("d/c")}


def test_records_of_a_wrong_shape_are_left_out() -> None:
    """A record edited into a wrong shape (a number for a text, a bad date, a bool size, a field
    unknown or missing) is left out alone; broken or deeply nested JSON is an empty state, never an
    exception."""
    good = _record("good")._asdict()
    secrets = {"good": good, "uid": {**good, "uid": "0"}, "size": {**good, "size": True},
               "date": {**good, "updated": "yesterday"}, "error": {**good, "error": "text"},
               "unknown": {**good, "colour": "red"}, "missing": {"name": "missing"}, "list": [1, 2]}
    assert list(parse_state(json.dumps({"secrets": secrets}).encode())) == ["good"]
    for broken in (b"{", b"[]", b'{"secrets": 1}', b"[" * 100_000 + b"]" * 100_000):
        assert parse_state(broken) == {}


def test_a_state_file_that_is_not_utf8_loads_as_empty(tmp_path: Path) -> None:
    """A state file someone wrote bytes into that are not UTF-8 is no state at the start, not an error."""
    state = _state(tmp_path)
    state.update([_record("a")])
    state.save()
    assert list(state.load()) == ["a"]
    (tmp_path / STATE_FILE).write_bytes(b'{"secrets": {"\xff": 1}}')
    assert state.load() == {} and read_state(tmp_path / STATE_FILE) == {}


def test_a_state_file_with_a_byte_order_mark_or_in_utf16_keeps_its_records(tmp_path: Path) -> None:
    """A state file an editor saved with a BOM, or as UTF-16, is read as json would read it, by the
    start (`State.load`) and by `ls` (`read_state`) alike."""
    state = _state(tmp_path)
    state.update([_record("a"), _record("b")])
    state.save()
    text = (tmp_path / STATE_FILE).read_text()
    for data in (b"\xef\xbb\xbf" + text.encode(), text.encode("utf-16")):
        (tmp_path / STATE_FILE).write_bytes(data)
        assert list(state.load()) == ["a", "b"] and list(read_state(tmp_path / STATE_FILE)) == ["a", "b"]


def test_only_the_records_under_secrets_are_records() -> None:
    """Files named exactly as a record's 14 fields are still 14 records (their map is not taken for a
    record), and a record whose error is not text values is left out alone."""
    records = {f: _record(f)._asdict() for f in SecretRecord._fields}
    assert sorted(parse_state(json.dumps({"secrets": records}).encode())) == sorted(SecretRecord._fields)
    odd_error = {**_record("odd")._asdict(), "error": _record("inner")._asdict()}
    nested = {**_record("nested")._asdict(), "error": {"code": {"deep": "x"}, "message": "m"}}
    secrets = {"good": _record("good")._asdict(), "odd": odd_error, "nested": nested}
    assert list(parse_state(json.dumps({"secrets": secrets}).encode())) == ["good"]


def test_records_the_bridge_could_not_write_back_are_left_out() -> None:
    """A time past what a datetime holds once in UTC (year 10000 by its offset) and a name with a lone
    surrogate (which no terminal or log can print) are wrong shapes: left out, never a crash later."""
    secrets = {"good": _record("good")._asdict(),
               "late": _record("late", updated="9999-12-31T23:59:59-23:59")._asdict(),
               "\ud800": _record("\ud800")._asdict(),
               "ref": _record("ref", ref="a\udfffb")._asdict()}
    assert list(parse_state(json.dumps({"secrets": secrets}).encode())) == ["good"]


def test_a_state_file_that_is_not_a_regular_file_reads_as_empty(tmp_path: Path) -> None:
    """`ls` reading a FIFO or a folder planted as the state file gets no records, without blocking."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    assert read_state(tmp_path / "fifo") == {} and read_state(tmp_path / "folder") == {}
    assert read_state(tmp_path / "missing") == {}
