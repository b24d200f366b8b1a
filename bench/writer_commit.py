"""Writer commit and drift-check times at 1,000 and 10,000 files (prints figures, asserts nothing).

    PYTHONPATH=. python bench/writer_commit.py [--dir /dev/shm] [--rounds 50]

For each size: the first commit (every file written); a commit of one changed file through a
prepared spare (the engine's steady state: prune() ran between commits); the same without a spare
(every unchanged file linked at commit time); the off-path prune() that prepares the next spare,
recycling the replaced generation or, when there is none, linking a whole new one; check_drift()
when all is well, right after a commit (every top-level link read again, as the output directory
changed) and idle (links trusted while the directory's mtime stays).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

from bridge.writer.atomic import FileSpec, Writer


def _ms(samples: list[tuple[float, float]]) -> str:
    wall = sorted(w for w, _ in samples)
    p95 = wall[min(len(wall) - 1, int(len(wall) * 0.95))]
    cpu = statistics.median(c for _, c in samples)
    return (f"median {statistics.median(wall) * 1000:7.2f} ms   p95 {p95 * 1000:7.2f} ms   "
            f"(cpu median {cpu * 1000:6.2f} ms)")


def _timed(fn) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Wall and CPU seconds: on a shared machine the CPU time says what the code costs."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def bench(base: Path, files: int, rounds: int) -> None:
    out = base / f"sb-bench-writer-{files}"
    shutil.rmtree(out, ignore_errors=True)
    w = Writer(out, require_tmpfs=False)
    w.prepare()
    names = [f"app/s{i:05d}" if i % 10 == 0 else f"s{i:05d}" for i in range(files)]
    first = _timed(lambda: w.commit({name: FileSpec(b"value-%d" % i, 0o444) for i, name in enumerate(names)}))
    spare, at_commit, prune, build, drift, idle = [], [], [], [], [], []
    for r in range(rounds):
        prune.append(_timed(lambda: w.prune(grace_seconds=0)))
        name = names[(r * 7919) % files]
        spare.append(_timed(lambda: w.commit({name: FileSpec(b"changed-%d" % r, 0o444)})))  # noqa: B023
        drift.append(_timed(w.check_drift))
        time.sleep(0.06)  # past the coarse clock's margin
        w.check_drift()
        idle.append(_timed(w.check_drift))
    for r in range(min(rounds, 10)):
        w.release()  # drops the spares: the next commit links at commit time
        w.prepare()
        name = names[(r * 104729) % files]
        at_commit.append(_timed(lambda: w.commit({name: FileSpec(b"again-%d" % r, 0o444)})))  # noqa: B023
        w.release()
        w.prepare()
        build.append(_timed(lambda: w.prune(grace_seconds=0)))  # no generation to recycle: link them all
    print(f"{files:>6} files  first commit (all written)   {first[0] * 1000:8.1f} ms   (cpu {first[1] * 1000:.1f} ms)")
    print(f"{files:>6} files  commit of 1, spare ready     {_ms(spare)}")
    print(f"{files:>6} files  commit of 1, linked at commit {_ms(at_commit)}")
    print(f"{files:>6} files  prune() recycling a spare    {_ms(prune)}")
    print(f"{files:>6} files  prune() linking a new spare  {_ms(build)}")
    print(f"{files:>6} files  check_drift() after a commit {_ms(drift)}")
    print(f"{files:>6} files  check_drift() idle           {_ms(idle)}")
    w.release()
    shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm"))
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; directory {args.dir}")
    for files in (1_000, 10_000):
        bench(args.dir, files, args.rounds)


if __name__ == "__main__":
    main()
