"""What the reliability tests share (the bridge as a process is tests/harness.py): reader processes, the leak scan, and
the figures each test measures (merged into one JSON file that the README's "Reliability" section
quotes; SB_RELIABILITY_FIGURES names it, default /tmp/secrets-bridge-reliability.json)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ahocorasick_rs
import pytest

from bridge.writer.atomic import is_memory_backed
from tests.polling import wait_for  # noqa: F401 - the one polling helper, re-exported for the reliability tests

FIGURES = Path(os.environ.get("SB_RELIABILITY_FIGURES", "/tmp/secrets-bridge-reliability.json"))
ROOT = Path(__file__).resolve().parent.parent


def record(section: str, *, fixed: dict[str, Any] | None = None, peak: dict[str, float] | None = None,
           **summed: Any) -> None:
    """Add the `summed` figures (numbers, or dicts of numbers) to `section` of the figures file, over
    every run since it was removed; `fixed` ones are set as given, `peak` ones keep their maximum."""
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    with open(FIGURES.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            data = json.loads(FIGURES.read_text())
        except (OSError, ValueError):
            data = {}
        here = data.setdefault(section, {})
        for key, value in summed.items():
            if isinstance(value, dict):
                mine = here.setdefault(key, {})
                for k, v in value.items():
                    mine[k] = mine.get(k, 0) + v
            else:
                here[key] = here.get(key, 0) + value
        here.update(fixed or {})
        for key, value in (peak or {}).items():
            here[key] = max(here.get(key, value), value)
        FIGURES.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def tmpfs_dir(tag: str) -> Path:
    """A fresh path on tmpfs (the default require_tmpfs: true holds); skip where there is none."""
    if not is_memory_backed(Path("/dev/shm")):
        pytest.skip("no tmpfs at /dev/shm")
    return Path("/dev/shm") / f"sb-{tag}-{uuid.uuid4().hex[:12]}"


class Leaks:
    """Every secret value and credential in play, and everything the bridge printed or wrote beside
    the files: `check` asserts no value appears in any of it, and records how much was scanned."""

    def __init__(self) -> None:
        self.values: set[bytes] = set()
        self.texts: dict[str, bytes] = {}

    def secret(self, *values: str | bytes) -> None:
        for value in values:
            raw = value.encode() if isinstance(value, str) else value
            if len(raw) >= 8:  # shorter values would match by chance
                self.values.add(raw)

    def finder(self) -> Callable[[bytes], set[bytes]]:
        """A function giving the values that occur in a text: one Aho-Corasick pass over the text
        (ahocorasick_rs, every overlapping match), however many values there are (a `value in text`
        each took minutes for the 100,000 values of a rotation test)."""
        if not self.values:
            return lambda text: set()
        values = list(self.values)
        automaton = ahocorasick_rs.BytesAhoCorasick(values)
        return lambda text: {values[i] for i, _, _ in automaton.find_matches_as_indexes(text, overlapping=True)}

    def text(self, label: str, data: str | bytes) -> None:
        raw = data.encode() if isinstance(data, str) else data
        self.texts[label] = self.texts.get(label, b"") + raw

    def file(self, label: str, path: Path) -> None:
        with contextlib.suppress(OSError):
            self.text(label, path.read_bytes())

    def check(self, section: str) -> None:
        within = self.finder()
        found = sorted({(label, value[:6]) for label, text in self.texts.items() for value in within(text)})
        record("leaks", scanned_bytes=sum(len(t) for t in self.texts.values()), values=len(self.values),
               outputs=len(self.texts), found=len(found))
        record(section, leaks=len(found))
        assert not found, f"secret values in output: {found[:5]}"


# -- reader processes ------------------------------------------------------------------------------


def read_loop(out_dir: str, singles: list[str], groups: dict[str, list[str]], stop_file: str, report: str) -> None:
    """Read `singles` (out_dir/NAME) and each group's files through one directory descriptor (one
    `..data`) until `stop_file` exists; write what was seen to `report` as JSON. Runs in a child."""
    seen: dict[str, dict[str, Any]] = {}

    def note(name: str, value: bytes | None, error: str | None = None) -> None:
        entry = seen.setdefault(name, {"reads": 0, "values": {}, "empty": [], "missing": [], "errors": []})
        entry["reads"] += 1
        now = time.time()
        if error is not None:
            bucket = "missing" if error == "FileNotFoundError" else "errors"
            if len(entry[bucket]) < 50:
                entry[bucket].append([now, error])
        elif not value:
            if len(entry["empty"]) < 50:
                entry["empty"].append(now)
        else:
            text = value.decode("utf-8", "replace")
            entry["values"][text] = entry["values"].get(text, 0) + 1

    base = Path(out_dir)
    while not os.path.exists(stop_file):
        for name in singles:
            try:
                note(name, (base / name).read_bytes())
            except OSError as exc:
                note(name, None, type(exc).__name__)
        for folder, files in groups.items():
            try:
                fd = os.open(base / folder, os.O_RDONLY | os.O_DIRECTORY)
            except OSError as exc:
                note(folder, None, type(exc).__name__)
                continue
            try:
                parts = []
                for file in files:
                    with open(file, "rb", opener=lambda p, flags, fd=fd: os.open(p, flags, dir_fd=fd)) as f:
                        parts.append(f.read())
                note(folder, b"|".join(parts) if all(parts) else b"")
            except OSError as exc:
                note(folder, None, type(exc).__name__)
            finally:
                os.close(fd)
    Path(report).write_text(json.dumps(seen))


@contextmanager
def readers(count: int, out_dir: Path, singles: Iterable[str], groups: dict[str, list[str]] | None = None,
            *, work: Path) -> Iterator[list[dict[str, Any]]]:
    """`count` reader processes for the body of the `with`; afterwards the list holds their reports."""
    stop = work / f"stop-{uuid.uuid4().hex[:6]}"
    reports = [work / f"reader-{uuid.uuid4().hex[:6]}.json" for _ in range(count)]
    args = json.dumps([str(out_dir), list(singles), groups or {}, str(stop)])
    code = ("import json, sys; from tests.reliability_kit import read_loop; "
            "read_loop(*json.loads(sys.argv[1]), sys.argv[2])")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", code, args, str(report)], env=env) for report in reports]
    results: list[dict[str, Any]] = []
    try:
        yield results
    finally:
        stop.touch()
        for proc in procs:
            proc.wait(timeout=60)
    results.extend(json.loads(report.read_text()) for report in reports)


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One summary per name over all readers: reads, values seen (with counts), empty/missing/errors."""
    merged: dict[str, dict[str, Any]] = {}
    for report in reports:
        for name, entry in report.items():
            into = merged.setdefault(name, {"reads": 0, "values": {}, "empty": [], "missing": [], "errors": []})
            into["reads"] += entry["reads"]
            for value, n in entry["values"].items():
                into["values"][value] = into["values"].get(value, 0) + n
            for bucket in ("empty", "missing", "errors"):
                into[bucket].extend(entry[bucket])
    return merged
