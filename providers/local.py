"""Local sources for development parity with Compose: `file` (a file under base_dir) and `env`.

The version id of a file is its modification time followed by a short digest of its change time,
inode and size (`file_version`): content replaced with its mtime kept (`cp -p`, `rsync -t`,
`tar x`) still moves the ctime, which no user can set. `env` has none, so the engine compares
content. Neither provider ever logs or echoes the value.

`file` never reads outside `base_dir`: a ref is relative, without `..`, and the file actually
opened must lie under base_dir's real path, so a symlink may point within base_dir (a Kubernetes
volume's `..data` links do) but not out of it. It reads regular files only (a FIFO would block, a
device never ends), of at most MAX_FILE_BYTES. A missing base_dir (a volume not mounted yet) is
Unavailable for every ref, so the batch rule stops at the first; a missing file under it is that
ref's SecretNotFound.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bridge.errors import AccessDenied, ProviderError, SecretNotFound, Unavailable
from bridge.provider import (
    Capabilities,
    Fetched,
    Outcome,
    Provider,
    ProviderSettings,
    Request,
    VersionOutcome,
    credential_variables,
)
from bridge.provider_rules import copy_error, each
from providers._file_watch import FileVersions

#: errors that say the ref is wrong, not that the filesystem is unwell
_BAD_REF = {errno.ELOOP, errno.ENOTDIR, errno.ENAMETOOLONG, errno.EISDIR, errno.ENXIO, errno.ENODEV}
#: a source file larger than this is not a secret (Kubernetes caps a Secret at 1 MiB, Vault a
#: request at 32 MiB): refused for that ref, never read whole
MAX_FILE_BYTES = 64 * 2**20
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class FileSettings(ProviderSettings):
    type: str = "file"
    base_dir: Path = Path(".")
    #: remember versions while inotify says nothing moved (off: a stat per file per check, for a
    #: network filesystem written from other machines, which inotify does not see)
    watch: bool = True


class FileProvider(Provider):
    """`ref` is a path relative to `base_dir` (Compose's `secrets: x: file:`)."""

    Settings = FileSettings
    settings: FileSettings
    capabilities = Capabilities(cheap_versions=True)  # a stat per file

    def __init__(self, name: str, settings: FileSettings) -> None:
        super().__init__(name, settings)
        self._base = os.path.abspath(settings.base_dir)
        self._paths: dict[str, str] = {}  # ref -> path, worked out once (the change check runs each cycle)
        self._known = FileVersions() if settings.watch else None

    def _path(self, ref: str) -> str:
        """base_dir joined with `ref`, worked out once per ref (the change check runs each cycle)."""
        path = self._paths.get(ref)
        if path is None:
            if not ref or ref.startswith("/") or ".." in ref.split("/"):
                raise SecretNotFound("ref must be a path relative to base_dir, without '..'",
                                     provider=self.name, ref=ref)
            path = self._paths[ref] = os.path.join(self._base, os.path.normpath(ref))
        return path

    def fetch(self, request: Request) -> Fetched:
        return self._read(request, os.path.realpath(self.settings.base_dir))

    def fetch_many(self, requests: Sequence[Request]) -> dict[Request, Outcome]:
        base = os.path.realpath(self.settings.base_dir)  # once per batch: thousands of files share it
        return each(self, [(r, r) for r in requests], lambda r: self._read(r, base))

    def _read(self, request: Request, base: str) -> Fetched:
        path = self._path(request.ref)
        try:
            fd = os.open(path, _OPEN_FLAGS)
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    raise SecretNotFound("not a regular file", provider=self.name, ref=request.ref)
                self._refuse_outside(fd, path, base, request.ref)
                data = _read_all(fd, info.st_size)
                if len(data) > MAX_FILE_BYTES:
                    raise SecretNotFound(f"larger than {MAX_FILE_BYTES >> 20} MiB: not a secret file",
                                         provider=self.name, ref=request.ref)
            finally:
                os.close(fd)
        except OSError as exc:
            raise self._error(exc, request.ref) from None
        version = file_version(info)
        if request.version is not None and request.version != version:
            raise SecretNotFound("a file keeps only its latest version", provider=self.name,
                                 ref=request.ref, version=request.version)
        return Fetched(data, version)

    def versions(self, requests: Sequence[Request]) -> dict[Request, VersionOutcome]:
        """A stat per file, with the paths worked out once, and none for a file inotify saw no
        change of since its last stat (`watch`, providers/_file_watch.py): at 100,000 files an idle
        check is dictionary lookups. A stat only, no realpath: it reveals no content, and the fetch
        any change leads to refuses a file outside base_dir. Files have no moving pins. Keeps the
        batch rule: once base_dir is gone, the rest get a copy."""
        known = self._known
        remembered: dict[str, str] = {}
        if known is not None:
            remembered = known.refresh()
        paths = self._paths
        out: dict[Request, VersionOutcome] = {}
        down: ProviderError | None = None
        for request in requests:
            ref = request.ref
            version = remembered.get(paths.get(ref, ""))  # the idle path: nothing moved
            if version is not None:
                out[request] = version
                continue
            if down is not None:
                out[request] = copy_error(down, provider=self.name, ref=ref, version=request.version)
                continue
            try:
                out[request] = self._stat(self._path(ref), known)
            except SecretNotFound as exc:
                out[request] = exc
            except OSError as exc:
                out[request] = error = self._error(exc, ref)
                down = error if isinstance(error, Unavailable) else None
        return out

    @staticmethod
    def _stat(path: str, known: FileVersions | None) -> str:
        watched = known is not None and known.watch(path)  # before the stat: a change after it is seen
        info = os.stat(path)
        version = file_version(info)
        if watched:
            assert known is not None
            known.remember(path, version, info)
        return version

    def close(self) -> None:
        if self._known is not None:
            self._known.close()

    def _refuse_outside(self, fd: int, path: str, base: str, ref: str) -> None:
        """AccessDenied unless the file opened on `fd` lies under `base` (base_dir's real path). The
        opened file is checked, not the path, so a link swapped between the check and the read
        changes nothing."""
        try:
            opened = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # no /proc: resolve the path instead
            opened = os.path.realpath(path)
        if not (opened + "/").startswith(base if base.endswith("/") else base + "/"):
            raise AccessDenied("resolves outside base_dir (through a symlink)", provider=self.name, ref=ref)

    def _error(self, exc: OSError, ref: str) -> ProviderError:
        where: dict[str, Any] = {"provider": self.name, "ref": ref}
        if exc.errno == errno.ENOENT:
            if not os.path.isdir(self.settings.base_dir):
                return Unavailable(f"base_dir {self.settings.base_dir} does not exist", **where)
            return SecretNotFound("no such file", **where)
        if exc.errno in (errno.EACCES, errno.EPERM):
            return AccessDenied("permission denied", **where)
        if exc.errno in _BAD_REF:
            return SecretNotFound(exc.strerror or "cannot open", **where)
        return Unavailable(exc.strerror or "cannot read", **where)


def file_version(info: os.stat_result) -> str:
    """`mtime_ns-digest`: the time people recognise, and a digest of what changes with any write
    even when the mtime is put back (ctime), or the file is swapped for another (inode, size)."""
    changed = f"{info.st_ctime_ns}:{info.st_ino}:{info.st_size}".encode()
    return f"{info.st_mtime_ns}-{hashlib.blake2s(changed, digest_size=4).hexdigest()}"


def _read_all(fd: int, size_hint: int) -> bytes:
    """The file's bytes, up to one past MAX_FILE_BYTES (a sparse file of gigabytes, or one that
    keeps growing, is never read whole)."""
    first = min(max(size_hint, 0) + 1, MAX_FILE_BYTES + 1)
    chunk = os.read(fd, first)
    if len(chunk) < first:  # a regular file's short read is its end: no second read to learn it
        return chunk
    chunks = [chunk]
    left = MAX_FILE_BYTES + 1 - len(chunk)
    while left > 0 and (chunk := os.read(fd, min(1 << 20, left))):
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class EnvSettings(ProviderSettings):
    type: str = "env"


class EnvProvider(Provider):
    """`ref` is an environment variable name (Compose's `secrets: x: environment:`)."""

    Settings = EnvSettings

    def fetch(self, request: Request) -> Fetched:
        if _own_credential(request.ref):
            # The bridge's environment holds its own tokens: never copy one into a readable file.
            raise AccessDenied("is one of the bridge's own credentials; it is never written to a file",
                               provider=self.name, ref=request.ref)
        value = os.environ.get(request.ref)
        if value is None:
            raise SecretNotFound("environment variable not set", provider=self.name, ref=request.ref)
        return Fetched(value.encode(), None)


def _own_credential(name: str) -> bool:
    """A variable holding a credential of a provider the bridge has loaded, or its own settings."""
    upper = name.upper()
    return upper in {v.upper() for v in credential_variables()} or upper.startswith("SECRETS_BRIDGE_")
