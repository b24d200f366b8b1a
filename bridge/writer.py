"""The atomic writer: Kubernetes' `..data` generation layout in the output directory.

    ..2026_11_28_02_10_00.123456789/db_password   a generation (real files)
    ..data -> ..2026_11_28_02_10_00.123456789      swapped by one rename(2): the commit point
    db_password -> ..data/db_password              what applications open

It never leaves a partial file, never creates a file wider than its final mode, never follows a
symlink inside the output directory (bridge/generation.py), and never writes when nothing changed.
It holds the output directory by the descriptor it locked at start and never resolves the path
again, unless that directory is removed: then it makes a new one at the path and writes it all.
Names beginning with `..` are its own; at start it removes the leftovers of a crash at any step.

A commit costs what changed, not what exists. Unchanged files enter the new generation as hard
links (same inode, mode and owner) through a *spare*: `..spare_*`, mode 0700, a directory of links
to the current generation's inodes prepared off the commit path by prune(). A commit replaces the
changed names in a spare and renames it into place. A replaced generation stays for a grace period
for readers still resolving paths through it, then becomes a spare once the names changed since are
relinked. A linked inode is never written, chmod'ed or chown'ed: a new mode or owner is a new file.

After start the writer never reads files back: it knows what it committed, and check_drift()
compares what it recorded (inode, mode, owner, size, mtime) to put back what something else changed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from bridge.errors import WriteError
from bridge.generation import (
    DIR_FLAGS,
    FileSpec,
    Stamp,
    fd_is_memory_backed,
    is_memory_backed,
    link_names,
    make_dir,
    open_folder,
    read_tree,
    remove,
    remove_names,
    stamp_of,
    unique_name,
    unlink,
    write_files,
)

__all__ = ["DATA_LINK", "GENERATION_GRACE_SECONDS", "MAX_SPARES", "FileSpec", "Writer", "is_memory_backed"]

DATA_LINK = "..data"
#: how long a replaced generation stays for readers that were resolving paths through it
GENERATION_GRACE_SECONDS = 1.0
#: spares kept ready: one for the next commit, one more for a commit within the grace period
MAX_SPARES = 2
_DATA_TMP = "..data_tmp"
_LINK_TMP = "..link_tmp"
_SPARE = "..spare_"
_ASIDE = "..aside_"
_GENERATION = ".."
#: after a spare could not be made (a full tmpfs), commits link at commit time for this long
_SPARE_RETRY_SECONDS = 5.0
#: a directory's mtime is set from the kernel's tick-based clock (1-10 ms steps): an age past
#: this margin means any later change gets a different mtime
_COARSE_CLOCK_NS = 50_000_000

log = logging.getLogger("secrets_bridge.writer")


@dataclass(eq=False)
class _Replaced:
    """A generation that is no longer current, kept for readers mid-lookup until its grace ends."""

    replaced_at: float
    stale: set[str]  # names whose inode differs from the current generation's
    tainted: bool  # it held files something else changed: remove it, never make it a spare


class Writer:
    """Commits sets of files to `output_dir` as atomic generations, doing work in proportion to
    what changed, and puts back what something else changed."""

    def __init__(self, output_dir: Path, *, require_tmpfs: bool = True) -> None:
        self.output_dir = output_dir
        self.require_tmpfs = require_tmpfs
        #: the current generation's directory name (`..2026_...`), None before the first commit
        self.generation: str | None = None
        self._dfd: int | None = None
        self._lost = False  # the held directory was removed and could not be made again yet
        self._committed: dict[str, FileSpec] = {}
        self._stamps: dict[str, Stamp] = {}
        self._tops: dict[str, int] = {}  # how many committed names live under each top-level name
        self._links: set[str] = set()  # top-level names this writer made a link at
        #: the output directory's mtime when every link was last seen right (a link deleted, made
        #: or renamed over changes it): while it stays, checking the links costs one fstat
        self._links_verified_mtime = -1
        self._generation_ino = 0
        self._generation_mtime = 0  # a name added or removed inside it changes this
        self._generation_trusted = False  # made by this process (not found at start)
        self._layout: list[tuple[str, list[tuple[str, str]]]] | None = None
        self._spares: dict[str, set[str]] = {}  # spare -> names to relink before it matches
        self._replaced: dict[str, _Replaced] = {}
        self._spare_retry_at = 0.0
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
        if self._dfd is None:
            return
        for spare in list(self._spares):
            with contextlib.suppress(OSError):
                remove(self._dfd, spare)
        self._spares.clear()
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
            gfd = os.open(gen, DIR_FLAGS, dir_fd=dfd)
            try:
                return {name: spec for name, spec, _ in read_tree(gfd)}
            finally:
                os.close(gfd)

    def _publish(self, changes: Mapping[str, FileSpec | None], *, fresh: bool = False,
                 tainted: bool = False) -> None:
        """Make a new generation: the committed set with `changes` applied, the changed names
        written, the rest linked (fresh: everything written, no inode shared with anything)."""
        dfd = self._fd()
        spare = None if fresh else self._take_spare(changes)
        gen = None
        try:
            if spare is None:  # no spare ready: link every unchanged file now
                spare = make_dir(dfd, _SPARE, 0o700)
                if not fresh and self.generation is not None:
                    self._link_into(spare, skip=changes)
            with _opened(dfd, spare) as sfd:
                if not fresh:
                    remove_names(sfd, changes)  # unlinked, never written through: the inode is live
                written = {name: spec for name, spec in changes.items() if spec is not None}
                stamps = write_files(sfd, written, lambda: self._step("file_written"))
                os.fchmod(sfd, 0o755)
                st = os.fstat(sfd)
            gen = self._rename_new(spare, _GENERATION)
            self._step("generation_written")
            self._swap(gen)  # the commit point
        except BaseException:
            with contextlib.suppress(OSError):
                unlink(dfd, _DATA_TMP)
            if gen or spare:
                self._discard(gen or spare or "")  # never leave a partial generation or spare
            raise
        self._step("committed")
        old, self.generation = self.generation, gen
        tainted = tainted or fresh or not self._generation_trusted
        self._generation_ino, self._generation_mtime, self._generation_trusted = st.st_ino, st.st_mtime_ns, True
        self._apply(changes, stamps)
        stale = set(changes)
        for spare_stale in self._spares.values():
            spare_stale |= stale
        for replaced in self._replaced.values():
            replaced.stale |= stale
        if fresh:  # spares hold the old inodes, which may be what was tampered with
            for name in self._spares:
                self._replaced[name] = _Replaced(-1e9, set(), True)
            self._spares.clear()
        if old is not None:
            self._replaced[old] = _Replaced(time.monotonic(), stale, tainted)
        try:
            self._sync_links({name.split("/", 1)[0] for name in changes}, full=fresh)
            self._step("links_synced")
        except (OSError, WriteError) as exc:  # committed all the same; check_drift() makes them
            log.warning("%s: committed, but a visible link could not be made yet: %s", self.output_dir, exc)

    def _apply(self, changes: Mapping[str, FileSpec | None], stamps: Mapping[str, Stamp]) -> None:
        for name, spec in changes.items():
            top = name.split("/", 1)[0]
            if spec is None:
                if self._committed.pop(name, None) is not None:
                    del self._stamps[name]
                    self._tops[top] -= 1
                    if not self._tops[top]:
                        del self._tops[top]
                    self._layout = None
                continue
            if name not in self._committed:
                self._tops[top] = self._tops.get(top, 0) + 1
                self._layout = None
            self._committed[name] = spec
            self._stamps[name] = stamps[name]

    def _swap(self, gen: str) -> None:
        """Point `..data` at `gen` by one rename."""
        dfd = self._fd()
        unlink(dfd, _DATA_TMP)
        os.symlink(gen, _DATA_TMP, dir_fd=dfd)
        self._step("data_tmp_linked")
        self._rename_over(_DATA_TMP, DATA_LINK)

    def _rename_over(self, tmp: str, name: str) -> None:
        dfd = self._fd()
        try:
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except OSError as exc:
            if exc.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise
            aside = self._rename_new(name, _ASIDE)  # a folder planted there: move it away first
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            self._discard(aside)  # never fails: done by a later prune() if it cannot be now

    def _rename_new(self, name: str, prefix: str) -> str:
        """Rename `name` to a new unused `prefix`+stamp name (rename(2) would replace an empty folder)."""
        dfd = self._fd()
        while True:
            new = unique_name(prefix)
            try:
                os.stat(new, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                os.rename(name, new, src_dir_fd=dfd, dst_dir_fd=dfd)
                return new

    # -- spares and replaced generations -----------------------------------------------------

    def prune(self, grace_seconds: float = GENERATION_GRACE_SECONDS) -> float | None:
        """Retire generations replaced more than `grace_seconds` ago (each becomes a spare or is
        removed) and make sure a spare is ready for the next commit. Never raises: a spare is only
        an optimisation. Returns the seconds until the next replaced generation may go, None if none.

        A reader that resolved `..data` just before a commit is still walking the old generation's
        path for a moment; removing it at once would show that reader a missing file."""
        if self._dfd is None:
            return None
        now, wait = time.monotonic(), None
        try:
            if os.fstat(self._dfd).st_nlink == 0:
                return None  # removed: the next commit or check_drift() makes it again
            for name, old in list(self._replaced.items()):
                age = now - old.replaced_at
                if age < grace_seconds:
                    wait = min(wait or grace_seconds, grace_seconds - age)
                    continue
                del self._replaced[name]
                if old.tainted or len(self._spares) >= MAX_SPARES or self.generation is None:
                    self._discard(name)
                else:
                    self._recycle(name, old.stale)
            for spare, stale in list(self._spares.items()):
                if stale:
                    self._relink_spare(spare, stale)
            if not self._spares and self.generation is not None and now >= self._spare_retry_at:
                self._build_spare()
            self._prune_failing = False
        except (OSError, WriteError) as exc:
            self._spare_retry_at = now + _SPARE_RETRY_SECONDS
            if not self._prune_failing:
                log.warning("%s: cannot prepare the next generation ahead (commits will be slower): %s",
                            self.output_dir, getattr(exc, "strerror", None) or exc)
            self._prune_failing = True
        return wait

    def _take_spare(self, changes: Mapping[str, FileSpec | None]) -> str | None:
        while self._spares:
            spare, stale = self._spares.popitem()
            try:
                self._relink(spare, stale.difference(changes))  # changed names are replaced anyway
                return spare
            except OSError:
                self._discard(spare)
        return None

    def _build_spare(self) -> None:
        dfd = self._fd()
        spare = make_dir(dfd, _SPARE, 0o700)  # 0700: no reader walks into it
        try:
            self._link_into(spare, skip={})
        except BaseException:
            self._discard(spare)
            raise
        self._step("spare_ready")
        self._spares[spare] = set()

    def _recycle(self, gen: str, stale: set[str]) -> None:
        dfd = self._fd()
        try:
            spare = self._rename_new(gen, _SPARE)
        except FileNotFoundError:
            return
        try:
            with _opened(dfd, spare) as sfd:
                os.fchmod(sfd, 0o700)  # its own directory, shared with no generation
            self._relink(spare, stale)
        except BaseException:
            self._discard(spare)
            raise
        self._spares[spare] = set()

    def _relink_spare(self, spare: str, stale: set[str]) -> None:
        try:
            self._relink(spare, stale)
        except BaseException:
            del self._spares[spare]
            self._discard(spare)
            raise
        stale.clear()

    def _relink(self, spare: str, names: set[str]) -> None:
        """Make `names` in `spare` the current generation's inodes again (or absent)."""
        if not names:
            return
        dfd = self._fd()
        with _opened(dfd, spare) as sfd:
            remove_names(sfd, names)
            present = [name for name in names if name in self._committed]
            if present and self.generation is not None:
                with _opened(dfd, self.generation) as gfd:
                    link_names(gfd, sfd, present, lambda: self._step("spare_file_linked"))

    def _link_into(self, spare: str, skip: Mapping[str, object]) -> None:
        assert self.generation is not None
        dfd = self._fd()
        names = [name for name in self._committed if name not in skip]
        with _opened(dfd, spare) as sfd, _opened(dfd, self.generation) as gfd:
            link_names(gfd, sfd, names, lambda: self._step("spare_file_linked"))

    def _discard(self, name: str) -> None:
        """Remove a writer-owned directory; if that fails, try again at a later prune()."""
        try:
            remove(self._fd(), name)
        except OSError:
            self._replaced[name] = _Replaced(-1e9, set(), True)

    # -- drift -------------------------------------------------------------------------------

    def check_drift(self) -> list[str]:
        """Put back what something else changed since the last commit: a managed link, `..data`,
        or a file of the current generation deleted, replaced, edited or chmod'ed (compared by
        stamp, no content read, no link followed). Returns the names put back (file names as in
        `committed`, top-level link names, `..data`), empty when all is well. Not a change."""
        with self._errors("drift repair"):
            if self._follow_removal():
                return sorted(self._committed)
            if self.generation is None:
                return []
            repaired: list[str] = []
            data_ok = self._data_ok()
            if not data_ok:
                repaired.append(DATA_LINK)
            bad = self._tampered()
            if bad is None:  # the generation itself is gone or not the one written
                self._publish(dict(self._committed), fresh=True)
                return sorted({*repaired, *self._committed})
            if bad:
                self._publish({name: self._committed[name] for name in bad}, tainted=True)
                repaired += bad
            elif not data_ok:
                self._swap(self.generation)
            repaired += self._check_links()
            return sorted(set(repaired))

    def _data_ok(self) -> bool:
        try:
            return os.readlink(DATA_LINK, dir_fd=self._fd()) == self.generation
        except OSError:
            return False

    def _tampered(self) -> list[str] | None:
        """Names of the current generation whose stamp differs from the one recorded; None when the
        generation directory itself is missing or not the one this writer made."""
        assert self.generation is not None
        try:
            gfd = os.open(self.generation, DIR_FLAGS, dir_fd=self._fd())
        except OSError:
            return None
        try:
            st = os.fstat(gfd)
            if (st.st_ino, stat.S_IMODE(st.st_mode)) != (self._generation_ino, 0o755):
                return None  # replaced or chmod'ed
            if st.st_mtime_ns != self._generation_mtime and not set(os.listdir(gfd)) <= self._tops.keys():
                return None  # a name added: rewrite it all rather than carry what we did not write
            bad: list[str] = []
            stamps = self._stamps
            for folder, leaves in self._folders():
                try:
                    ffd = open_folder(gfd, folder) if folder else gfd
                except OSError:
                    bad += [name for _, name in leaves]
                    continue
                try:
                    if folder and stat.S_IMODE(os.fstat(ffd).st_mode) != 0o755:
                        bad += [name for _, name in leaves]
                        continue
                    for leaf, name in leaves:
                        try:
                            if stamp_of(os.stat(leaf, dir_fd=ffd, follow_symlinks=False)) != stamps[name]:
                                bad.append(name)
                        except OSError:
                            bad.append(name)
                finally:
                    if folder:
                        os.close(ffd)
            return bad
        finally:
            os.close(gfd)

    def _folders(self) -> list[tuple[str, list[tuple[str, str]]]]:
        """The committed names grouped by folder, kept until a name is added or removed."""
        if self._layout is None:
            groups: dict[str, list[tuple[str, str]]] = {}
            for name in self._committed:
                folder, _, leaf = name.rpartition("/")
                groups.setdefault(folder, []).append((leaf, name))
            self._layout = list(groups.items())
        return self._layout

    def _check_links(self) -> list[str]:
        """Re-make each managed top-level link that is missing or not ..data/top. A full pass only
        when the output directory's entries may have changed since the last one that found all well."""
        mtime = os.fstat(self._fd()).st_mtime_ns
        if mtime == self._links_verified_mtime:
            return []
        started = time.time_ns()
        remade = self._sync_links(list(self._tops))
        # Directory times come from a coarse clock: a change within the same tick as `mtime` would
        # leave it equal, so trust it only once the clock has clearly moved past it.
        if not remade and started - mtime > _COARSE_CLOCK_NS:
            self._links_verified_mtime = mtime
        return remade

    def _sync_links(self, tops: Iterable[str], *, full: bool = False) -> list[str]:
        """Point each of `tops` that holds committed names at ..data/top and remove the link of each
        that holds none; full (start only, a directory read): also remove every other link of ours.
        Returns the names re-made."""
        dfd = self._fd()
        remade = []
        for top in sorted(tops):
            target = f"{DATA_LINK}/{top}"
            if top not in self._tops:
                if _is_our_link(dfd, top):
                    unlink(dfd, top)
                self._links.discard(top)
                continue
            if _link_target(dfd, top) == target:  # one syscall for a link that is right
                self._links.add(top)
                continue
            try:
                st: os.stat_result | None = os.stat(top, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None and stat.S_ISDIR(st.st_mode) and top not in self._links:
                raise WriteError(f"{self.output_dir}/{top} is a directory the bridge did not make; remove it")
            unlink(dfd, _LINK_TMP)
            os.symlink(target, _LINK_TMP, dir_fd=dfd)
            self._step("link_tmp_made")
            self._rename_over(_LINK_TMP, top)  # replaces a planted file, link or folder
            self._links.add(top)
            remade.append(top)
        if full:
            for name in os.listdir(dfd):
                if name not in self._tops and not name.startswith("..") and _is_our_link(dfd, name):
                    unlink(dfd, name)
        return remade

    # -- the directory -----------------------------------------------------------------------

    def _open(self) -> None:
        path = self.output_dir
        try:
            path.mkdir(mode=0o755, parents=True)
            created = True
        except FileExistsError:
            created = False
        except OSError as exc:
            raise WriteError(f"cannot create output_dir {path}: {exc.strerror}") from None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise WriteError(f"cannot open output_dir {path}: {exc.strerror}") from None
        try:
            if created:
                os.fchmod(fd, 0o755)  # mkdir's mode is narrowed by the umask
            if self.require_tmpfs and not fd_is_memory_backed(fd, str(path)):
                raise WriteError(
                    f"output_dir {path} is on a disk-backed filesystem; mount a tmpfs there "
                    f"(Compose: a tmpfs volume; Kubernetes: emptyDir with medium: Memory; by hand: "
                    f"mount -t tmpfs tmpfs {path}) or set require_tmpfs: false"
                )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise WriteError(
                    f"another secrets-bridge is writing {path}; one writer per directory "
                    f"(stop it, or give this one its own output_dir)"
                ) from None
        except BaseException:
            os.close(fd)
            raise
        self._dfd = fd

    def _repair(self) -> None:
        """Start: keep `..data`'s generation, remove every other `..` name, read what it holds."""
        dfd = self._fd()
        gen = _current_generation(dfd)
        if gen is None:
            remove(dfd, DATA_LINK)  # dangling, or not a link to a generation
        for name in os.listdir(dfd):
            if name.startswith("..") and name not in (DATA_LINK, gen):
                remove(dfd, name)
        self._committed, self._stamps, self._tops, self._links = {}, {}, {}, set()
        self._spares, self._replaced, self._layout = {}, {}, None
        self.generation = gen
        if gen is not None:
            with _opened(dfd, gen) as gfd:
                st = os.fstat(gfd)
                self._generation_ino, self._generation_mtime = st.st_ino, st.st_mtime_ns
                self._generation_trusted = False  # never a spare: it may hold what we did not write
                for name, spec, stamp in read_tree(gfd):
                    self._committed[name], self._stamps[name] = spec, stamp
                    top = name.split("/", 1)[0]
                    self._tops[top] = self._tops.get(top, 0) + 1
        self._sync_links(list(self._tops), full=True)

    def _follow_removal(self) -> bool:
        """If the held directory was removed, make it again at the path and write everything
        committed there. True when it did."""
        if self._dfd is not None and os.fstat(self._dfd).st_nlink > 0:
            return False
        if self._dfd is None and not self._lost:
            self._fd()  # never prepared: say so
        if self._dfd is not None:
            log.warning("%s was removed; making it again with the %d committed files",
                        self.output_dir, len(self._committed))
            os.close(self._dfd)
            self._dfd = None
        self._lost = True
        self._spares, self._replaced, self._links = {}, {}, set()
        self._open()
        self._lost = False
        dfd = self._fd()
        for name in os.listdir(dfd):
            if name.startswith(".."):
                remove(dfd, name)
        self.generation = None
        if self._committed:
            self._publish(dict(self._committed), fresh=True)
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
            self._tops = {}
            self._sync_links(list(self._links), full=True)
            for name in os.listdir(dfd):
                if name.startswith(".."):
                    remove(dfd, name)
        self._committed, self._stamps, self._links, self._layout = {}, {}, set(), None
        self._spares, self._replaced, self.generation = {}, {}, None

    def write_state(self, name: str, data: bytes, mode: int = 0o644) -> None:
        """Atomically replace the metadata file `name` (not a `..` name) beside the secrets,
        created with `mode` from the start (0o600 for what only the bridge may read)."""
        with self._errors("write state"):
            self._follow_removal()
            dfd = self._fd()
            tmp = unique_name("..state_")
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

    def _step(self, name: str) -> None:
        """A named point between two steps of a commit (tests crash the process here)."""


@contextlib.contextmanager
def _opened(dfd: int, name: str) -> Iterator[int]:
    fd = os.open(name, DIR_FLAGS, dir_fd=dfd)
    try:
        yield fd
    finally:
        os.close(fd)


def _current_generation(dfd: int) -> str | None:
    try:
        target = os.readlink(DATA_LINK, dir_fd=dfd)
    except OSError:
        return None
    if "/" in target or not target.startswith("..") or target in (DATA_LINK, _DATA_TMP):
        return None
    try:
        st = os.stat(target, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return target if stat.S_ISDIR(st.st_mode) else None


def _link_target(dfd: int, name: str) -> str | None:
    try:
        return os.readlink(name, dir_fd=dfd)
    except OSError:  # missing, or not a link
        return None


def _is_our_link(dfd: int, name: str) -> bool:
    return (_link_target(dfd, name) or "").startswith(DATA_LINK + "/")
