"""The atomic writer: Kubernetes' `..data` generation layout in the output directory.

    ..2026_11_28_02_10_00.123456789/db_password   a generation (real files)
    ..data -> ..2026_11_28_02_10_00.123456789      swapped by one rename(2): the commit point
    db_password -> ..data/db_password              what applications open

It never leaves a partial file, never creates a file wider than its final mode, never follows a
symlink inside the output directory (every operation goes through directory file descriptors
with O_NOFOLLOW), and never writes when the content is unchanged. Names beginning with `..` are
its own; at start it removes leftovers of a crash at any step. A replaced generation is removed
after a short grace period, so a reader resolving a path at the moment of a commit still finds it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import shutil
import stat
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bridge.errors import WriteError

DATA_LINK = "..data"
#: how long a replaced generation stays for readers that were resolving paths through it
GENERATION_GRACE_SECONDS = 1.0
_DATA_TMP = "..data_tmp"
_STATE_TMP = "..state_tmp"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_TMPFS_MAGIC = 0x01021994
_RAMFS_MAGIC = 0x858458F6


@dataclass(frozen=True)
class FileSpec:
    """One file of a generation. The content is never part of the repr."""

    content: bytes = field(repr=False)
    mode: int = 0o444
    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)


class Writer:
    """Commits whole sets of files to `output_dir` as one atomic generation."""

    def __init__(self, output_dir: Path, *, require_tmpfs: bool = True) -> None:
        self.output_dir = output_dir
        self.require_tmpfs = require_tmpfs
        self._lock_fd: int | None = None
        #: generations this writer replaced, with the monotonic time of the replacement
        self._replaced: dict[str, float] = {}
        self._committed: dict[str, FileSpec] | None = None
        self.generation: str | None = None

    def prepare(self) -> None:
        """Create the directory if needed, check it is in memory, take it for this process (one
        writer per directory), and repair any crash leftovers."""
        if not self.output_dir.exists():
            try:
                self.output_dir.mkdir(mode=0o755, parents=True)
                self.output_dir.chmod(0o755)  # mkdir's mode is narrowed by the umask
            except FileExistsError:
                pass
            except OSError as exc:
                raise WriteError(f"cannot create output_dir {self.output_dir}: {exc.strerror}") from None
        if self.require_tmpfs and not is_memory_backed(self.output_dir):
            raise WriteError(
                f"output_dir {self.output_dir} is on a disk-backed filesystem; mount a tmpfs there "
                f"(Compose: a tmpfs volume; Kubernetes: emptyDir with medium: Memory; by hand: "
                f"mount -t tmpfs tmpfs {self.output_dir}) or set require_tmpfs: false"
            )
        self._lock()
        with self._dir() as dfd:
            self._repair(dfd)

    def release(self) -> None:
        """Let another process write the directory."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    def _lock(self) -> None:
        if self._lock_fd is not None:
            return
        try:
            fd = os.open(self.output_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise WriteError(f"cannot open output_dir {self.output_dir}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WriteError(
                f"another secrets-bridge is writing {self.output_dir}; one writer per directory "
                f"(stop it, or give this one its own output_dir)"
            ) from None
        self._lock_fd = fd

    def current(self) -> dict[str, FileSpec]:
        """The files of the committed generation (empty when there is none)."""
        with self._dir() as dfd:
            gen = _current_generation(dfd)
            if gen is None:
                return {}
            gfd = os.open(gen, _DIR_FLAGS, dir_fd=dfd)
            try:
                return dict(_read_tree(gfd, ""))
            finally:
                os.close(gfd)

    @property
    def committed(self) -> Mapping[str, FileSpec]:
        if self._committed is None:
            self._committed = self.current()
        return self._committed

    def commit(self, updates: Mapping[str, FileSpec | None]) -> list[str]:
        """Apply `updates` (None removes a file) on top of the committed files in one rename; return
        the names that changed, empty when nothing did and nothing was written."""
        before = dict(self.committed)
        files = dict(before)
        for name, spec in updates.items():
            if spec is None:
                files.pop(name, None)
            else:
                files[name] = spec
        changed = sorted(n for n in updates if files.get(n) != before.get(n))
        if not changed:
            return []
        self._lock()
        with self._dir() as dfd:
            old = _current_generation(dfd)
            gen = self._write_generation(dfd, files)
            self._step("generation_written")
            _unlink(dfd, _DATA_TMP)
            os.symlink(gen, _DATA_TMP, dir_fd=dfd)
            self._step("data_tmp_linked")
            os.rename(_DATA_TMP, DATA_LINK, src_dir_fd=dfd, dst_dir_fd=dfd)  # the commit point
            self._step("committed")
            self._sync_visible_links(dfd, {name.split("/", 1)[0] for name in files})
            self._step("links_synced")
            if old is not None:
                self._replaced[old] = time.monotonic()
            self._prune(dfd, GENERATION_GRACE_SECONDS)
        self._committed = files
        self.generation = gen
        return changed

    def prune(self, grace_seconds: float = GENERATION_GRACE_SECONDS) -> float | None:
        """Remove generations replaced more than `grace_seconds` ago.

        A reader that resolved `..data` just before a commit is still walking the old
        generation's path for a moment; removing it at once would show that reader a missing
        file. Returns the seconds until the next replaced generation may go, None if none is left."""
        with self._dir() as dfd:
            return self._prune(dfd, grace_seconds)

    def _prune(self, dfd: int, grace_seconds: float) -> float | None:
        # Ages come from this process's monotonic clock, so a wall-clock step cannot keep old
        # values on the tmpfs; generations this process did not replace were removed by prepare().
        now, wait = time.monotonic(), None
        for gen, replaced_at in list(self._replaced.items()):
            age = now - replaced_at
            if age >= grace_seconds:
                _remove(dfd, gen)
                del self._replaced[gen]
            else:
                wait = min(wait or grace_seconds, grace_seconds - age)
        return wait

    def clear(self) -> None:
        """Remove every file the writer made (Docker removes secrets when a task stops)."""
        with self._dir() as dfd:
            self._sync_visible_links(dfd, set())
            for name in os.listdir(dfd):
                if name.startswith(".."):
                    _remove(dfd, name)

    def write_state(self, name: str, data: bytes, mode: int = 0o644) -> None:
        """Atomically replace the metadata file `name` beside the secrets."""
        with self._dir() as dfd:
            try:
                _unlink(dfd, _STATE_TMP)
                fd = os.open(_STATE_TMP, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode, dir_fd=dfd)
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                os.rename(_STATE_TMP, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except OSError as exc:
                _unlink(dfd, _STATE_TMP)
                raise WriteError(f"cannot write {name} in {self.output_dir}: {exc.strerror}") from None

    # -- internals -------------------------------------------------------------------------

    def _step(self, name: str) -> None:
        """A named point between two steps of a commit (tests crash the process here)."""

    @contextlib.contextmanager
    def _dir(self) -> Iterator[int]:
        try:
            dfd = os.open(self.output_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise WriteError(f"cannot open output_dir {self.output_dir}: {exc.strerror}") from None
        try:
            yield dfd
        except OSError as exc:  # full tmpfs, permissions, a folder where a link belongs, ...
            where = f" ({exc.filename})" if exc.filename else ""
            raise WriteError(f"{self.output_dir}: {exc.strerror or type(exc).__name__}{where}") from None
        finally:
            os.close(dfd)

    def _write_generation(self, dfd: int, files: Mapping[str, FileSpec]) -> str:
        while True:
            stamp = time.time_ns()
            gen = time.strftime("..%Y_%m_%d_%H_%M_%S", time.gmtime(stamp // 1_000_000_000))
            gen += f".{stamp % 1_000_000_000:09d}"
            try:
                os.mkdir(gen, 0o755, dir_fd=dfd)
                break
            except FileExistsError:
                continue
        try:
            gfd = os.open(gen, _DIR_FLAGS, dir_fd=dfd)
            try:
                os.fchmod(gfd, 0o755)
                for name, spec in sorted(files.items()):
                    _write_file(gfd, name, spec)
                    self._step("file_written")
            finally:
                os.close(gfd)
        except BaseException as exc:
            _remove(dfd, gen)  # never leave a partial generation behind
            if isinstance(exc, OSError):
                raise WriteError(f"cannot write generation in {self.output_dir}: {exc.strerror}") from None
            raise
        return gen

    def _sync_visible_links(self, dfd: int, tops: set[str]) -> None:
        """Point each top-level name at ..data/name; remove links for names no longer there."""
        for top in sorted(tops):
            target = f"{DATA_LINK}/{top}"
            try:
                st = os.stat(top, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None and stat.S_ISLNK(st.st_mode) and os.readlink(top, dir_fd=dfd) == target:
                continue
            if st is not None and stat.S_ISDIR(st.st_mode):
                raise WriteError(f"{self.output_dir}/{top} is a directory the bridge did not make; remove it")
            tmp = f"..link_{top.replace('/', '_')}"
            _unlink(dfd, tmp)
            os.symlink(target, tmp, dir_fd=dfd)
            self._step("link_tmp_made")
            os.rename(tmp, top, src_dir_fd=dfd, dst_dir_fd=dfd)  # replaces a planted file or link
        for name in os.listdir(dfd):
            if name in tops or name.startswith(".."):
                continue
            if _is_our_link(dfd, name):
                _unlink(dfd, name)

    def _repair(self, dfd: int) -> None:
        gen = _current_generation(dfd)
        if gen is None:
            _unlink(dfd, DATA_LINK)  # dangling or not a link to a generation
        for name in os.listdir(dfd):
            if name.startswith("..") and name not in (DATA_LINK, gen):
                _remove(dfd, name)
        tops: set[str] = set()
        if gen is not None:
            gfd = os.open(gen, _DIR_FLAGS, dir_fd=dfd)
            try:
                tops = set(os.listdir(gfd))
            finally:
                os.close(gfd)
        self._sync_visible_links(dfd, tops)


def _current_generation(dfd: int) -> str | None:
    try:
        target = os.readlink(DATA_LINK, dir_fd=dfd)
    except (FileNotFoundError, OSError):
        return None
    if "/" in target or not target.startswith("..") or target in (DATA_LINK, _DATA_TMP):
        return None
    try:
        st = os.stat(target, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return target if stat.S_ISDIR(st.st_mode) else None


def _is_our_link(dfd: int, name: str) -> bool:
    try:
        return os.readlink(name, dir_fd=dfd).startswith(DATA_LINK + "/")
    except OSError:
        return False


def _write_file(gfd: int, name: str, spec: FileSpec) -> None:
    *folders, leaf = name.split("/")
    parent = os.dup(gfd)
    try:
        for folder in folders:
            with contextlib.suppress(FileExistsError):
                os.mkdir(folder, 0o755, dir_fd=parent)
            child = os.open(folder, _DIR_FLAGS, dir_fd=parent)
            os.fchmod(child, 0o755)  # mkdir's mode is narrowed by the umask
            os.close(parent)
            parent = child
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(leaf, flags, spec.mode & 0o777, dir_fd=parent)  # never wider than final
        try:
            uid, gid = spec.uid, spec.gid
            if (uid, gid) != (os.getuid(), os.getgid()):
                try:
                    os.fchown(fd, uid, gid)
                except PermissionError:
                    raise WriteError(
                        f"cannot give {name} owner {uid}:{gid}: run the bridge as root or drop uid/gid"
                    ) from None
            os.fchmod(fd, spec.mode)  # after chown, which clears set-id bits; undoes the umask
            view = memoryview(spec.content)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
    finally:
        os.close(parent)


def _read_tree(dfd: int, prefix: str) -> Iterator[tuple[str, FileSpec]]:
    for entry in sorted(os.listdir(dfd)):
        st = os.stat(entry, dir_fd=dfd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            child = os.open(entry, _DIR_FLAGS, dir_fd=dfd)
            try:
                yield from _read_tree(child, f"{prefix}{entry}/")
            finally:
                os.close(child)
        elif stat.S_ISREG(st.st_mode):
            fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            with os.fdopen(fd, "rb") as f:
                content = f.read()
            yield f"{prefix}{entry}", FileSpec(content, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)


def _unlink(dfd: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dfd)


def _remove(dfd: int, name: str) -> None:
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dfd)
    else:
        os.unlink(name, dir_fd=dfd)


class _StatFs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 256)]


def is_memory_backed(path: Path) -> bool:
    """True when `path` is on tmpfs or ramfs (statfs(2) f_type)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    buf = _StatFs()
    if libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise WriteError(f"cannot statfs {path}: {os.strerror(err or errno.EIO)}")
    return (buf.f_type & 0xFFFFFFFF) in (_TMPFS_MAGIC, _RAMFS_MAGIC)
