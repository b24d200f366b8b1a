"""`exec --mask` throughput: a child writing a large text through the bridge, masked and not
(prints figures, asserts nothing).

    PYTHONPATH=. python bench/mask_throughput.py [--mb 200] [--values 10] [--runs 5]

The child is `cat` of a file of printable text on /dev/shm (base64 of random bytes, in 76-byte
lines, with a delivered value every ~64 KiB so the mask has work to do), its stdout a pipe the
bench drains, timed from the first byte to the end (start-up excluded). Three ways: `cat` alone;
`secrets-bridge exec -- cat` (the child writes to the pipe itself, the bridge only waits);
`secrets-bridge exec --mask -- cat` (every byte passes through the bridge's pump and its
matcher). Wall times move with the machine's load; the CPU seconds of the whole process tree
move less, and their difference is the mask's own cost. The values come from the `env`
provider, so no server is needed.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _make_text(path: Path, megabytes: int, values: list[bytes]) -> int:
    chunk = base64.encodebytes(os.urandom(48 * 1024))  # ~64 KiB of 76-byte lines
    written = 0
    with open(path, "wb") as out:
        i = 0
        while written < megabytes * 2**20:
            block = chunk + b"token=" + values[i % len(values)] + b"\n"
            out.write(block)
            written += len(block)
            i += 1
    return written


def _drain(argv: list[str], env: dict[str, str]) -> tuple[float, int, float]:
    """Seconds from the first byte out to the end of the stream (start-up excluded), bytes, and
    the CPU seconds of the whole process tree (start-up included; less moved by others' load)."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    total, first = 0, None
    while True:
        data = proc.stdout.read1(1 << 20)
        if not data:
            break
        first = first or time.perf_counter()
        total += len(data)
    end = time.perf_counter()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0 and first is not None, argv
    return end - first, total, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--values", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="sb-mask-bench-", dir="/dev/shm"))
    try:
        values = [base64.b32encode(os.urandom(20)).lower() for _ in range(args.values)]
        text = base / "text"
        size = _make_text(text, args.mb, values)
        env = {**os.environ, **{f"V{i}": v.decode() for i, v in enumerate(values)}}
        config = base / "c.yaml"
        config.write_text(f"output_dir: {base / 'out'}\nlisten: null\nlog_format: json\n"
                          "providers:\n  env: {type: env}\nenv:\n"
                          + "".join(f"  V{i}: {{provider: env, ref: V{i}}}\n" for i in range(args.values)))
        bridge = [shutil.which("secrets-bridge") or f"{sys.prefix}/bin/secrets-bridge", "--config", str(config), "exec"]
        ways = {"cat": [], "exec": [*bridge, "--"], "exec --mask": [*bridge, "--mask", "--"]}
        print(f"{size / 2**20:.0f} MiB of text, {args.values} values of {len(values[0])} bytes, "
              f"median of {args.runs} runs")
        rates, cpu_of = {}, {}
        for name, prefix in ways.items():
            runs, cpus = [], []
            for _ in range(args.runs):
                seconds, total, cpu = _drain([*prefix, "cat", str(text)], env)
                assert total > 0
                runs.append(seconds)
                cpus.append(cpu)
            rates[name] = size / 2**20 / statistics.median(runs)
            cpu_of[name] = statistics.median(cpus)
            print(f"  {name:12s} {rates[name]:6.0f} MiB/s median, {size / 2**20 / min(runs):6.0f} best  "
                  f"(runs {', '.join(f'{r:.2f}' for r in runs)} s; CPU {statistics.median(cpus):.2f} s)")
        print(f"  masked / unmasked (wall): {rates['exec --mask'] / rates['exec']:.3f}")
        mask_cpu = max(1e-9, cpu_of["exec --mask"] - cpu_of["exec"])
        print(f"  the mask's own CPU: {mask_cpu:.2f} s, {size / 2**20 / mask_cpu:.0f} MiB per CPU second")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
