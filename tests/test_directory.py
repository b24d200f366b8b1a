"""The held output directory (bridge/writer/directory.py): one writer per directory, the
directory locked at start kept when its path is re-pointed, a removed directory made again whole,
metadata files read and written through the held descriptor."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from bridge.errors import WriteError
from bridge.writer.atomic import FileSpec, Writer
from tests.writer_fixtures import generation_dirs


def test_one_writer_per_directory(tmp_path: Path) -> None:
    """A second writer on the same directory is refused while the first holds it."""
    first = Writer(tmp_path, require_tmpfs=False)
    first.prepare()
    with pytest.raises(WriteError, match="another secrets-bridge is writing"):
        Writer(tmp_path, require_tmpfs=False).prepare()
    first.release()
    Writer(tmp_path, require_tmpfs=False).prepare()


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
    assert generation_dirs(out) == [w.generation]


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
    assert generation_dirs(out) == [w.generation]


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

