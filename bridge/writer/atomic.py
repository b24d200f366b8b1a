"""The atomic writer: Kubernetes' `..data` generation layout in the output directory.

    ..2026_11_28_02_10_00.123456789/db_password   a generation (real files)
    ..data -> ..2026_11_28_02_10_00.123456789      swapped by one rename(2): the commit point
    db_password -> ..data/db_password              what applications open

It never leaves a partial file, never creates a file wider than its final mode, never follows a
symlink inside the output directory (bridge/generation.py), and never writes when nothing changed.
It holds the output directory by the descriptor it locked at start and never resolves the path
again, unless that directory is removed: then it makes a new one at the path and writes it all.
Names beginning with `..` are its own; at start it removes the leftovers of a crash at any step.

A commit costs what changed, not what exists: unchanged files enter the new generation as hard
links (same inode, mode and owner) through a spare prepared off the commit path (bridge/spares.py).
A linked inode is never written, chmod'ed or chown'ed: a new mode or owner is a new file. After
start the writer never reads files back: it knows what it committed, and check_drift() compares
what it recorded (inode, mode, owner, size, mtime, ctime) to put back what something else changed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO

from bridge.errors import WriteError
from bridge.writer.generation import (
    DIR_FLAGS,
    FileSpec,
    Stamp,
    by_folder,
    changed_files,
    is_memory_backed,
    make_dir,
    open_output_dir,
    opened,
    read_tree,
    remove,
    remove_names,
    rename_new,
    stamp_of,
    stat_names,
    unlink,
    write_files,
)
from bridge.writer.links import DATA_LINK, Links, link_target
from bridge.writer.spares import MAX_SPARES, SPARE_PREFIX, Spares

__all__ = ["DATA_LINK", "GENERATION_GRACE_SECONDS", "MAX_SPARES", "FileSpec", "Writer", "is_memory_backed"]

#: how long a replaced generation stays for readers that were resolving paths through it
GENERATION_GRACE_SECONDS = 1.0
_DATA_TMP = "..data_tmp"

log = logging.getLogger("secrets_bridge.writer")


class Writer:
    """Commits sets of files to `output_dir` as atomic generations, doing work in proportion to
    what changed, and puts back what something else changed. One thread at a time (the engine's
    loop): prepare(), commit(), prune() and check_drift() share the directory state."""

    def __init__(self, output_dir: Path, *, require_tmpfs: bool = True) -> None:
        self.output_dir = output_dir
        self.require_tmpfs = require_tmpfs
        #: the current generation's directory name (`..2026_...`), None before the first commit
        self.generation: str | None = None
        self._dfd: int | None = None
        self._lost = False  # the held directory was removed and could not be made again yet
        self._rewrite_owed = False  # made again, but writing the committed files there failed
        self._committed: dict[str, FileSpec] = {}
        self._stamps: dict[str, Stamp] = {}
        self._generation_id = (0, 0)  # inode and mtime (a name added or removed changes it)
        self._generation_trusted = False  # made by this process, not found at start
        self._folders: list[tuple[str, list[str]]] | None = None  # committed names by folder
        self._spares = Spares(self._step, self._restamp)
        self._path_warned: tuple[int, int] | None = None  # where the path led when we said so
        self._links = Links(self._step, lambda name: self._spares.discard(self._fd(), name))
        self._prune_failing = False

    # -- start and stop ----------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the directory if needed, check it is in memory, take it for this process (one
        writer per directory), repair any crash leftovers, and read what the current generation
        holds (`committed`). Again on a prepared writer: only follow a removal of the directory."""
        if self._dfd is not None or self._lost:
            with self._errors("prepare"):
                self._follow_removal()
            return
        self._open()
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
            os.close(self._dfd)  # closing drops the flock
        self._dfd, self._lost = None, False

    # -- commit ------------------------------------------------------------------------------

    def commit(self, updates: Mapping[str, FileSpec | None]) -> list[str]:
        """Apply `updates` (None removes a file) on top of what is committed, in one rename; return
        the sorted names whose content, mode or owner changed. Nothing changed: nothing written."""
        changes = {name: spec for name, spec in updates.items() if spec != self._committed.get(name)}
        if not changes:
            return []
        with self._errors("commit"):
            self._follow_removal()
            self._publish(changes)
        return sorted(changes)

    def current(self) -> dict[str, FileSpec]:
        """The files of the current generation as read from disk now (for tests and tools)."""
        with self._errors("read"):
            dfd = self._fd()
            gen = _current_generation(dfd)
            if gen is None:
                return {}
            with opened(dfd, gen) as gfd:
                return {name: spec for name, spec, _ in read_tree(gfd)}

    def _publish(self, changes: Mapping[str, FileSpec | None], *, fresh: bool = False,
                 tainted: bool = False) -> None:
        """Make a new generation: the committed set with `changes` applied, the changed names
        written, the rest linked (fresh: everything written, no inode shared with anything)."""
        dfd = self._fd()
        gen, spare = None, None
        if not fresh:
            spare = self._spares.take(dfd, self.generation, self._committed, changes)
        taken = spare is not None
        try:
            if spare is None:  # no spare ready: link every unchanged file now
                spare = make_dir(dfd, SPARE_PREFIX, 0o700)
                if not fresh and self.generation is not None:
                    unchanged = [name for name in self._committed if name not in changes]
                    self._spares.link_all(dfd, spare, self.generation, unchanged)
            with opened(dfd, spare) as sfd:
                if taken:
                    remove_names(sfd, changes)  # unlinked, never written through: the inode is live
                written = {name: spec for name, spec in changes.items() if spec is not None}
                stamps = write_files(sfd, written, lambda: self._step("file_written"))
                os.fchmod(sfd, 0o755)  # nosec B103  # a folder; readers of other uids walk through it
                st = os.fstat(sfd)
            gen = rename_new(dfd, spare, "..")
            self._step("generation_written")
            self._swap(gen)  # the commit point
        except BaseException:
            with contextlib.suppress(OSError):
                unlink(dfd, _DATA_TMP)
            if gen or spare:
                self._spares.discard(dfd, gen or spare or "")  # never leave a partial generation or spare
            self._restamp(changes)  # their links in the spare were removed
            raise
        self._step("committed")
        old, self.generation = self.generation, gen
        self._spares.committed(old, changes, tainted=tainted or fresh or not self._generation_trusted, fresh=fresh)
        self._generation_id, self._generation_trusted = (st.st_ino, st.st_mtime_ns), True
        self._apply(changes, stamps)
        try:
            self._links.sync(dfd, {name.split("/", 1)[0] for name in changes}, full=fresh)
            self._step("links_synced")
        except (OSError, WriteError) as exc:  # committed all the same; check_drift() makes them
            log.warning("%s: committed, but a visible link could not be made yet: %s", self.output_dir, exc)

    def _apply(self, changes: Mapping[str, FileSpec | None], stamps: Mapping[str, Stamp]) -> None:
        for name, spec in changes.items():
            if spec is None:
                if self._committed.pop(name, None) is not None:
                    del self._stamps[name]
                    self._links.removed(name)
                    self._folders = None
                continue
            if name not in self._committed:
                self._links.added(name)
                self._folders = None
            self._committed[name] = spec
            self._stamps[name] = stamps[name]

    def _swap(self, gen: str) -> None:
        """Point `..data` at `gen` by one rename."""
        dfd = self._fd()
        unlink(dfd, _DATA_TMP)
        os.symlink(gen, _DATA_TMP, dir_fd=dfd)
        self._step("data_tmp_linked")
        self._links.rename_over(dfd, _DATA_TMP, DATA_LINK)

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
                self._publish(dict(self._committed), fresh=True)
                return sorted({*repaired, *self._committed})
            if bad:
                self._publish({name: self._committed[name] for name in bad}, tainted=True)
                repaired += bad
            elif not data_ok:
                self._swap(self.generation)
            repaired += self._links.check(self._fd())
            return sorted(set(repaired))

    def _warn_if_path_moved(self) -> None:
        """The path may now lead elsewhere (a re-pointed symlink, a directory moved away): writes
        stay in the directory locked at start, and the operator is told once."""
        held = os.fstat(self._fd())
        try:
            st = os.stat(self.output_dir)
            now: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            now = None
        if now == (held.st_dev, held.st_ino):
            self._path_warned = None
        elif self._path_warned is None:
            log.warning("%s no longer leads to the directory locked at start; still writing that one "
                        "(restart the bridge to use the new one)", self.output_dir)
            self._path_warned = now or (-1, -1)

    def _restamp(self, names: Collection[str] | None) -> None:
        """Record again the ctime of current files whose link count the writer itself changed
        (linking a spare, removing an old generation): nothing else of their stamp may differ, so
        a file edited meanwhile is still seen as drift."""
        if self.generation is None or self._dfd is None:
            return
        wanted = self._committed if names is None else [name for name in names if name in self._committed]
        if not wanted:
            return
        with contextlib.suppress(OSError), opened(self._dfd, self.generation) as gfd:
            for name, st in stat_names(gfd, by_folder(wanted).items()):
                old = self._stamps[name]
                if st is not None and stamp_of(st)[:-1] == old[:-1]:
                    self._stamps[name] = stamp_of(st)

    def _data_ok(self) -> bool:
        return link_target(self._fd(), DATA_LINK) == self.generation

    def _tampered(self, gen: str) -> list[str] | None:
        """Names of the current generation whose stamp differs from the one recorded; None when the
        generation directory itself is missing, replaced, chmod'ed, or has a name added."""
        try:
            gfd = os.open(gen, DIR_FLAGS, dir_fd=self._fd())
        except OSError:
            return None
        try:
            st = os.fstat(gfd)
            if st.st_ino != self._generation_id[0] or stat.S_IMODE(st.st_mode) != 0o755:
                return None
            if st.st_mtime_ns != self._generation_id[1] and not set(os.listdir(gfd)) <= self._links.tops.keys():
                return None  # rewrite it all rather than carry along what this writer did not write
            if self._folders is None:
                self._folders = list(by_folder(self._committed).items())
            return changed_files(gfd, self._folders, self._stamps)
        finally:
            os.close(gfd)

    # -- the directory -----------------------------------------------------------------------

    def _open(self) -> None:
        self._dfd = open_output_dir(self.output_dir, require_tmpfs=self.require_tmpfs)

    def _repair(self) -> None:
        """Start: keep `..data`'s generation, remove every other `..` name, read what it holds."""
        dfd = self._fd()
        gen = _current_generation(dfd)
        if gen is None:
            remove(dfd, DATA_LINK)  # dangling, or not a link to a generation
        for name in os.listdir(dfd):
            if name.startswith("..") and name not in (DATA_LINK, gen):
                remove(dfd, name)
        self._forget()
        self.generation = gen
        if gen is not None:
            with opened(dfd, gen) as gfd:
                st = os.fstat(gfd)
                self._generation_id = (st.st_ino, st.st_mtime_ns)
                for name, spec, stamp in read_tree(gfd):
                    self._committed[name], self._stamps[name] = spec, stamp
                    self._links.added(name)
        self._links.sync(dfd, self._links.tops, full=True)

    def _forget(self) -> None:
        self._committed, self._stamps = {}, {}
        self._folders, self.generation, self._generation_trusted = None, None, False
        self._spares.forget()
        self._links.forget()

    def _follow_removal(self) -> bool:
        """If the held directory was removed, make it again at the path and write everything
        committed there (again at the next call, if that failed). True when it did."""
        gone = self._dfd is None or os.fstat(self._dfd).st_nlink == 0
        if not gone and not self._rewrite_owed:
            return False
        if self._dfd is None and not self._lost:
            self._fd()  # never prepared: say so
        if gone:
            if self._dfd is not None:
                log.warning("%s was removed; making it again with the %d committed files",
                            self.output_dir, len(self._committed))
                os.close(self._dfd)
                self._dfd = None
            self._lost = self._rewrite_owed = True
            self._spares.forget()
            self._links.forget()
            for name in self._committed:
                self._links.added(name)
            self.generation = None
            self._open()
            self._lost = False
            dfd = self._fd()
            for name in os.listdir(dfd):
                if name.startswith(".."):
                    remove(dfd, name)
        if self._committed:
            self._publish(dict(self._committed), fresh=True)
        self._rewrite_owed = False
        return True

    def _fd(self) -> int:
        if self._dfd is None:
            raise WriteError(f"output_dir {self.output_dir} is not open (prepare() first)")
        return self._dfd

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """One line for an OS fault (a full tmpfs, no descriptors left, a read-only remount, ...)."""
        try:
            yield
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            raise WriteError(
                f"{doing} in {self.output_dir}: {exc.strerror or type(exc).__name__}{where}") from None

    def clear(self) -> None:
        """Remove every file the writer made (Docker removes secrets when a task stops)."""
        with self._errors("clear"):
            dfd = self._fd()
            tops = list(self._links.tops)
            self._forget()
            self._links.sync(dfd, tops, full=True)
            for name in os.listdir(dfd):
                if name.startswith(".."):
                    remove(dfd, name)

    def write_state(self, name: str, data: bytes, mode: int = 0o644) -> None:
        """Atomically replace the metadata file `name` (not a `..` name) beside the secrets,
        created with `mode` from the start (0o600 for what only the bridge may read)."""
        with self._errors("write state"):
            self._follow_removal()
            dfd = self._fd()
            tmp = f"..state_{time.time_ns()}"
            try:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                fd = os.open(tmp, flags, mode & 0o777, dir_fd=dfd)
                with os.fdopen(fd, "wb") as out:
                    os.fchmod(fd, mode)  # undoes the umask
                    out.write(data)
                os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except OSError as exc:
                unlink(dfd, tmp)
                raise WriteError(f"cannot write {name} in {self.output_dir}: {exc.strerror}") from None

    def read_state(self, name: str) -> bytes | None:
        """The metadata file `name` beside the secrets (None when there is none), read through the
        directory held since prepare() (before it, through the path), never through a symlink."""
        with self._errors(f"read {name}"):
            try:
                dfd = self._dfd if self._dfd is not None else os.open(self.output_dir, DIR_FLAGS & ~os.O_NOFOLLOW)
            except FileNotFoundError:
                return None  # no output directory yet (`check` before any sync): no state either
            try:
                # O_NONBLOCK: a FIFO planted under the name must not hang the bridge in open()
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
            except FileNotFoundError:
                return None
            finally:
                if dfd != self._dfd:
                    os.close(dfd)
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise WriteError(f"read {name} in {self.output_dir}: not a regular file")
                return read_bounded(f, f"{name} in {self.output_dir}")

    def remove_state(self, name: str) -> None:
        """Remove the metadata file `name` beside the secrets, if it is there."""
        with self._errors(f"remove {name}"):
            unlink(self._fd(), name)

    def _step(self, name: str) -> None:
        """A named point between two steps of a commit (tests crash the process here)."""


def _current_generation(dfd: int) -> str | None:
    target = link_target(dfd, DATA_LINK)
    if target is None or "/" in target or not target.startswith("..") or target in (DATA_LINK, _DATA_TMP):
        return None
    try:
        st = os.stat(target, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return target if stat.S_ISDIR(st.st_mode) else None


#: a metadata file beside the secrets (state file, lease store) larger than this is not one the
#: bridge wrote (100,000 files make a 30 MB state file): refused, never read whole
MAX_STATE_BYTES = 64 * 2**20


def read_bounded(file: BinaryIO, what: str) -> bytes:
    """All of `file`, or WriteError once it is past MAX_STATE_BYTES (a sparse file of gigabytes
    costs nothing on disk and everything in memory)."""
    data = file.read(MAX_STATE_BYTES + 1)
    if len(data) > MAX_STATE_BYTES:
        raise WriteError(f"{what} is larger than {MAX_STATE_BYTES // 2**20} MiB: not the bridge's; remove it")
    return data
