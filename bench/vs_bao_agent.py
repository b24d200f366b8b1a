"""secrets-bridge against OpenBao Agent (Vault Agent's fork), measured in the same run.

Both keep N KV v2 secrets rendered to files from one local `bao server -dev`, re-checking every
INTERVAL seconds. Each tool runs alone in turn, and for each we measure over a steady window:
- memory: resident set size (VmRSS) and its peak (VmHWM), from /proc;
- CPU seconds used (utime + stime), from /proc;
- server requests, counted by OpenBao's own file audit device;
- rotation latency: from a `kv put` to the new value in the file.
The report gives each number and the ratio bridge / agent (below 1 means the bridge uses less).

    python bench/vs_bao_agent.py --secrets 100 --interval 1 --window 20
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

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
    def __init__(self, n: int, interval: float, window: float, work: Path) -> None:
        self.n, self.interval, self.window, self.work = n, interval, window, work
        self.port = free_port()
        self.token = "bench-root"
        self.address = f"http://127.0.0.1:{self.port}"
        self.audit = work / "audit.log"

    def kv_put(self, i: int, value: str) -> None:
        subprocess.run([venv_binary("bao"), "kv", "put", "-mount=secret", f"bench/s{i}", f"value={value}"],
                       check=True, capture_output=True, env=self.env())

    def env(self) -> dict[str, str]:
        return {**os.environ, "BAO_ADDR": self.address, "BAO_TOKEN": self.token,
                "VAULT_ADDR": self.address, "VAULT_TOKEN": self.token}

    def audit_lines(self) -> int:
        try:
            with open(self.audit, "rb") as f:
                return sum(1 for line in f if b'"type":"response"' in line)
        except OSError:
            return 0

    def start_server(self) -> subprocess.Popen[bytes]:
        # OpenBao takes audit devices from its config file only.
        config = self.work / "server.hcl"
        config.write_text(f'audit "file" "bench" {{\n  options {{\n    file_path = "{self.audit}"\n  }}\n}}\n')
        server = subprocess.Popen([venv_binary("bao"), "server", "-dev", f"-dev-root-token-id={self.token}",
                                   f"-dev-listen-address=127.0.0.1:{self.port}", f"-config={config}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(f"{self.address}/v1/sys/health", proc=server)
        import hvac

        client = hvac.Client(url=self.address, token=self.token)
        for i in range(self.n):
            client.secrets.kv.v2.create_or_update_secret(path=f"bench/s{i}", secret={"value": f"v0-{i}"})
        return server

    def bridge_command(self, out: Path) -> list[str]:
        config = self.work / "bridge.yaml"
        lines = [f"output_dir: {out}", "require_tmpfs: false", "listen: null", f"refresh_interval: {self.interval}",
                 "jitter: 0", "providers:", "  vault: {type: vault}", "secrets:"]
        lines += [f"  s{i}: {{provider: vault, ref: secret/bench/s{i}, key: value}}" for i in range(self.n)]
        config.write_text("\n".join(lines) + "\n")
        return [venv_binary("secrets-bridge"), "--config", str(config), "run"]

    def agent_command(self, out: Path) -> list[str]:
        token_file = self.work / "agent-token"
        token_file.write_text(self.token)
        parts = [f'vault {{ address = "{self.address}" }}',
                 f'auto_auth {{ method "token_file" {{ config = {{ token_file_path = "{token_file}" }} }} }}',
                 f'template_config {{ static_secret_render_interval = "{self.interval}s" }}']
        for i in range(self.n):
            contents = '{{ with secret "secret/data/bench/s' + str(i) + '" }}{{ .Data.data.value }}{{ end }}'
            parts.append(f'template {{ contents = {json.dumps(contents)} destination = "{out}/s{i}" }}')
        config = self.work / "agent.hcl"
        config.write_text("\n".join(parts) + "\n")
        return [venv_binary("bao"), "agent", f"-config={config}"]

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
            before, requests_before = proc_stats(proc.pid), self.audit_lines()
            time.sleep(self.window)
            after, requests_after = proc_stats(proc.pid), self.audit_lines()
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
                "requests_per_cycle": (requests_after - requests_before) * self.interval / self.window,
                "rotation_latency_seconds": sorted(latencies)[1],
            }
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--secrets", type=int, default=100)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--window", type=float, default=20.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sb-bench-"))
    bench = Bench(args.secrets, args.interval, args.window, work)
    server = bench.start_server()
    try:
        bridge = bench.measure("bridge", bench.bridge_command(work / "bridge-out"), work / "bridge-out")
        agent = bench.measure("agent", bench.agent_command(work / "agent-out"), work / "agent-out")
    finally:
        server.terminate()
        server.wait(timeout=20)
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.secrets} KV v2 secrets, refresh every {args.interval}s, steady window {args.window}s")
    print(f"{'metric':28} {'secrets-bridge':>15} {'bao agent':>12} {'ratio':>8}")
    for key in bridge:
        ratio = bridge[key] / agent[key] if agent[key] else float("nan")
        print(f"{key:28} {bridge[key]:15.3f} {agent[key]:12.3f} {ratio:8.2f}")


if __name__ == "__main__":
    main()
