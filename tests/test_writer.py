"""The atomic writer: layout, modes, no-op commits, symlink safety, tmpfs check, crash repair."""

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
from bridge.writer import DATA_LINK, FileSpec, Writer, is_memory_backed


@pytest.fixture
def shm_dir(tmp_path: Path):
    """A directory on tmpfs (/dev/shm), as /run/secrets is in a container."""
    base = Path("/dev/shm")
    if not base.is_dir() or not is_memory_backed(base):
        pytest.skip("no tmpfs at /dev/shm")
    d = base / f"sb-test-{os.getpid()}-{tmp_path.name}"
    d.mkdir()
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


def _generations(d: Path) -> list[str]:
    """The generation directories (not `..data`, not the prepared spares)."""
    return sorted(p.name for p in d.iterdir()
                  if p.name.startswith("..") and p.name != DATA_LINK and not p.name.startswith("..spare_"))


def _spares(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith("..spare_"))


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
    assert len(_generations(tmp_path)) == 1


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
    assert _generations(tmp_path) == [old, new]  # kept for readers mid-lookup
    assert 0 < w.prune(grace_seconds=60) <= 60
    assert w.prune(grace_seconds=0) is None
    assert _generations(tmp_path) == [new]
    assert not (tmp_path / "b").is_symlink()
    assert (tmp_path / "a").read_bytes() == b"1b"


def test_mode_change_alone_is_a_change(tmp_path: Path) -> None:
    """A new mode with the same content still commits."""
    w = Writer(tmp_path, require_tmpfs=False)
    w.prepare()
    w.commit({"a": FileSpec(b"1", 0o444)})
    assert w.commit({"a": FileSpec(b"1", 0o400)})
    assert stat.S_IMODE(os.stat(tmp_path / "a").st_mode) == 0o400


def test_umask_does_not_narrow_or_widen(tmp_path: Path) -> None:
    """The final mode is exactly the configured one whatever the umask."""
    old = os.umask(0o077)
    try:
        w = Writer(tmp_path, require_tmpfs=False)
        w.prepare()
        w.commit({"a": FileSpec(b"1", 0o444)})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a").st_mode) == 0o444


@pytest.mark.skipif(os.getuid() != 0, reason="chown needs root")
def test_owner(tmp_path: Path) -> None:
    """Files get the configured uid/gid."""
    w = Writer(tmp_path, require_tmpfs=False)
    w.prepare()
    w.commit({"a": FileSpec(b"1", 0o400, 999, 998)})
    st = os.stat(tmp_path / "a")
    assert (st.st_uid, st.st_gid) == (999, 998)


def test_planted_symlink_is_not_followed(tmp_path: Path) -> None:
    """A symlink planted at a secret's name is replaced, and its target is never written."""
    out, victim = tmp_path / "out", tmp_path / "victim"
    out.mkdir()
    victim.write_text("untouched")
    (out / "db").symlink_to(victim)
    w = Writer(out, require_tmpfs=False)
    w.prepare()
    w.commit({"db": FileSpec(b"secret")})
    assert victim.read_text() == "untouched"
    assert os.readlink(out / "db") == "..data/db"


def test_disk_backed_dir_refused(tmp_path: Path) -> None:
    """With require_tmpfs a disk directory is refused, saying how to fix it."""
    if is_memory_backed(tmp_path):
        pytest.skip("tmp_path is itself on tmpfs here")
    with pytest.raises(WriteError, match="tmpfs.*require_tmpfs: false"):
        Writer(tmp_path, require_tmpfs=True).prepare()


def test_tmpfs_dir_accepted(shm_dir: Path) -> None:
    """A tmpfs directory passes the check and is written."""
    w = Writer(shm_dir, require_tmpfs=True)
    w.prepare()
    assert w.commit({"a": FileSpec(b"1")})


def test_clear_removes_everything(tmp_path: Path) -> None:
    """clear() removes links and generations (cleanup_on_exit)."""
    w = Writer(tmp_path, require_tmpfs=False)
    w.prepare()
    w.commit({"a": FileSpec(b"1"), "d/b": FileSpec(b"2")})
    w.clear()
    assert list(tmp_path.iterdir()) == []


READER = textwrap.dedent("""
    import os, sys, time
    out, names, seconds = sys.argv[1], sys.argv[2].split(","), float(sys.argv[3])
    reads, seen, deadline = 0, set(), time.monotonic() + seconds
    print("READY", flush=True)
    while time.monotonic() < deadline and not os.path.exists(os.path.join(out, "..stop")):
        for name in names:
            try:
                data = open(os.path.join(out, name), "rb").read()
            except OSError as exc:
                print(f"MISSING {name} {exc}", flush=True); sys.exit(1)
            head, _, body = data.partition(b":")
            if not data or not head.isdigit() or len(body) != int(head):
                print(f"PARTIAL {name} {len(data)}", flush=True); sys.exit(1)
            reads += 1
            seen.add(data[:16])
    print(f"OK {reads} {len(seen)}", flush=True)
""")


@pytest.mark.slow
def test_reader_never_sees_partial_or_missing(shm_dir: Path) -> None:
    """A reader process reading every file during 1,000 commits never sees a partial, empty or missing file."""
    names = ["a", "b", "sub/c"]
    w = Writer(shm_dir, require_tmpfs=True)
    w.prepare()

    def files(i: int) -> dict[str, FileSpec]:
        out = {}
        for k, name in enumerate(names):
            body = bytes([65 + (i + k) % 26]) * (1 + (i * 7919 + k * 104729) % 20000)
            out[name] = FileSpec(str(len(body)).encode() + b":" + body)
        return out

    w.commit(files(0))
    w.prune()
    reader = subprocess.Popen([sys.executable, "-c", READER, str(shm_dir), ",".join(names), "120"],
                              stdout=subprocess.PIPE, text=True)
    assert reader.stdout is not None and reader.stdout.readline().strip() == "READY"
    try:
        for i in range(1, 1001):
            assert w.commit(files(i))
            w.prune()  # retires generations past their grace into spares, as the engine's loop does
            assert reader.poll() is None, reader.stdout.read() if reader.stdout else ""
    finally:
        (shm_dir / "..stop").touch()
        out, _ = reader.communicate(timeout=30)
    assert reader.returncode == 0, out
    _, reads, distinct = out.split()
    assert int(reads) > 1000 and int(distinct) > 50  # it really read throughout, across generations
    w.prune(grace_seconds=0)
    assert len([g for g in _generations(shm_dir) if g != "..stop"]) == 1


CRASHER = textwrap.dedent("""
    import os, signal, sys
    from bridge.writer import FileSpec, Writer
    class Crashing(Writer):
        def _step(self, name):
            if name == sys.argv[2]:
                os.kill(os.getpid(), signal.SIGKILL)
    w = Crashing(__import__("pathlib").Path(sys.argv[1]), require_tmpfs=False)
    w.prepare()
    if sys.argv[3] == "spare":
        w.prune()  # a spare ready before the commit
    w.commit({"a": FileSpec(b"new-a"), "new": FileSpec(b"new-n"), "d/c": FileSpec(b"new-c"), "gone": None})
""")

COMMIT_STEPS = ["file_written", "generation_written", "data_tmp_linked", "committed", "link_tmp_made",
                "links_synced"]
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
    assert len(_generations(tmp_path)) == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("..")) == sorted([DATA_LINK, *_generations(tmp_path)])
    assert dict(repaired.committed) == current  # what it read once at start is what is on disk


def test_one_writer_per_directory(tmp_path: Path) -> None:
    """A second writer on the same directory is refused while the first holds it."""
    first = Writer(tmp_path, require_tmpfs=False)
    first.prepare()
    with pytest.raises(WriteError, match="another secrets-bridge is writing"):
        Writer(tmp_path, require_tmpfs=False).prepare()
    first.release()
    Writer(tmp_path, require_tmpfs=False).prepare()


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
    w.prune()  # now through a spare: the spare used by the failed commit goes too
    with pytest.raises(WriteError):
        w.commit({"a": FileSpec(b"2"), "b/" + "x" * 300: FileSpec(b"4")})
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert len(os.listdir("/proc/self/fd")) == fds
    assert (tmp_path / "a").read_bytes() == b"1"


def test_folders_readable_under_strict_umask(tmp_path: Path) -> None:
    """Folders are 0755 whatever the umask, so an app of another uid can reach its files."""
    old = os.umask(0o077)
    try:
        w = Writer(tmp_path / "out", require_tmpfs=False)
        w.prepare()
        w.commit({"tls/cert.pem": FileSpec(b"c", 0o444)})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "out").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(tmp_path / "out" / "tls").st_mode) == 0o755
