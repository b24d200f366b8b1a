"""Reader processes over many rotations and config reloads (SIGHUP and file edits) of `secrets-bridge
run`: every read is a whole value the bridge was given, and no file goes missing unless a reload
removed its entry."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.harness import Bridge
from tests.reliability_kit import Leaks, merge_reports, readers, record, tmpfs_dir, wait_for

PLAIN = [f"p{i}" for i in range(8)]
RELOADS = 16
SECONDS = 24.0


def _put(path: Path, data: str) -> None:
    """Write a source file whole (the `file` provider must never read a half-written source)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}")
    tmp.write_text(data)
    os.replace(tmp, path)


class Sources:
    """The `file` provider's folder and every value put there, per output name."""

    def __init__(self, src: Path) -> None:
        self.src = src
        src.mkdir()
        self.written: dict[str, set[str]] = {}
        self.n = 0
        self.lock = threading.Lock()

    def rotate(self, name: str) -> None:
        with self.lock:
            self.n += 1
            n = self.n
        tag = uuid.uuid4().hex
        if name == "pair":
            user, password = f"user-{n}-{tag}", f"pass-{n}-{tag}"
            self.written.setdefault("pair", set()).add(f"{user}|{password}")
            _put(self.src / "pair.json", json.dumps({"user": user, "pass": password}))
        else:
            value = f"{name}-{n}-{tag}"
            self.written.setdefault(name, set()).add(value)
            _put(self.src / name, value)


def _config(out: Path, src: Path, extras: list[str], with_gone: bool) -> str:
    names = ["x", *PLAIN, *extras, *(["gone"] if with_gone else [])]
    entries = "".join(f"  {n}: {{provider: dev, ref: {n}}}\n" for n in names)
    return (f"output_dir: {out}\nrefresh_interval: 100ms\njitter: 0.1\nlisten: null\n"
            f"providers:\n  dev: {{type: file, base_dir: {src}}}\nsecrets:\n{entries}"
            "  pair: {provider: dev, ref: pair.json, files: {user: user, pass: pass}}\n")


@pytest.mark.slow
def test_readers_over_rotations_and_reloads(tmp_path: Path) -> None:
    """Four reader processes read /run/secrets/x, eight more files and both files of a `files:` entry
    through one `..data` while the sources rotate every few milliseconds and the config is reloaded
    16 times (SIGHUP and file edits adding and removing entries): no read is torn, empty or missing,
    and the removed entry goes missing only after the reload that removed it."""
    out = tmpfs_dir("readers")
    sources = Sources(tmp_path / "src")
    for name in ["x", *PLAIN, "gone", "pair", *(f"extra{k}" for k in range(RELOADS))]:
        sources.rotate(name)
    config = tmp_path / "conf" / "bridge.yaml"
    config.parent.mkdir()
    _put(config, _config(out, sources.src, [], with_gone=True))
    bridge = Bridge(config, options=("--debug", "--log-format", "json"))
    stop = threading.Event()
    rotations = [0]

    def rotate() -> None:
        names = ["x", *PLAIN, "pair"]
        while not stop.is_set():
            sources.rotate(names[rotations[0] % len(names)])
            rotations[0] += 1
            time.sleep(0.003)

    removed_at: float | None = None
    watched = ["x", *PLAIN, "gone"]
    bridge.start()
    try:
        assert wait_for(lambda: all((out / n).exists() for n in [*watched, "pair/user"]), 30), bridge.output()
        rotator = threading.Thread(target=rotate, daemon=True)
        with readers(4, out, watched, {"pair": ["user", "pass"]}, work=tmp_path) as reports:
            rotator.start()
            started = time.monotonic()
            for k in range(RELOADS):
                time.sleep(SECONDS / RELOADS)
                extras = [f"extra{k}"] + ([f"extra{k - 1}"] if k % 3 else [])  # adds one, drops some
                with_gone = k < RELOADS // 2
                if not with_gone and removed_at is None:
                    removed_at = time.time()
                _put(config, _config(out, sources.src, extras, with_gone))
                if k % 2:
                    bridge.signal(signal.SIGHUP)
            time.sleep(1.0)
            stop.set()
            rotator.join()
            seconds = time.monotonic() - started
        assert wait_for(lambda: not (out / "gone").exists() and (out / f"extra{RELOADS - 1}").exists(), 10)
        assert bridge.stop() == 0
        bridge("ls"), bridge("inspect", "pair/user")  # each must exit 0
    finally:
        stop.set()
        bridge.kill()
    log = bridge.output()
    reloads = log.count("config reloaded from")
    assert reloads >= RELOADS // 2, log[-2000:]
    assert "reload rejected" not in log

    merged = merge_reports(reports)
    assert removed_at is not None
    problems = {}
    for name, entry in merged.items():
        allowed = sources.written[name]
        torn = [v for v in entry["values"] if v not in allowed]
        missing = [t for t, _ in entry["missing"] if name != "gone" or t < removed_at]
        if torn or entry["empty"] or missing or entry["errors"]:
            problems[name] = {"torn": torn[:2], "empty": len(entry["empty"]), "missing": len(missing),
                              "errors": entry["errors"][:2]}
    assert not problems, problems
    reads = sum(e["reads"] for e in merged.values())
    distinct = sum(len(e["values"]) for e in merged.values())
    assert reads > 0 and len(merged["pair"]["values"]) > 10

    leaks = Leaks()
    leaks.secret(*(v for values in sources.written.values() for v in values))
    leaks.text("log", log)
    leaks.file("state", out / ".secrets-bridge-state.json")
    leaks.check("readers")
    record("readers", trials=1, fixed={"reader_processes": 4}, reads=reads, rotations=rotations[0], reloads=reloads,
           distinct_values_read=distinct, seconds=round(seconds), torn=0, empty=0, missing=0)
