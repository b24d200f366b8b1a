"""Log output and the audit trail: JSON lines, one audit event per changed file, the 0600 audit file."""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import WriteError
from bridge.observe.changes import Change
from bridge.observe.logs import AUDIT_LOGGER, HELD_LINES, AuditLog, JsonFormatter, TextFormatter, held, setup_logging

CHANGES = [
    Change(file="db/password", entry="db", provider="vault", ref="secret/app/db", old_version="3", new_version="4",
           generation="..2026_11_28_02_10_00.123456789", action="updated"),
    Change(file="api_key", entry="api_key", provider="aws", ref="prod/api-key", old_version=None,
           new_version="AWSCURRENT", generation="..2026_11_28_02_10_00.123456789", action="added"),
]
EXPECTED = [
    {"event": "secret_changed", "secret": "db", "file": "db/password", "provider": "vault", "ref": "secret/app/db",
     "old_version": "3", "new_version": "4", "generation": "..2026_11_28_02_10_00.123456789", "action": "updated"},
    {"event": "secret_changed", "secret": "api_key", "file": "api_key", "provider": "aws", "ref": "prod/api-key",
     "old_version": None, "new_version": "AWSCURRENT", "generation": "..2026_11_28_02_10_00.123456789",
     "action": "added"},
]
FIELDS = ("event", "secret", "file", "provider", "ref", "old_version", "new_version", "generation", "action")


def test_one_event_per_change_on_the_audit_logger(caplog: pytest.LogCaptureFixture) -> None:
    """Each Change becomes one secret_changed record on secrets_bridge.audit, with the SPEC's fields."""
    with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER):
        AuditLog(None)(CHANGES)
    records = [r for r in caplog.records if r.name == AUDIT_LOGGER]
    assert [{f: getattr(r, f) for f in FIELDS} for r in records] == EXPECTED
    assert "db/password" in records[0].getMessage() and "3 -> 4" in records[0].getMessage()


def test_json_formatter_puts_extras_beside_the_message() -> None:
    """A JSON line has time, level, logger, message first, then the record's extra fields."""
    record = logging.LogRecord(AUDIT_LOGGER, logging.INFO, __file__, 1, "changed %s", ("a",), None)
    record.__dict__.update(EXPECTED[0])
    doc = json.loads(JsonFormatter().format(record))
    assert list(doc)[:4] == ["time", "level", "logger", "message"]
    assert (doc["level"], doc["logger"], doc["message"]) == ("INFO", AUDIT_LOGGER, "changed a")
    assert doc["time"].endswith("Z") and {k: doc[k] for k in FIELDS} == EXPECTED[0]


def test_json_formatter_includes_the_exception() -> None:
    """A record with exc_info carries its traceback as one JSON string (still one line)."""
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("secrets_bridge", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exception"]


def test_audit_file_appended_with_mode_0600(tmp_path: Path) -> None:
    """audit_log gets one JSON line per change, appended across calls, in a file created 0600."""
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    assert path.exists() and stat.S_IMODE(path.stat().st_mode) == 0o600
    audit(CHANGES)
    audit(CHANGES[:1])
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [{f: line[f] for f in FIELDS} for line in lines] == [*EXPECTED, EXPECTED[0]]
    assert all(line["time"].endswith("Z") for line in lines)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_audit_file_narrowed_to_0600(tmp_path: Path) -> None:
    """An existing audit file readable by others is narrowed to 0600, its content kept."""
    path = tmp_path / "audit.jsonl"
    path.write_text("earlier\n")
    path.chmod(0o644)
    AuditLog(path)(CHANGES[:1])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("earlier\n") and len(path.read_text().splitlines()) == 2


def test_audit_file_never_through_a_symlink(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A symlink at audit_log is refused at start; one planted later is not followed, and is logged once."""
    victim = tmp_path / "victim"
    victim.write_text("")
    link = tmp_path / "audit.jsonl"
    link.symlink_to(victim)
    with pytest.raises(WriteError, match="audit_log: .* is a symlink"):
        AuditLog(link)
    link.unlink()
    audit = AuditLog(link)
    link.unlink()
    link.symlink_to(victim)
    with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER):
        audit(CHANGES)
        audit(CHANGES)
    assert victim.read_text() == ""
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
    link.unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER):
        audit(CHANGES[:1])
    assert "again" in caplog.text and len(link.read_text().splitlines()) == 1


def test_audit_file_not_a_fifo(tmp_path: Path) -> None:
    """A FIFO at audit_log is refused at once (no reader: the open would otherwise block)."""
    fifo = tmp_path / "audit.fifo"
    os.mkfifo(fifo)
    with pytest.raises(WriteError, match="audit_log: cannot open"):
        AuditLog(fifo)


def test_audit_file_in_a_missing_folder(tmp_path: Path) -> None:
    """An audit_log whose folder does not exist stops the start with one line naming the field."""
    with pytest.raises(WriteError, match=r"^audit_log: cannot open .*No such file or directory$"):
        AuditLog(tmp_path / "nope" / "audit.jsonl")


def test_text_lines_cannot_be_forged() -> None:
    """A name with a newline in a text log message is escaped: one record, one line."""
    record = logging.LogRecord("secrets_bridge", logging.ERROR, __file__, 1, "failed: %s", ("a\nFAKE INFO ok\x1b[0m",),
                               None)
    line = TextFormatter().format(record)
    assert "\n" not in line and line.endswith("failed: a\\x0aFAKE INFO ok\\x1b[0m")


def test_held_lines_are_written_together_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    """Inside `held()` log lines wait (a thousand at a time are written), and at its end every line
    is out, in order, each one JSON object; a nested hold changes nothing."""
    root, level = logging.getLogger(), logging.getLogger("secrets_bridge").level
    before = list(root.handlers)
    setup_logging("json")
    try:
        log = logging.getLogger(AUDIT_LOGGER)
        with held():
            for i in range(10):
                log.info("line %d", i)
            assert capsys.readouterr().err == ""  # held
            with held():
                for i in range(10, HELD_LINES + 500):
                    log.info("line %d", i)
            assert len(capsys.readouterr().err.splitlines()) == HELD_LINES  # the first thousand, written
        lines = capsys.readouterr().err.splitlines()
        assert [json.loads(line)["message"] for line in lines] == [f"line {i}" for i in range(HELD_LINES,
                                                                                             HELD_LINES + 500)]
        log.info("after")
        assert json.loads(capsys.readouterr().err)["message"] == "after"  # not held any more
    finally:
        for handler in set(root.handlers) - set(before):
            root.removeHandler(handler)
        logging.getLogger("secrets_bridge").setLevel(level)


@given(st.floats(min_value=0, max_value=4e9) | st.integers(0, 4 * 10**9).map(lambda s: s + 0.9999995))
def test_log_times_are_datetimes_own_rounding(epoch: float) -> None:
    """A log line's time, made once per millisecond, is what datetime itself makes of the record's time."""
    from datetime import UTC, datetime

    from bridge.observe.logs import _utc
    assert _utc(epoch) == datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
