"""The drift watch: a change by someone else brings the sweep forward; the writer's own work beside
the generation and readers do not; the watch follows each new generation."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.config.fields import RESERVED_PREFIX, STATE_FILE
from bridge.runtime.inotify import Watcher
from bridge.runtime.watch import FALLBACK_SWEEP_SECONDS, SAFETY_SWEEP_SECONDS, SETTLE_SECONDS, DriftWatch
from bridge.writer.atomic import FileSpec, Writer

FILES = {"a": FileSpec(b"a-0", 0o444), "tls/cert.pem": FileSpec(b"cert-0", 0o444)}


class Watched:
    """A writer's directory with a drift watch following it; counts the watch's wake-ups."""

    def __init__(self, path: Path, named: Path | None = None) -> None:
        self.path = path
        self.named = named or path
        self.writer = Writer(path, require_tmpfs=False)
        self.writer.prepare()
        self.writer.commit(dict(FILES))
        self.woken = threading.Event()
        self.watcher = Watcher()
        self.watch = DriftWatch(self.woken.set, self.watcher)
        self._barriers = 0
        self.follow()

    def follow(self) -> None:
        self.watch.follow(self.named, self.writer.generation)
        self.settle()  # events already queued by earlier steps are told
        self.quiet()

    def quiet(self) -> None:
        self.watch.sweeping()
        self.woken.clear()

    def settle(self) -> None:
        """Return once every event before now has reached the drift watch: inotify tells the
        events of one instance in order, so a name the writer reserves (never drift) made now is
        told after them all."""
        self._barriers += 1
        name = f"{RESERVED_PREFIX}-barrier-{self._barriers}"
        seen = threading.Event()
        handle = self.watcher.add(os.path.realpath(self.path), lambda _f, n, _m: seen.set() if n == name else None)
        try:
            (self.path / name).touch()
            assert seen.wait(10), "the watcher told nothing"
        finally:
            self.watcher.remove(handle)
            (self.path / name).unlink()

    def woke_after(self, action: Callable[[], object]) -> bool:
        """Whether `action` woke the loop, once every event it made has been told."""
        self.quiet()
        action()
        self.settle()
        return self.woken.is_set()

    def stop(self) -> None:
        self.watch.stop()
        self.watcher.stop()
        self.writer.release()


@pytest.fixture
def watched(tmp_path: Path):
    w = Watched(tmp_path / "out")
    yield w
    w.stop()


def _tamper_cases(d: Path) -> dict[str, Callable[[], object]]:
    return {
        "link deleted": lambda: (d / "a").unlink(),
        "file edited": lambda: (d / "..data" / "a").chmod(0o644) or (d / "..data" / "a").write_bytes(b"x"),
        "file chmod'ed": lambda: (d / "..data" / "a").chmod(0o666),
        "nested file deleted": lambda: (d / "tls" / "cert.pem").unlink(),
        "name added to the generation": lambda: (d / "..data" / "extra").write_bytes(b"x"),
        "..data replaced": lambda: (d / "..data").unlink() or (d / "..data").mkdir(),
        "generation chmod'ed": lambda: os.chmod(d / os.readlink(d / "..data"), 0o777),
        "visible name added": lambda: (d / "planted").symlink_to("/etc/hostname"),
    }


@pytest.mark.parametrize("case", list(_tamper_cases(Path())))
def test_a_change_by_someone_else_wakes_the_loop(watched: Watched, case: str) -> None:
    """Each kind of tampering wakes the loop and makes the sweep due within the settle time."""
    tamper = _tamper_cases(watched.path)[case]
    assert watched.woke_after(tamper), case
    assert watched.watch.next_sweep() <= time.monotonic() + SETTLE_SECONDS
    watched.writer.check_drift()


def test_readers_and_the_writers_own_work_do_not(watched: Watched) -> None:
    """Reading every file, preparing a spare and removing a replaced generation wake nothing; a
    commit wakes once (its `..data` swap), and the watch then follows the new generation."""
    d = watched.path

    def read_all() -> None:
        for _ in range(50):
            (d / "a").read_bytes()
            (d / "tls" / "cert.pem").read_bytes()
            os.stat(d / "..data" / "a")

    assert not watched.woke_after(read_all)
    assert watched.woke_after(lambda: watched.writer.commit({**FILES, "a": FileSpec(b"a-1", 0o444)}))
    watched.follow()
    assert not watched.woke_after(lambda: watched.writer.prune(grace_seconds=0))
    assert not watched.woke_after(lambda: watched.writer.prune(grace_seconds=0))  # the spare is ready now
    assert not watched.woke_after(lambda: watched.writer.write_state(STATE_FILE, b"{}"))
    assert watched.woke_after(lambda: (d / "..data" / "a").chmod(0o600)), "the new generation is watched"
    assert watched.writer.check_drift() == ["a"]


def test_sweep_clock(watched: Watched, tmp_path: Path) -> None:
    """With a watch the sweep comes every SAFETY_SWEEP_SECONDS; without one (here a directory that
    is gone) every FALLBACK_SWEEP_SECONDS, as before the watch existed."""
    now = time.monotonic()
    assert now + SAFETY_SWEEP_SECONDS - 1 < watched.watch.next_sweep() <= now + SAFETY_SWEEP_SECONDS
    unwatched = DriftWatch(lambda: None)
    unwatched.follow(tmp_path / "missing", None)
    assert unwatched.next_sweep() <= time.monotonic() + FALLBACK_SWEEP_SECONDS


def test_output_dir_reached_through_a_symlink(tmp_path: Path) -> None:
    """An output_dir named through a symlink (/run/secrets -> /dev/shm/x) is watched where it leads."""
    real = tmp_path / "real"
    (tmp_path / "named").symlink_to(real, target_is_directory=True)
    w = Watched(real, named=tmp_path / "named")
    try:
        assert w.woke_after(lambda: (real / "a").unlink())
        assert w.woke_after(lambda: (real / "..data" / "a").chmod(0o600))
    finally:
        w.stop()


def test_a_failed_sweep_is_tried_again_soon(watched: Watched) -> None:
    """A sweep that could not repair (a full tmpfs) is due again within FALLBACK_SWEEP_SECONDS, as no
    event may come; a sweep that works puts the safety clock back."""
    watched.watch.failed()
    assert watched.watch.next_sweep() <= time.monotonic() + FALLBACK_SWEEP_SECONDS
    watched.watch.sweeping()
    assert watched.watch.next_sweep() > time.monotonic() + FALLBACK_SWEEP_SECONDS


def test_a_new_watch_brings_a_sweep_for_what_came_before(tmp_path: Path) -> None:
    """A change made before the directory was first watched (between the first commit and the
    watch) is swept for within the settle time, as no event will tell of it."""
    writer = Writer(tmp_path / "out", require_tmpfs=False)
    writer.prepare()
    writer.commit(dict(FILES))
    (tmp_path / "out" / "a").unlink()
    watch = DriftWatch(lambda: None)
    try:
        watch.follow(tmp_path / "out", writer.generation)
        assert watch.next_sweep() <= time.monotonic() + SETTLE_SECONDS
        assert writer.check_drift() == ["a"]
    finally:
        watch.stop()
        writer.release()
