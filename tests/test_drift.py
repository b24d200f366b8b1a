"""Drift repair (bridge/writer/drift.py, through `Writer.check_drift`): a deleted, replaced,
edited or chmod'ed link, file or `..data` is put back from what was committed, and a planted
target is never touched."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from bridge.writer.atomic import DATA_LINK, MAX_SPARES, FileSpec, Writer
from tests.writer_fixtures import assert_spares_match, generation_dirs, spare_dirs


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
    assert generation_dirs(out) == [w.generation]
    assert len(spare_dirs(out)) <= MAX_SPARES
    assert_spares_match(out)  # no tampered inode carried into a later generation
    assert w.commit({"a": FileSpec(b"after")}) == ["a"]  # and commits go on
    assert (out / "a").read_bytes() == b"after" and (out / "d" / "b").read_bytes() == b"2"

