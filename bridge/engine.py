"""The sync engine: decide what is due, ask providers, extract, and commit once per cycle.

This is the one place where a change is detected and committed (metrics, audit events and
notifications hook in here). It keeps each secret's last good content, so a failure never
removes or empties a file, and it is the one place that retries: per-secret exponential backoff
with jitter, honouring a provider's retry_after. It never logs a value.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from bridge.config import Config, SecretConfig
from bridge.errors import ProviderError, Unavailable, WriteError
from bridge.extract import ExtractError, extract
from bridge.metrics import COMMITS, SECRET_ERRORS
from bridge.provider import Fetched, Outcome, Provider, Request
from bridge.state import SecretRecord, State
from bridge.writer import FileSpec, Writer

log = logging.getLogger("secrets_bridge.engine")
T = TypeVar("T")

BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 300.0
#: the loop wakes at least this often, so /healthz can tell it is alive
HEARTBEAT_SECONDS = 5.0


@dataclass
class _Tracked:
    """What the engine knows of one secret between cycles. The content is never in the repr."""

    name: str
    config: SecretConfig
    content: bytes | None = field(default=None, repr=False)
    version: str | None = None
    next_due: float = 0.0
    attempts: int = 0
    error: ProviderError | None = None
    failing_since: float | None = None
    updated: float | None = None

    #: pinned to a version that never moves (not a label): not polled once written
    fixed: bool = False


@dataclass
class CycleResult:
    """What one cycle did: names whose files changed and names that failed."""

    changed: list[str]
    failed: dict[str, ProviderError]
    write_error: WriteError | None = None


class Engine:
    def __init__(
        self,
        config: Config,
        *,
        providers: dict[str, Provider] | None = None,
        on_commit: Callable[[list[str]], None] | None = None,
        writer: Writer | None = None,
    ) -> None:
        self.config = config
        self.settings = config.settings
        self.providers = providers if providers is not None else config.build_providers()
        # A reload hands the running engine's writer (and its hold on the directory) to the next.
        self.writer = writer or Writer(self.settings.output_dir, require_tmpfs=self.settings.require_tmpfs)
        self.state = State(self.writer)
        self.on_commit = on_commit
        self.heartbeat = time.monotonic()
        self._group_due: dict[tuple[str, float], float] = {}
        self._committed: dict[str, FileSpec] | None = None  # None: compare with the disk first
        self._saved: dict[str, SecretRecord] | None = None
        self._started = False
        self._write_failing = False
        self._tracked = {
            name: _Tracked(name, secret, fixed=secret.version is not None
                           and not self.providers[secret.provider].moves(secret.version))
            for name, secret in self.settings.secrets.items()
        }

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Prepare the directory and take the files already there as the last good content."""
        self.writer.prepare()
        self._started = True
        on_disk = self.writer.current()
        previous = self.state.load()
        for name, tracked in self._tracked.items():
            if name in on_disk:
                tracked.content = on_disk[name].content
                record = previous.get(name)
                if record is not None and record.matches(tracked.config):
                    tracked.version = record.version
                    tracked.updated = record.updated_epoch()

    def close(self, *, release: bool = True) -> None:
        """Close the providers; remove replaced generations once readers are past them; let the
        directory go (unless the writer passes to a reloaded engine)."""
        for provider in self.providers.values():
            provider.close()
        for tracked in self._tracked.values():
            if tracked.error is not None:
                SECRET_ERRORS.remove(tracked.name, tracked.error.code)
        if self._started:
            pending = self.writer.prune()
            while pending is not None:
                time.sleep(pending)
                pending = self.writer.prune()
            if release:
                self.writer.release()

    def sync(self) -> CycleResult:
        """One pass: fetch every secret, commit once."""
        return self.cycle(list(self._tracked.values()), force=True)

    def run(self, stop: threading.Event) -> None:
        """Keep in step until `stop` is set; the cycle in progress always finishes."""
        while not stop.is_set():
            self.heartbeat = time.monotonic()
            now = time.monotonic()
            due = [t for t in self._tracked.values() if t.next_due <= now]
            if due:
                self.cycle(due)
            for provider in self.providers.values():
                self._guarded(provider, provider.maintain)  # e.g. renew a token between cycles
            prune_in = self.writer.prune()
            wake = min((t.next_due for t in self._tracked.values()), default=math.inf)
            wait = min(wake - time.monotonic(), HEARTBEAT_SECONDS, math.inf if prune_in is None else prune_in)
            stop.wait(max(0.0, wait))

    # -- health ----------------------------------------------------------------------------

    def missing_required(self) -> list[str]:
        return [t.name for t in self._tracked.values() if t.content is None and not t.config.optional]

    def stale(self) -> list[str]:
        limit = time.monotonic() - self.settings.max_staleness
        return [t.name for t in self._tracked.values() if t.failing_since is not None and t.failing_since < limit]

    def ready(self) -> bool:
        return not self.missing_required() and not self.stale()

    # -- one cycle -------------------------------------------------------------------------

    def cycle(self, due: Iterable[_Tracked], *, force: bool = False) -> CycleResult:
        """Check and fetch the due secrets, then commit everything once if any file changed."""
        now = time.monotonic()
        outcomes: dict[str, Outcome | None] = {}
        by_provider: dict[str, list[_Tracked]] = defaultdict(list)
        for tracked in due:
            by_provider[tracked.config.provider].append(tracked)
        for provider_name, group in by_provider.items():
            self.heartbeat = time.monotonic()  # a slow provider is not a stalled loop
            provider = self.providers[provider_name]
            found = self._guarded(provider, functools.partial(self._fetch_changed, provider, group, force))
            if isinstance(found, ProviderError):
                outcomes.update({t.name: found for t in group})
            else:
                outcomes.update(found)

        failed: dict[str, ProviderError] = {}
        for name, outcome in outcomes.items():
            tracked = self._tracked[name]
            if isinstance(outcome, ProviderError):
                failed[name] = outcome
                self._fail(tracked, outcome, now)
                continue
            if isinstance(outcome, Fetched):
                try:
                    tracked.content = extract(
                        outcome, key=tracked.config.key, encoding=tracked.config.encoding, fmt=tracked.config.format
                    )
                except Exception as exc:
                    error = exc if isinstance(exc, ProviderError) else ExtractError(
                        f"cannot use the value ({type(exc).__name__})")  # never the exception text
                    failed[name] = error.at(provider=tracked.config.provider, ref=tracked.config.ref,
                                            version=outcome.version)
                    self._fail(tracked, failed[name], now)
                    continue
                tracked.version = outcome.version
            self._succeed(tracked, now)

        try:
            changed = self._commit()
            write_error = None
            if self._write_failing:
                log.info("commits to %s work again", self.settings.output_dir)
                self._write_failing = False
        except WriteError as exc:
            # e.g. the tmpfs is full: the last generation stays whole; try again next cycle.
            if not self._write_failing:
                log.error("cannot commit to %s: %s; the last generation stays", self.settings.output_dir, exc)
                self._write_failing = True
            changed, write_error, self._committed = [], exc, None
        records = self._records()
        if records != self._saved:
            try:
                self.state.save(records, self.config)
                self._saved = records
            except WriteError as exc:
                log.warning("cannot write the state file: %s", exc)
        if changed and self.on_commit is not None:
            self.on_commit(changed)
        return CycleResult(changed, failed, write_error)

    def _guarded(self, provider: Provider, call: Callable[[], T]) -> T | ProviderError:
        """Run a provider call; an unexpected exception (a provider bug, an odd server answer) is
        an Unavailable for its secrets, never the end of the bridge."""
        try:
            return call()
        except ProviderError as exc:
            return exc
        except Exception as exc:
            log.debug("provider %s raised", provider.name, exc_info=True)
            return Unavailable(f"internal error ({type(exc).__name__})", provider=provider.name)

    def _fetch_changed(self, provider: Provider, group: list[_Tracked], force: bool) -> dict[str, Outcome | None]:
        """The cheap check for unpinned secrets with content; a fetch for the rest and the changed.

        A None outcome means "checked, unchanged"."""
        outcomes: dict[str, Outcome | None] = {}
        to_fetch: list[_Tracked] = []
        checkable = [t for t in group if not force and not t.fixed and t.content is not None
                     and t.version is not None and t.error is None]
        if checkable:
            current = provider.resolve_versions([Request(t.config.ref, t.config.version) for t in checkable])
            for tracked in checkable:
                latest = current.get(Request(tracked.config.ref, tracked.config.version))
                if isinstance(latest, ProviderError):
                    outcomes[tracked.name] = latest
                elif latest is not None and latest == tracked.version:
                    outcomes[tracked.name] = None
                else:
                    to_fetch.append(tracked)
        for tracked in group:
            if tracked in checkable:
                continue
            if not force and tracked.fixed and tracked.content is not None and tracked.error is None:
                outcomes[tracked.name] = None  # a written fixed pin does not change
            else:
                to_fetch.append(tracked)
        if to_fetch:
            requests = {t.name: Request(t.config.ref, t.config.version) for t in to_fetch}
            fetched = provider.fetch_many(list(requests.values()))
            for name, request in requests.items():
                outcomes[name] = fetched[request]
        return outcomes

    def _commit(self) -> list[str]:
        files: dict[str, FileSpec] = {}
        for tracked in self._tracked.values():
            if tracked.content is not None:
                uid, gid = self.settings.owner_of(tracked.config)
                files[tracked.name] = FileSpec(tracked.content, self.settings.mode_of(tracked.config), uid, gid)
        if files == self._committed:
            return []  # nothing moved since the last commit: leave the directory alone
        changed = self.writer.commit(files)
        self._committed = files
        if not changed:
            return []
        COMMITS.inc()
        stamp = time.time()
        for name in changed:
            if name in self._tracked:
                self._tracked[name].updated = stamp
        log.info("committed a new generation: %d changed (%s)", len(changed), ", ".join(changed))
        return changed

    # -- per-secret outcome bookkeeping ------------------------------------------------------

    def _succeed(self, tracked: _Tracked, now: float) -> None:
        if tracked.error is not None:
            log.info("secret %s: recovered after %d attempts (%.0fs)", tracked.name, tracked.attempts,
                     now - (tracked.failing_since or now))
            SECRET_ERRORS.remove(tracked.name, tracked.error.code)
        tracked.error, tracked.failing_since, tracked.attempts = None, None, 0
        if tracked.fixed:
            tracked.next_due = math.inf  # not polled until its pin changes
            return
        interval = self.settings.interval_of(tracked.config)
        group = (tracked.config.provider, interval)
        if self._group_due.get(group, 0.0) <= now:
            # Secrets sharing a provider and interval come due together, so batch checks stay batched.
            self._group_due[group] = now + self._jittered(interval)
        tracked.next_due = self._group_due[group]

    def _fail(self, tracked: _Tracked, error: ProviderError, now: float) -> None:
        keeps = "keeping the last good file" if tracked.content is not None else "no file yet"
        if tracked.error is None or type(tracked.error) is not type(error):
            level = logging.WARNING if tracked.content is not None or tracked.config.optional else logging.ERROR
            log.log(level, "secret %s: %s (%s); %s", tracked.name, error, error.code, keeps)
            if tracked.error is not None:
                SECRET_ERRORS.remove(tracked.name, tracked.error.code)
            SECRET_ERRORS.labels(secret=tracked.name, code=error.code).set(1)
        if tracked.failing_since is None:
            tracked.failing_since = now
        tracked.error = error
        tracked.attempts += 1
        cap = min(BACKOFF_CAP_SECONDS, max(self.settings.interval_of(tracked.config), BACKOFF_BASE_SECONDS))
        delay = min(cap, BACKOFF_BASE_SECONDS * error.backoff_factor * 2 ** min(tracked.attempts - 1, 30))
        delay = self._jittered(delay)
        if error.retry_after is not None:
            delay = max(delay, error.retry_after)
        tracked.next_due = now + delay

    def _jittered(self, seconds: float) -> float:
        spread = self.settings.jitter
        return seconds * (1 + random.uniform(-spread, spread))  # noqa: S311 - not for security

    def _records(self) -> dict[str, SecretRecord]:
        return {
            t.name: SecretRecord.of(t.name, t.config, self.config, version=t.version,
                                    size=None if t.content is None else len(t.content),
                                    updated=t.updated, error=t.error)
            for t in self._tracked.values()
        }
