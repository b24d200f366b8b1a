"""secrets-bridge at scale: N `file` secrets at a 1 s interval (a benchmark, not a test).

For each N it measures, with the bridge as a user runs it (the console script, a tmpfs output):
- cold sync: wall time of `secrets-bridge sync` into an empty directory (process start included);
- idle CPU of `run`, as a fraction of one core, over a steady window (utime + stime from /proc);
- RSS of `run` (VmRSS and peak VmHWM);
- propagation: from rewriting a source file to the new content in its target, over CHANGES changes;
- commit time: the bridge's own `secrets_bridge_commit_duration_seconds` histogram over those changes.
The floors beside them: the RSS and start time of a Python that only imports the bridge's modules,
and a bare sync (`bare_sync`): the YAML parsed by LibYAML, each file read, written and linked, a
state file, and nothing else.

    python bench/scale.py --secrets 1000 10000 --window 10 --changes 12
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.vs_bao_agent import proc_stats, read, wait_for  # noqa: E402
from tests.servers import free_port, venv_binary, wait_http  # noqa: E402


def write_sources(base: Path, n: int) -> None:
    base.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (base / f"s{i}").write_text(f"value-{i}-0")


def write_config(path: Path, base: Path, out: Path, n: int, port: int) -> None:
    lines = [f"output_dir: {out}", "refresh_interval: 1s", "jitter: 0.1", f"listen: 127.0.0.1:{port}",
             "providers:", f"  src: {{type: file, base_dir: {base}}}", "secrets:"]
    lines += [f"  s{i}: {{provider: src, ref: s{i}}}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")


def metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    match = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def floor() -> dict[str, float]:
    """RSS and wall time of a Python that imports what `run` imports, and nothing else."""
    code = ("import bridge.cli, bridge.runtime.runner, bridge.engine.cycle, providers.local, time;"
            "print(open('/proc/self/status').read())")
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    elapsed = time.perf_counter() - started
    rss = int(re.search(r"VmRSS:\s+(\d+)", out).group(1)) / 1024  # type: ignore[union-attr]
    return {"rss_mib": rss, "start_seconds": elapsed}


_BARE_SYNC = """
import gc, json, os, sys, time
gc.disable()
import yaml
started = time.perf_counter()
config, out = sys.argv[1], sys.argv[2]
secrets = yaml.load(open(config).read(), Loader=yaml.CSafeLoader)["secrets"]
parsed = time.perf_counter()
gen = os.path.join(out, "..gen")
os.makedirs(gen)
base = os.path.join(os.path.dirname(config), "src")
for name, entry in secrets.items():
    with open(os.path.join(base, entry["ref"]), "rb") as f:
        data = f.read()
    fd = os.open(os.path.join(gen, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, data)
    os.close(fd)
os.symlink("..gen", os.path.join(out, "..data"))
for name in secrets:
    os.symlink("..data/" + name, os.path.join(out, name))
with open(os.path.join(out, "state.json"), "w") as f:
    json.dump({n: {"entry": n, "provider": e["provider"], "ref": e["ref"]} for n, e in secrets.items()}, f)
print(json.dumps({"parse": parsed - started, "files": time.perf_counter() - parsed}))
"""


def bare_sync(config: Path, out: Path) -> dict[str, float]:
    """The floor under a cold sync: a Python that does only what any sync must (parse the YAML with
    LibYAML, read each source file, write each file into one generation, link it, write a state
    file), with no checks, no records, no error handling; its whole wall time, and the parse and the
    files apart."""
    out.mkdir()
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _BARE_SYNC, str(config), str(out)], capture_output=True,
                          text=True, check=True)
    return {"wall": time.perf_counter() - started, **json.loads(done.stdout)}


def measure(n: int, window: float, changes: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        root = Path(tmp)
        base, out, config = root / "src", root / "out", root / "bridge.yaml"
        port = free_port()
        write_sources(base, n)
        write_config(config, base, out, n, port)
        bare = bare_sync(config, root / "bare")
        bridge = venv_binary("secrets-bridge")
        started = time.perf_counter()
        subprocess.run([bridge, "--config", str(config), "sync"], check=True, capture_output=True)
        cold = time.perf_counter() - started

        proc = subprocess.Popen([bridge, "--config", str(config), "run"], stderr=subprocess.DEVNULL)
        try:
            metrics = f"http://127.0.0.1:{port}/metrics"
            wait_http(f"http://127.0.0.1:{port}/readyz", timeout=120, proc=proc)
            # past the first cycles and what follows a start once (the spare generation, the first
            # change check that sets the `file` provider's watches): 2 s, and 1 s per 10,000 secrets
            time.sleep(max(2.0, n / 10_000))
            before, t0 = proc_stats(proc.pid), time.monotonic()
            time.sleep(window)
            after, t1 = proc_stats(proc.pid), time.monotonic()
            idle_cpu = (after["cpu_seconds"] - before["cpu_seconds"]) / (t1 - t0)

            commit_sum0 = metric(metrics, "secrets_bridge_commit_duration_seconds_sum")
            commit_n0 = metric(metrics, "secrets_bridge_commit_duration_seconds_count")
            delays = []
            for k in range(1, changes + 1):
                i = (k * 7919) % n
                value = f"value-{i}-{k}"
                (base / f"s{i}").write_text(value)
                start = time.monotonic()
                delays.append(wait_for(lambda i=i, value=value: read(out / f"s{i}") == value, 30) + 0)
                time.sleep(max(0.0, 1.3 - (time.monotonic() - start)))  # one change per interval
            commits = metric(metrics, "secrets_bridge_commit_duration_seconds_count") - commit_n0
            commit_ms = 1000 * (metric(metrics, "secrets_bridge_commit_duration_seconds_sum") - commit_sum0) / max(
                commits, 1)
            stats = proc_stats(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return {
        "secrets": n,
        "cold_sync_seconds": cold,
        "bare_sync_seconds": bare["wall"],
        "bare_parse_seconds": bare["parse"],
        "idle_cpu_cores": idle_cpu,
        "rss_mib": stats["rss_mib"],
        "peak_rss_mib": stats["peak_rss_mib"],
        "propagation_median_seconds": statistics.median(delays),
        "propagation_max_seconds": max(delays),
        "commit_ms_mean": commit_ms,
        "commits": commits,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--secrets", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--window", type=float, default=10.0, help="idle window, seconds")
    parser.add_argument("--changes", type=int, default=12)
    args = parser.parse_args()
    base = floor()
    print(f"floor (imports only): RSS {base['rss_mib']:.1f} MiB, start {base['start_seconds']:.2f} s")
    print("| secrets | cold sync (bare floor; its YAML parse) | idle CPU | RSS (peak) | propagation median (max) "
          "| commit of one change |")
    print("|---|---|---|---|---|---|")
    for n in args.secrets:
        r = measure(n, args.window, args.changes)
        print(f"| {n:,} | {r['cold_sync_seconds']:.2f} s ({r['bare_sync_seconds']:.2f}; "
              f"{r['bare_parse_seconds']:.2f} s) | {r['idle_cpu_cores']:.3f} core | "
              f"{r['rss_mib']:.0f} ({r['peak_rss_mib']:.0f}) MiB | {r['propagation_median_seconds']:.2f} "
              f"({r['propagation_max_seconds']:.2f}) s | {r['commit_ms_mean']:.1f} ms ({r['commits']:.0f} commits) |",
              flush=True)


if __name__ == "__main__":
    main()
