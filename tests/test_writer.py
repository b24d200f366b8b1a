"""The writer room end to end (bridge/writer/ as a whole): a reader process never sees a partial or
missing file across 1,000 commits, and random commits with spares recycled match a model. Each
module's own behaviour is tested in its file: test_atomic, test_generation, test_links,
test_spares, test_directory, test_sidefiles, test_drift, test_state."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bridge.writer.atomic import FileSpec, Writer
from tests.writer_fixtures import assert_spares_match, generation_dirs

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
    assert len([g for g in generation_dirs(shm_dir) if g != "..stop"]) == 1








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
            assert_spares_match(tmp_path)
        assert w.check_drift() == []  # the writer's own links and removals are no drift
    assert w.current() == model


