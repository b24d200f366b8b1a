"""Operations on the writer's directories through file descriptors: open and lock the output
directory, write files, hard-link a set of names from one directory into another, remove names,
compare a generation with the stamps recorded at commit, read a generation back.

Every path is opened component by component relative to a directory descriptor with O_NOFOLLOW,
so a symlink planted anywhere under the output directory is never followed. A file is created with
its final mode (never briefly wider) and an inode that is written here is never shared with a live
generation before it is complete. Nothing here knows about `..data` or the commit order: that is
the writer's (bridge/writer.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bridge.errors import WriteError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_TMPFS_MAGIC = 0x01021994
_RAMFS_MAGIC = 0x858458F6

#: what the writer records of a file it committed, to see later whether something else changed it:
#: inode, mode, uid, gid, size, mtime in ns and ctime in ns, packed into one int (80 bytes a file,
#: where a tuple of the seven took 240) that is equal for two stats exactly when every field is.
#: The ctime catches an edit whose mtime was put back (`touch -d`, `cp -p`); it also moves when a
#: hard link to the inode is made or removed, so the writer records it again after linking its own
#: spares (`Writer._restamp`). The ctime is its lowest bits: `without_ctime` is the rest.
Stamp = int
#: a time in ns from a signed 64-bit count of seconds stays below 2**93 either side of 0
_TIME_BITS = 96
_TIME_MASK = (1 << _TIME_BITS) - 1


@dataclass(frozen=True, slots=True)
class FileSpec:
    """One file of a generation. The content is never part of the repr."""

    content: bytes = field(repr=False)
    mode: int = 0o444
    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)


def can_give_owner(uid: int, gid: int) -> bool:
    """chown(2)'s rule: with CAP_CHOWN any owner; without it only the process's own uid, and a
    group it is in."""
    if _has_cap_chown():
        return True
    return uid == os.geteuid() and (gid == os.getegid() or gid in os.getgroups())


@functools.cache
def _has_cap_chown() -> bool:
    try:
        # bytes, not text: a codec module loaded lazily could be unreadable to a process that has
        # dropped to an unprivileged uid since it started
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"CapEff:"):
                    return bool(int(line.split()[1], 16) & 1)  # bit 0: CAP_CHOWN
    except (OSError, ValueError):
        pass
    return os.geteuid() == 0


def stamp_of(st: os.stat_result) -> Stamp:
    # 32 bits each for mode, uid and gid and 64 for the size, as the kernel keeps them; the inode on
    # top is unbounded; the times, which may be negative, in two's complement
    fields = ((((st.st_ino << 32 | st.st_mode) << 32 | st.st_uid) << 32 | st.st_gid) << 64) | st.st_size
    return ((fields << _TIME_BITS) | (st.st_mtime_ns & _TIME_MASK)) << _TIME_BITS | (st.st_ctime_ns & _TIME_MASK)


def without_ctime(stamp: Stamp) -> int:
    return stamp >> _TIME_BITS


def unique_name(prefix: str) -> str:
    """`..2026_11_28_02_10_00.123456789` for prefix `..`; the caller retries on EEXIST."""
    stamp = time.time_ns()
    return prefix + time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime(stamp // 1_000_000_000)) + (
        f".{stamp % 1_000_000_000:09d}")


def make_dir(dfd: int, prefix: str, mode: int) -> str:
    """Create a new directory named `prefix` + a time stamp; return its name."""
    while True:
        name = unique_name(prefix)
        try:
            os.mkdir(name, mode, dir_fd=dfd)
        except FileExistsError:
            continue
        with opened(dfd, name) as fd:
            os.fchmod(fd, mode)  # mkdir's mode is narrowed by the umask
        return name


@contextlib.contextmanager
def opened(dfd: int, name: str) -> Iterator[int]:
    """A descriptor of the folder `name` in `dfd` (never through a symlink), closed after."""
    fd = os.open(name, DIR_FLAGS, dir_fd=dfd)
    try:
        yield fd
    finally:
        os.close(fd)


def rename_new(dfd: int, name: str, prefix: str) -> str:
    """Rename `name` to a new unused `prefix`+stamp name (rename(2) would replace an empty folder)."""
    while True:
        new = unique_name(prefix)
        try:
            os.stat(new, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            os.rename(name, new, src_dir_fd=dfd, dst_dir_fd=dfd)
            return new


def open_folder(root: int, folder: str, *, create: bool = False) -> int:
    """A new descriptor for `folder` ("" is `root` itself) under `root`, never following a symlink."""
    fd = os.dup(root)
    try:
        for part in folder.split("/") if folder else ():
            if create:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                    made = True
                except FileExistsError:
                    made = False
            child = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
            if create and made:
                os.fchmod(fd, 0o755)  # nosec B103  # a folder, narrowed by the umask at mkdir
    except BaseException:
        os.close(fd)
        raise
    return fd


def by_folder(names: Iterable[str]) -> dict[str, list[str]]:
    """Names grouped by their folder ("" for the top), so each folder is opened once."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(name.rpartition("/")[0], []).append(name)
    return groups


def write_files(root: int, specs: Mapping[str, FileSpec], step: Callable[[], None]) -> dict[str, Stamp]:
    """Create each file under `root` (which must not hold it) with its final mode and owner; return
    their stamps. One folder descriptor open at a time."""
    stamps: dict[str, Stamp] = {}
    for folder, names in by_folder(sorted(specs)).items():
        parent = open_folder(root, folder, create=True) if folder else root
        try:
            for name in names:
                stamps[name] = _write_file(parent, name, specs[name])
                step()
        finally:
            if folder:
                os.close(parent)
    return stamps


def _write_file(parent: int, name: str, spec: FileSpec) -> Stamp:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(name.rpartition("/")[2], flags, spec.mode & 0o777, dir_fd=parent)  # never wider than final
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
        return stamp_of(os.fstat(fd))
    finally:
        os.close(fd)


def remove_names(root: int, names: Iterable[str]) -> None:
    """Remove each of `names` under `root` (whatever is there: file, link or folder), then the
    folders left empty by it (a name written next makes its folders again)."""
    folders: set[str] = set()
    for name in names:
        folder, _, leaf = name.rpartition("/")
        try:
            parent = open_folder(root, folder)
        except (FileNotFoundError, NotADirectoryError):
            continue  # the folder is gone, so is the name
        try:
            remove(parent, leaf)
        finally:
            os.close(parent)
        while folder:
            folders.add(folder)
            folder = folder.rpartition("/")[0]
    for folder in sorted(folders, key=lambda f: -f.count("/")):  # deepest first
        above, _, leaf = folder.rpartition("/")
        with contextlib.suppress(OSError):  # ENOTEMPTY: something else still lives there
            parent = open_folder(root, above)
            try:
                os.rmdir(leaf, dir_fd=parent)
            finally:
                os.close(parent)


def link_names(src: int, dst: int, names: Iterable[str], step: Callable[[], None]) -> None:
    """Hard-link each name of `src` into `dst` (same inode, mode, owner), making folders in `dst`.
    One pair of folder descriptors open at a time."""
    for folder, group in by_folder(names).items():
        s = open_folder(src, folder) if folder else src
        try:
            d = open_folder(dst, folder, create=True) if folder else dst
            try:
                for name in group:
                    leaf = name.rpartition("/")[2]
                    # without AT_SYMLINK_FOLLOW: a symlink planted in src is linked as itself
                    os.link(leaf, leaf, src_dir_fd=s, dst_dir_fd=d, follow_symlinks=False)
                    step()
            finally:
                if folder:
                    os.close(d)
        finally:
            if folder:
                os.close(s)


def changed_files(gfd: int, folders: Iterable[tuple[str, list[str]]], stamps: Mapping[str, Stamp]) -> list[str]:
    """The names under the generation `gfd` whose stamp differs from the one recorded (deleted,
    replaced, edited, chmod'ed): one fstatat each, no content read, no link followed."""
    return [name for name, st in stat_names(gfd, folders) if st is None or stamp_of(st) != stamps[name]]


def stat_names(gfd: int, folders: Iterable[tuple[str, list[str]]]) -> Iterator[tuple[str, os.stat_result | None]]:
    """Each name under the generation `gfd` with its lstat (None when it cannot be reached, or its
    folder is not the writer's 0755)."""
    for folder, names in folders:
        try:
            ffd = open_folder(gfd, folder) if folder else gfd
        except OSError:
            yield from ((name, None) for name in names)
            continue
        try:
            if folder and stat.S_IMODE(os.fstat(ffd).st_mode) != 0o755:
                yield from ((name, None) for name in names)
                continue
            for name in names:
                try:
                    yield name, os.stat(name.rpartition("/")[2], dir_fd=ffd, follow_symlinks=False)
                except OSError:
                    yield name, None
        finally:
            if folder:
                os.close(ffd)


def read_tree(dfd: int, prefix: str = "", strays: list[str] | None = None) -> Iterator[tuple[str, FileSpec, Stamp]]:
    """Every regular file under `dfd`, with its content and stamp (for the start of a process).
    `strays` gets every name that is not what the writer makes: anything but a regular file, or a
    folder not 0755 or not this process's own."""
    for entry in sorted(os.listdir(dfd)):
        st = os.stat(entry, dir_fd=dfd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            if strays is not None and (stat.S_IMODE(st.st_mode) != 0o755 or st.st_uid != os.geteuid()):
                strays.append(f"{prefix}{entry}/")
            with opened(dfd, entry) as child:
                yield from read_tree(child, f"{prefix}{entry}/", strays)
        elif stat.S_ISREG(st.st_mode):
            fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(f.fileno())
                content = f.read()
            spec = FileSpec(content, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
            yield f"{prefix}{entry}", spec, stamp_of(st)
        elif strays is not None:
            strays.append(f"{prefix}{entry}")


def unlink(dfd: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dfd)


def remove(dfd: int, name: str) -> None:
    """Remove `name` whatever it is; a folder's tree is walked by descriptors, never through a link."""
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dfd)
    else:
        unlink(dfd, name)


class _StatFs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 256)]


@functools.cache
def _libc() -> ctypes.CDLL:
    # The process's own symbols include libc's: no find_library (it runs ldconfig) at every check.
    return ctypes.CDLL(None, use_errno=True)


def _fs_type(call: str, arg: object, what: str) -> int:
    buf = _StatFs()
    if getattr(_libc(), call)(arg, ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise WriteError(f"cannot statfs {what}: {os.strerror(err or errno.EIO)}")
    return int(buf.f_type) & 0xFFFFFFFF


def open_output_dir(path: Path, *, require_tmpfs: bool) -> int:
    """Create `path` if needed, open it, check it is in memory, and lock it for this process (one
    writer per directory): the descriptor every later operation goes through."""
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
            os.fchmod(fd, 0o755)  # nosec B103  # a folder, narrowed by the umask at mkdir
        if require_tmpfs and not _fd_is_memory_backed(fd, str(path)):
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
    return fd


def is_memory_backed(path: Path) -> bool:
    """True when `path` is on tmpfs or ramfs (statfs(2) f_type)."""
    return _fs_type("statfs", os.fsencode(path), str(path)) in (_TMPFS_MAGIC, _RAMFS_MAGIC)


def _fd_is_memory_backed(fd: int, what: str) -> bool:
    """True when the open directory `fd` is on tmpfs or ramfs (fstatfs(2): the directory held, not
    whatever its path leads to now)."""
    return _fs_type("fstatfs", fd, what) in (_TMPFS_MAGIC, _RAMFS_MAGIC)
