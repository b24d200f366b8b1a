"""secrets-bridge against OpenBao Agent (Vault Agent's fork), measured in the same run.

Both render N KV v2 secrets to files from one local `bao server -dev` (the same server for both, with
no audit device: an audit device writes a line per request and answer, which slows every request and
so costs a tool reading one secret at a time more than one reading eight at once). Each tool runs
alone in turn. Requests are counted in a separate pass, against a second server with OpenBao's file
audit device, never in a timed run.
- one-shot: `secrets-bridge sync` against `bao agent` with `exit_after_auth = true` (renders every
  template once, then exits), each a cold process writing into an empty directory; wall time to
  exit, CPU seconds and peak RSS from wait4(), median of --runs alternating runs (after one
  untimed run of each, so both start from a warm page cache);
- steady: `run` against the agent daemon, re-checking every INTERVAL seconds, over a window:
  resident set size (VmRSS) and its peak (VmHWM) and CPU seconds (utime + stime) from /proc,
  and rotation latency (from a write to the new value in the file);
- idle: the same daemons with a one-hour refresh, so nothing is due within the idle window: CPU
  only; the window (65 s by default) holds one of the bridge's 60 s safety sweeps of its directory;
- requests (the separate pass, audit device on): the requests of one one-shot run, and the requests
  per cycle of `run` against the daemon over the steady window;
- floor: the bridge's RSS and wall time after its imports alone (what `run`, and what `sync`,
  imports before its first request), what no change of ours below the libraries can go under.
The report gives each number and the ratio bridge / agent (below 1 means the bridge uses less).

The bridge runs from compiled bytecode, as the pip-installed package in the image does: this
environment's PYTHONDONTWRITEBYTECODE is dropped and the bytecode kept under the work directory.
The work directory (both tools' output, the server's audit log) is on /dev/shm when that is a
tmpfs, as secrets are in use (/run/secrets, a memory emptyDir for the agent's /vault/secrets): on
this machine's disk a file creation or symlink costs 0.6 ms of waiting, which is the disk's figure,
not either tool's.

    python bench/vs_bao_agent.py --secrets 100 --interval 1 --window 20 --runs 5
    python bench/vs_bao_agent.py --secrets 100 --runs 31 --one-shot-only   # the one-shot runs alone
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.writer.atomic import is_memory_backed  # noqa: E402
from tests.servers import free_port, venv_binary, wait_http  # noqa: E402


def proc_stats(pid: int) -> dict[str, float]:
    """RSS, peak RSS (MiB) and CPU seconds of a process and its children's threads."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = {line.split(":")[0]: line.split(":")[1].strip() for line in status.splitlines() if ":" in line}
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return {
        "rss_mib": int(fields["VmRSS"].split()[0]) / 1024,
        "peak_rss_mib": int(fields["VmHWM"].split()[0]) / 1024,
        "cpu_seconds": (int(stat[11]) + int(stat[12])) / ticks,
    }


def cpu_seconds_fine(pid: int) -> float:
    """CPU seconds of a process's live threads, to the nanosecond (schedstat), where /proc/PID/stat
    counts in 10 ms ticks: an idle process may use less than a tick in a whole window."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue  # the thread ended meanwhile
    return total / 1e9


def wait_for(predicate, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.005)
    raise TimeoutError("condition not met")


def read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


class Bench:
    def __init__(self, n: int, interval: float, window: float, work: Path, idle_window: float = 65.0) -> None:
        self.n, self.interval, self.window, self.work = n, interval, window, work
        self.idle_window = idle_window
        self.token = "bench-root"
        self.address = ""
        self.audit = work / "audit.log"
        self.pair_ratio = float("nan")  # set by one_shot()

    def kv_put(self, i: int, value: str) -> None:
        self.client.secrets.kv.v2.create_or_update_secret(path=f"bench/s{i}", secret={"value": value})

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        return {**env, "PYTHONPYCACHEPREFIX": str(self.work / "pycache"), "BAO_ADDR": self.address,
                "BAO_TOKEN": self.token, "VAULT_ADDR": self.address, "VAULT_TOKEN": self.token}

    def audit_lines(self) -> int:
        try:
            with open(self.audit, "rb") as f:
                return sum(1 for line in f if b'"type":"response"' in line)
        except OSError:
            return 0

    def start_server(self, audit: bool) -> subprocess.Popen[bytes]:
        """A fresh dev server holding the N secrets; with `audit`, OpenBao's file audit device on
        (for counting requests only: it slows every request)."""
        port = free_port()
        self.address = f"http://127.0.0.1:{port}"
        command = [venv_binary("bao"), "server", "-dev", f"-dev-root-token-id={self.token}",
                   f"-dev-listen-address=127.0.0.1:{port}"]
        if audit:
            # OpenBao takes audit devices from its config file only.
            config = self.work / "server.hcl"
            config.write_text(f'audit "file" "bench" {{\n  options {{\n    file_path = "{self.audit}"\n  }}\n}}\n')
            command.append(f"-config={config}")
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(f"{self.address}/v1/sys/health", proc=server)
        import hvac

        self.client = hvac.Client(url=self.address, token=self.token)
        for i in range(self.n):
            self.kv_put(i, f"v0-{i}")
        return server

    def bridge_command(self, out: Path, command: str = "run", interval: float | None = None) -> list[str]:
        config = self.work / f"bridge-{command}.yaml"
        lines = [f"output_dir: {out}", f"require_tmpfs: {str(is_memory_backed(self.work)).lower()}", "listen: null",
                 f"refresh_interval: {interval or self.interval}", "jitter: 0", "providers:",
                 "  vault: {type: vault}", "secrets:"]
        lines += [f"  s{i}: {{provider: vault, ref: secret/bench/s{i}, key: value}}" for i in range(self.n)]
        config.write_text("\n".join(lines) + "\n")
        return [venv_binary("secrets-bridge"), "--config", str(config), "--log-format", "text", command]

    def agent_command(self, out: Path, one_shot: bool = False, interval: float | None = None) -> list[str]:
        token_file = self.work / "agent-token"
        token_file.write_text(self.token)
        parts = [f'vault {{ address = "{self.address}" }}',
                 f'auto_auth {{ method "token_file" {{ config = {{ token_file_path = "{token_file}" }} }} }}',
                 f'template_config {{ static_secret_render_interval = "{interval or self.interval}s" }}']
        if one_shot:
            parts.append("exit_after_auth = true")  # with templates: render each once, then exit
        for i in range(self.n):
            contents = '{{ with secret "secret/data/bench/s' + str(i) + '" }}{{ .Data.data.value }}{{ end }}'
            parts.append(f'template {{ contents = {json.dumps(contents)} destination = "{out}/s{i}" }}')
        config = self.work / f"agent-{'once' if one_shot else 'daemon'}.hcl"
        config.write_text("\n".join(parts) + "\n")
        return [venv_binary("bao"), "agent", f"-config={config}"]

    def once(self, name: str, command: list[str], out: Path) -> dict[str, float]:
        """One cold run into an empty directory: wall seconds to exit, CPU seconds, peak RSS."""
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        started = time.monotonic()
        proc = subprocess.Popen(command, env=self.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        missing = [i for i in range(self.n) if read(out / f"s{i}") != f"once-{i}"]
        if proc.returncode != 0 or missing:
            raise RuntimeError(f"{name} one-shot: exit {proc.returncode}, {len(missing)} files wrong")
        return {"seconds": wall, "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024}

    def one_shot(self, runs: int) -> tuple[dict[str, float], dict[str, float]]:
        """Median of `runs` alternating cold runs of each, after one untimed run of each."""
        for i in range(self.n):
            self.kv_put(i, f"once-{i}")
        out = {"bridge": self.work / "once-bridge", "agent": self.work / "once-agent"}
        commands = {"bridge": self.bridge_command(out["bridge"], "sync"),
                    "agent": self.agent_command(out["agent"], one_shot=True)}
        samples: dict[str, list[dict[str, float]]] = {"bridge": [], "agent": []}
        for round_ in range(runs + 1):
            for name in ("bridge", "agent") if round_ % 2 else ("agent", "bridge"):
                sample = self.once(name, commands[name], out[name])
                if round_:
                    samples[name].append(sample)
        medians = {name: {key: statistics.median(s[key] for s in runs_) for key in runs_[0]}
                   for name, runs_ in samples.items()}
        # Each round's two runs are next to each other in time: on a shared machine whose load
        # varies, the median of their ratios is steadier than the ratio of the medians.
        self.pair_ratio = statistics.median(b["seconds"] / a["seconds"]
                                            for b, a in zip(samples["bridge"], samples["agent"], strict=True))
        return medians["bridge"], medians["agent"]

    #: what each command imports before its first request (the engine's Vault reads run on a pool)
    FLOOR_IMPORTS = {"run": "bridge.cli, bridge.runtime.runner, providers.vault, concurrent.futures.thread",
                     "sync": "bridge.cli, bridge.engine.cycle, providers.vault, concurrent.futures.thread"}

    def floor(self, runs: int) -> dict[str, float]:
        """The bridge's imports alone, for `run` and for `sync`: RSS and wall time, each the median
        of `runs` fresh interpreters; and the bare interpreter's RSS."""
        python = str(Path(venv_binary("secrets-bridge")).parent / "python")
        rss = "int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1]) / 1024"
        out: dict[str, float] = {}
        for command, modules in self.FLOOR_IMPORTS.items():
            probe = f"import time; t = time.monotonic(); import {modules}; t = time.monotonic() - t; print({rss}, t)"
            samples = [subprocess.run([python, "-c", probe], env=self.env(), capture_output=True, text=True,
                                      check=True).stdout.split() for _ in range(runs)]
            out[f"{command}_rss_mib"] = statistics.median(float(s[0]) for s in samples)
            out[f"{command}_seconds"] = statistics.median(float(s[1]) for s in samples)
        out["interpreter_rss_mib"] = float(subprocess.run([python, "-c", f"print({rss})"], env=self.env(),
                                                          capture_output=True, text=True, check=True).stdout)
        return out

    def idle(self, name: str, command: list[str], out: Path) -> dict[str, float]:
        """CPU over the window with nothing due (a one-hour refresh), once the first sync is done."""
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        proc = subprocess.Popen(command, env=self.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: read(out / f"s{self.n - 1}") != "", 120)
            time.sleep(2)
            before = cpu_seconds_fine(proc.pid)
            time.sleep(self.idle_window)
            after = cpu_seconds_fine(proc.pid)
            return {"idle_cpu_seconds_per_minute": (after - before) * 60 / self.idle_window,
                    "idle_rss_mib": proc_stats(proc.pid)["rss_mib"]}
        finally:
            proc.terminate()
            proc.wait(timeout=20)

    def measure(self, name: str, command: list[str], out: Path) -> dict[str, float]:
        for i in range(self.n):
            self.kv_put(i, f"{name}-start-{i}")
        out.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(command, env=self.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            started = time.monotonic()
            last = out / f"s{self.n - 1}"
            wait_for(lambda: read(last) == f"{name}-start-{self.n - 1}", 120)
            cold = time.monotonic() - started
            time.sleep(self.interval * 2)  # settle
            before = proc_stats(proc.pid)
            time.sleep(self.window)
            after = proc_stats(proc.pid)
            latencies = []
            target = out / "s0"
            for k in range(3):
                self.kv_put(0, f"{name}-rotated-{k}")
                latencies.append(wait_for(lambda k=k: read(target) == f"{name}-rotated-{k}", 60))
            return {
                "cold_sync_seconds": cold,
                "rss_mib": after["rss_mib"],
                "peak_rss_mib": after["peak_rss_mib"],
                "cpu_seconds_per_minute": (after["cpu_seconds"] - before["cpu_seconds"]) * 60 / self.window,
                "rotation_latency_seconds": sorted(latencies)[1],
            }
        finally:
            proc.terminate()
            proc.wait(timeout=20)

    def requests(self, name: str, once: list[str], daemon: list[str], out: Path) -> dict[str, float]:
        """On the audited server: the requests of one one-shot run, and of `run` per cycle over the
        steady window (nothing here is timed)."""
        before = self.audit_lines()
        self.once(name, once, out)
        one_shot = self.audit_lines() - before
        for i in range(self.n):
            self.kv_put(i, f"{name}-count-{i}")
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        proc = subprocess.Popen(daemon, env=self.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: read(out / f"s{self.n - 1}") == f"{name}-count-{self.n - 1}", 120)
            time.sleep(self.interval * 2)  # settle
            before = self.audit_lines()
            time.sleep(self.window)
            per_cycle = (self.audit_lines() - before) * self.interval / self.window
        finally:
            proc.terminate()
            proc.wait(timeout=20)
        for i in range(self.n):
            self.kv_put(i, f"once-{i}")  # what `once` checks for
        return {"one_shot_requests": one_shot, "requests_per_cycle": per_cycle}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--secrets", type=int, default=100)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--idle-window", type=float, default=65.0,
                        help="seconds of the idle measurement (at least 60 to hold a safety sweep)")
    parser.add_argument("--runs", type=int, default=7, help="one-shot runs of each tool (median)")
    parser.add_argument("--one-shot-only", action="store_true", help="measure the one-shot runs alone")
    args = parser.parse_args()
    shm = Path("/dev/shm")
    work = Path(tempfile.mkdtemp(prefix="sb-bench-", dir=shm if shm.is_dir() and is_memory_backed(shm) else None))
    bench = Bench(args.secrets, args.interval, args.window, work, args.idle_window)
    try:
        server = bench.start_server(audit=False)  # everything timed or measured: no audit device
        try:
            once_bridge, once_agent = bench.one_shot(args.runs)
            if args.one_shot_only:
                _print_one_shot(args.runs, once_bridge, once_agent, bench.pair_ratio)
                return
            floor = bench.floor(args.runs)
            bridge = bench.measure("bridge", bench.bridge_command(work / "bridge-out"), work / "bridge-out")
            agent = bench.measure("agent", bench.agent_command(work / "agent-out"), work / "agent-out")
            bridge |= bench.idle("bridge", bench.bridge_command(work / "idle-bridge", interval=3600),
                                 work / "idle-bridge")
            agent |= bench.idle("agent", bench.agent_command(work / "idle-agent", interval=3600), work / "idle-agent")
        finally:
            server.terminate()
            server.wait(timeout=20)
        server = bench.start_server(audit=True)  # the separate pass that counts requests
        try:
            for i in range(bench.n):
                bench.kv_put(i, f"once-{i}")
            out = {"bridge": work / "count-bridge", "agent": work / "count-agent"}
            bridge |= bench.requests("bridge", bench.bridge_command(out["bridge"], "sync"),
                                     bench.bridge_command(out["bridge"]), out["bridge"])
            agent |= bench.requests("agent", bench.agent_command(out["agent"], one_shot=True),
                                    bench.agent_command(out["agent"]), out["agent"])
        finally:
            server.terminate()
            server.wait(timeout=20)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.secrets} KV v2 secrets, one server without an audit device for every timed figure; "
          f"one-shot: median of {args.runs} cold runs; run: refresh every {args.interval}s, steady window "
          f"{args.window}s; idle: one-hour refresh, window {args.idle_window}s; requests: a second pass "
          f"against a server with a file audit device")
    print(f"{'metric':32} {'secrets-bridge':>15} {'bao agent':>12} {'ratio':>8}")
    rows = [(f"one_shot_{k}", once_bridge[k], once_agent[k]) for k in once_bridge]
    rows += [(k, bridge[k], agent[k]) for k in bridge]
    for key, ours, theirs in rows:
        ratio = ours / theirs if theirs else float("nan")
        print(f"{key:32} {ours:15.3f} {theirs:12.3f} {ratio:8.2f}")
    print(f"one-shot wall time, median of the {args.runs} rounds' own ratios: {bench.pair_ratio:.2f}")
    print(f"floor (bridge imports alone; the bare interpreter {floor['interpreter_rss_mib']:.1f} MiB): "
          f"`run` {floor['run_rss_mib']:.1f} MiB ({floor['run_rss_mib'] / agent['rss_mib']:.2f}x the agent's "
          f"steady RSS), {floor['run_seconds']:.3f} s; `sync` {floor['sync_rss_mib']:.1f} MiB, "
          f"{floor['sync_seconds']:.3f} s ({floor['sync_seconds'] / once_agent['seconds']:.2f}x the agent's one-shot)")


def _print_one_shot(runs: int, bridge: dict[str, float], agent: dict[str, float], pair_ratio: float) -> None:
    print(f"one-shot only: median of {runs} alternating cold runs, no audit device")
    print(f"{'metric':32} {'secrets-bridge':>15} {'bao agent':>12} {'ratio':>8}")
    for key in bridge:
        print(f"one_shot_{key:23} {bridge[key]:15.3f} {agent[key]:12.3f} {bridge[key] / agent[key]:8.2f}")
    print(f"one-shot wall time, median of the {runs} rounds' own ratios: {pair_ratio:.2f}")


if __name__ == "__main__":
    main()
