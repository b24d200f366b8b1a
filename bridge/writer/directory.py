"""The output directory the writer holds: opened and locked once (one writer per directory), every
later operation through that descriptor, its removal followed (made again at the path, then the
writer's `_rewrite_all` puts every committed file back), and the bridge's metadata files beside
the secrets (`write_state`, `read_state`). It never resolves the path again while the directory
it holds exists, and knows nothing of generations: that is `atomic.Writer`, built on it.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from bridge.errors import WriteError
from bridge.writer.generation import DIR_FLAGS, open_output_dir, remove, unlink
from bridge.writer.sidefiles import read_beside, write_beside

log = logging.getLogger("secrets_bridge.writer")


class Standing(enum.Enum):
    """Where the writer stands with its output directory."""

    UNPREPARED = "not prepared yet, or released"
    HELD = "open and locked; the current generation is what it committed"
    LOST = "removed under the writer, not made again yet (the next call tries)"
    REMADE = "made again, the committed files not written there yet (the next call tries)"


class HeldDirectory:
    """The descriptor of `output_dir` and what to do when the directory is removed. Subclasses say
    how many files a removal lost (`_file_count`), forget what lived there (`_forget_directory`)
    and write it all again (`_rewrite_all`)."""

    def __init__(self, output_dir: Path, *, require_tmpfs: bool = True) -> None:
        self.output_dir = output_dir
        self.require_tmpfs = require_tmpfs
        self._dfd: int | None = None
        self._standing = Standing.UNPREPARED

    def _file_count(self) -> int:
        return 0

    def _forget_directory(self) -> None:
        """The directory is gone: nothing in it exists any more."""

    def _rewrite_all(self) -> None:
        """Write every committed file into the (new) directory."""

    def _open(self) -> None:
        self._dfd = open_output_dir(self.output_dir, require_tmpfs=self.require_tmpfs)

    def _fd(self) -> int:
        if self._dfd is None:
            raise WriteError(f"output_dir {self.output_dir} is not open (prepare() first)")
        return self._dfd

    def _close(self) -> None:
        if self._dfd is not None:
            os.close(self._dfd)  # closing drops the flock
        self._dfd, self._standing = None, Standing.UNPREPARED

    def _removed(self) -> bool:
        """The held directory has no name any more (it was removed, or never prepared)."""
        return self._dfd is None or os.fstat(self._dfd).st_nlink == 0

    def _follow_removal(self) -> bool:
        """If the held directory was removed, make it again at the path and write everything
        committed there (again at the next call, if that failed). True when it did."""
        if self._standing is Standing.UNPREPARED:
            self._fd()  # never prepared: say so
        if self._standing is not Standing.LOST and self._removed():
            self._let_go_of_removed()
        if self._standing is Standing.HELD:
            return False
        if self._standing is Standing.LOST:
            self._make_again()
        if self._file_count():
            self._rewrite_all()
        self._standing = Standing.HELD
        return True

    def _let_go_of_removed(self) -> None:
        log.warning("%s was removed; making it again with the %d committed files", self.output_dir,
                    self._file_count())
        os.close(self._fd())
        self._dfd, self._standing = None, Standing.LOST
        self._forget_directory()

    def _make_again(self) -> None:
        self._open()
        self._standing = Standing.REMADE
        dfd = self._fd()
        for name in os.listdir(dfd):
            if name.startswith(".."):
                remove(dfd, name)

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """One line for an OS fault (a full tmpfs, no descriptors left, a read-only remount, ...)."""
        try:
            yield
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            raise WriteError(
                f"{doing} in {self.output_dir}: {exc.strerror or type(exc).__name__}{where}") from None

    # -- the bridge's own files beside the secrets --------------------------------------------

    def write_state(self, name: str, data: bytes, mode: int = 0o644) -> None:
        """Atomically replace the metadata file `name` (not a `..` name) beside the secrets,
        created with `mode` from the start (0o600 for what only the bridge may read)."""
        with self._errors("write state"):
            self._follow_removal()
            write_beside(self._fd(), name, data, mode, str(self.output_dir))

    def read_state(self, name: str) -> bytes | None:
        """The metadata file `name` beside the secrets (None when there is none), read through the
        directory held since prepare() (before it, through the path), never through a symlink."""
        with self._errors(f"read {name}"):
            try:
                dfd = self._dfd if self._dfd is not None else os.open(self.output_dir, DIR_FLAGS & ~os.O_NOFOLLOW)
            except FileNotFoundError:
                return None  # no output directory yet (`check` before any sync): no state either
            try:
                return read_beside(dfd, name, str(self.output_dir))
            finally:
                if dfd != self._dfd:
                    os.close(dfd)

    def remove_state(self, name: str) -> None:
        """Remove the metadata file `name` beside the secrets, if it is there."""
        with self._errors(f"remove {name}"):
            unlink(self._fd(), name)
