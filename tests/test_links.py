"""The visible links (bridge/writer/links.py): a planted symlink at a name is replaced, never
followed; an idle check trusts an unchanged directory and still sees a deleted link."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bridge.writer.atomic import DATA_LINK, FileSpec, Writer


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


def test_a_first_commit_of_many_names_links_each_whatever_was_there(tmp_path: Path) -> None:
    """A first commit of more names than one listing is worth (the many-names path): names with
    nothing there are linked, a planted symlink and a planted file are replaced, and a link already
    right is kept; no planted target is written."""
    out, victim = tmp_path / "out", tmp_path / "victim"
    out.mkdir()
    victim.write_text("untouched")
    (out / "n3").symlink_to(victim)
    (out / "n5").write_text("planted")
    (out / "n7").symlink_to(f"{DATA_LINK}/n7")
    w = Writer(out, require_tmpfs=False)
    w.prepare()
    w.commit({f"n{i}": FileSpec(b"%d" % i) for i in range(200)})
    assert victim.read_text() == "untouched"
    for i in range(200):
        assert os.readlink(out / f"n{i}") == f"{DATA_LINK}/n{i}" and (out / f"n{i}").read_bytes() == b"%d" % i


@pytest.mark.parametrize("names", [3, 100])  # one readlink a name, and one listing for many
def test_a_folder_planted_at_one_name_leaves_every_other_name_linked(tmp_path: Path, names: int) -> None:
    """A folder someone planted at one secret's name is refused (the commit says so, once), and every
    other name is still linked; the planted folder's content is never touched."""
    out = tmp_path / "out"
    (out / "n1").mkdir(parents=True)
    (out / "n1" / "theirs").write_text("kept")
    w = Writer(out, require_tmpfs=False)
    w.prepare()
    w.commit({f"n{i}": FileSpec(b"%d" % i) for i in range(names)})
    assert (out / "n1" / "theirs").read_text() == "kept" and not (out / "n1").is_symlink()
    for i in range(names):
        if i != 1:
            assert os.readlink(out / f"n{i}") == f"{DATA_LINK}/n{i}" and (out / f"n{i}").read_bytes() == b"%d" % i
    assert w.links.unlinked is not None and "n1 in the output directory is a folder" in w.links.unlinked
    w.commit({"n0": FileSpec(b"again")})  # a pass over other names says nothing of n1
    assert w.links.unlinked is not None
    shutil.rmtree(out / "n1")
    w.check_drift()  # a pass over every name: the link made, nothing owed
    assert w.links.unlinked is None and (out / "n1").read_bytes() == b"1"


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

