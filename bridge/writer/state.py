"""The state file kept beside the secrets, read by `ls` and `inspect`.

Metadata only, one record per file: its entry, provider, ref, resolved version, size, mode, owner,
times, the last error. Never a value, never a hash of a value, never a credential. The engine
builds the records (bridge/engine/records.py); this module only keeps and writes them, each encoded
once when it changes, so a save at 100,000 files joins text rather than encoding them all again.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from bridge.config.fields import STATE_FILE
from bridge.errors import WriteError
from bridge.writer.atomic import Writer
from bridge.writer.sidefiles import read_bounded

log = logging.getLogger("secrets_bridge.state")


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


class SecretRecord(NamedTuple):
    """One file's record (a tuple: 100,000 of them are read at a start)."""

    name: str
    entry: str
    provider: str
    provider_type: str
    ref: str
    key: str | None
    pinned_version: str | None
    version: str | None
    size: int | None
    mode: str
    uid: int
    gid: int
    updated: str | None
    error: dict[str, str | None] | None

    def source(self) -> tuple[str, str, str | None, str | None]:
        """Where the file's content comes from (so a recorded version still describes the file)."""
        return (self.provider, self.ref, self.key, self.pinned_version)

    def updated_epoch(self) -> float | None:
        return None if self.updated is None else datetime.fromisoformat(self.updated).timestamp()


#: one encoder for every record (json.dumps with separators makes a new one per call)
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


class State:
    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        #: each file's record as JSON text (`"name":{...}`), as last updated
        self._encoded: dict[str, str] = {}
        self._order: list[str] | None = None  # the names sorted, until one is added or removed

    @property
    def path(self) -> Path:
        return self.writer.output_dir / STATE_FILE

    def load(self) -> dict[str, SecretRecord]:
        try:
            data = self.writer.read_state(STATE_FILE)
        except WriteError as exc:
            log.warning("the state file is unreadable (%s); starting without it", exc)
            return {}
        if data is None:
            return {}
        text = _text(data)
        del data  # a state file of 100,000 records is 26 MB: never held as bytes and text at once
        return parse_state(text)

    def update(self, records: Iterable[SecretRecord], removed: Iterable[str] = ()) -> None:
        """Take new records (by file name) and drop those of `removed`; written at the next save."""
        for name in removed:
            if self._encoded.pop(name, None) is not None:
                self._order = None
        for record in records:
            if record.name not in self._encoded:
                self._order = None
            self._encoded[record.name] = _ENCODE(record.name) + ":" + _ENCODE(record._asdict())

    def save(self) -> None:
        """Write every record kept, sorted by file name."""
        if self._order is None:
            self._order = sorted(self._encoded)
        head = json.dumps({"written": _iso(time.time()), "output_dir": str(self.writer.output_dir)},
                          separators=(",", ":"))
        body = ",".join(map(self._encoded.__getitem__, self._order))
        self.writer.write_state(STATE_FILE, f'{head[:-1]},"secrets":{{{body}}}}}\n'.encode())


def read_state(path: Path) -> dict[str, SecretRecord]:
    """Records from a state file; empty when there is none or it is unreadable; WriteError when it
    is too large to be the bridge's."""
    try:
        # O_NONBLOCK and a regular-file check: a FIFO planted as the state file must not hang `ls`
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            return parse_state(read_bounded(f, str(path))) if stat.S_ISREG(os.fstat(fd).st_mode) else {}
    except OSError:
        return {}


def parse_state(data: bytes | str) -> dict[str, SecretRecord]:
    """The records of a state file; a record someone edited into a wrong shape is left out (a start
    must never fail on it: the state is only what `ls` shows and what a restart keeps). Each record
    becomes a `SecretRecord` as it is decoded, never a dict first, and the texts many records share
    (an entry named as its file, a provider, a mode, a time) are one string each: 100,000 records
    held as dicts were the largest thing a start ever held, and that memory stayed with the process."""
    shared: dict[str, str] = {}

    def record_or_dict(pairs: list[tuple[str, Any]]) -> SecretRecord | dict[str, Any]:
        fields = dict(pairs)
        if fields.keys() != _RECORD_FIELDS:
            return fields  # not a record (a map, an error), or a record with a field missing or unknown
        for name in _SHARED:
            value = fields[name]
            if type(value) is str:
                fields[name] = shared.setdefault(value, value)
        if fields["entry"] == fields["name"]:
            fields["entry"] = fields["name"]
        return SecretRecord(**fields)

    try:
        secrets = json.loads(data, object_pairs_hook=record_or_dict)["secrets"]
        if isinstance(secrets, SecretRecord):  # files named exactly as a record's fields: a map after all
            secrets = secrets._asdict()
        items = secrets.items()
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return {}
    return {name: record for name, record in items if isinstance(record, SecretRecord) and _well_formed(record)}


def _text(data: bytes) -> str:
    """A state file's text, in the encoding json itself would detect (a byte-order mark, UTF-16);
    "" for bytes that are none (no records)."""
    try:
        return data.decode(json.detect_encoding(data), "surrogatepass")
    except (UnicodeDecodeError, LookupError):
        return ""


_RECORD_FIELDS = frozenset(SecretRecord._fields)
#: the fields whose texts few records tell apart
_SHARED = ("provider", "provider_type", "mode", "updated")


def _well_formed(record: SecretRecord) -> bool:
    """Each field of the type the bridge writes: texts that print (no lone surrogate), an error of
    text values, a time a datetime can hold (one the bridge can write back)."""
    texts = (record.name, record.entry, record.provider, record.provider_type, record.ref, record.mode)
    optional = (record.key, record.pinned_version, record.version, record.updated)
    if record.error is not None and type(record.error) is not dict:
        return False
    error = tuple(record.error.values()) if record.error is not None else ()
    numbers_right = (record.size is None or type(record.size) is int) and type(record.uid) is type(record.gid) is int
    return (numbers_right and all(isinstance(t, str) for t in texts)
            and all(t is None or isinstance(t, str) for t in (*optional, *error))
            and _printable(*texts, *optional, *error) and _writable_time(record))


def _printable(*texts: str | None) -> bool:
    """No lone surrogate (which no terminal or log line can print) in any of `texts`."""
    try:
        for text in texts:
            if text is not None and not text.isascii():
                text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _writable_time(record: SecretRecord) -> bool:
    """`updated` read back and written again in UTC (year 10000 by its offset is not)."""
    try:
        _iso(record.updated_epoch())
    except (ValueError, OverflowError, OSError):
        return False
    return True
