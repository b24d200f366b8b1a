"""The directories the writer keeps besides the current generation, so a commit costs what changed.

A *spare* (`..spare_*`, mode 0700, so no reader walks into it) holds hard links to the current
generation's inodes: a commit replaces only the changed names in it and renames it into place.
A *replaced* generation stays for a grace period, for readers still resolving paths through it,
then becomes a spare once the names changed since are relinked (or is removed). Each keeps the set
of names where it differs from the current generation. A linked inode is never written through:
a stale name is unlinked and linked again. Making or removing a link moves the inode's ctime, so
`restamp` is told which of the current generation's names it touched (None: any of them).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

from bridge.writer.generation import link_names, make_dir, opened, remove, remove_names, rename_new

SPARE_PREFIX = "..spare_"
#: spares kept ready: one for the next commit, one more for a commit within the grace period
MAX_SPARES = 2
#: after a spare could not be made (a full tmpfs, say), commits link at commit time for this long
_RETRY_SECONDS = 5.0


@dataclass(eq=False)
class _Replaced:
    """A generation that is no longer current, kept for readers mid-lookup until its grace ends."""

    replaced_at: float
    stale: set[str]  # names whose inode differs from the current generation's
    tainted: bool  # it may hold what the writer did not write: remove it, never make it a spare


class Spares:
    """Spares ready for the next commit and replaced generations in their grace period."""

    def __init__(self, step: Callable[[str], None],
                 restamp: Callable[[Collection[str] | None], None] = lambda names: None,
                 grace_seconds: float = 1.0) -> None:
        self._step = step
        self._grace = grace_seconds  # the last prune's: how long a replaced generation waits for readers
        self._restamp = restamp
        self._spares: dict[str, set[str]] = {}  # spare -> names to relink before it matches
        self._replaced: dict[str, _Replaced] = {}
        self._retry_at = 0.0
        self._current_since = time.monotonic()  # when the current generation was committed

    def forget(self) -> None:
        """Start afresh (a new process, or the directory holding them is gone). The generation found
        counts as just committed, so a one-shot sync that changes nothing links no spare."""
        self._spares, self._replaced = {}, {}
        self._current_since = time.monotonic()

    def take(self, dfd: int, generation: str | None, committed: Collection[str],
             changes: Collection[str]) -> str | None:
        """A spare that matches the current generation except for `changes`, or None. With none
        ready, a replaced generation past its grace is made one now (its stale names relinked:
        a cost in what changed since, not in what exists), so a commit that comes before the
        prune that would have done it links nothing."""
        if not self._spares and generation is not None:
            self._recycle_one(dfd, generation, committed)
        while self._spares:
            spare, stale = self._spares.popitem()
            try:
                self._relink(dfd, spare, generation, committed, stale.difference(changes))
                return spare
            except OSError:
                self.discard(dfd, spare)
        return None

    def link_all(self, dfd: int, spare: str, generation: str, names: Iterable[str]) -> None:
        """Hard-link `names` of `generation` into `spare`."""
        names = list(names)
        with opened(dfd, spare) as sfd, opened(dfd, generation) as gfd:
            link_names(gfd, sfd, names, lambda: self._step("spare_file_linked"))
        self._restamp(names)

    def committed(self, changes: Collection[str]) -> None:
        """A commit made a new current generation differing in `changes`: so do every spare and
        every replaced generation now."""
        stale = set(changes)
        for spare_stale in self._spares.values():
            spare_stale |= stale
        for replaced in self._replaced.values():
            replaced.stale |= stale
        self._current_since = time.monotonic()

    def keep(self, old: str, changes: Collection[str]) -> None:
        """The replaced generation `old` becomes a spare after its grace."""
        self._replaced[old] = _Replaced(self._current_since, set(changes), tainted=False)

    def drop(self, old: str) -> None:
        """The replaced generation `old` may hold what the writer did not write: removed after its
        grace, never made a spare."""
        self._replaced[old] = _Replaced(self._current_since, set(), tainted=True)

    def drop_spares(self) -> None:
        """Every spare is removed at the next prune (after a rewrite of everything)."""
        for spare in self._spares:
            self._replaced[spare] = _Replaced(-1e9, set(), tainted=True)
        self._spares.clear()

    def prune(self, dfd: int, generation: str | None, committed: Collection[str],
              grace_seconds: float, *, make_spare: bool = True) -> float | None:
        """Retire replaced generations past their grace (each becomes a spare or is removed) and
        (with `make_spare`) keep MAX_SPARES spares, counting the replaced generations that will become
        one: with nothing for the next commit (after start, or when the one replaced may not be
        reused) one is linked at once; the second, for a commit that comes within the grace of the
        last, once the current generation has stood for the grace period (in a stream of changes the
        replaced ones become spares at a fraction of the cost). A one-shot sync (`make_spare=False`)
        makes none. Returns the seconds until there is more to do, None if nothing."""
        now = time.monotonic()
        self._grace = grace_seconds
        try:
            wait = self._retire_replaced(dfd, generation, committed, grace_seconds, now)
            self._relink_spares(dfd, generation, committed)
            if make_spare and generation is not None:
                due = self._spare_due(grace_seconds, now)
                if due is not None and due <= 0:
                    self._build(dfd, generation, committed)
                    due = self._spare_due(grace_seconds, now)  # one link of everything per prune at most
                if due is not None:
                    wait = max(due, 0.0) if wait is None else min(wait, max(due, 0.0))
        except OSError:
            self._retry_at = now + _RETRY_SECONDS
            raise
        return wait

    def _spare_due(self, grace_seconds: float, now: float) -> float | None:
        """Seconds until a spare is to be linked (<= 0: now), None when enough are ready or coming."""
        coming = sum(not old.tainted for old in self._replaced.values())
        if len(self._spares) + coming >= MAX_SPARES:
            return None
        start = now if not self._spares and not coming else self._current_since + grace_seconds
        return max(self._retry_at, start) - now

    def _retire_replaced(self, dfd: int, generation: str | None, committed: Collection[str],
                         grace_seconds: float, now: float) -> float | None:
        """Each replaced generation past its grace becomes a spare or is removed; returns the
        seconds until the next one's grace ends."""
        wait = None
        for name, old in list(self._replaced.items()):
            age = now - old.replaced_at
            if age < grace_seconds:
                wait = min(wait or grace_seconds, grace_seconds - age)
                continue
            del self._replaced[name]
            if old.tainted or len(self._spares) >= MAX_SPARES or generation is None:
                self.discard(dfd, name)
            else:
                self._recycle(dfd, name, old.stale, generation, committed)
        return wait

    def _recycle_one(self, dfd: int, generation: str, committed: Collection[str]) -> None:
        """The oldest reusable replaced generation past its grace becomes a spare (a failure only
        means the commit links its own; one to remove waits for prune: a removal is not cheap)."""
        now = time.monotonic()
        for name, old in self._replaced.items():
            if not old.tainted and now - old.replaced_at >= self._grace:
                del self._replaced[name]
                with contextlib.suppress(OSError):
                    self._recycle(dfd, name, old.stale, generation, committed)
                return

    def _relink_spares(self, dfd: int, generation: str | None, committed: Collection[str]) -> None:
        for spare, stale in list(self._spares.items()):
            if stale:
                try:
                    self._relink(dfd, spare, generation, committed, stale)
                except BaseException:
                    del self._spares[spare]
                    self.discard(dfd, spare)
                    raise
                stale.clear()

    def discard(self, dfd: int, name: str) -> None:
        """Remove a writer-owned directory; if that fails, try again at a later prune()."""
        try:
            remove(dfd, name)
        except OSError:
            self._replaced[name] = _Replaced(-1e9, set(), True)
        self._restamp(None)  # it may have held links to the current generation's inodes

    def remove_spares(self, dfd: int) -> None:
        for spare in list(self._spares):
            with contextlib.suppress(OSError):
                remove(dfd, spare)
        self._spares.clear()

    def _build(self, dfd: int, generation: str, committed: Collection[str]) -> None:
        spare = make_dir(dfd, SPARE_PREFIX, 0o700)
        try:
            self.link_all(dfd, spare, generation, committed)
        except BaseException:
            self.discard(dfd, spare)
            raise
        self._step("spare_ready")
        self._spares[spare] = set()

    def _recycle(self, dfd: int, gen: str, stale: set[str], generation: str, committed: Collection[str]) -> None:
        try:
            spare = rename_new(dfd, gen, SPARE_PREFIX)
        except FileNotFoundError:
            return
        try:
            with opened(dfd, spare) as sfd:
                os.fchmod(sfd, 0o700)  # its own directory: no other generation shares it
            self._relink(dfd, spare, generation, committed, stale)
        except BaseException:
            self.discard(dfd, spare)
            raise
        self._spares[spare] = set()

    def _relink(self, dfd: int, spare: str, generation: str | None, committed: Collection[str],
                names: set[str]) -> None:
        """Make `names` in `spare` the current generation's inodes again (or absent)."""
        if not names:
            return
        with opened(dfd, spare) as sfd:
            remove_names(sfd, names)
            present = [name for name in names if name in committed]
            if present and generation is not None:
                with opened(dfd, generation) as gfd:
                    link_names(gfd, sfd, present, lambda: self._step("spare_file_linked"))
                self._restamp(present)
