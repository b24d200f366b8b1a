"""`secrets-bridge run` as a process: signals, config watching, shutdown, actions off the loop.

Each test starts the real CLI with the `file` provider writing to a tmpfs directory.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.writer.atomic import is_memory_backed
from tests.harness import Bridge
from tests.polling import wait_for
from tests.servers import free_port
from tests.test_cli import _get

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def out_dir() -> Iterator[Path]:
    """An output directory on tmpfs, so the default require_tmpfs: true holds."""
    if not is_memory_backed(Path("/dev/shm")):
        pytest.skip("no tmpfs at /dev/shm")
    d = Path("/dev/shm") / f"sb-run-{uuid.uuid4().hex}"
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


class Dev:
    """A `file` provider's source folder in `src`, the config that maps it into `out_dir`, and the
    one harness (`bridge`) that runs `secrets-bridge` on it, its output in a log beside `src`."""

    def __init__(self, tmp_path: Path, out_dir: Path, secrets: tuple[str, ...] = ("a",), extra: str = "",
                 config: Path | None = None) -> None:
        self.src = tmp_path / "src"
        self.src.mkdir(exist_ok=True)
        self.out_dir = out_dir
        self.config = config or tmp_path / "conf" / "c.yaml"
        self.extra = extra
        for name in secrets:
            if not (self.src / name).exists():
                (self.src / name).write_text(f"{name}-0")
        self.write_config(secrets)
        self.bridge = Bridge(self.config, log=tmp_path / f"bridge-{uuid.uuid4().hex[:6]}.log")

    def config_text(self, secrets: tuple[str, ...]) -> str:
        entries = "".join(f"  {n}: {{provider: dev, ref: {n}}}\n" for n in secrets)
        return (f"output_dir: {self.out_dir}\nrefresh_interval: 200ms\nlisten: null\n"
                f"providers:\n  dev: {{type: file, base_dir: {self.src}}}\nsecrets:\n{entries}{self.extra}")

    def write_config(self, secrets: tuple[str, ...], path: Path | None = None) -> None:
        path = path or self.config
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.config_text(secrets))

    def ready(self, name: str = "a") -> bool:
        return wait_for(lambda: _read(self.out_dir / name) == (self.src / name).read_text())


def _side_by_side(tmp_path: Path, out_dir: Path, count: int, trial: int) -> list[Dev]:
    """`count` bridges started at once, each with its own source, config and output directory;
    `ready` means each has synced `a-start-TRIAL`."""
    devs = []
    for k in range(count):
        home = tmp_path / f"b{k}"
        home.mkdir(exist_ok=True)
        dev = Dev(home, Path(f"{out_dir}-{k}"))
        (dev.src / "a").write_text(f"a-start-{trial}")
        dev.bridge.start()
        devs.append(dev)
    return devs


def _stop_all(devs: list[Dev]) -> None:
    for dev in devs:
        dev.bridge.kill()
        subprocess.run(["rm", "-rf", str(dev.out_dir)], check=False)


def test_sighup_burst_never_wedges_the_loop(tmp_path: Path, out_dir: Path) -> None:
    """500 SIGHUPs in a burst leave the loop refreshing, and SIGTERM still ends it with 0; five runs
    side by side."""
    devs = _side_by_side(tmp_path, out_dir, 5, 0)
    try:
        for dev in devs:
            assert dev.ready()
        for trial, dev in enumerate(devs):
            for _ in range(500):
                dev.bridge.signal(signal.SIGHUP)
            (dev.src / "a").write_text(f"a-after-burst-{trial}")
        for trial, dev in enumerate(devs):
            assert dev.ready(), f"run {trial}: no refresh after the burst\n{dev.bridge.output()}"
        assert [dev.bridge.stop(timeout=5) for dev in devs] == [0] * 5
    finally:
        _stop_all(devs)


def test_sighup_flood_does_not_stop_refreshing(tmp_path: Path, out_dir: Path) -> None:
    """A SIGHUP every few milliseconds for six seconds neither wedges the loop nor keeps it from
    picking up a rotated secret meanwhile."""
    dev = Dev(tmp_path, out_dir)
    bridge = dev.bridge
    proc = bridge.start()
    try:
        assert dev.ready()
        (dev.src / "a").write_text("rotated-during-the-flood")
        refreshed = False
        flood_ends = time.monotonic() + 6
        while time.monotonic() < flood_ends:
            proc.send_signal(signal.SIGHUP)
            time.sleep(0.005)
            refreshed = refreshed or _read(out_dir / "a") == "rotated-during-the-flood"
        assert refreshed, bridge.output()
        assert bridge.stop(timeout=5) == 0
    finally:
        bridge.kill()


def _interpreter_ready(pid: int) -> bool:
    """Python has installed its own SIGINT handler: the interpreter is up, our code comes next."""
    try:
        with open(f"/proc/{pid}/status") as f:
            caught = next(line for line in f if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(int(caught.split()[1], 16) & (1 << (signal.SIGINT - 1)))


def _cpu_ms(pid: int) -> float:
    """The CPU time `pid` has used (user and system), in milliseconds (10 ms steps)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("delay_ms", [50, 75, 100, 200, 300])
def test_sighup_during_start_up_does_not_kill(tmp_path: Path, out_dir: Path, delay_ms: int) -> None:
    """A SIGHUP sent in the first few hundred milliseconds (while the bridge imports and reads its
    config) neither kills it nor stops it from syncing. Counted from the interpreter's own start-up:
    before `site` (17-26 ms here, with the editable install's finder) no code of ours can run. The
    delay is the bridge's own CPU time, so a busy machine (other test workers) does not stretch its
    start-up past the signal; a bridge idle sooner gets it after ten times the delay."""
    dev = Dev(tmp_path, out_dir)
    bridge = dev.bridge
    proc = bridge.start()
    try:
        assert wait_for(lambda: _interpreter_ready(proc.pid), timeout=5, step=0.05)
        cpu, wall = _cpu_ms(proc.pid), time.monotonic()
        assert wait_for(lambda: _cpu_ms(proc.pid) - cpu >= delay_ms
                        or time.monotonic() - wall >= delay_ms / 100, timeout=30, step=0.005)
        proc.send_signal(signal.SIGHUP)
        assert dev.ready(), f"SIGHUP at {delay_ms} ms: exit {proc.poll()}\n{bridge.output()}"
        assert bridge.stop(timeout=5) == 0
    finally:
        bridge.kill()


def test_sigterm_does_not_wait_for_a_hanging_action(tmp_path: Path, out_dir: Path) -> None:
    """An on_change command that hangs delays neither other secrets' refresh nor shutdown, and is stopped."""
    started = tmp_path / "hook.pid"
    hook = tmp_path / "hook.py"
    hook.write_text(f"import os, time\nopen({str(started)!r}, 'w').write(str(os.getpid()))\ntime.sleep(120)\n")
    extra = f'on_change:\n  - {{secrets: [a], exec: ["{sys.executable}", "{hook}"], timeout: 5m}}\n'
    dev = Dev(tmp_path, out_dir, secrets=("a", "b"), extra=extra)
    bridge = dev.bridge
    bridge.start()
    try:
        assert dev.ready("a") and wait_for(lambda: bool(_read(started)))
        (dev.src / "b").write_text("b-while-the-hook-hangs")
        assert dev.ready("b")
        assert bridge.stop(timeout=10) == 0
    finally:
        bridge.kill()
    with pytest.raises(ProcessLookupError):
        os.kill(int(started.read_text()), 0)


def test_missing_pid_file_at_start_is_not_an_error(tmp_path: Path, out_dir: Path) -> None:
    """A signal action whose pid file does not exist yet at the first sync logs no warning or error."""
    extra = f"on_change:\n  - {{signal: HUP, pid_file: {tmp_path / 'app.pid'}}}\n"
    dev = Dev(tmp_path, out_dir, extra=extra)
    bridge = dev.bridge
    bridge.start()
    try:
        assert dev.ready()
        assert wait_for(lambda: "does not exist yet" in bridge.output())
        assert bridge.stop(timeout=5) == 0
    finally:
        bridge.kill()
    assert " WARNING " not in bridge.output() and " ERROR " not in bridge.output()


def _rejections(bridge: Bridge) -> int:
    return bridge.output().count("config reload rejected")


def test_files_beside_the_config_do_not_reload(tmp_path: Path, out_dir: Path) -> None:
    """Writing other files in the config's folder does not make the bridge read its config again;
    editing the config does."""
    dev = Dev(tmp_path, out_dir)
    bridge = dev.bridge
    bridge.start()
    try:
        assert dev.ready()
        bridge.config.write_text(bridge.config.read_text() + "bogus: 1\n")  # an invalid edit: rejected
        assert wait_for(lambda: _rejections(bridge) >= 1)
        time.sleep(1.0)
        seen = _rejections(bridge)
        for i in range(5):
            (bridge.config.parent / f"app-{i}.log").write_text("a log line\n")
            (bridge.config.parent / "hook.out").write_text(str(i))
        time.sleep(1.5)  # a reload would read the file 0.3s after the event
        assert _rejections(bridge) == seen
        (dev.src / "b").write_text("b-0")
        dev.write_config(("a", "b"))
        assert dev.ready("b")
        assert bridge.stop(timeout=5) == 0
    finally:
        bridge.kill()
    assert "config reloaded" in bridge.output()


def _publish(mount: Path, version: int, text: str) -> None:
    """What the kubelet does for a ConfigMap: a new folder, then `..data` swapped by rename."""
    folder = mount / f"..2026_11_28_00_00_0{version}.000"
    folder.mkdir()
    (folder / "config.yaml").write_text(text)
    (mount / "..data_tmp").symlink_to(folder.name)
    os.replace(mount / "..data_tmp", mount / "..data")
    if not (mount / "config.yaml").is_symlink():
        (mount / "config.yaml").symlink_to("..data/config.yaml")


def test_configmap_swaps_reload(tmp_path: Path, out_dir: Path) -> None:
    """A config mounted as a ConfigMap is reloaded on each `..data` swap."""
    mount = tmp_path / "configmap"
    mount.mkdir()
    dev = Dev(tmp_path, out_dir, secrets=("a", "b", "c"), config=mount / "config.yaml")
    bridge = dev.bridge
    bridge.config.unlink()
    _publish(mount, 1, dev.config_text(("a",)))
    bridge.start()
    try:
        assert dev.ready("a")
        _publish(mount, 2, dev.config_text(("a", "b")))
        assert dev.ready("b")
        _publish(mount, 3, dev.config_text(("a", "b", "c")))
        assert dev.ready("c")
        assert bridge.stop(timeout=5) == 0
    finally:
        bridge.kill()
    assert " ERROR " not in bridge.output()


def test_config_linked_from_another_folder_reloads(tmp_path: Path, out_dir: Path) -> None:
    """A config reached through a symlink into another folder is reloaded when its target is edited."""
    real = tmp_path / "elsewhere" / "real.yaml"
    link = tmp_path / "etc" / "config.yaml"
    link.parent.mkdir()
    dev = Dev(tmp_path, out_dir, secrets=("a", "b"), config=real)
    bridge = dev.bridge
    link.symlink_to(real)
    bridge.config = link
    dev.write_config(("a",), path=real)
    bridge.start()
    try:
        assert dev.ready("a")
        dev.write_config(("a", "b"), path=real)
        assert dev.ready("b"), bridge.output()
        assert bridge.stop(timeout=5) == 0
    finally:
        bridge.kill()


def _inotify_instances(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in fds.iterdir() if _readlink(fd) == "anon_inode:inotify")


def _readlink(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def test_one_file_watcher_for_the_config_and_the_output(tmp_path: Path, out_dir: Path) -> None:
    """A running bridge holds one inotify instance of its own, through which both a config edit
    reloads and a deleted link is put back; beside it only the `file` provider's (threadless, read at
    each check), which a reload's new provider replaces rather than adds to."""
    dev = Dev(tmp_path, out_dir, secrets=("a", "b"))
    bridge = dev.bridge
    dev.write_config(("a",))
    proc = bridge.start()
    try:
        assert dev.ready("a")
        assert wait_for(lambda: _inotify_instances(proc.pid) == 2, timeout=5)
        dev.write_config(("a", "b"))
        assert dev.ready("b"), bridge.output()
        (out_dir / "a").unlink()
        assert wait_for(lambda: (out_dir / "a").is_symlink(), timeout=5), bridge.output()
        time.sleep(0.5)  # cycles of the reloaded engine: its provider has watched by now
        assert _inotify_instances(proc.pid) == 2
        assert bridge.stop(timeout=5) == 0
    finally:
        bridge.kill()


@pytest.mark.skipif(os.getuid() != 0, reason="switching to uid 10001 needs root")
def test_an_owner_the_bridge_cannot_give_fails_that_entry_alone(out_dir: Path) -> None:
    """Run as uid 10001, an entry with `uid: 999` fails alone: the others are written and /readyz
    names only it."""
    home = Path(str(out_dir) + "-home")
    home.mkdir()
    try:
        port = free_port()
        dev = Dev(home, out_dir, secrets=("a", "b"), extra="  owned: {provider: dev, ref: b, uid: 999}\n")
        bridge = dev.bridge
        bridge.config.write_text(bridge.config.read_text().replace("listen: null", f'listen: "127.0.0.1:{port}"'))
        for path in (home, *home.rglob("*")):
            os.chown(path, 10001, 10001)
        bridge.start(as_uid=10001)
        try:
            assert dev.ready("a") and dev.ready("b"), bridge.output()
            assert wait_for(lambda: _get(port, "/readyz") == (503, "missing: owned\n")), bridge.output()
            assert not (out_dir / "owned").exists()
            assert os.stat(out_dir / "a").st_uid == 10001
            assert bridge.stop(timeout=5) == 0
        finally:
            bridge.kill()
        assert "cannot give owned owner 999:" in bridge.output()
    finally:
        subprocess.run(["rm", "-rf", str(home)], check=False)


def test_clean_shutdowns_log_no_error(tmp_path: Path, out_dir: Path) -> None:
    """Thirty start-and-SIGTERM runs (three side by side at a time), with files written beside the
    config meanwhile, each exit 0 and log no error."""
    for round_ in range(10):
        devs = _side_by_side(tmp_path, out_dir, 3, round_)
        try:
            for dev in devs:
                assert dev.ready()
                for i in range(20):  # keep the file watcher busy while it is being stopped
                    (dev.config.parent / f"noise-{i}").write_text(str(round_))
            assert [dev.bridge.stop(timeout=5) for dev in devs] == [0, 0, 0]
        finally:
            _stop_all(devs)
        for dev in devs:
            text = dev.bridge.output()
            assert " ERROR " not in text and "Traceback" not in text, f"round {round_}:\n{text}"


def test_sigterm_while_a_provider_hangs(tmp_path: Path, out_dir: Path) -> None:
    """SIGTERM while the first sync waits on a vault that accepts connections and never answers ends
    the bridge within seconds, exit 0, saying why."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    port = silent.getsockname()[1]
    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: {out_dir}\nlisten: null\nproviders:\n"
                      f"  vault: {{type: vault, address: 'http://127.0.0.1:{port}', timeout: 300}}\n"
                      "secrets:\n  a: {provider: vault, ref: secret/app/a, key: value}\n")
    bridge = Bridge(config, env={"VAULT_TOKEN": "hvs.test-token"})
    proc = bridge.start()
    silent.settimeout(30)
    try:
        held, _ = silent.accept()  # the first request is in flight, and would wait 300s
        time.sleep(0.5)
        assert proc.poll() is None, bridge.output()
        assert bridge.stop(timeout=15) == 0
        held.close()
    finally:
        bridge.kill()
        silent.close()
    assert "still waiting on a provider" in bridge.output()


def test_drift_is_repaired_within_five_seconds_without_on_change(tmp_path: Path, out_dir: Path) -> None:
    """With a 1h refresh interval, a deleted link, a link planted to a file elsewhere, a chmod'ed file
    and `..data` replaced by a directory are each put back within 5 s; no on_change fires."""
    marker = tmp_path / "fired"
    hook = tmp_path / "hook.py"
    hook.write_text("import sys\nopen(sys.argv[1], 'a').write('x')\n")
    dev = Dev(tmp_path, out_dir, extra=f'on_change:\n  - {{exec: ["{sys.executable}", "{hook}", "{marker}"]}}\n')
    bridge = dev.bridge
    bridge.config.write_text(bridge.config.read_text().replace("refresh_interval: 200ms", "refresh_interval: 1h"))
    bridge.start()
    try:
        assert dev.ready() and wait_for(lambda: _read(marker) == "x")
        elsewhere = tmp_path / "elsewhere"
        elsewhere.write_text("planted")

        def tamper_link_deleted() -> None:
            (out_dir / "a").unlink()

        def tamper_link_planted() -> None:
            (out_dir / "a").unlink()
            (out_dir / "a").symlink_to(elsewhere)

        def tamper_chmod() -> None:
            os.chmod(out_dir / "..data" / "a", 0o666)

        def tamper_data_dir() -> None:
            target = os.readlink(out_dir / "..data")
            (out_dir / "..data").unlink()
            (out_dir / "..data").mkdir()
            (out_dir / "..data" / "a").write_text("planted")
            assert target

        for tamper in (tamper_link_deleted, tamper_link_planted, tamper_chmod, tamper_data_dir):
            tamper()
            started = time.monotonic()
            assert wait_for(lambda: _read(out_dir / "a") == "a-0" and (out_dir / "a").is_symlink()
                         and os.readlink(out_dir / "a") == "..data/a"
                         and (out_dir / "..data" / "a").stat().st_mode & 0o777 == 0o444, timeout=6), tamper.__name__
            assert time.monotonic() - started <= 5.5, tamper.__name__
        assert elsewhere.read_text() == "planted"
        # past the grace: one generation left
        assert wait_for(lambda: len([p for p in out_dir.iterdir() if p.name.startswith("..2")]) == 1, timeout=5)
    finally:
        assert bridge.stop(timeout=5) == 0
    assert _read(marker) == "x" and "put back" in bridge.output()


def test_reload_changing_listen_is_rejected_naming_it(tmp_path: Path, out_dir: Path) -> None:
    """A reload that changes `listen` (to an address or to null) is rejected in one line naming it;
    the running config stays (no new entry)."""
    dev = Dev(tmp_path, out_dir)
    bridge = dev.bridge
    bridge.start()
    try:
        assert dev.ready()
        (dev.src / "b").write_text("b-0")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        bridge.config.write_text(dev.config_text(("a", "b")).replace("listen: null", f"listen: 127.0.0.1:{port}"))
        assert wait_for(lambda: "listen cannot change while running" in bridge.output()), bridge.output()
        time.sleep(0.5)
        assert not (out_dir / "b").exists() and "config reloaded" not in bridge.output()
        assert bridge.stop(timeout=5) == 0
    finally:
        bridge.kill()


def test_reload_switches_the_log_format(tmp_path: Path, out_dir: Path) -> None:
    """A reload changing `log_format` from text to json is applied: the next lines are JSON."""
    dev = Dev(tmp_path, out_dir, extra="log_format: text\n")
    bridge = dev.bridge
    bridge.start()
    try:
        assert dev.ready()
        dev.extra = "log_format: json\n"
        (dev.src / "b").write_text("b-0")
        dev.write_config(("a", "b"))
        assert dev.ready("b")
        assert wait_for(lambda: any(line.startswith("{") and "config reloaded" in line
                                 for line in bridge.output().splitlines())), bridge.output()
        assert bridge.stop(timeout=5) == 0
    finally:
        bridge.kill()


def test_reload_setting_require_tmpfs_over_a_disk_is_rejected(tmp_path: Path) -> None:
    """`require_tmpfs: true` newly set by a reload over a disk-backed output_dir is rejected naming
    it; nothing more is written there."""
    disk = tmp_path / "out"
    if is_memory_backed(tmp_path):
        pytest.skip("tmp_path is on a tmpfs")
    dev = Dev(tmp_path, disk, extra="require_tmpfs: false\n")
    bridge = dev.bridge
    bridge.start()
    try:
        assert dev.ready()
        dev.extra = "require_tmpfs: true\n"
        (dev.src / "b").write_text("b-0")
        dev.write_config(("a", "b"))
        assert wait_for(lambda: "require_tmpfs: output_dir" in bridge.output()), bridge.output()
        time.sleep(0.5)
        assert not (disk / "b").exists()
        assert bridge.stop(timeout=5) == 0
    finally:
        bridge.kill()


@pytest.mark.parametrize("error", [MemoryError, RecursionError, KeyError])
def test_reload_keeps_the_running_config_whatever_goes_wrong(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture,
                                                             error: type[BaseException]) -> None:
    """A reload whose loading fails in any way (MemoryError included, which a running bridge
    once exited on) is rejected in one line naming the class; the running config stays."""
    import logging

    from bridge.config.loader import parse_config
    from bridge.runtime import runner

    config = parse_config(f"output_dir: {tmp_path}\nproviders:\n  dev: {{type: env}}\nsecrets: {{}}\n")
    running = runner.Runner(tmp_path / "c.yaml", config)

    def failing(path: Path) -> None:
        raise error("boom")

    monkeypatch.setattr(runner, "load_config", failing)
    with caplog.at_level(logging.ERROR, logger="secrets_bridge.run"):
        running._reload()
    assert running.config is config
    assert f"keeping the running config: it could not be loaded ({error.__name__})" in caplog.text
    assert "boom" not in caplog.text


def test_reload_of_an_alias_bomb_keeps_running(tmp_path: Path, out_dir: Path) -> None:
    """A reload of a config whose aliases repeat a 1 MB text 5,000 times is rejected in one line;
    the running bridge keeps its config and keeps rotating (it exited "internal error" before)."""
    dev = Dev(tmp_path, out_dir)
    bridge = dev.bridge
    bridge.start()
    try:
        assert dev.ready()
        bomb = f"  s0: {{provider: dev, ref: &t {'x' * 1_000_000}}}\n"
        bomb += "".join(f"  s{i}: {{provider: dev, ref: *t}}\n" for i in range(1, 5000))
        bridge.config.write_text(dev.config_text(("a",)) + bomb)
        assert wait_for(lambda: "config reload rejected" in bridge.output()), bridge.output()[-2000:]
        assert "YAML aliases expand the document past 16 MiB" in bridge.output()
        (dev.src / "a").write_text("a-1")
        assert dev.ready()
        assert bridge.proc is not None and bridge.proc.poll() is None
        assert bridge.stop(timeout=5) == 0
    finally:
        bridge.kill()
