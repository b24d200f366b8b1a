"""The bridge's metadata files beside the secrets (bridge/writer/sidefiles.py): created with their
final mode, replaced atomically, never read through a symlink or a FIFO, never read whole past
MAX_STATE_BYTES."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bridge.errors import WriteError
from bridge.writer.atomic import Writer
from bridge.writer.sidefiles import MAX_STATE_BYTES


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



def test_metadata_file_past_the_bound_is_refused(tmp_path: Path) -> None:
    """A sparse metadata file past MAX_STATE_BYTES is a WriteError naming the limit, never read whole."""
    w = Writer(tmp_path, require_tmpfs=False)
    w.prepare()
    with open(tmp_path / "big.json", "wb") as f:
        f.truncate(MAX_STATE_BYTES + 1)
    with pytest.raises(WriteError, match=r"big\.json in .* is larger than 64 MiB"):
        w.read_state("big.json")
    (tmp_path / "big.json").write_bytes(b"x" * 1024)
    assert w.read_state("big.json") == b"x" * 1024


def test_metadata_file_that_is_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    """A FIFO planted as a metadata file is refused without blocking on open (no writer at its end)."""
    w = Writer(tmp_path, require_tmpfs=False)
    w.prepare()
    os.mkfifo(tmp_path / "leases.json")
    with pytest.raises(WriteError, match="not a regular file"):
        w.read_state("leases.json")


def test_replacing_a_metadata_file_never_writes_through_a_planted_link(tmp_path: Path) -> None:
    """write_state replaces a symlink planted at its name; the link's target keeps its content."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"theirs")
    out = tmp_path / "out"
    w = Writer(out, require_tmpfs=False)
    w.prepare()
    (out / "state.json").symlink_to(victim)
    w.write_state("state.json", b"ours")
    assert victim.read_bytes() == b"theirs"
    assert not (out / "state.json").is_symlink() and (out / "state.json").read_bytes() == b"ours"
