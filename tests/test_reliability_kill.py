"""SIGKILL `secrets-bridge run` while a few hundred files rotate, at random moments and (through
strace's fault injection) at a random write, link, rename or unlink of a commit: right after each
kill `..data` names a whole generation, and after the restart (`sync`) the directory is valid."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from tests.harness import Bridge
from tests.reliability_kit import Leaks, record, tmpfs_dir

FILES = 300
TEMPORARY = ("..data_tmp", "..link_tmp", "..aside_", "..state_")
_GENERATION = re.compile(r"\.\.\d{4}(_\d\d){5}\.\d{9}")
#: the syscalls of a commit, and how far into a run of a few cycles a kill at the Nth one may land
SYSCALLS = {"rename,renameat,renameat2": 8, "symlinkat": 8, "linkat": 300, "unlinkat": 200, "write": 400,
            "mkdir,mkdirat": 4}


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


class Rig:
    """300 `file` sources rotating in a thread, `run` over them, and the checks after each kill."""

    def __init__(self, tmp_path: Path) -> None:
        self.out = tmpfs_dir("kill")
        self.src = tmp_path / "src"
        self.src.mkdir()
        self.names = [f"s{i:03d}" for i in range(FILES)]
        self.written: dict[str, set[str]] = {name: set() for name in self.names}
        self.lock = threading.Lock()
        for name in self.names:
            self.rotate(name)
        entries = "".join(f"  {n}: {{provider: dev, ref: {n}}}\n" for n in self.names)
        config = tmp_path / "bridge.yaml"
        config.write_text(f"output_dir: {self.out}\nrefresh_interval: 100ms\nlisten: null\n"
                          f"providers:\n  dev: {{type: file, base_dir: {self.src}}}\nsecrets:\n{entries}")
        self.bridge = Bridge(config, options=("--debug", "--log-format", "json"))
        self.stop = threading.Event()
        self.rotations = 0
        self.thread = threading.Thread(target=self._rotator, daemon=True)
        self.first_committed = False
        self.figures: Counter[str] = Counter()

    def rotate(self, name: str) -> None:
        value = f"{name}-{uuid.uuid4().hex}"
        with self.lock:
            self.written[name].add(value)
        _put(self.src / name, value)

    def _rotator(self) -> None:
        rng = random.Random(11)
        while not self.stop.is_set():
            for name in rng.sample(self.names, 40):
                self.rotate(name)
                self.rotations += 1
            time.sleep(0.02)

    def _check_files(self, *, all_present: bool) -> None:
        """Every managed link resolves to a whole value that was written."""
        for name in self.names:
            path = self.out / name
            if not path.is_symlink():
                assert not all_present, f"{name}: link missing"
                continue
            value = path.read_text()  # a dangling link raises here
            assert value in self.written[name], f"{name}: {value[:20]!r} was never written"
            self.figures["files_checked"] += 1

    def after_kill(self) -> None:
        """Readers' view right after the kill: `..data` names a whole generation (once there was one)."""
        self.figures["kills"] += 1
        entries = os.listdir(self.out) if self.out.exists() else []
        current = _generation(self.out) if self.out.exists() else None
        if any(e.startswith(TEMPORARY) for e in entries) or any(
                _GENERATION.fullmatch(e) and current is not None and e > current for e in entries):
            self.figures["kills_mid_commit"] += 1  # a temporary name, or a generation built but not swapped in
        if current is not None:
            self.first_committed = True
            self._check_files(all_present=True)
        else:
            assert not self.first_committed, "..data vanished after a kill"
            self.figures["kills_before_first_generation"] += 1

    def restart(self) -> None:
        """`sync` after the kill: exit 0, every link resolves, only `..data`, its generation and the
        writer's spares are left, the state (and any lease store) parses."""
        self.bridge("sync", timeout=120)
        gen = _generation(self.out)
        assert gen is not None
        self.first_committed = True
        self._check_files(all_present=True)
        dotted = [e for e in os.listdir(self.out) if e.startswith("..")]
        extra = [e for e in dotted if e not in ("..data", gen) and not e.startswith("..spare_")]
        assert not extra, f"leftovers after sync: {extra}"
        assert isinstance(json.loads((self.out / ".secrets-bridge-state.json").read_text()), dict)
        leases = self.out / ".secrets-bridge-leases.json"
        if leases.exists():
            json.loads(leases.read_text())

    def __enter__(self) -> Rig:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.bridge.kill()

    def finish(self, section: str) -> None:
        leaks = Leaks()
        leaks.secret(*(v for values in self.written.values() for v in values))
        leaks.text("log", self.bridge.output())
        leaks.file("state", self.out / ".secrets-bridge-state.json")
        leaks.check(section)
        record(section, trials=1, rotations=self.rotations, invalid_directories=0, fixed={"files": FILES},
               **self.figures)
        shutil.rmtree(self.out, ignore_errors=True)


@pytest.mark.slow
def test_sigkill_at_random_moments(tmp_path: Path) -> None:
    """20 SIGKILLs of `run` at random moments while 300 sources rotate: `..data` always names a whole
    generation whose files are values that were written; the `sync` after each kill leaves every
    link resolving, no temporary `..` names or other generations, and a state file that parses."""
    rng = random.Random(5)
    with Rig(tmp_path) as rig:
        for _ in range(20):
            proc = rig.bridge.start()
            time.sleep(rng.uniform(0.3, 0.7))  # interpreter start-up takes ~0.3 s
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            rig.after_kill()
            rig.restart()
        assert rig.figures["kills"] == 20
    rig.finish("sigkill")


@pytest.mark.slow
def test_sigkill_inside_commits(tmp_path: Path) -> None:
    """12 SIGKILLs of a running `run`, delivered by strace (attached once it is up) at the entry of
    its Nth rename, symlink, link, unlink, write or mkdir (random N): the same checks as for random
    moments hold."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (.ci/run installs it)")
    rng = random.Random(9)
    fired: Counter[str] = Counter()
    with Rig(tmp_path) as rig:
        rig.restart()  # a first generation, so the kills land in commits of changes
        while sum(fired.values()) < 12:
            calls, most = rng.choice(list(SYSCALLS.items()))
            proc = rig.bridge.start()
            time.sleep(0.8)  # past the interpreter's start-up: count only the bridge's own calls
            threads = [arg for tid in os.listdir(f"/proc/{proc.pid}/task") for arg in ("-p", tid)]
            tracer = subprocess.Popen(
                [strace, "-f", "-o", "/dev/null", "-e", f"trace={calls}",
                 "-e", f"inject={calls}:signal=KILL:when={rng.randint(1, most)}", *threads],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                status = proc.wait(timeout=4)
            except subprocess.TimeoutExpired:
                status = None  # the Nth call did not come: kill it at this moment instead
                proc.kill()
                proc.wait()
            _, err = tracer.communicate(timeout=30)
            if tracer.returncode not in (0, -signal.SIGKILL) and b"attach" in err:
                pytest.skip(f"strace cannot attach here: {err.decode().strip()[:200]}")
            if status == -signal.SIGKILL:
                fired[calls.split(",")[0]] += 1
            rig.after_kill()
            rig.restart()
    rig.figures.update({f"at_{name}": count for name, count in fired.items()})
    rig.figures["injected_kills"] = sum(fired.values())
    rig.finish("sigkill_in_commits")
