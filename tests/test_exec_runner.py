"""`secrets-bridge exec` end to end (bridge/runtime/exec_runner.py), as a user runs it: the bridge as
a process, its child a real program reporting what it got, against a real OpenBao (and its
database engine in front of a real PostgreSQL for leased credentials). The child's own parts are
tested in process in test_child."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import DatabaseEngine, OpenBao
from tests.harness import Bridge, vault_env
from tests.polling import wait_for
from tests.servers import Postgres, free_port

#: the child: reports its start (pid, environment, a file) and each signal, one JSON line each
CHILD = r"""
import json, os, signal, sys, time
report, file = sys.argv[1], sys.argv[2]
def emit(**kw):
    with open(report, "a") as f:
        f.write(json.dumps(kw) + "\n")
def on(sig, frame):
    emit(event="signal", signal=sig)
    if sig == signal.SIGTERM:
        sys.exit(int(os.environ.get("EXIT_ON_TERM", "0")))
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
            signal.SIGWINCH):
    signal.signal(sig, on)
try:
    content = open(file).read()
except OSError:
    content = None
emit(event="start", pid=os.getpid(), env=dict(os.environ), file=content)  # after the handlers: ready
while True:
    time.sleep(3600)
"""


@pytest.fixture
def out() -> Iterator[Path]:
    """An output directory on tmpfs."""
    d = Path("/dev/shm") / f"sb-exec-{uuid.uuid4().hex}"
    yield d
    shutil.rmtree(d, ignore_errors=True)


class Child:
    """What the child (CHILD, or a test's own script) reported: one JSON line per start and signal."""

    def __init__(self, report: Path, out: Path) -> None:
        self.report = report
        self.out = out

    def command(self) -> list[str]:
        """`exec -- CHILD`: the bridge's arguments that run the reporting child."""
        return ["exec", "--", sys.executable, "-c", CHILD, str(self.report), str(self.out / "db" / "password")]

    def events(self, kind: str = "start") -> list[dict[str, object]]:
        try:
            lines = self.report.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [e for e in map(json.loads, lines) if e["event"] == kind]

    def starts(self) -> list[dict[str, object]]:
        return self.events("start")

    def env(self, index: int = -1) -> dict[str, str]:
        env = self.starts()[index]["env"]
        assert isinstance(env, dict)
        return env


def _exec(tmp_path: Path, out: Path, config: str, env: dict[str, str] | None = None) -> tuple[Bridge, Child]:
    """The one harness on `config` (also named by SECRETS_BRIDGE_CONFIG, which the child must not
    see), and the reports of its child."""
    path = tmp_path / "c.yaml"
    path.write_text(config)
    bridge = Bridge(path, env={**(env or {}), "SECRETS_BRIDGE_CONFIG": str(path)})
    return bridge, Child(tmp_path / "report.jsonl", out)


def _vault(openbao: OpenBao, tmp_path: Path, out: Path, body: str, *, interval: str = "500ms",
           extra: str = "") -> tuple[Bridge, Child]:
    config = (f"output_dir: {out}\nrefresh_interval: {interval}\njitter: 0\nlisten: null\n"
              f"providers:\n  vault: {{type: vault}}\n{extra}{body}")
    return _exec(tmp_path, out, config, {**vault_env(openbao), "APP_SETTING": "kept", "DB_PASSWORD": "from-parent"})


def _kv(openbao: OpenBao, **data: str) -> str:
    ref = f"app/{uuid.uuid4().hex}"
    openbao.client().secrets.kv.v2.create_or_update_secret(path=ref, secret=data)
    return ref


def _body(ref: str) -> str:
    return (f"secrets:\n  db: {{provider: vault, ref: secret/{ref}, files: {{password: password}}}}\n"
            f"env:\n  DB_PASSWORD: {{provider: vault, ref: secret/{ref}, key: password}}\n"
            "  DATABASE_URL:\n    template: \"postgres://{{ db.user }}:{{ db.password | urlencode }}@db/app\"\n"
            f"    values: {{db: {{provider: vault, ref: secret/{ref}}}}}\n")


def test_child_gets_values_files_and_no_credential(openbao: OpenBao, tmp_path: Path, out: Path) -> None:
    """The child starts after the files are committed, with env: values (over the parent's own),
    the parent's other variables, and neither the Vault token nor any SECRETS_BRIDGE_* variable,
    also as the kernel shows its environment."""
    ref = _kv(openbao, user="app", password="pw one/+")
    bridge, child = _vault(openbao, tmp_path, out, _body(ref))
    bridge.start(*child.command())
    try:
        assert wait_for(child.starts, timeout=20), bridge.output()
        start = child.starts()[0]
        env = child.env()
        assert env["DB_PASSWORD"] == "pw one/+" and env["DATABASE_URL"] == "postgres://app:pw%20one%2F%2B@db/app"
        assert start["file"] == "pw one/+"  # committed before the child started
        assert env["APP_SETTING"] == "kept" and env["VAULT_ADDR"] == openbao.address
        assert "VAULT_TOKEN" not in env and not any(k.startswith("SECRETS_BRIDGE_") for k in env)
        environ = Path(f"/proc/{start['pid']}/environ").read_bytes()
        assert openbao.root_token.encode() not in environ and b"SECRETS_BRIDGE_" not in environ
        assert bridge.stop(timeout=20) == 0
    finally:
        bridge.kill()
    assert "pw one" not in bridge.output() and openbao.root_token not in bridge.output()


def test_rotation_restarts_once_per_burst(openbao: OpenBao, tmp_path: Path, out: Path) -> None:
    """Two KV updates within `wait` restart the child once, with the newest value, within the
    refresh interval plus wait.max; on_change still fires for the files."""
    ref = _kv(openbao, user="app", password="pw-1")
    marker = tmp_path / "hook-fired"
    extra = (f"exec: {{wait: {{min: 3s, max: 8s}}}}\n"
             f"on_change:\n  - {{exec: [\"/bin/sh\", \"-c\", \"echo x >> {marker}\"]}}\n")
    bridge, child = _vault(openbao, tmp_path, out, _body(ref), extra=extra)
    bridge.start(*child.command())
    client = openbao.client()
    try:
        assert wait_for(child.starts, timeout=20), bridge.output()
        first = time.monotonic()
        client.secrets.kv.v2.create_or_update_secret(path=ref, secret={"user": "app", "password": "pw-2"})
        time.sleep(0.8)  # the bridge sees pw-2, then pw-3 within the same quiet window
        client.secrets.kv.v2.create_or_update_secret(path=ref, secret={"user": "app", "password": "pw-3"})
        assert wait_for(lambda: len(child.starts()) >= 2, timeout=15), bridge.output()
        assert time.monotonic() - first < 0.5 + 8 + 2  # interval + wait.max, and the child's own start
        time.sleep(2.5)  # a second restart would come by now
        assert len(child.starts()) == 2
        assert child.env()["DB_PASSWORD"] == "pw-3"
        assert child.events("signal") == [{"event": "signal", "signal": signal.SIGTERM}]  # the stop_signal
        assert wait_for(marker.exists, timeout=5)
        assert bridge.stop(timeout=20) == 0
    finally:
        bridge.kill()
    assert "restarting" in bridge.output() and "pw-3" not in bridge.output()


def test_restart_on_never_keeps_the_child(openbao: OpenBao, tmp_path: Path, out: Path) -> None:
    """With restart_on: never a rotation updates the files but leaves the child running."""
    ref = _kv(openbao, user="app", password="pw-1")
    bridge, child = _vault(openbao, tmp_path, out, _body(ref), extra="exec: {restart_on: never}\n")
    bridge.start(*child.command())
    try:
        assert wait_for(child.starts, timeout=20), bridge.output()
        openbao.client().secrets.kv.v2.create_or_update_secret(path=ref, secret={"user": "a", "password": "pw-2"})
        assert wait_for(lambda: (out / "db" / "password").read_text() == "pw-2", timeout=10)
        time.sleep(1.5)
        assert len(child.starts()) == 1 and bridge.proc is not None and bridge.proc.poll() is None
        assert bridge.stop(timeout=20) == 0
    finally:
        bridge.kill()


def test_restart_on_any_restarts_for_a_file_and_listen_serves(openbao: OpenBao, tmp_path: Path, out: Path) -> None:
    """With restart_on: any a changed file restarts the child though no env value changed; `listen`
    serves /healthz, /readyz and /metrics (the restart counted) as in run."""
    ref = _kv(openbao, password="pw-1")
    port = free_port()
    body = f"secrets:\n  db: {{provider: vault, ref: secret/{ref}, files: {{password: password}}}}\n"
    bridge, child = _vault(openbao, tmp_path, out, body, extra="exec: {restart_on: any}\n")
    bridge.config.write_text(bridge.config.read_text().replace("listen: null", f"listen: 127.0.0.1:{port}"))
    bridge.start(*child.command())
    try:
        assert wait_for(child.starts, timeout=20), bridge.output()
        assert _get(port, "/healthz")[0] == 200 and _get(port, "/readyz")[0] == 200
        openbao.client().secrets.kv.v2.create_or_update_secret(path=ref, secret={"password": "pw-2"})
        assert wait_for(lambda: len(child.starts()) == 2, timeout=10), bridge.output()
        assert child.starts()[-1]["file"] == "pw-2"
        assert 'secrets_bridge_exec_restarts_total{reason="file"} 1.0' in _get(port, "/metrics")[1]
        assert bridge.stop(timeout=20) == 0
    finally:
        bridge.kill()


def _get(port: int, path: str) -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return response.status, response.read().decode()


def test_signals_reach_the_child(openbao: OpenBao, tmp_path: Path, out: Path) -> None:
    """SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH and SIGTERM sent to the bridge reach the
    child; the bridge stops when the child exits, with its status."""
    ref = _kv(openbao, user="app", password="pw")
    bridge, child = _vault(openbao, tmp_path, out, _body(ref))
    bridge.env["EXIT_ON_TERM"] = "7"
    proc = bridge.start(*child.command())
    try:
        assert wait_for(child.starts, timeout=20), bridge.output()
        sent = [signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH]
        for sig in sent:
            proc.send_signal(sig)
            assert wait_for(lambda sig=sig: {"event": "signal", "signal": sig} in child.events("signal"))
        assert proc.poll() is None  # none of them stops the bridge: the child decides
        assert bridge.stop(timeout=20) == 7
        assert child.events("signal")[-1]["signal"] == signal.SIGTERM
    finally:
        bridge.kill()


@pytest.mark.parametrize(("script", "status"), [("exit 0", 0), ("exit 3", 3), ("kill -9 $$", 137)])
def test_exit_status_is_the_childs(openbao: OpenBao, tmp_path: Path, out: Path, script: str, status: int) -> None:
    """The bridge exits with its child's status, 128+N when signal N ended it, after its shutdown."""
    ref = _kv(openbao, user="app", password="pw")
    bridge, _ = _vault(openbao, tmp_path, out, _body(ref), extra="cleanup_on_exit: true\n")
    bridge.start("exec", "--", "/bin/sh", "-c", f'test -n "$DB_PASSWORD" && {script}')
    try:
        assert bridge.wait(20) == status, bridge.output()
        assert not (out / "db").exists()  # cleanup_on_exit ran
    finally:
        bridge.kill()


def test_required_value_missing_starts_nothing(openbao: OpenBao, tmp_path: Path, out: Path) -> None:
    """A required env value that cannot be fetched: exit 1 naming it, and no child ever ran."""
    ref = _kv(openbao, user="app", password="pw")
    body = _body(ref) + f"  MISSING: {{provider: vault, ref: secret/app/{uuid.uuid4().hex}, key: x}}\n"
    bridge, child = _vault(openbao, tmp_path, out, body)
    bridge.start(*child.command())
    try:
        assert bridge.wait(20) == 1
    finally:
        bridge.kill()
    assert child.starts() == []
    assert "$MISSING" in bridge.output() and "not starting" in bridge.output()
    assert "pw" not in bridge.output().replace("password", "")


def test_command_not_found_is_127(openbao: OpenBao, tmp_path: Path, out: Path) -> None:
    """A command that does not exist: exit 127 with one line naming it, as a shell says."""
    ref = _kv(openbao, user="app", password="pw")
    bridge, _ = _vault(openbao, tmp_path, out, _body(ref))
    bridge.start("exec", "--", "no-such-command-here")
    try:
        assert bridge.wait(20) == 127
    finally:
        bridge.kill()
    assert "no-such-command-here" in bridge.output() and "Traceback" not in bridge.output()


def test_as_pid_1_orphans_are_reaped(openbao: OpenBao, tmp_path: Path, out: Path) -> None:
    """As PID 1 of a new PID namespace, grandchildren orphaned by the child are reaped, not left zombies."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs unshare(1) and root to make a PID namespace")
    ref = _kv(openbao, user="app", password="pw")
    bridge, _ = _vault(openbao, tmp_path, out, _body(ref))
    report = tmp_path / "zombies"
    # Five grandchildren orphaned at once (their parent subshell exits), each exiting 0.2 s later;
    # after 1.5 s the child counts the zombies in its namespace.
    script = ("for i in 1 2 3 4 5; do (sleep 0.2 &); done; sleep 1.5; "
              f"grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l > {report}; "
              f"echo $PPID >> {report}")
    argv = ["unshare", "--pid", "--fork", "--mount-proc", *bridge.command("exec", "--", "/bin/sh", "-c", script)]
    proc = subprocess.run(argv, env=bridge.env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    zombies, child_pid = report.read_text().split()
    assert zombies == "0" and child_pid == "1"  # the bridge was PID 1


@pytest.mark.slow
def test_leased_database_url_restarts_only_on_reissue(
    openbao: OpenBao, vault_database: DatabaseEngine, postgres: Postgres, tmp_path: Path, out: Path
) -> None:
    """DATABASE_URL from leased database credentials: renewals never restart the child; the
    re-issue at max_ttl does, and the restarted child logs in with its new credentials."""
    ref = vault_database.role(default_ttl="3s", max_ttl="8s")
    login = tmp_path / "logins"
    script = (
        "import os, sys, time, urllib.parse\n"
        "import psycopg\n"
        "url = urllib.parse.urlsplit(os.environ['DATABASE_URL'])\n"
        f"with psycopg.connect(host={postgres.host!r}, port={postgres.port}, user=url.username, dbname='postgres',\n"
        "                     password=urllib.parse.unquote(url.password), sslmode='disable') as conn:\n"
        "    user = conn.execute('select current_user').fetchone()[0]\n"
        f"open({str(login)!r}, 'a').write(user + '\\n')\n"
        "time.sleep(3600)\n"
    )
    body = ("env:\n  DATABASE_URL:\n    template: \"postgres://{{ db.username }}:{{ db.password | urlencode }}@db/x\"\n"
            f"    values: {{db: {{provider: vault, ref: {ref}}}}}\n")
    bridge, _ = _vault(openbao, tmp_path, out, body, interval="1h")
    bridge.start("exec", "--", sys.executable, "-c", script)
    try:
        assert wait_for(login.exists, timeout=20), bridge.output()
        time.sleep(5)  # renewals at ~2 s and ~4 s: the child keeps running
        assert len(login.read_text().split()) == 1, bridge.output()
        assert wait_for(lambda: len(login.read_text().split()) == 2, timeout=10), bridge.output()
        first, second = login.read_text().split()
        assert first != second  # new credentials, and the restarted child logged in with them
        time.sleep(1)
        assert len(login.read_text().split()) == 2
        assert bridge.stop(timeout=20) == 128 + signal.SIGTERM  # the child takes SIGTERM's default action
    finally:
        bridge.kill()
    assert "renew" in bridge.output() and "restarting" in bridge.output()


def test_child_owns_the_terminal(openbao: OpenBao, tmp_path: Path, out: Path) -> None:
    """Under a terminal the child runs in a process group of its own, in the terminal's foreground
    (so ^C and ^Z reach it alone)."""
    ref = _kv(openbao, user="app", password="pw")
    bridge, _ = _vault(openbao, tmp_path, out, _body(ref))
    master, slave = os.openpty()
    slave_name = os.ttyname(slave)

    def controlling_terminal() -> None:  # a new session whose first terminal opened becomes its own
        os.close(os.open(slave_name, os.O_RDWR))

    command = bridge.command("exec", "--", "/bin/sh", "-c", 'echo "stat: $(cat /proc/$$/stat)"')
    proc = subprocess.Popen(command, env=bridge.env, stdin=slave, stdout=slave, stderr=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=controlling_terminal)
    os.close(slave)
    output = b""
    try:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every holder of the terminal has gone
                break
            if not chunk:
                break
            output += chunk
        assert proc.wait(timeout=30) == 0
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    line = next(x for x in output.decode().splitlines() if x.startswith("stat: "))
    fields = line.rsplit(")", 1)[1].split()
    pgrp, tpgid = int(fields[2]), int(fields[5])
    assert pgrp == tpgid and pgrp != proc.pid  # its own group, in the foreground; not the bridge's


def _file_bridge(tmp_path: Path, out: Path, env: str, extra: str = "") -> tuple[Bridge, Child, Path]:
    """An exec config on the `file` provider (a rotation is a write to a file): no server needed."""
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    config = (f"output_dir: {out}\nrefresh_interval: 300ms\njitter: 0\nlisten: null\n"
              f"providers:\n  files: {{type: file, base_dir: {src}}}\n{extra}env:\n{env}")
    return (*_exec(tmp_path, out, config), src)


def test_a_child_ignoring_the_stop_signal_is_killed_after_stop_timeout(tmp_path: Path, out: Path) -> None:
    """A child that ignores stop_signal is SIGKILLed after stop_timeout, then started with the new value."""
    bridge, child, src = _file_bridge(tmp_path, out, "  TOKEN: {provider: files, ref: token}\n",
                               extra="exec: {stop_signal: SIGUSR1, stop_timeout: 1s}\n")
    (src / "token").write_text("token-one")
    script = ("import json, os, signal, time\nsignal.signal(signal.SIGUSR1, signal.SIG_IGN)\n"
              f"line = json.dumps(dict(event='start', env=dict(os.environ)))\n"
              f"open({str(child.report)!r}, 'a').write(line + '\\n')\ntime.sleep(3600)\n")
    bridge.start("exec", "--", sys.executable, "-c", script)
    try:
        assert wait_for(child.starts, timeout=20), bridge.output()
        (src / "token").write_text("token-two")
        changed = time.monotonic()
        assert wait_for(lambda: len(child.starts()) == 2, timeout=10), bridge.output()
        assert time.monotonic() - changed >= 1.0  # it waited stop_timeout before the SIGKILL
        assert child.env()["TOKEN"] == "token-two"
        assert bridge.stop(timeout=20) == 128 + signal.SIGTERM
    finally:
        bridge.kill()


def test_config_reload_follows_the_file_and_restarts_only_for_env(tmp_path: Path, out: Path) -> None:
    """In exec the config reloads when its file changes (SIGHUP is the child's): a reload that
    leaves the env values alone keeps the child; one that adds a variable restarts it with it."""
    bridge, child, src = _file_bridge(tmp_path, out, "  TOKEN: {provider: files, ref: token}\n")
    (src / "token").write_text("token-one")
    (src / "other").write_text("other-value")
    bridge.start(*child.command())
    try:
        assert wait_for(child.starts, timeout=20), bridge.output()
        text = bridge.config.read_text()
        bridge.config.write_text(text.replace("jitter: 0\n", "jitter: 0.05\n"))  # no env change
        time.sleep(2.5)
        assert len(child.starts()) == 1
        bridge.config.write_text(text + "  OTHER: {provider: files, ref: other}\n")
        assert wait_for(lambda: len(child.starts()) == 2, timeout=10), bridge.output()
        assert child.env()["OTHER"] == "other-value" and child.env()["TOKEN"] == "token-one"
        assert bridge.stop(timeout=20) == 0
    finally:
        bridge.kill()
    assert "config reloaded" in bridge.output()


def test_options_before_and_after_exec_and_the_command_keeps_its_own() -> None:
    """Bridge options go before `exec` or after it; everything from the command on (after an
    optional `--`) is the command's, its own options included; no command is a usage error."""
    from bridge.cli import _parser, main

    for argv in (["--config", "c.yaml", "exec", "--mask", "app", "--config", "x"],
                 ["exec", "--config", "c.yaml", "--mask", "--", "app", "--config", "x"]):
        args = _parser().parse_args(argv)
        assert args.config == "c.yaml" and args.mask
        assert args.argv[-3:] == ["app", "--config", "x"]
    with pytest.raises(SystemExit) as usage:
        main(["exec", "--"])
    assert usage.value.code == 2
