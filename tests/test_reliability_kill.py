"""SIGKILL `secrets-bridge run` at random moments while a few hundred files rotate: right after each
kill readers still find whole generations, and after the restart (`sync`) the directory is valid."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.reliability_kit import Bridge, Leaks, record, tmpfs_dir

FILES = 300
KILLS = 20
TEMPORARY = ("..data_tmp", "..link_tmp", "..aside_", "..state_")


def _put(path: Path, data: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}")
    tmp.write_text(data)
    os.replace(tmp, path)


def _generation(out: Path) -> str | None:
    """The generation `..data` names, if it is a link to a directory of ours."""
    try:
        target = os.readlink(out / "..data")
    except OSError:
        return None
    assert target.startswith("..") and "/" not in target and (out / target).is_dir(), target
    return target


def _check_files(out: Path, names: list[str], written: dict[str, set[str]], *, all_present: bool) -> int:
    """Every managed link resolves to a whole value that was written; returns how many were read."""
    read = 0
    for name in names:
        path = out / name
        if not path.is_symlink():
            assert not all_present, f"{name}: link missing"
            continue
        value = path.read_text()  # a dangling link raises here
        assert value in written[name], f"{name}: {value[:20]!r} was never written"
        read += 1
    return read


@pytest.mark.slow
def test_sigkill_at_random_points(tmp_path: Path) -> None:
    """20 SIGKILLs of `run` at random moments while 300 sources rotate: `..data` always names a whole
    generation whose files are values that were written; the `sync` after each kill leaves every
    link resolving, no temporary `..` names or other generations, and a state file that parses."""
    out = tmpfs_dir("kill")
    src = tmp_path / "src"
    src.mkdir()
    names = [f"s{i:03d}" for i in range(FILES)]
    written: dict[str, set[str]] = {name: set() for name in names}
    lock = threading.Lock()

    def rotate(name: str) -> None:
        value = f"{name}-{uuid.uuid4().hex}"
        with lock:
            written[name].add(value)
        _put(src / name, value)

    for name in names:
        rotate(name)
    entries = "".join(f"  {n}: {{provider: dev, ref: {n}}}\n" for n in names)
    config = tmp_path / "bridge.yaml"
    config.write_text(f"output_dir: {out}\nrefresh_interval: 100ms\nlisten: null\n"
                      f"providers:\n  dev: {{type: file, base_dir: {src}}}\nsecrets:\n{entries}")
    bridge = Bridge(config)
    stop = threading.Event()
    rotations = [0]

    def rotator() -> None:
        rng = random.Random(11)
        while not stop.is_set():
            for name in rng.sample(names, 20):
                rotate(name)
                rotations[0] += 1
            time.sleep(0.02)

    thread = threading.Thread(target=rotator, daemon=True)
    thread.start()
    rng = random.Random(5)
    first_committed = False
    figures = {"kills": 0, "kills_before_first_generation": 0, "kills_leaving_temporaries": 0,
               "files_checked": 0, "invalid_directories": 0}
    try:
        for _ in range(KILLS):
            proc = bridge.start()
            time.sleep(rng.uniform(0.3, 1.2))  # interpreter start-up takes ~0.3 s
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            figures["kills"] += 1
            entries_now = os.listdir(out) if out.exists() else []
            if any(e.startswith(TEMPORARY) for e in entries_now):
                figures["kills_leaving_temporaries"] += 1
            if out.exists() and _generation(out) is not None:
                first_committed = True
                figures["files_checked"] += _check_files(out, names, written, all_present=first_committed)
            else:
                assert not first_committed, "..data vanished after a kill"
                figures["kills_before_first_generation"] += 1

            done = bridge.sync()
            assert done.returncode == 0, done.stderr.decode()[-2000:]
            gen = _generation(out)
            assert gen is not None
            first_committed = True
            figures["files_checked"] += _check_files(out, names, written, all_present=True)
            dotted = [e for e in os.listdir(out) if e.startswith("..")]
            extra = [e for e in dotted if e not in ("..data", gen) and not e.startswith("..spare_")]
            assert not extra, f"leftovers after sync: {extra}"
            state = json.loads((out / ".secrets-bridge-state.json").read_text())
            assert isinstance(state, dict)
            leases = out / ".secrets-bridge-leases.json"
            if leases.exists():
                json.loads(leases.read_text())
    finally:
        stop.set()
        thread.join()
        if bridge.proc is not None and bridge.proc.poll() is None:
            bridge.proc.kill()
    assert figures["kills"] >= 20

    leaks = Leaks()
    leaks.secret(*(v for values in written.values() for v in values))
    leaks.text("log", bridge.output())
    leaks.file("state", out / ".secrets-bridge-state.json")
    leaks.check("sigkill")
    record("sigkill", trials=1, rotations=rotations[0], fixed={"files": FILES}, **figures)
