"""The sync engine: fetch units -> entries -> files, one commit per cycle.

A cycle has five steps, each a method a test can call:

    plan      which fetch units are due: their group's refresh time, a retry, a pin never
    fetch     per provider: one pure decision per unit (bridge/engine/steps.py), then batched
              phases: the cheap version check, lease renewals, a fetch of what moved
    render    the outputs whose units moved become file contents or env values (bridge/engine/outputs.py)
    commit    only the files whose content, mode or owner changed go to the writer, as one generation;
              a changed env value is taken at once (it lives in memory, for the child of `exec`)
    announce  one Change record per changed file or env value, to every subscriber (on_change, audit log)

This is the one place where a change is detected and committed, and the one place that retries
(per-unit exponential backoff with jitter, honouring a provider's retry_after). The schedule and
the lease keeper return decisions; `Settler` (bridge/engine/settle.py), the one module that assigns
a fetch unit's state, applies them. It keeps each file's record (bridge/engine/records.py) and last good
content, so a failure never removes or empties a file. Idle work is proportional
to what is due. It never logs a value. It never sleeps or keeps a clock of its own: the loop that
drives cycles (provider upkeep, drift sweeps, pruning, sleeping) is `bridge.runtime.loop`, which
asks it only to run a cycle and when the next unit is due (`next_wake`).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from bridge.config.loader import Config
from bridge.engine import failures
from bridge.engine.leases import LeaseKeeper
from bridge.engine.outputs import EnvValues, EnvVar, Output, build, owner_index
from bridge.engine.phases import Outcome, fetch_from
from bridge.engine.records import ManagedFiles, StateRecords
from bridge.engine.schedule import Schedule
from bridge.engine.settle import Settler
from bridge.engine.units import Unit
from bridge.errors import ExtractError, OwnerRefused, ProviderError, WriteError, contained
from bridge.observe.changes import Change
from bridge.observe.metrics import COMMIT_SECONDS, COMMITS, CYCLE_SECONDS, LAST_REFRESH
from bridge.provider import Fetched, Provider
from bridge.writer.atomic import FileSpec, Writer
from bridge.writer.generation import can_give_owner
from bridge.writer.state import State

log = logging.getLogger("secrets_bridge.engine")

#: a commit that failed (a full tmpfs) is tried again this often
RETRY_COMMIT_SECONDS = 4.0
#: a state file save slower than SLOW_STATE_SECONDS (100,000 files: 35 MB) waits STATE_PACE times its
#: own duration (at most STATE_PACE_CAP_SECONDS) before the next: changes between are written together
SLOW_STATE_SECONDS = 0.05
STATE_PACE = 10.0
STATE_PACE_CAP_SECONDS = 5.0

Subscriber = Callable[[list[Change]], None]


@dataclass
class CycleResult:
    """What one cycle did: files that changed, and entries that failed (with why); `asked` when
    providers were called (a login or renewal on the way may move their upkeep)."""

    changed: list[str]
    failed: dict[str, ProviderError]
    write_error: WriteError | None = None
    changes: list[Change] = field(default_factory=list)
    asked: bool = False

    def summary(self, outputs: Mapping[str, Output]) -> str:
        """The one summary line of `sync` and of `run`'s (and `exec`'s) first sync: entries (and env
        values), required ones that failed, optional ones missing (counted apart), and a commit that failed."""
        optional = sum(1 for name in self.failed if name in outputs and outputs[name].optional)
        env = sum(1 for output in outputs.values() if isinstance(output, EnvVar))
        counted = f"{len(outputs) - env} entries" + (f" and {env} env values" if env else "")
        line = f"sync: {counted}, {len(self.failed) - optional} failed, {optional} optional missing"
        if self.write_error is not None:
            line += f"; commit failed, nothing written: {self.write_error}"
        return line


class Engine:
    def __init__(
        self,
        config: Config,
        *,
        providers: dict[str, Provider] | None = None,
        subscribers: Sequence[Subscriber] = (),
        writer: Writer | None = None,
        env: bool = False,
    ) -> None:
        """`env`: also keep the `env:` variables (for `exec` and `check`; run and sync make files only)."""
        self.config = config
        self.settings = config.settings
        self.providers = providers if providers is not None else config.build_providers()
        # A reload hands the running engine's writer (and its hold on the directory) to the next.
        self.writer = writer or Writer(self.settings.output_dir, require_tmpfs=self.settings.require_tmpfs)
        self.state = State(self.writer)
        self.subscribers = list(subscribers)
        self.heartbeat = time.monotonic()  # the loop was last seen at work (/healthz)
        self.waiting = False  # the loop is waiting for its next due time: alive, whatever the heartbeat
        self.units, self.outputs = build(config, self.providers, env=env)
        #: the outputs that make files (`secrets:` entries), and the env variables, by name (`$NAME`)
        self.entries = {n: o for n, o in self.outputs.items() if not isinstance(o, EnvVar)}
        self.env = EnvValues(self.outputs)
        self._owner = owner_index(self.entries)
        self.schedule = Schedule(self.units.values(), self.settings.jitter)
        self.files = ManagedFiles(self._owner)  # one record per managed file
        self._dirty: set[str] | None = None  # entries whose state records need writing (None: all)
        self._state_due = 0.0  # when a slow state file may be written again (monotonic)
        self.records = StateRecords(self.state, self.settings)
        self.leases = LeaseKeeper(self.writer, self.providers)
        self.settler = Settler(self.schedule, self.leases, self.outputs.__getitem__, self._mark)
        self._started = False
        self._write_failing: float | None = None  # since when commits fail (monotonic)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Prepare the directory and take the files already there as the last good content;
        files no entry makes any more are removed at the first commit."""
        self.writer.prepare()
        self._started = True
        LAST_REFRESH.entries = self.last_refreshed
        self.files.adopt(self.writer.committed, self.state.load())
        self._resume()

    def _resume(self) -> None:
        """Take back the leases the lease store holds, as the lease keeper checked them."""
        self.settler.resumed(self.leases.resume(self.units.values()))

    def close(self, *, release: bool = True) -> None:
        """Close the providers; remove replaced generations once readers are past them; let the
        directory go (unless the writer passes to a reloaded engine)."""
        for provider in self.providers.values():
            provider.close()
        failures.forget(self.outputs.values())
        if self._started:
            self._save_state(now=True)  # what a paced save still owes
            pending = self.writer.prune(make_spare=False)
            while pending is not None:
                time.sleep(pending)
                pending = self.writer.prune(make_spare=False)
            if release:
                self.writer.release()

    def revoke_leases(self) -> None:
        """Revoke the leases of providers that ask for it (`revoke_on_exit`), on shutdown."""
        if self.settler.revoked(self.leases.revoke(self.units.values())) and self._started:
            self.leases.save(self.units.values(), force=True)

    def sync(self) -> CycleResult:
        """One pass: fetch every unit, commit once."""
        return self.cycle(self.units.values(), force=True)

    def check(self) -> dict[str, ProviderError]:
        """A dry sync: fetch every unit and render every entry as `sync` would; write nothing.
        Returns the outputs that failed; `Output.version()` gives what each resolved to."""
        self._resume()  # a running bridge's leases are read, not minted again
        resumed = {u for u in self.units.values() if u.lease is not None}
        outcomes = self.fetch(self.units.values(), force=True)
        failed = self.settler.settle(outcomes, time.monotonic(), quiet=True)
        self.render(self.outputs.values(), failed, quiet=True)
        self.settler.revoked(self.leases.revoke(self.units.values(), only=lambda u: u not in resumed))
        return failed

    # -- health ----------------------------------------------------------------------------

    def stalled_seconds(self) -> float:
        """How long the loop has been at work without coming round (0 while it waits)."""
        return 0.0 if self.waiting else time.monotonic() - self.heartbeat

    def missing_required(self) -> list[str]:
        """Required outputs with a file not written (or an env value not rendered) yet."""
        return [o.name for o in self.outputs.values() if not o.optional and o.missing()]

    def stale(self) -> list[str]:
        """Required entries whose units have failed, or which have failed to render, for longer than
        max_staleness; and the output directory when commits have failed that long."""
        limit = time.monotonic() - self.settings.max_staleness
        stale = [e.name for e in self.outputs.values() if not e.optional and any(
            t is not None and t < limit for t in (e.failing_since, *(u.failing_since for u in e.units.values())))]
        if self._write_failing is not None and self._write_failing < limit:
            stale.append(f"commits to {self.settings.output_dir}")
        return stale

    def unlinked(self) -> str | None:
        """Why a secret has no visible link (a folder planted at its name), or None."""
        return self.writer.links.unlinked

    def ready(self) -> bool:
        return not self.missing_required() and not self.stale() and self.unlinked() is None

    # -- one cycle -------------------------------------------------------------------------

    def cycle(self, due: Iterable[Unit] | None = None, *, force: bool = False) -> CycleResult:
        """Plan (unless `due` is given), fetch, render, commit and announce."""
        started = time.perf_counter()
        now = time.monotonic()
        units = self.plan(now) if due is None else list(due)
        if not units and not self.files.pending:
            self._save_state()  # owed by a paced save, if any
            return CycleResult([], {})
        outcomes = self.fetch(units, force=force)
        failed = self.settler.settle(outcomes, time.monotonic())  # a Retry-After counts from the answer, not the plan
        moved = [u for u, o in outcomes.items() if isinstance(o, Fetched)]
        entries = self._affected(moved, everything=force)
        self.files.pending.update(self.render(entries, failed))
        if self._started:
            self.leases.save(self.units.values())  # before the commit: a crash between the two resumes the lease
        changes, write_error = self.commit()
        changes += self.env.take()
        self._save_state()
        self.announce(changes)
        CYCLE_SECONDS.observe(time.perf_counter() - started)
        return CycleResult([c.file for c in changes], failed, write_error, changes, asked=bool(units))

    def plan(self, now: float) -> list[Unit]:
        """The units due now: whole groups whose time has come, and units on their own timer."""
        return self.schedule.due(now)

    def next_wake(self) -> float:
        """When a unit is due, or a failed commit is to be tried again."""
        retry = time.monotonic() + RETRY_COMMIT_SECONDS if self.files.pending else math.inf
        state = self._state_due if self._started and self._dirty != set() else math.inf
        return min(self.schedule.next_wake(), retry, state)

    def fetch(self, units: Iterable[Unit], *, force: bool = False) -> dict[Unit, Outcome]:
        """Per provider: the cheap check for what has a value, a batched fetch for the rest and
        the moved. One call per unit however many entries share it."""
        by_provider: dict[str, list[Unit]] = defaultdict(list)
        for unit in units:
            by_provider[unit.provider].append(unit)
        outcomes: dict[Unit, Outcome] = {}
        for name, group in by_provider.items():
            self.heartbeat = time.monotonic()  # a slow provider is not a stalled loop
            provider = self.providers[name]
            now = time.monotonic()
            found = contained(provider.name, functools.partial(fetch_from, provider, group, self.leases, now,
                                                               force=force))
            if isinstance(found, ProviderError):
                outcomes.update(dict.fromkeys(group, found))
                continue
            self.settler.found(found, now)
            outcomes.update(found.outcomes)
        return outcomes

    def render(self, entries: Iterable[Output], failed: dict[str, ProviderError], *,
               quiet: bool = False) -> dict[str, FileSpec | None]:
        """File contents for `entries`, only where they differ from the last good (env values go to
        `self.env`); an output that cannot render keeps what it made and is recorded in `failed`."""
        updates: dict[str, FileSpec | None] = {}
        for entry in entries:
            if not entry.ready_to_render():
                continue
            try:
                specs = entry.render(self.settings)
                _check_owners(specs)
                if isinstance(entry, EnvVar):
                    self.env.rendered(entry)
            except ProviderError as exc:
                error = exc
            except Exception as exc:  # a converter's own error: its text may hold the value
                error = ExtractError(f"cannot use the value ({type(exc).__name__})")
            else:
                if failures.renders_again(entry):
                    self._mark([entry.name])
                updates.update(self.files.rendered(entry, specs, entry.version()))
                continue
            if "" in entry.units:
                unit = entry.units[""]
                error.at(provider=unit.provider, ref=unit.request.ref, version=unit.version)
            failed[entry.name] = error
            if not quiet and failures.render_failed(entry, error):
                self._mark([entry.name])
        return updates

    def commit(self) -> tuple[list[Change], WriteError | None]:
        """Hand the pending file updates to the writer as one generation, in three steps:

        1. write: the writer commits every pending update as one generation; when that fails (a
           full tmpfs) the last generation stays whole and the updates wait for the next cycle;
        2. record: each changed file's record takes its new content, version and time, and gives
           one Change;
        3. tell: count and log the commit, and mark the changed entries' state records.
        """
        if not self.files.pending:
            return [], None
        changed = self._write()  # 1
        if isinstance(changed, WriteError):
            return [], changed
        pending, self.files.pending = self.files.pending, {}
        changes = self.files.committed(changed, pending, self.writer.generation)  # 2
        self._committed(changes)  # 3
        return changes, None

    def _write(self) -> list[str] | WriteError:
        started = time.perf_counter()
        try:
            changed = self.writer.commit(self.files.pending)
        except WriteError as exc:
            if self._write_failing is None:
                log.error("cannot commit to %s: %s; the last generation stays", self.settings.output_dir, exc)
                self._write_failing = time.monotonic()
            return exc
        COMMIT_SECONDS.observe(time.perf_counter() - started)
        if self._write_failing is not None:
            log.info("commits to %s work again", self.settings.output_dir)
            self._write_failing = None
        return changed

    def _committed(self, changes: list[Change]) -> None:
        if not changes:
            return
        COMMITS.inc()
        self._mark(c.entry for c in changes)
        names = ", ".join(c.file for c in changes[:10]) + (", ..." if len(changes) > 10 else "")
        log.info("committed a new generation: %d changed (%s)", len(changes), names)

    def announce(self, changes: list[Change]) -> None:
        """Tell every subscriber; a failing subscriber never stops the bridge."""
        if not changes:
            return
        for subscriber in self.subscribers:
            try:
                subscriber(changes)
            except Exception as exc:
                log.warning("change subscriber %s failed (%s)", type(subscriber).__name__, type(exc).__name__)

    # -- bookkeeping -----------------------------------------------------------------------

    def _affected(self, moved: list[Unit], *, everything: bool) -> list[Output]:
        if everything:
            return list(self.outputs.values())
        names = dict.fromkeys(name for unit in moved for name in unit.entries)
        return [self.outputs[n] for n in names]

    def _mark(self, entries: Iterable[str]) -> None:
        if self._dirty is not None:
            self._dirty.update(entries)

    def _save_state(self, *, now: bool = False) -> None:
        """Write the state records of the entries marked since the last save (a slow save paced)."""
        if self._dirty == set() or not self._started or (not now and time.monotonic() < self._state_due):
            return
        started = time.monotonic()
        names = self.entries.keys() if self._dirty is None else self._dirty & self.entries.keys()
        self.records.update((self.entries[n] for n in names), self.files)
        if self.records.save():
            self._dirty = set()
        took = time.monotonic() - started
        self._state_due = started + min(STATE_PACE_CAP_SECONDS, STATE_PACE * took) if took > SLOW_STATE_SECONDS else 0.0

    def last_refreshed(self) -> Iterable[tuple[str, float]]:
        """Each entry with the time its least recently confirmed unit was last confirmed."""
        wall, now = time.time(), time.monotonic()
        for entry in self.outputs.values():
            stamps = [u.refreshed_at for u in entry.units.values() if u.refreshed_at is not None]
            if entry.failing_since is not None:
                stamps.append(wall - (now - entry.failing_since))  # its file stopped following the source
            if len(stamps) >= len(entry.units):
                yield entry.name, min(stamps)

    def entry_of(self, file: str) -> Output | None:
        return self._owner(file)

    def updated(self, file: str) -> float | None:
        return self.files.updated(file)

    def version_of(self, file: str) -> str | None:
        return self.files.version(file)


def _check_owners(specs: dict[str, FileSpec]) -> None:
    """An owner this process may not give fails its entry alone, before the commit (which would
    otherwise fail for every file)."""
    for file, spec in specs.items():
        if not can_give_owner(spec.uid, spec.gid):
            raise OwnerRefused(f"cannot give {file} owner {spec.uid}:{spec.gid} as uid {os.geteuid()}: "
                               "run the bridge as root (or with CAP_CHOWN) or drop uid/gid")
