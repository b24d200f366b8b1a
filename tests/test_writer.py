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
from bridge.writer.atomic import DATA_LINK, MAX_SPARES, FileSpec, Writer, is_memory_backed


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
    assert len(_generations(tmp_path)) == 1
    ours = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".."))
    assert ours == sorted([DATA_LINK, *_generations(tmp_path)])  # no spare, no ..data_tmp, no ..link_tmp
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
    w.prune(grace_seconds=0)  # now through a spare: the spare used by the failed commit goes too
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


# -- O(changed) commits ------------------------------------------------------------------------


def _inodes(d: Path, folder: str | None = None) -> dict[str, int]:
    """name -> inode of every file of the current generation (or of `folder`)."""
    gen = d / (folder or os.readlink(d / DATA_LINK))
    return {str(p.relative_to(gen)): p.lstat().st_ino for p in gen.rglob("*") if not p.is_dir()}


def _assert_spares_match(d: Path) -> None:
    """Every spare holds exactly the current generation's inodes (after a prune)."""
    for spare in _spares(d):
        assert _inodes(d, spare) == _inodes(d), spare


@pytest.mark.parametrize("spare", [True, False], ids=["spare", "linked-at-commit"])
def test_unchanged_files_keep_their_inode(tmp_path: Path, spare: bool) -> None:
    """Unchanged files enter the new generation as hard links; a changed file is a new inode."""
    w = Writer(tmp_path, require_tmpfs=False)
    w.prepare()
    w.commit({"a": FileSpec(b"1"), "b": FileSpec(b"2"), "d/c": FileSpec(b"3")})
    if spare:
        w.prune(grace_seconds=0)
        assert len(_spares(tmp_path)) == 1
    old_gen, before = w.generation, _inodes(tmp_path)
    assert w.commit({"a": FileSpec(b"1b")}) == ["a"]
    after = _inodes(tmp_path)
    assert w.generation != old_gen and os.readlink(tmp_path / DATA_LINK) == w.generation
    assert after["b"] == before["b"] and after["d/c"] == before["d/c"]
    assert after["a"] != before["a"]
    assert (tmp_path / old_gen / "a").read_bytes() == b"1"  # the replaced generation is untouched
    assert (tmp_path / "a").read_bytes() == b"1b"


def test_mode_change_is_a_new_inode_and_leaves_the_old_file(tmp_path: Path) -> None:
    """A chmod-only change writes a new file; the linked inode in the old generation keeps its mode."""
    w = Writer(tmp_path, require_tmpfs=False)
    w.prepare()
    w.commit({"a": FileSpec(b"1", 0o444), "b": FileSpec(b"2", 0o444)})
    w.prune(grace_seconds=0)
    old_gen, before = w.generation, _inodes(tmp_path)
    assert w.commit({"a": FileSpec(b"1", 0o400)}) == ["a"]
    assert _inodes(tmp_path)["a"] != before["a"]
    assert stat.S_IMODE(os.stat(tmp_path / "a").st_mode) == 0o400
    assert stat.S_IMODE(os.stat(tmp_path / old_gen / "a").st_mode) == 0o444
    assert stat.S_IMODE(os.stat(tmp_path / "b").st_mode) == 0o444


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


def test_one_change_among_10000_writes_one_file(shm_dir: Path) -> None:
    """With 10,000 files, a commit of one change creates exactly one new file inode."""
    w = Writer(shm_dir, require_tmpfs=True)
    w.prepare()
    w.commit({f"s{i:05d}": FileSpec(b"v%d" % i) for i in range(10_000)})
    w.prune(grace_seconds=0)
    before = _inodes(shm_dir)
    assert w.commit({"s04242": FileSpec(b"changed")}) == ["s04242"]
    after = _inodes(shm_dir)
    assert len(after) == 10_000
    assert [name for name, ino in after.items() if ino != before[name]] == ["s04242"]
    assert (shm_dir / "s04242").read_bytes() == b"changed"


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


def test_spare_waits_for_the_generation_to_stand(tmp_path: Path) -> None:
    """No spare is linked right after a commit (a one-shot sync makes none); prune() says when one
    is due, so a sleeping loop wakes for it, and makes one once the generation has stood for the
    grace period. At shutdown (make_spare=False) nothing is due."""
    w = Writer(tmp_path, require_tmpfs=False)
    w.prepare()
    w.commit({"a": FileSpec(b"1"), "b": FileSpec(b"2")})
    assert 59 < w.prune(grace_seconds=60) <= 60
    assert w.prune(grace_seconds=0, make_spare=False) is None
    assert _spares(tmp_path) == []
    w.prune(grace_seconds=0)
    assert len(_spares(tmp_path)) == 1
    _assert_spares_match(tmp_path)


def test_spares_are_private_and_bounded(tmp_path: Path) -> None:
    """Spares are 0700 `..spare_` directories, at most MAX_SPARES, and release() removes them."""
    w = Writer(tmp_path, require_tmpfs=False)
    w.prepare()
    w.commit({"a": FileSpec(b"0")})
    for i in range(1, 6):
        w.prune(grace_seconds=0)
        w.commit({"a": FileSpec(b"%d" % i)})
    w.prune(grace_seconds=0)
    spares = _spares(tmp_path)
    assert 1 <= len(spares) <= MAX_SPARES
    assert all(stat.S_IMODE((tmp_path / s).stat().st_mode) == 0o700 for s in spares)
    assert _generations(tmp_path) == [w.generation]
    _assert_spares_match(tmp_path)
    w.release()
    assert _spares(tmp_path) == []
    assert (tmp_path / "a").read_bytes() == b"5"


# -- the held directory (issue 9) --------------------------------------------------------------


def test_repointed_output_dir_symlink_is_not_followed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A symlinked output_dir re-pointed while running: the bridge keeps writing the directory it
    locked and never writes or cleans the new target."""
    locked, other, link = tmp_path / "locked", tmp_path / "other", tmp_path / "out"
    locked.mkdir()
    other.mkdir()
    (other / "..keep").write_text("theirs")
    (other / "a").write_text("theirs")
    link.symlink_to(locked)
    w = Writer(link, require_tmpfs=False)
    w.prepare()
    w.commit({"a": FileSpec(b"1")})
    (tmp_path / "tmp-link").symlink_to(other)
    os.rename(tmp_path / "tmp-link", link)  # atomically re-point
    w.commit({"a": FileSpec(b"2"), "b": FileSpec(b"3")})
    w.write_state("state.json", b"{}")
    w.prune(grace_seconds=0)
    os.unlink(locked / "b")
    with caplog.at_level("WARNING", logger="secrets_bridge.writer"):
        assert w.check_drift() == ["b"]
        assert w.check_drift() == []
    assert [r.getMessage() for r in caplog.records].count(
        f"{link} no longer leads to the directory locked at start; still writing that one "
        f"(restart the bridge to use the new one)") == 1
    assert sorted(p.name for p in other.iterdir()) == ["..keep", "a"]
    assert (other / "a").read_text() == "theirs"
    assert (locked / "a").read_bytes() == b"2" and (locked / "b").read_bytes() == b"3"
    assert (locked / "state.json").exists()


def test_removed_directory_is_made_again(shm_dir: Path) -> None:
    """rm -rf of the output directory while running: the next check makes it again with every file."""
    out = shm_dir / "out"
    w = Writer(out, require_tmpfs=True)
    w.prepare()
    w.commit({"a": FileSpec(b"1", 0o400), "d/b": FileSpec(b"2")})
    w.prune(grace_seconds=0)
    subprocess.run(["rm", "-rf", str(out)], check=True)
    assert w.prune() is None  # never raises, nothing to do in a removed directory
    assert w.check_drift() == ["a", "d/b"]
    assert (out / "a").read_bytes() == b"1" and (out / "d" / "b").read_bytes() == b"2"
    assert stat.S_IMODE(os.stat(out / "a").st_mode) == 0o400
    with pytest.raises(WriteError, match="another secrets-bridge"):
        Writer(out, require_tmpfs=True).prepare()  # the new directory is locked too
    subprocess.run(["rm", "-rf", str(out)], check=True)
    assert w.commit({"a": FileSpec(b"1b")}) == ["a"]  # a commit follows the removal as well
    assert (out / "a").read_bytes() == b"1b" and (out / "d" / "b").read_bytes() == b"2"
    w.prune(grace_seconds=0)
    assert _generations(out) == [w.generation]


@pytest.fixture
def tiny_tmpfs(tmp_path: Path):
    """A 256 KiB tmpfs of our own (root only), to fill up or remount read-only."""
    d = tmp_path / "tiny"
    d.mkdir()
    if os.getuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(d)],
                                          capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


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


def test_write_state_mode(tmp_path: Path) -> None:
    """write_state creates the file with the given mode from the start (0600 for the lease store)."""
    old = os.umask(0o022)
    try:
        w = Writer(tmp_path, require_tmpfs=False)
        w.prepare()
        w.write_state("private.json", b"{}", mode=0o600)
        w.write_state("public.json", b"{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "private.json").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "public.json").st_mode) == 0o644
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("..state")]


# -- drift repair ------------------------------------------------------------------------------


def _tamper_link_deleted(out: Path, victim: Path) -> None:
    os.unlink(out / "a")


def _tamper_link_elsewhere(out: Path, victim: Path) -> None:
    os.unlink(out / "a")
    (out / "a").symlink_to(victim)


def _tamper_link_to_folder(out: Path, victim: Path) -> None:
    os.unlink(out / "a")
    (out / "a").mkdir()
    (out / "a" / "x").symlink_to(victim)


def _tamper_file_edited(out: Path, victim: Path) -> None:
    with open(out / "a", "r+b") as f:  # in place, through the link: same inode
        f.write(b"EVIL")


def _tamper_file_edited_mtime_put_back(out: Path, victim: Path) -> None:
    before = os.stat(out / "a")
    with open(out / "a", "r+b") as f:  # in place, the same size
        f.write(b"X")
    os.utime(out / "a", ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(out / "a")
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)


def _tamper_file_chmod(out: Path, victim: Path) -> None:
    os.chmod(out / "a", 0o666)


def _tamper_file_replaced(out: Path, victim: Path) -> None:
    gen = out / os.readlink(out / DATA_LINK)
    os.unlink(gen / "a")
    (gen / "a").symlink_to(victim)


def _tamper_nested_file_deleted(out: Path, victim: Path) -> None:
    os.unlink(out / "d" / "b")


def _tamper_data_dir(out: Path, victim: Path) -> None:
    os.unlink(out / DATA_LINK)
    (out / DATA_LINK).mkdir()
    (out / DATA_LINK / "a").write_bytes(b"EVIL")
    (out / DATA_LINK / "d").symlink_to(victim.parent)


def _tamper_data_elsewhere(out: Path, victim: Path) -> None:
    os.unlink(out / DATA_LINK)
    (out / DATA_LINK).symlink_to(victim.parent)


def _tamper_generation_removed(out: Path, victim: Path) -> None:
    subprocess.run(["rm", "-rf", str(out / os.readlink(out / DATA_LINK))], check=True)


DRIFTS = {
    "link-deleted": (_tamper_link_deleted, ["a"]),
    "link-to-elsewhere": (_tamper_link_elsewhere, ["a"]),
    "link-replaced-by-folder": (_tamper_link_to_folder, ["a"]),
    "file-edited": (_tamper_file_edited, ["a"]),
    "file-edited-mtime-put-back": (_tamper_file_edited_mtime_put_back, ["a"]),
    "file-chmod": (_tamper_file_chmod, ["a"]),
    "file-replaced-by-symlink": (_tamper_file_replaced, ["a"]),
    "nested-file-deleted": (_tamper_nested_file_deleted, ["d/b"]),
    "data-replaced-by-folder": (_tamper_data_dir, [DATA_LINK]),
    "data-to-elsewhere": (_tamper_data_elsewhere, [DATA_LINK]),
    "generation-removed": (_tamper_generation_removed, ["a", "c", "d/b"]),
}


@pytest.mark.parametrize("spare", [True, False], ids=["spare", "no-spare"])
@pytest.mark.parametrize("case", list(DRIFTS))
def test_drift_is_put_back(tmp_path: Path, case: str, spare: bool) -> None:
    """check_drift() puts back a deleted, replaced, edited or chmod'ed link, file or ..data from what
    was committed, never touches the planted target, and leaves one generation after the grace."""
    tamper, expected = DRIFTS[case]
    out, victim = tmp_path / "out", tmp_path / "victim" / "file"
    victim.parent.mkdir()
    victim.write_bytes(b"victim")
    w = Writer(out, require_tmpfs=False)
    w.prepare()
    files = {"a": FileSpec(b"1", 0o444), "c": FileSpec(b"3", 0o400), "d/b": FileSpec(b"2", 0o444)}
    w.commit(files)
    if spare:
        w.prune(grace_seconds=0)
    assert w.check_drift() == []
    tamper(out, victim)
    assert w.check_drift() == expected
    assert w.check_drift() == []
    for name, spec in files.items():
        assert os.readlink(out / name.split("/")[0]) == f"{DATA_LINK}/{name.split('/')[0]}"
        assert (out / name).read_bytes() == spec.content
        assert stat.S_IMODE(os.lstat(out / DATA_LINK / name).st_mode) == spec.mode
    assert os.readlink(out / DATA_LINK) == w.generation
    assert victim.read_bytes() == b"victim" and sorted(os.listdir(victim.parent)) == ["file"]
    assert dict(w.committed) == files
    w.prune(grace_seconds=0)
    w.prune(grace_seconds=0)
    assert _generations(out) == [w.generation]
    assert len(_spares(out)) <= MAX_SPARES
    _assert_spares_match(out)  # no tampered inode carried into a later generation
    assert w.commit({"a": FileSpec(b"after")}) == ["a"]  # and commits go on
    assert (out / "a").read_bytes() == b"after" and (out / "d" / "b").read_bytes() == b"2"


def test_random_commits_match_a_model(tmp_path: Path) -> None:
    """300 random commits (add, change, chmod, remove, folders) with spares recycled in between: the
    visible files always equal the model, and every spare matches the current generation."""
    import random

    rng = random.Random(7)
    w = Writer(tmp_path, require_tmpfs=False)
    w.prepare()
    model: dict[str, FileSpec] = {}
    names = [f"f{i}" for i in range(8)] + [f"d{i}/f{j}" for i in range(3) for j in range(3)] + ["x/y/z"]
    for step in range(300):
        updates: dict[str, FileSpec | None] = {}
        for name in rng.sample(names, rng.randint(1, 4)):
            if name in model and rng.random() < 0.3:
                updates[name] = None
            else:
                updates[name] = FileSpec(b"%d" % rng.randint(0, 3), rng.choice([0o400, 0o444]))
        expected = {n: s for n, s in {**model, **updates}.items() if s is not None}
        changed = sorted(n for n in set(model) | set(updates) if expected.get(n) != model.get(n))
        assert w.commit(updates) == changed
        model = expected
        assert dict(w.committed) == model
        for name, spec in model.items():
            assert (tmp_path / name).read_bytes() == spec.content
            assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == spec.mode
        visible = {p.name for p in tmp_path.iterdir() if not p.name.startswith("..")}
        assert visible == {n.split("/")[0] for n in model}
        if step % 3:
            w.prune(grace_seconds=rng.choice([0, 0, 60]))
            _assert_spares_match(tmp_path)
        assert w.check_drift() == []  # the writer's own links and removals are no drift
    assert w.current() == model


def test_removed_directory_made_again_after_a_full_tmpfs(tiny_tmpfs: Path) -> None:
    """A removed directory that cannot be written again at once (tmpfs full) is written whole at a
    later check, never as a generation holding only the next change."""
    out = tiny_tmpfs / "out"
    w = Writer(out, require_tmpfs=True)
    w.prepare()
    w.commit({"a": FileSpec(b"a" * 60_000), "b": FileSpec(b"b" * 60_000)})
    subprocess.run(["rm", "-rf", str(out)], check=True)
    blocker = tiny_tmpfs / "blocker"
    fd = os.open(blocker, os.O_WRONLY | os.O_CREAT)
    with pytest.raises(OSError, match="No space left"):
        while True:  # fill the tmpfs
            os.write(fd, b"x" * 4096)
    os.close(fd)
    with pytest.raises(WriteError, match="No space left"):
        w.check_drift()
    blocker.unlink()
    assert w.commit({"c": FileSpec(b"c")}) == ["c"]
    assert {n: (out / n).read_bytes()[:1] for n in ("a", "b", "c")} == {"a": b"a", "b": b"b", "c": b"c"}
    w.prune(grace_seconds=0)
    assert _generations(out) == [w.generation]


def test_state_files_go_through_the_held_directory(tmp_path: Path) -> None:
    """read_state/remove_state use the directory locked at start, and never follow a planted link."""
    out, other, link = tmp_path / "out", tmp_path / "other", tmp_path / "link"
    out.mkdir()
    other.mkdir()
    (other / "leases.json").write_bytes(b"theirs")
    link.symlink_to(out)
    w = Writer(link, require_tmpfs=False)
    assert w.read_state("leases.json") is None  # before prepare(): through the path
    w.prepare()
    w.write_state("leases.json", b"ours", mode=0o600)
    (tmp_path / "tmp-link").symlink_to(other)
    os.rename(tmp_path / "tmp-link", link)
    assert w.read_state("leases.json") == b"ours"
    w.remove_state("leases.json")
    assert w.read_state("leases.json") is None
    assert (other / "leases.json").read_bytes() == b"theirs"
    (out / "planted").symlink_to(other / "leases.json")
    with pytest.raises(WriteError, match="planted"):
        w.read_state("planted")


def test_idle_check_trusts_an_unchanged_directory_and_still_sees_a_change(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a full pass found the links right, a check reads none while the output directory's
    mtime stays; a link deleted afterwards changes it and is put back."""
    w = Writer(tmp_path, require_tmpfs=False)
    w.prepare()
    w.commit({f"f{i}": FileSpec(b"%d" % i) for i in range(20)})
    past = os.stat(tmp_path).st_mtime_ns - 10_000_000_000
    os.utime(tmp_path, ns=(past, past))  # as if the last change was long ago
    assert w.check_drift() == []  # a full pass, which now trusts this mtime
    reads: list[str] = []
    real_readlink = os.readlink

    def counting_readlink(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        reads.append(str(path))
        return real_readlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "readlink", counting_readlink)
    assert w.check_drift() == []
    assert reads == [DATA_LINK]  # ..data only, none of the 20 links
    os.unlink(tmp_path / "f7")
    assert w.check_drift() == ["f7"]
    assert os.readlink(tmp_path / "f7") == f"{DATA_LINK}/f7"
