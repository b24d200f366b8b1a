"""The atomic writer: Kubernetes' `..data` generation layout in the output directory.

    ..2026_11_28_02_10_00.123456789/db_password   a generation (real files)
    ..data -> ..2026_11_28_02_10_00.123456789      swapped by one rename(2): the commit point
    db_password -> ..data/db_password              what applications open

It never leaves a partial file, never creates a file wider than its final mode, never follows a
symlink inside the output directory (generation.py), and never writes when nothing changed.
It holds the output directory by the descriptor it locked at start and never resolves the path
again, unless that directory is removed: then it makes a new one at the path and writes it all
(directory.py).
Names beginning with `..` are its own; at start it removes the leftovers of a crash at any step.

A commit costs what changed, not what exists: unchanged files enter the new generation as hard
links (same inode, mode and owner) through a spare prepared off the commit path (spares.py).
A linked inode is never written, chmod'ed or chown'ed: a new mode or owner is a new file. After
start the writer never reads files back: it knows what it committed, and check_drift() compares
what it recorded (inode, mode, owner, size, mtime, ctime; drift.py) to put back what something
else changed. `Writer.commit` lists the steps of a commit, numbered, as kubelet's AtomicWriter does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from types import MappingProxyType

from bridge.errors import WriteError
from bridge.writer.directory import HeldDirectory, Standing
from bridge.writer.drift import restamped, tampered, where_path_leads
from bridge.writer.generation import (
    FileSpec,
    Stamp,
    by_folder,
    is_memory_backed,
    make_dir,
    opened,
    read_tree,
    remove,
    remove_names,
    rename_new,
    unlink,
    write_files,
)
from bridge.writer.links import DATA_LINK, DATA_TMP, Links, current_generation, link_target
from bridge.writer.spares import MAX_SPARES, SPARE_PREFIX, Spares

__all__ = ["DATA_LINK", "GENERATION_GRACE_SECONDS", "MAX_SPARES", "FileSpec", "Writer", "is_memory_backed"]

#: how long a replaced generation stays for readers that were resolving paths through it
GENERATION_GRACE_SECONDS = 1.0

log = logging.getLogger("secrets_bridge.writer")


class Writer(HeldDirectory):
    """Commits sets of files to `output_dir` as atomic generations, doing work in proportion to
    what changed, and puts back what something else changed. One thread at a time (the engine's
    loop): prepare(), commit(), prune() and check_drift() share the directory state."""

    def __init__(self, output_dir: Path, *, require_tmpfs: bool = True) -> None:
        super().__init__(output_dir, require_tmpfs=require_tmpfs)
        #: the current generation's directory name (`..2026_...`), None before the first commit
        self.generation: str | None = None
        self._committed: dict[str, FileSpec] = {}
        self._stamps: dict[str, Stamp] = {}
        self._generation_id = (0, 0)  # inode and mtime (a name added or removed changes it)
        self._generation_trusted = False  # made by this process, or found at start holding only files
        self._folders: list[tuple[str, list[str]]] | None = None  # committed names by folder
        self._spares = Spares(self._step, self._restamp, GENERATION_GRACE_SECONDS)
        self._path_warned: tuple[int, int] | None = None  # where the path led when we said so
        self.links = Links(self._step, lambda name: self._spares.discard(self._fd(), name))
        self._prune_failing = False

    # -- start and stop ----------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the directory if needed, check it is in memory, take it for this process (one
        writer per directory), repair any crash leftovers, and read what the current generation
        holds (`committed`). Again on a prepared writer: only follow a removal of the directory."""
        if self._standing is not Standing.UNPREPARED:
            with self._errors("prepare"):
                self._follow_removal()
            return
        self._open()
        self._standing = Standing.HELD
        with self._errors("prepare"):
            self._repair()

    @property
    def committed(self) -> Mapping[str, FileSpec]:
        """What the current generation holds (a live read-only view)."""
        return MappingProxyType(self._committed)

    def release(self) -> None:
        """Remove the spares and let another process write the directory."""
        if self._dfd is not None:
            self._spares.remove_spares(self._dfd)
        self._close()

    # -- commit ------------------------------------------------------------------------------

    def commit(self, updates: Mapping[str, FileSpec | None]) -> list[str]:
        """Apply `updates` (None removes a file) on top of what is committed, in one rename; return
        the sorted names whose content, mode or owner changed. Nothing changed: nothing written.

        The steps, numbered as kubelet's AtomicWriter.Write numbers its own (and marked so below):

         (1) Keep the updates that differ from what is committed; none: return, nothing is written.
         (2) If the directory was removed, make it again and write every committed file there anew
             (`_follow_removal`); this commit goes on in the new directory.
         (3) Start the next generation from a spare: a private (0700) directory of hard links to
             the current generation's files, prepared off the commit path by `prune()`. With none
             ready, a replaced generation past its grace becomes one now (its names changed since
             relinked); with none of those either, make one and link the unchanged files into it.
         (4) Remove the changed names from it: they are links to live inodes, never written through.
         (5) Write each changed file, created with its final mode and owner, never wider.
         (6) Open the directory to readers (0755) and rename it to a new `..<timestamp>` generation.
         (7) Point `..data_tmp` at the new generation and rename it over `..data`: the commit point.
             A failure before this removes the half-made directory; the current generation stays.
         (8) Retire the replaced generation: readers mid-lookup have the grace period, then
             `prune()` or step (3) of a later commit makes it a spare (or `prune()` removes it).
         (9) Record what is committed: each file's spec and stamp (what `check_drift` compares).
        (10) Make the visible link of each new top-level name, remove those of names gone; a link
             that cannot be made yet is made by the next `check_drift`.

        `check_drift` runs the same steps with other starts and retirements: a rewrite of
        everything in an empty directory (`_rewrite_all`), or of tampered files
        (`_retire_tampered`), so no inode it did not write is carried into a generation."""
        changes = {name: spec for name, spec in updates.items() if spec != self._committed.get(name)}  # (1)
        if not changes:
            return []
        with self._errors("commit"):
            self._follow_removal()  # (2)
            self._publish(changes, start=self._start_from_spare, retire=self._retire)
        return sorted(changes)

    def current(self) -> dict[str, FileSpec]:
        """The files of the current generation as read from disk now (for tests and tools)."""
        with self._errors("read"):
            dfd = self._fd()
            gen = current_generation(dfd)
            if gen is None:
                return {}
            with opened(dfd, gen) as gfd:
                return {name: spec for name, spec, _ in read_tree(gfd)}

    def _publish(self, changes: Mapping[str, FileSpec | None], *, start: Callable[[Mapping[str, object]], str],
                 retire: Callable[[str | None, Collection[str]], None]) -> None:
        """Steps (3) to (10) of `commit`: `start` makes the directory the generation is made in,
        `retire` takes the generation it replaces."""
        dfd = self._fd()
        draft = start(changes)  # (3) and (4)
        gen = None
        try:
            with opened(dfd, draft) as sfd:
                written = {name: spec for name, spec in changes.items() if spec is not None}
                stamps = write_files(sfd, written, lambda: self._step("file_written"))  # (5)
                os.fchmod(sfd, 0o755)  # nosec B103  # (6) a folder; readers of other uids walk through it
                st = os.fstat(sfd)
            gen = rename_new(dfd, draft, "..")
            self._step("generation_written")
            self._swap(gen)  # (7) the commit point
        except BaseException:
            with contextlib.suppress(OSError):
                unlink(dfd, DATA_TMP)
            self._spares.discard(dfd, gen or draft)  # never leave a partial generation or spare
            self._restamp(changes)  # their links in the spare were removed
            raise
        self._step("committed")
        old, self.generation = self.generation, gen
        retire(old, changes)  # (8)
        self._generation_id, self._generation_trusted = (st.st_ino, st.st_mtime_ns), True
        self._record(changes, stamps)  # (9)
        try:  # (10)
            self.links.sync(dfd, {name.split("/", 1)[0] for name in changes})
            self._step("links_synced")
        except (OSError, WriteError) as exc:  # committed all the same; check_drift() makes them
            log.warning("%s: committed, but a visible link could not be made yet: %s", self.output_dir, exc)

    # (3) and (4): where the next generation starts

    def _start_from_spare(self, changes: Mapping[str, object]) -> str:
        """A spare matching the current generation with the changed names removed; with none
        ready, a new directory with the unchanged files linked into it now."""
        dfd = self._fd()
        spare = self._spares.take(dfd, self.generation, self._committed, changes)
        try:
            if spare is not None:
                with opened(dfd, spare) as sfd:
                    remove_names(sfd, changes)  # (4) unlinked, never written through: the inode is live
                return spare
            spare = make_dir(dfd, SPARE_PREFIX, 0o700)
            if self.generation is not None:
                unchanged = [name for name in self._committed if name not in changes]
                self._spares.link_all(dfd, spare, self.generation, unchanged)
        except BaseException:
            if spare is not None:
                self._spares.discard(dfd, spare)
            raise
        return spare

    def _start_empty(self, changes: Mapping[str, object]) -> str:
        """An empty directory: every file is written anew, no inode shared with anything."""
        return make_dir(self._fd(), SPARE_PREFIX, 0o700)

    # (8): what becomes of the replaced generation

    def _retire(self, old: str | None, changes: Collection[str]) -> None:
        """A spare after its grace, when this process wrote it or it held only regular files when
        found at start (one holding anything else is removed)."""
        self._spares.committed(changes)
        if old is not None:
            if self._generation_trusted:
                self._spares.keep(old, changes)
            else:
                self._spares.drop(old)

    def _retire_tampered(self, old: str | None, changes: Collection[str]) -> None:
        """Removed after its grace: it holds inodes something else changed."""
        self._spares.committed(changes)
        if old is not None:
            self._spares.drop(old)

    def _retire_everything(self, old: str | None, changes: Collection[str]) -> None:
        """The replaced generation and every spare are removed (after a rewrite of everything)."""
        self._spares.committed(changes)
        self._spares.drop_spares()
        if old is not None:
            self._spares.drop(old)

    def _rewrite_all(self) -> None:
        """Every committed file written anew in an empty directory, the links of every name made;
        nothing of the old generation or the spares is carried over."""
        self._publish(dict(self._committed), start=self._start_empty, retire=self._retire_everything)
        self.links.sync(self._fd(), self.links.tops, full=True)

    def _record(self, changes: Mapping[str, FileSpec | None], stamps: Mapping[str, Stamp]) -> None:
        for name, spec in changes.items():
            if spec is None:
                if self._committed.pop(name, None) is not None:
                    del self._stamps[name]
                    self.links.removed(name)
                    self._folders = None
                continue
            if name not in self._committed:
                self.links.added(name)
                self._folders = None
            self._committed[name] = spec
            self._stamps[name] = stamps[name]

    def _swap(self, gen: str) -> None:
        """Point `..data` at `gen` by one rename."""
        dfd = self._fd()
        unlink(dfd, DATA_TMP)
        os.symlink(gen, DATA_TMP, dir_fd=dfd)
        self._step("data_tmp_linked")
        self.links.rename_over(dfd, DATA_TMP, DATA_LINK)

    def prune(self, grace_seconds: float = GENERATION_GRACE_SECONDS, *, make_spare: bool = True) -> float | None:
        """Retire generations replaced more than `grace_seconds` ago and (with `make_spare`) make sure a
        spare is ready for the next commit. Never raises (a spare only makes commits faster).
        Returns the seconds until the next replaced generation may go or a spare is due, None if
        there is nothing left to do.

        A reader that resolved `..data` just before a commit is still walking the old generation's
        path for a moment; removing it at once would show that reader a missing file."""
        try:
            if self._dfd is None or os.fstat(self._dfd).st_nlink == 0:
                return None  # removed: the next commit or check_drift() makes it again
            wait = self._spares.prune(self._dfd, self.generation, self._committed, grace_seconds,
                                      make_spare=make_spare)
        except (OSError, WriteError) as exc:
            if not self._prune_failing:
                log.warning("%s: cannot prepare the next generation ahead (commits will be slower): %s",
                            self.output_dir, getattr(exc, "strerror", None) or exc)
            self._prune_failing = True
            return None
        self._prune_failing = False
        return wait

    # -- drift -------------------------------------------------------------------------------

    def check_drift(self) -> list[str]:
        """Put back what something else changed since the last commit: a managed link, `..data`,
        or a file of the current generation deleted, replaced, edited or chmod'ed (compared by
        stamp, no content read, no link followed). Returns the names put back (file names as in
        `committed`, top-level link names, `..data`), empty when all is well. Not a change."""
        with self._errors("drift repair"):
            if self._follow_removal():
                return sorted(self._committed)
            self._warn_if_path_moved()
            if self.generation is None:
                return []
            data_ok = self._data_ok()
            repaired = [] if data_ok else [DATA_LINK]
            bad = self._tampered(self.generation)
            if bad is None:  # the generation itself is gone or not the one written
                self._rewrite_all()
                return sorted({*repaired, *self._committed})
            if bad:
                self._publish({name: self._committed[name] for name in bad}, start=self._start_from_spare,
                              retire=self._retire_tampered)
                repaired += bad
            elif not data_ok:
                self._swap(self.generation)
            repaired += self.links.check(self._fd())
            return sorted(set(repaired))

    def _warn_if_path_moved(self) -> None:
        """The path may now lead elsewhere (a re-pointed symlink, a directory moved away): writes
        stay in the directory locked at start, and the operator is told once."""
        now = where_path_leads(self.output_dir, self._fd())
        if now is not None and self._path_warned is None:
            log.warning("%s no longer leads to the directory locked at start; still writing that one "
                        "(restart the bridge to use the new one)", self.output_dir)
        self._path_warned = now

    def _restamp(self, names: Collection[str] | None) -> None:
        """Record again the ctime of current files whose link count the writer itself changed
        (linking a spare, removing an old generation): nothing else of their stamp may differ, so
        a file edited meanwhile is still seen as drift."""
        if self.generation is None or self._dfd is None:
            return
        wanted = self._committed if names is None else [name for name in names if name in self._committed]
        if not wanted:
            return
        with contextlib.suppress(OSError):
            self._stamps.update(restamped(self._dfd, self.generation, wanted, self._stamps))

    def _data_ok(self) -> bool:
        return link_target(self._fd(), DATA_LINK) == self.generation

    def _tampered(self, gen: str) -> list[str] | None:
        if self._folders is None:
            self._folders = list(by_folder(self._committed).items())
        return tampered(self._fd(), gen, self._generation_id, self.links.tops.keys(), self._folders,
                        self._stamps)

    # -- the directory -----------------------------------------------------------------------

    def _repair(self) -> None:
        """Start: keep `..data`'s generation, remove every other `..` name, read what it holds. The
        generation found is trusted (recycled as a spare once replaced, as one this process wrote)
        only when it holds nothing but regular files in 0755 folders of this uid."""
        dfd = self._fd()
        gen = current_generation(dfd)
        if gen is None:
            remove(dfd, DATA_LINK)  # dangling, or not a link to a generation
        for name in os.listdir(dfd):
            if name.startswith("..") and name not in (DATA_LINK, gen):
                remove(dfd, name)
        self._forget()
        self.generation = gen
        if gen is not None:
            strays: list[str] = []
            with opened(dfd, gen) as gfd:
                st = os.fstat(gfd)
                self._generation_id = (st.st_ino, st.st_mtime_ns)
                for name, spec, stamp in read_tree(gfd, strays=strays):
                    self._committed[name], self._stamps[name] = spec, stamp
                    self.links.added(name)
            # holding only what was read, as the writer makes it: it may become a spare once replaced
            self._generation_trusted = not strays and stat.S_IMODE(st.st_mode) == 0o755 and st.st_uid == os.geteuid()
        self.links.sync(dfd, self.links.tops, full=True)

    def _forget(self) -> None:
        self._committed, self._stamps = {}, {}
        self._folders, self.generation, self._generation_trusted = None, None, False
        self._spares.forget()
        self.links.forget()

    def _file_count(self) -> int:
        return len(self._committed)

    def _forget_directory(self) -> None:
        self._spares.forget()
        self.links.forget()
        for name in self._committed:
            self.links.added(name)
        self.generation = None

    def clear(self) -> None:
        """Remove every file the writer made (Docker removes secrets when a task stops)."""
        with self._errors("clear"):
            dfd = self._fd()
            tops = list(self.links.tops)
            self._forget()
            self.links.sync(dfd, tops, full=True)
            for name in os.listdir(dfd):
                if name.startswith(".."):
                    remove(dfd, name)

    def _step(self, name: str) -> None:
        """A named point between two steps of a commit (tests crash the process here)."""
