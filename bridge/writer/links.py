"""The top-level links applications open: `db_password -> ..data/db_password`, one per top-level
name of the committed files (`tls -> ..data/tls` for `tls/cert.pem`).

A link is made beside its name and renamed over it, so it never goes missing and a planted file or
link at that name is replaced, never followed. Checking them costs one fstat of the output
directory while its mtime stays as it was when a full pass last found all well.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Iterable

from bridge.errors import WriteError
from bridge.writer.generation import rename_new, unlink

DATA_LINK = "..data"
DATA_TMP = "..data_tmp"
_LINK_TMP = "..link_tmp"
_ASIDE = "..aside_"
#: a directory's mtime comes from the kernel's tick-based clock (1-10 ms steps): once the clock is
#: this far past it, any later change to the directory gives it a different mtime
_COARSE_CLOCK_NS = 50_000_000


#: from this many names, `sync` lists the directory once instead of a readlink per absent name
_LIST_FROM = 64


class Links:
    """The top-level links of the committed names, and which of them this writer made."""

    def __init__(self, step: Callable[[str], None], discard: Callable[[str], None]) -> None:
        self._step = step
        self._discard = discard  # removes a writer-owned directory, now or at a later prune()
        self.tops: dict[str, int] = {}  # how many committed names live under each top-level name
        self._made: set[str] = set()
        self._verified_mtime = -1
        #: why a committed name has no visible link, until a pass over every name makes them all
        self.unlinked: str | None = None

    def forget(self) -> None:
        self.tops, self._made, self._verified_mtime, self.unlinked = {}, set(), -1, None

    def added(self, name: str) -> None:
        top = name.split("/", 1)[0]
        self.tops[top] = self.tops.get(top, 0) + 1

    def removed(self, name: str) -> None:
        top = name.split("/", 1)[0]
        self.tops[top] -= 1
        if not self.tops[top]:
            del self.tops[top]

    def check(self, dfd: int) -> list[str]:
        """Re-make each link that is missing or not ..data/top. Reads them all only when the output
        directory's entries may have changed since a pass that found all well."""
        mtime = os.fstat(dfd).st_mtime_ns
        if mtime == self._verified_mtime:
            return []
        started = time.time_ns()
        remade = self.sync(dfd, self.tops)
        # a filesystem keeping whole seconds (mtime_ns a multiple of 1e9) needs a wider margin
        margin = _COARSE_CLOCK_NS if mtime % 1_000_000_000 else 2_000_000_000
        if not remade and started - mtime > margin:
            self._verified_mtime = mtime
        return remade

    def sync(self, dfd: int, tops: Iterable[str], *, full: bool = False) -> list[str]:
        """Point each of `tops` that holds committed names at ..data/top and remove the link of each
        that holds none; full (a directory read): also remove every other link of ours. Returns the
        names re-made."""
        tops = list(tops)
        # many names (the first commit into an empty directory): one listing says which are absent,
        # rather than a failed readlink each
        present = set(os.listdir(dfd)) if len(tops) > _LIST_FROM else None
        remade = []
        failed: OSError | WriteError | None = None
        for top in tops:
            try:
                if top not in self.tops:
                    self._drop(dfd, top)
                elif self._point(dfd, top, absent=present is not None and top not in present):
                    remade.append(top)
            except (OSError, WriteError) as exc:  # a folder planted at one name: the others still linked
                failed = failed or exc
        self._settle(failed, tops)
        if full:
            for name in os.listdir(dfd):
                if name not in self.tops and not name.startswith("..") and is_our_link(dfd, name):
                    unlink(dfd, name)
        return sorted(remade)

    def _settle(self, failed: OSError | WriteError | None, tops: list[str]) -> None:
        """Raise the first refusal of a pass, remembered in `unlinked` until a pass over every name
        makes them all."""
        if failed is not None:
            self.unlinked = str(failed)
            raise failed
        if self.unlinked is not None and self.tops.keys() <= set(tops):
            self.unlinked = None

    def _drop(self, dfd: int, top: str) -> None:
        """Remove the link `top` (if it is ours): no committed name lives under it any more."""
        if is_our_link(dfd, top):
            unlink(dfd, top)
        self._made.discard(top)

    def _point(self, dfd: int, top: str, *, absent: bool) -> bool:
        """Point the link `top` at ..data/top (`absent`: a listing found nothing there); True when
        it had to be made or replaced, False when it was right."""
        target = f"{DATA_LINK}/{top}"
        if absent and self._make(dfd, target, top):
            return True
        try:
            if os.readlink(top, dir_fd=dfd) == target:  # one syscall for a link that is right
                self._made.add(top)
                return False
        except FileNotFoundError:  # nothing there: make it in place (EEXIST if that changed)
            if self._make(dfd, target, top):
                return True
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: there, but not a link
                raise
        st = os.stat(top, dir_fd=dfd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode) and top not in self._made:
            raise WriteError(f"{top} in the output directory is a folder the bridge did not make; remove it")
        unlink(dfd, _LINK_TMP)
        os.symlink(target, _LINK_TMP, dir_fd=dfd)
        self._step("link_tmp_made")
        self.rename_over(dfd, _LINK_TMP, top)  # replaces a planted file, link or folder
        self._made.add(top)
        return True

    def _make(self, dfd: int, target: str, top: str) -> bool:
        """Make the link `top` -> `target` where nothing is; False when something is there now."""
        try:
            os.symlink(target, top, dir_fd=dfd)
        except FileExistsError:
            return False
        self._step("link_made")
        self._made.add(top)
        return True

    def rename_over(self, dfd: int, tmp: str, name: str) -> None:
        """rename(2) `tmp` over `name`; a folder planted at `name` is moved aside first."""
        try:
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except OSError as exc:
            if exc.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise
            aside = rename_new(dfd, name, _ASIDE)
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            self._discard(aside)


def link_target(dfd: int, name: str) -> str | None:
    try:
        return os.readlink(name, dir_fd=dfd)
    except OSError:  # missing, or not a link
        return None


def is_our_link(dfd: int, name: str) -> bool:
    return (link_target(dfd, name) or "").startswith(DATA_LINK + "/")


def current_generation(dfd: int) -> str | None:
    """The generation `..data` points at, when it is one (a `..` folder in the directory itself)."""
    target = link_target(dfd, DATA_LINK)
    if target is None or "/" in target or not target.startswith("..") or target in (DATA_LINK, DATA_TMP):
        return None
    try:
        st = os.stat(target, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return target if stat.S_ISDIR(st.st_mode) else None
