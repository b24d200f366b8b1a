"""The engine's record of every managed file, and the state-file records built from it.

One `ManagedFile` per file in the output directory: its last good content (as committed), the
version it was rendered from and the version of what is committed, when it was last committed,
and for a file no entry makes any more, where it came from (for the removal's Change). Beside
them, the updates rendered but not yet committed. The engine writes these records; the state file
(bridge/writer/state.py) is given `SecretRecord`s built here. Never holds a value beyond the file
contents the writer commits, and never logs.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from bridge.config.loader import BridgeConfig
from bridge.engine.outputs import Output
from bridge.errors import WriteError
from bridge.observe.changes import Change
from bridge.writer.atomic import FileSpec
from bridge.writer.state import SecretRecord, State

log = logging.getLogger("secrets_bridge.engine")


@dataclass(eq=False, slots=True)
class ManagedFile:
    """One file the engine manages."""

    #: the last good content, as committed (None: not committed yet)
    spec: FileSpec | None = None
    #: the version it was last rendered from
    version: str | None = None
    #: the version of its committed content
    committed_version: str | None = None
    #: when its content was last committed (epoch)
    updated: float | None = None
    #: (provider, ref) of a file no entry makes any more, removed at the next commit
    gone: tuple[str, str] | None = None


class ManagedFiles:
    """Every managed file's record, and the updates waiting for the next commit."""

    def __init__(self, owner: Callable[[str], Output | None]) -> None:
        self.owner = owner
        self.by_name: dict[str, ManagedFile] = {}
        #: rendered, not yet committed (None: remove the file)
        self.pending: dict[str, FileSpec | None] = {}

    def adopt(self, committed: Mapping[str, FileSpec], previous: Mapping[str, SecretRecord]) -> None:
        """Take the files already in the directory as the last good content, with the versions the
        state file recorded for them while they still come from the same place; files no entry
        makes any more are removed at the first commit."""
        for name, spec in committed.items():
            entry, record = self.owner(name), previous.get(name)
            if entry is None:
                self.pending[name] = None
                if record is not None:  # so the removal's audit event says what was removed
                    self.by_name[name] = ManagedFile(committed_version=record.version,
                                                     gone=(record.provider, record.ref))
                continue
            managed = self.by_name[name] = ManagedFile(spec)
            entry.add_file(name)
            if record is not None and record.source() == source_of(name, entry):
                managed.version = managed.committed_version = record.version
                managed.updated = record.updated_epoch()

    def rendered(self, entry: Output, specs: Mapping[str, FileSpec], version: str | None) -> dict[str, FileSpec | None]:
        """Record what `entry` rendered; returns the updates (changed content, files it no longer makes)."""
        updates: dict[str, FileSpec | None] = {}
        for name, spec in specs.items():
            managed = self.by_name.get(name)
            if managed is None:
                managed = self.by_name[name] = ManagedFile()
            managed.version = version
            if managed.spec != spec:
                updates[name] = spec
            elif name not in self.pending:
                managed.committed_version = version  # same content, new version id
        updates.update((f, None) for f in entry.files if f not in specs)
        return updates

    def committed(self, changed: Iterable[str], pending: Mapping[str, FileSpec | None],
                  generation: str | None) -> list[Change]:
        """Apply a commit of `changed` (out of `pending`) to the records; one Change per file."""
        stamp = time.time()
        changes = []
        for name in changed:
            spec, entry = pending[name], self.owner(name)
            managed = self.by_name.get(name) or ManagedFile()
            action = "removed" if spec is None else "added" if managed.spec is None else "updated"
            old_version = managed.committed_version
            if spec is None:
                self.by_name.pop(name, None)
                new_version = None
            else:
                managed.spec, managed.updated = spec, stamp
                managed.committed_version = new_version = managed.version
                self.by_name[name] = managed
            if entry is not None:
                (entry.drop_file if spec is None else entry.add_file)(name)
            provider, ref = entry.source() if entry is not None else (managed.gone or ("", ""))
            changes.append(Change(name, entry.name if entry else name, provider, ref, old_version,
                                  new_version, generation, action))
        return changes

    def spec(self, name: str) -> FileSpec | None:
        managed = self.by_name.get(name)
        return None if managed is None else managed.spec

    def version(self, name: str) -> str | None:
        managed = self.by_name.get(name)
        return None if managed is None else managed.version

    def updated(self, name: str) -> float | None:
        managed = self.by_name.get(name)
        return None if managed is None else managed.updated


@functools.lru_cache(maxsize=64)
def _iso(epoch: float | None) -> str | None:
    """The time as the state file says it (the files of one commit share one stamp: made once)."""
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def source_of(name: str, entry: Output) -> tuple[str, str, str | None, str | None]:
    """Where file `name` of `entry` comes from, as `SecretRecord.source()` says it."""
    provider, ref = entry.source()
    return provider, ref, *entry.origin(name)


class StateRecords:
    """The state file's records, built here and handed to the state file (bridge/writer/state.py),
    rebuilt only for the entries that changed (the state file keeps each one encoded)."""

    def __init__(self, state: State, settings: BridgeConfig) -> None:
        self.state = state
        self.settings = settings
        self._types: dict[str, str] = {}  # provider (comma-joined for several) -> its type(s)
        #: the files of each entry in the state file, when not just the one named for the entry
        #: (that one kept for 100,000 plain entries was 10 MiB)
        self._recorded: dict[str, list[str]] = {}
        self._failing = False

    def update(self, entries: Iterable[Output], files: ManagedFiles) -> None:
        """Rebuild the records of `entries` (the files each has, or its name while it has none)."""
        for entry in entries:
            names = sorted({*entry.files, *(entry.expected or ())}) or [entry.name]
            provider, ref = entry.source()
            if provider not in self._types:
                self._types[provider] = ",".join(self.settings.providers[p]["type"] for p in provider.split(","))
            error = entry.error or next((u.error for u in entry.units.values() if u.error is not None), None)
            failure: dict[str, str | None] | None = (
                None if error is None else {"code": error.code, "message": str(error)})
            shared = (entry.name, provider, self._types[provider], ref, failure)
            records = [self._record(name, entry, files.by_name.get(name), shared) for name in names]
            recorded = self._recorded.get(entry.name, (entry.name,))
            self.state.update(records, removed=set(recorded) - set(names))
            if names == [entry.name]:
                self._recorded.pop(entry.name, None)
            else:
                self._recorded[entry.name] = names

    def save(self) -> bool:
        """Write the state file; False when that failed (logged once until it works again)."""
        try:
            self.state.save()
        except WriteError as exc:
            if not self._failing:  # once when it starts, not every cycle of a full tmpfs
                log.warning("cannot write the state file: %s", exc)
            self._failing = True
            return False
        if self._failing:
            log.info("the state file is written again")
            self._failing = False
        return True

    def _record(self, name: str, entry: Output, managed: ManagedFile | None,
                shared: tuple[str, str, str, str, dict[str, str | None] | None]) -> SecretRecord:
        """One file's record: `shared` holds its entry's fields (entry, provider, type, ref, error)."""
        meta = entry.meta(name, self.settings)
        spec = None if managed is None else managed.spec
        entry_name, provider, provider_type, ref, error = shared
        return SecretRecord(
            name, entry_name, provider, provider_type, ref, meta.key, meta.pinned_version,
            None if managed is None else managed.version,
            None if spec is None else len(spec.content),
            f"{meta.mode:04o}", meta.uid, meta.gid,
            _iso(None if managed is None else managed.updated),
            error,
        )
