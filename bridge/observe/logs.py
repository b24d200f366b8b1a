"""Log output and the audit trail.

Owns how records reach stderr (text, or one JSON object a line) and the audit events: one
`secret_changed` event per changed file, built from a `Change` record, logged on
`secrets_bridge.audit` and, when `audit_log` is set, appended to that file (mode 0600). An event
carries names and versions only; nothing here ever sees a value. Writing the audit file never
follows a symlink and never stops the bridge: a failure is logged once, and once when it ends.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import math
import os
import stat
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from bridge.errors import WriteError
from bridge.observe.changes import Change

AUDIT_LOGGER = "secrets_bridge.audit"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: libraries' loggers stay at WARNING even with --debug: their debug lines can carry request headers
#: (each provider's own SDK loggers are quieted when the provider is loaded: its `sdk_loggers`)
QUIET_LOGGERS = ("urllib3",)

#: attributes every LogRecord has; anything else on a record came in through `extra=`, after them
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_SET_BY_INIT = len(vars(logging.LogRecord("", 0, "", 0, "", None, None)))

audit_log = logging.getLogger(AUDIT_LOGGER)


def _utc(epoch: float) -> str:
    # to the microsecond first, as datetime.fromtimestamp rounds (the whole seconds apart, then the rest)
    fraction, seconds = math.modf(epoch)
    return _utc_ms(int(seconds) * 1000 + round(fraction * 1_000_000) // 1000)


@functools.lru_cache(maxsize=8)
def _utc_ms(ms: int) -> str:
    """The time of a millisecond, made once for the burst of lines logged within it."""
    seconds, rest = divmod(ms, 1000)
    moment = datetime.fromtimestamp(seconds, UTC).replace(microsecond=rest * 1000)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


#: one encoder for every line (json.dumps with `default` makes a new one per call)
_ENCODE = json.JSONEncoder(default=str, ensure_ascii=False).encode


class JsonFormatter(logging.Formatter):
    """One JSON object a line: `time`, `level`, `logger`, `message`, then the record's extras."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        # the extras come after what LogRecord's __init__ set: a 100,000-file commit logs as many events
        for key, value in itertools.islice(record.__dict__.items(), _SET_BY_INIT, None):
            if key not in _RECORD_FIELDS and key not in doc and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return _ENCODE(doc)


#: control characters (C0, DEL, C1) as escapes, so no name or ref in a message can forge a second log line
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


def one_line(text: str) -> str:
    """`text` with control characters escaped: safe to print as one line to a terminal or a log."""
    return text.translate(_ESCAPES)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`, the message on one line whatever names it quotes."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.message)
        return super().formatMessage(record)


def resolve_format(log_format: str, stream: TextIO) -> str:
    """`auto` is `json` unless the stream is a terminal (a person reading), then `text`."""
    if log_format != "auto":
        return log_format
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):  # a closed or unusual stream
        return "json"


#: held lines are written this many at a time (a few hundred KiB: one write, no great buffer)
HELD_LINES = 1000


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr, whose lines can be held and written together (`held`): a commit of 100,000 files
    logs 100,000 audit events, a write(2) each when written one by one."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self._held: list[str] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self._held is None:
            super().emit(record)
            return
        try:
            self._held.append(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)
        if len(self._held) >= HELD_LINES:
            self._write_held()

    def _write_held(self) -> None:
        lines, self._held = self._held or [], []
        if lines:
            with contextlib.suppress(OSError, ValueError):
                self.stream.write("".join(lines))
                self.flush()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        with self.lock:  # type: ignore[union-attr]
            nested = self._held is not None
            if not nested:
                self._held = []
        try:
            yield
        finally:
            if not nested:
                with self.lock:  # type: ignore[union-attr]
                    self._write_held()
                    self._held = None


_handler: _Stderr | None = None


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Write the log lines of the block together at its end (another thread's lines too, in order)."""
    if _handler is None:
        yield
        return
    with _handler.hold():
        yield


def setup_logging(log_format: str = "auto", debug: bool = False) -> None:
    """Send every record to stderr in `log_format`; may be called again (after the config is read)."""
    global _handler
    # Neither format shows where a record was made, or which thread or process made it: not worked
    # out for every record (a commit of 100,000 files logs 100,000 audit events).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = _Stderr()
    json_lines = resolve_format(log_format, sys.stderr) == "json"
    _handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root.addHandler(_handler)
    root.setLevel(logging.INFO)
    # Only our own loggers go to debug.
    logging.getLogger("secrets_bridge").setLevel(logging.DEBUG if debug else logging.INFO)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def audit_event(change: Change) -> dict[str, str | None]:
    """The SPEC's audit event for one changed file (plus `action`: added, updated or removed)."""
    return {
        "event": "secret_changed",
        "secret": change.entry,
        "file": change.file,
        "provider": change.provider,
        "ref": change.ref,
        "old_version": change.old_version,
        "new_version": change.new_version,
        "generation": change.generation,
        "action": change.action,
    }


class AuditLog:
    """A commit subscriber: `AuditLog(path)(changes)` emits one event per `Change`.

    With a path, the file is opened once here so a bad `audit_log` stops the start (WriteError),
    not the first rotation; after that each call reopens it (log rotation just works) and a
    failure is logged, never raised.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._failing = False
        if path is not None:
            os.close(self._open())

    def __call__(self, changes: Sequence[Change]) -> None:
        events = [audit_event(change) for change in changes]
        with held():
            for event in events:
                audit_log.info(
                    "secret changed: %s (%s %s, version %s -> %s)",
                    event["file"], event["provider"], event["ref"], event["old_version"] or "-",
                    event["new_version"] or "-", extra=event,
                )
        if self.path is not None and events:
            self._append(events)

    def _append(self, events: list[dict[str, str | None]]) -> None:
        now = _utc(datetime.now(UTC).timestamp())
        data = "".join(json.dumps({"time": now, **event}) + "\n" for event in events).encode()
        try:
            fd = self._open()
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
        except (WriteError, OSError) as exc:
            if not self._failing:  # logged once when it starts failing, once when it recovers
                reason = str(exc) if isinstance(exc, WriteError) else exc.strerror
                audit_log.error("cannot append to audit_log %s: %s", self.path, reason)
            self._failing = True
            return
        if self._failing:
            audit_log.info("appending to audit_log %s again", self.path)
            self._failing = False

    def _open(self) -> int:
        """O_APPEND, created 0600, never through a symlink at the last component, never a FIFO
        or device (O_NONBLOCK: a FIFO without a reader fails instead of blocking)."""
        assert self.path is not None
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            if os.path.islink(self.path):
                raise WriteError(f"audit_log: {self.path} is a symlink; name the file itself") from None
            raise WriteError(f"audit_log: cannot open {self.path}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise WriteError(f"audit_log: {self.path} is not a regular file")
            if st.st_mode & 0o077:
                try:
                    os.fchmod(fd, 0o600)
                except OSError:
                    raise WriteError(f"audit_log: {self.path} is readable by others and not ours to chmod") from None
        except BaseException:
            os.close(fd)
            raise
        return fd
