"""Change records: what one commit changed, file by file, announced to subscribers.

The engine makes one `Change` per file whose content, mode or owner changed in a commit (and one per
changed `env:` variable of `exec`), and hands
the list to every subscriber (on_change notifications, audit events, metrics). A record names
the file, its entry, where its value came from and the versions; it never carries a value.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Change:
    #: the target path under output_dir (`db/password`, `app.env`)
    file: str
    #: the name of the `secrets:` entry that makes the file (`db` for `db/password`)
    entry: str
    #: provider instance name(s) and ref(s) the file is made from, comma-joined for a template
    provider: str
    ref: str
    old_version: str | None
    new_version: str | None
    #: the generation directory committed (`..2026_11_28_02_10_00.123456789`)
    generation: str | None = None
    #: added, updated or removed
    action: str = "updated"
    #: "file", or "env" for a variable of `exec`'s child (`file` and `entry` are then `$NAME`)
    kind: str = "file"
