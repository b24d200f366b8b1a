"""Helpers the writer's tests share: what is in an output directory (generations, spares, the
inodes of a generation). The tmpfs fixtures (`shm_dir`, `tiny_tmpfs`) are in tests/conftest.py."""

from __future__ import annotations

import os
from pathlib import Path

from bridge.writer.atomic import DATA_LINK


def generation_dirs(d: Path) -> list[str]:
    """The generation directories (not `..data`, not the prepared spares)."""
    return sorted(p.name for p in d.iterdir()
                  if p.name.startswith("..") and p.name != DATA_LINK and not p.name.startswith("..spare_"))


def spare_dirs(d: Path) -> list[str]:
    """The prepared spares (`..spare_*`)."""
    return sorted(p.name for p in d.iterdir() if p.name.startswith("..spare_"))


def inodes(d: Path, folder: str | None = None) -> dict[str, int]:
    """name -> inode of every file of the current generation (or of `folder`)."""
    gen = d / (folder or os.readlink(d / DATA_LINK))
    return {str(p.relative_to(gen)): p.lstat().st_ino for p in gen.rglob("*") if not p.is_dir()}


def assert_spares_match(d: Path) -> None:
    """Every spare holds exactly the current generation's inodes (after a prune)."""
    for spare in spare_dirs(d):
        assert inodes(d, spare) == inodes(d), spare
