"""The state file kept beside the secrets, read by `ls` and `inspect`.

Metadata only, one record per file: its entry, provider, ref, resolved version, size, mode, owner,
times, the last error. Never a value, never a hash of a value, never a credential.
"""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from bridge.config.loader import STATE_FILE
from bridge.errors import WriteError

if TYPE_CHECKING:
    from bridge.engine.cycle import Engine
    from bridge.engine.units import Entry
    from bridge.writer.atomic import Writer


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class SecretRecord:
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


def file_record(name: str, entry: Entry, engine: Engine) -> SecretRecord:
    """The record of one file (or of an entry that has no file yet, under the entry's name)."""
    settings = engine.settings
    secret = entry.config
    rules = secret.file_rules()
    rule = rules.get(name.removeprefix(entry.name + "/")) if rules else None
    provider, ref = entry.source()
    types = [settings.providers[p]["type"] for p in provider.split(",")]
    errors = [e for e in (entry.error, *(u.error for u in entry.units.values())) if e is not None]
    spec = engine.files.get(name)
    uid, gid = settings.owner_of(secret, rule)
    return SecretRecord(
        name=name,
        entry=entry.name,
        provider=provider,
        provider_type=",".join(types),
        ref=ref,
        key=rule.key if rule else secret.key,
        pinned_version=secret.version,
        version=engine.version_of(name),
        size=None if spec is None else len(spec.content),
        mode=f"{settings.mode_of(secret, rule):04o}",
        uid=uid,
        gid=gid,
        updated=_iso(engine.updated(name)),
        error=None if not errors else {"code": errors[0].code, "message": str(errors[0])},
    )


_FIELDS = tuple(f.name for f in fields(SecretRecord))


class State:
    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        #: the records of each entry as last written, so a save rebuilds only what changed
        self._by_entry: dict[str, dict[str, dict[str, object]]] = {}

    @property
    def path(self) -> Path:
        return self.writer.output_dir / STATE_FILE

    def load(self) -> dict[str, SecretRecord]:
        try:
            data = self.writer.read_state(STATE_FILE)
        except WriteError:
            return {}
        return {} if data is None else parse_state(data)

    def save(self, engine: Engine, entries: set[str] | None = None) -> None:
        """Write the records of every file; rebuild only those of `entries` (None: all)."""
        for name in engine.entries if entries is None else entries & engine.entries.keys():
            entry = engine.entries[name]
            files = sorted(entry.files | (entry.expected or set())) or [entry.name]
            self._by_entry[name] = {f: _plain(file_record(f, entry, engine)) for f in files}
        records = {f: r for name in engine.entries for f, r in self._by_entry.get(name, {}).items()}
        doc = {
            "written": _iso(time.time()),
            "output_dir": str(engine.settings.output_dir),
            "secrets": dict(sorted(records.items())),
        }
        self.writer.write_state(STATE_FILE, json.dumps(doc, separators=(",", ":")).encode() + b"\n")


def _plain(record: SecretRecord) -> dict[str, object]:
    return {name: getattr(record, name) for name in _FIELDS}


def read_state(path: Path) -> dict[str, SecretRecord]:
    """Records from a state file; empty when there is none or it is unreadable."""
    try:
        # O_NONBLOCK and a regular-file check: a FIFO planted as the state file must not hang `ls`
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            return parse_state(f.read()) if stat.S_ISREG(os.fstat(fd).st_mode) else {}
    except OSError:
        return {}


def parse_state(data: bytes) -> dict[str, SecretRecord]:
    """The records of a state file; a record someone edited into a wrong shape is left out (a start
    must never fail on it: the state is only what `ls` shows and what a restart keeps)."""
    try:
        doc = json.loads(data)
        records = {name: SecretRecord(**fields) for name, fields in doc["secrets"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}
    return {name: r for name, r in records.items() if _well_formed(r)}


def _well_formed(record: SecretRecord) -> bool:
    texts = (record.name, record.entry, record.provider, record.provider_type, record.ref, record.mode)
    optional = (record.key, record.pinned_version, record.version, record.updated)
    if not (all(isinstance(t, str) for t in texts) and all(t is None or isinstance(t, str) for t in optional)
            and (record.size is None or type(record.size) is int) and type(record.uid) is int
            and type(record.gid) is int and (record.error is None or isinstance(record.error, dict))):
        return False
    try:
        record.updated_epoch()
    except (ValueError, OverflowError):
        return False
    return True
