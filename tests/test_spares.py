"""Spares and replaced generations (bridge/writer/spares.py): unchanged files enter a commit as
hard links, a commit costs what changed, a spare is made once a generation has stood its grace,
private and bounded."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bridge.writer.atomic import DATA_LINK, MAX_SPARES, FileSpec, Writer
from tests.writer_fixtures import assert_spares_match, generation_dirs, inodes, spare_dirs


@pytest.mark.parametrize("spare", [True, False], ids=["spare", "linked-at-commit"])
def test_unchanged_files_keep_their_inode(tmp_path: Path, spare: bool) -> None:
    """Unchanged files enter the new generation as hard links; a changed file is a new inode."""
    w = Writer(tmp_path, require_tmpfs=False)
    w.prepare()
    w.commit({"a": FileSpec(b"1"), "b": FileSpec(b"2"), "d/c": FileSpec(b"3")})
    if spare:
        w.prune(grace_seconds=0)
        assert len(spare_dirs(tmp_path)) == 1
    old_gen, before = w.generation, inodes(tmp_path)
    assert w.commit({"a": FileSpec(b"1b")}) == ["a"]
    after = inodes(tmp_path)
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
    old_gen, before = w.generation, inodes(tmp_path)
    assert w.commit({"a": FileSpec(b"1", 0o400)}) == ["a"]
    assert inodes(tmp_path)["a"] != before["a"]
    assert stat.S_IMODE(os.stat(tmp_path / "a").st_mode) == 0o400
    assert stat.S_IMODE(os.stat(tmp_path / old_gen / "a").st_mode) == 0o444
    assert stat.S_IMODE(os.stat(tmp_path / "b").st_mode) == 0o444


def test_one_change_among_10000_writes_one_file(shm_dir: Path) -> None:
    """With 10,000 files, a commit of one change creates exactly one new file inode."""
    w = Writer(shm_dir, require_tmpfs=True)
    w.prepare()
    w.commit({f"s{i:05d}": FileSpec(b"v%d" % i) for i in range(10_000)})
    w.prune(grace_seconds=0)
    before = inodes(shm_dir)
    assert w.commit({"s04242": FileSpec(b"changed")}) == ["s04242"]
    after = inodes(shm_dir)
    assert len(after) == 10_000
    assert [name for name, ino in after.items() if ino != before[name]] == ["s04242"]
    assert (shm_dir / "s04242").read_bytes() == b"changed"


def test_spare_waits_for_the_generation_to_stand(tmp_path: Path) -> None:
    """No spare is linked right after a commit (a one-shot sync makes none); prune() says when one
    is due, so a sleeping loop wakes for it, and makes one once the generation has stood for the
    grace period. At shutdown (make_spare=False) nothing is due."""
    w = Writer(tmp_path, require_tmpfs=False)
    w.prepare()
    w.commit({"a": FileSpec(b"1"), "b": FileSpec(b"2")})
    assert 59 < w.prune(grace_seconds=60) <= 60
    assert w.prune(grace_seconds=0, make_spare=False) is None
    assert spare_dirs(tmp_path) == []
    w.prune(grace_seconds=0)
    assert len(spare_dirs(tmp_path)) == 1
    assert_spares_match(tmp_path)


def test_spares_are_private_and_bounded(tmp_path: Path) -> None:
    """Spares are 0700 `..spare_` directories, at most MAX_SPARES, and release() removes them."""
    w = Writer(tmp_path, require_tmpfs=False)
    w.prepare()
    w.commit({"a": FileSpec(b"0")})
    for i in range(1, 6):
        w.prune(grace_seconds=0)
        w.commit({"a": FileSpec(b"%d" % i)})
    w.prune(grace_seconds=0)
    spares = spare_dirs(tmp_path)
    assert 1 <= len(spares) <= MAX_SPARES
    assert all(stat.S_IMODE((tmp_path / s).stat().st_mode) == 0o700 for s in spares)
    assert generation_dirs(tmp_path) == [w.generation]
    assert_spares_match(tmp_path)
    w.release()
    assert spare_dirs(tmp_path) == []
    assert (tmp_path / "a").read_bytes() == b"5"

