"""The writer's commit (bridge/writer/atomic.py): layout and modes behind `..data`, no-op and
removing commits, the committed files read once at start, a kill at any numbered step repaired at
the next start, and a failed commit (bad name, full tmpfs, read-only, no descriptors) leaving the
last generation whole."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bridge.errors import WriteError
from bridge.writer.atomic import DATA_LINK, FileSpec, Writer
from tests.writer_fixtures import generation_dirs


def test_layout_and_modes(tmp_path: Path) -> None:
    """Files land in one generation behind ..data with visible links and the configured modes."""
    w = Writer(tmp_path, require_tmpfs=False)
    w.prepare()
    assert w.commit({"db": FileSpec(b"pw", 0o400), "tls/cert.pem": FileSpec(b"cert", 0o444)})
    assert os.readlink(tmp_path / "db") == "..data/db"
    assert os.readlink(tmp_path / "tls") == "..data/tls"
    assert (tmp_path / "db").read_bytes() == b"pw"
    assert (tmp_path / "tls" / "cert.pem").read_bytes() == b"cert"
    assert stat.S_IMODE(os.stat(tmp_path / "db").st_mode) == 0o400
    assert len(generation_dirs(tmp_path)) == 1


def test_unchanged_content_makes_no_generation(tmp_path: Path) -> None:
    """Committing identical files is a no-op: same generation, returns False."""
    w = Writer(tmp_path, require_tmpfs=False)
    w.prepare()
    files = {"a": FileSpec(b"1", 0o444)}
    assert w.commit(files)
    before = os.readlink(tmp_path / DATA_LINK)
    assert not w.commit(dict(files))
    assert os.readlink(tmp_path / DATA_LINK) == before


def test_change_replaces_generation_and_removes_old(tmp_path: Path) -> None:
    """A change makes a new generation, removes links of removed names, and the old one after a grace."""
    w = Writer(tmp_path, require_tmpfs=False)
    w.prepare()
    w.commit({"a": FileSpec(b"1"), "b": FileSpec(b"2")})
    old = os.readlink(tmp_path / DATA_LINK)
    assert w.commit({"a": FileSpec(b"1b"), "b": None}) == ["a", "b"]
    new = os.readlink(tmp_path / DATA_LINK)
    assert new != old
    assert generation_dirs(tmp_path) == [old, new]  # kept for readers mid-lookup
    assert 0 < w.prune(grace_seconds=60) <= 60
    assert w.prune(grace_seconds=0) is None
    assert generation_dirs(tmp_path) == [new]
    assert not (tmp_path / "b").is_symlink()
    assert (tmp_path / "a").read_bytes() == b"1b"


def test_mode_change_alone_is_a_change(tmp_path: Path) -> None:
    """A new mode with the same content still commits."""
    w = Writer(tmp_path, require_tmpfs=False)
    w.prepare()
    w.commit({"a": FileSpec(b"1", 0o444)})
    assert w.commit({"a": FileSpec(b"1", 0o400)})
    assert stat.S_IMODE(os.stat(tmp_path / "a").st_mode) == 0o400


def test_clear_removes_everything(tmp_path: Path) -> None:
    """clear() removes links and generations (cleanup_on_exit)."""
    w = Writer(tmp_path, require_tmpfs=False)
    w.prepare()
    w.commit({"a": FileSpec(b"1"), "d/b": FileSpec(b"2")})
    w.clear()
    assert list(tmp_path.iterdir()) == []


CRASHER = textwrap.dedent("""
    import os, signal, sys
    from bridge.writer.atomic import FileSpec, Writer
    class Crashing(Writer):
        def _step(self, name):
            if name == sys.argv[2]:
                os.kill(os.getpid(), signal.SIGKILL)
    w = Crashing(__import__("pathlib").Path(sys.argv[1]), require_tmpfs=False)
    w.prepare()
    if sys.argv[2] == "link_tmp_made":  # a file planted at a new name: replaced through a temporary link
        open(os.path.join(sys.argv[1], "new"), "wb").close()
    if sys.argv[3] == "spare":
        w.prune(grace_seconds=0)  # a spare ready before the commit
    w.commit({"a": FileSpec(b"new-a"), "new": FileSpec(b"new-n"), "d/c": FileSpec(b"new-c"), "gone": None})
""")


COMMIT_STEPS = ["file_written", "generation_written", "data_tmp_linked", "committed", "link_made",
                "link_tmp_made", "links_synced"]


CRASHES = ([(step, "spare") for step in [*COMMIT_STEPS, "spare_file_linked", "spare_ready"]]
           + [(step, "at-commit") for step in [*COMMIT_STEPS, "spare_file_linked"]])


@pytest.mark.parametrize(("step", "spare"), CRASHES)
def test_crash_between_steps_is_repaired(tmp_path: Path, step: str, spare: str) -> None:
    """After a kill at any step (spare ready or linked at commit), prepare() leaves the old or the new
    generation whole, and no leftovers."""
    w = Writer(tmp_path, require_tmpfs=False)
    w.prepare()
    w.commit({"a": FileSpec(b"old-a"), "gone": FileSpec(b"old-g"), "d/c": FileSpec(b"old-c"),
              "d/keep": FileSpec(b"keep")})
    w.release()
    proc = subprocess.run([sys.executable, "-c", CRASHER, str(tmp_path), step, spare], check=False)
    assert proc.returncode == -signal.SIGKILL
    repaired = Writer(tmp_path, require_tmpfs=False)
    repaired.prepare()  # the killed process's lock went with it
    current = repaired.current()
    old = {"a": b"old-a", "gone": b"old-g", "d/c": b"old-c", "d/keep": b"keep"}
    new = {"a": b"new-a", "new": b"new-n", "d/c": b"new-c", "d/keep": b"keep"}
    contents = {name: spec.content for name, spec in current.items()}
    assert contents in (old, new)
    for name, data in contents.items():
        assert (tmp_path / name).read_bytes() == data  # every visible path resolves
    visible = {p.name for p in tmp_path.iterdir() if not p.name.startswith("..")}
    assert visible == {n.split("/")[0] for n in contents}
    assert len(generation_dirs(tmp_path)) == 1
    ours = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".."))
    assert ours == sorted([DATA_LINK, *generation_dirs(tmp_path)])  # no spare, no ..data_tmp, no ..link_tmp
    assert dict(repaired.committed) == current  # what it read once at start is what is on disk


def test_failed_write_leaves_no_partial_generation(tmp_path: Path) -> None:
    """A generation that cannot be written (here: a name too long) is removed, and the old one stays."""
    w = Writer(tmp_path, require_tmpfs=False)
    w.prepare()
    w.commit({"a": FileSpec(b"1")})
    before = sorted(p.name for p in tmp_path.iterdir())
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        with pytest.raises(WriteError):
            w.commit({"a": FileSpec(b"2"), "b/c": FileSpec(b"3"), "b/" + "x" * 300: FileSpec(b"4")})
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    w.prune(grace_seconds=0)  # now through a spare: the spare used by the failed commit goes too
    with pytest.raises(WriteError):
        w.commit({"a": FileSpec(b"2"), "b/" + "x" * 300: FileSpec(b"4")})
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert len(os.listdir("/proc/self/fd")) == fds
    assert (tmp_path / "a").read_bytes() == b"1"


def test_none_removes_a_file(tmp_path: Path) -> None:
    """An update of None removes that file, its link and its emptied folder; the rest stays."""
    w = Writer(tmp_path, require_tmpfs=False)
    w.prepare()
    w.commit({"a": FileSpec(b"1"), "d/b": FileSpec(b"2")})
    w.prune(grace_seconds=0)
    assert w.commit({"d/b": None, "never": None}) == ["d/b"]
    assert dict(w.committed) == {"a": FileSpec(b"1")}
    assert not os.path.lexists(tmp_path / "d")
    assert not (tmp_path / w.generation / "d").exists()
    assert (tmp_path / "a").read_bytes() == b"1"


def test_noop_commit_writes_nothing(tmp_path: Path) -> None:
    """A commit that changes nothing touches nothing: same generation, same directory entries."""
    w = Writer(tmp_path, require_tmpfs=False)
    w.prepare()
    w.commit({"a": FileSpec(b"1"), "d/b": FileSpec(b"2")})
    w.prune(grace_seconds=0)
    snapshot = sorted((p.name, p.lstat().st_ino, p.lstat().st_mtime_ns) for p in tmp_path.iterdir())
    gen = w.generation
    assert w.commit({"a": FileSpec(b"1"), "d/b": FileSpec(b"2"), "x": None}) == []
    assert w.commit({}) == []
    assert w.generation == gen
    assert sorted((p.name, p.lstat().st_ino, p.lstat().st_mtime_ns) for p in tmp_path.iterdir()) == snapshot


def test_committed_is_read_once_at_start(tmp_path: Path) -> None:
    """A new writer reads the current generation at prepare() into `committed`, modes and owners too."""
    w = Writer(tmp_path, require_tmpfs=False)
    w.prepare()
    files = {"a": FileSpec(b"1", 0o400), "d/b": FileSpec(b"2", 0o444)}
    w.commit(files)
    w.release()
    again = Writer(tmp_path, require_tmpfs=False)
    again.prepare()
    assert dict(again.committed) == files
    assert again.generation == os.readlink(tmp_path / DATA_LINK)
    assert again.commit({"a": FileSpec(b"1", 0o400)}) == []


def test_full_tmpfs_keeps_the_last_generation(tiny_tmpfs: Path) -> None:
    """ENOSPC: one-line WriteError, the last generation whole, no leftover `..` directory or spare."""
    w = Writer(tiny_tmpfs, require_tmpfs=True)
    w.prepare()
    w.commit({"a": FileSpec(b"1"), "b": FileSpec(b"2")})
    before = sorted(p.name for p in tiny_tmpfs.iterdir())
    for prune_first in (False, True):
        if prune_first:
            w.prune(grace_seconds=0)
            before = sorted(p.name for p in tiny_tmpfs.iterdir() if not p.name.startswith("..spare_"))
        with pytest.raises(WriteError, match="No space left") as err:
            w.commit({"a": FileSpec(b"x" * 1024 * 1024)})
        assert "\n" not in str(err.value)
        assert sorted(p.name for p in tiny_tmpfs.iterdir()) == before
        assert (tiny_tmpfs / "a").read_bytes() == b"1" and dict(w.committed)["a"] == FileSpec(b"1")
    assert w.commit({"a": FileSpec(b"small")}) == ["a"]  # and it goes on once there is room


def test_read_only_remount_fails_commits_not_the_process(tiny_tmpfs: Path) -> None:
    """EROFS: commits raise WriteError, prune() and check_drift() do not, the files stay readable."""
    w = Writer(tiny_tmpfs, require_tmpfs=True)
    w.prepare()
    w.commit({"a": FileSpec(b"1")})
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True)
    try:
        with pytest.raises(WriteError, match="Read-only"):
            w.commit({"a": FileSpec(b"2")})
        w.prune(grace_seconds=0)
        assert w.check_drift() == []
        assert (tiny_tmpfs / "a").read_bytes() == b"1"
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(tiny_tmpfs)], check=True)
    assert w.commit({"a": FileSpec(b"2")}) == ["a"]


def test_out_of_descriptors_is_a_write_error(tmp_path: Path) -> None:
    """EMFILE in the middle of a commit: WriteError, no leftover, and the next commit works."""
    w = Writer(tmp_path, require_tmpfs=False)
    w.prepare()
    w.commit({"a": FileSpec(b"1")})
    before = sorted(p.name for p in tmp_path.iterdir())
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 16, hard))
    filler = []
    try:
        with pytest.raises(OSError):
            while True:
                filler.append(os.open("/dev/null", os.O_RDONLY))
        os.close(filler.pop())
        os.close(filler.pop())  # two descriptors left: a commit needs more
        with pytest.raises(WriteError, match="Too many open files"):
            w.commit({"a": FileSpec(b"2"), "d/e/f": FileSpec(b"3")})
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    w.prune(grace_seconds=0)  # what could not be removed without descriptors goes now
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("..spare_")) == before
    assert w.commit({"a": FileSpec(b"2")}) == ["a"]

