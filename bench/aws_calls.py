"""AWS Secrets Manager API calls: secrets-bridge's batching vs the per-secret peer approach.

Runs moto's server on loopback, creates N secrets per size in a region of their own, and counts
every request at a counting proxy in front of moto (outside the code measured) for:

- bridge cold sync: `fetch_many` over all N (BatchGetSecretValue, 20 per call);
- bridge steady cycle, nothing changed: `current_versions` over all N (ListSecrets, 100 per page);
- bridge cycle with 1% rotated: the same check, then `fetch_many` of what moved;
- peer (ESO / Secrets Store CSI style): one GetSecretValue per secret, cold and every cycle.

Usage: python bench/aws_calls.py [--sizes 100,1000,10000] [--interval 5m]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import boto3

from bridge.config.fields import parse_duration
from bridge.provider import Fetched, Request
from providers.aws_secretsmanager import SecretsManagerProvider, SecretsManagerSettings
from tests.aws_counting_proxy import CountingProxy, start_moto, stop
from tests.versions import latest

#: list price, USD per 10,000 API calls
PRICE_PER_10K = 0.05
REGIONS = ["eu-west-1", "eu-central-1", "ap-northeast-1", "sa-east-1", "ca-central-1", "us-west-2"]


def isolate_environment() -> None:
    """Dummy credentials; nothing leaves loopback."""
    for name in list(os.environ):
        if name.startswith("AWS_") or name.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            del os.environ[name]
    os.environ.update(
        AWS_ACCESS_KEY_ID="AKIABENCHDUMMYKEY001",
        AWS_SECRET_ACCESS_KEY="bench-dummy-secret",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        NO_PROXY="127.0.0.1,localhost",
    )


def measure(proxy: CountingProxy, action: Callable[[], object]) -> tuple[Counter[str], float]:
    proxy.reset()
    started = time.perf_counter()
    action()
    return Counter(proxy.counts), time.perf_counter() - started


def describe(counts: Counter[str]) -> str:
    return ", ".join(f"{op} {n:,}" for op, n in sorted(counts.items())) or "none"


def run_size(moto_url: str, proxy: CountingProxy, n: int, region: str, cycles_per_month: float) -> None:
    writer = boto3.client("secretsmanager", endpoint_url=moto_url, region_name=region)
    started = time.perf_counter()
    # one writer at a time: moto_server can answer 500 to concurrent CreateSecret calls
    refs = [str(writer.create_secret(Name=f"bench/{i:05d}", SecretString=f"v{i}")["Name"]) for i in range(n)]
    print(f"\n## N = {n:,} secrets ({region}; created in {time.perf_counter() - started:.1f}s)\n")

    aws = SecretsManagerProvider("bench", SecretsManagerSettings(region=region, endpoint_url=proxy.url))
    peer: Any = boto3.client("secretsmanager", endpoint_url=proxy.url, region_name=region)
    requests = [Request(ref) for ref in refs]
    rows: list[tuple[str, Counter[str], float]] = []

    counts, seconds = measure(proxy, lambda: aws.fetch_many(requests))
    rows.append(("bridge: cold sync", counts, seconds))
    known: dict[str, object] = {}
    counts, seconds = measure(proxy, lambda: known.update(latest(aws, refs)))
    rows.append(("bridge: steady cycle, nothing changed", counts, seconds))
    steady_bridge = sum(counts.values())

    rotated = refs[::100]
    for ref in rotated:
        writer.put_secret_value(SecretId=ref, SecretString="rotated")

    def changed_cycle() -> None:
        now = latest(aws, refs)
        moved = [Request(ref) for ref in refs if now[ref] != known[ref]]
        fetched = aws.fetch_many(moved)
        assert len(moved) == len(rotated) and all(isinstance(f, Fetched) for f in fetched.values())

    counts, seconds = measure(proxy, changed_cycle)
    rows.append((f"bridge: cycle with {len(rotated)} rotated (fetch only those)", counts, seconds))

    def peer_cycle() -> None:
        for ref in refs:
            peer.get_secret_value(SecretId=ref)

    counts, seconds = measure(proxy, peer_cycle)
    rows.append(("peer: cold sync (GetSecretValue each)", counts, seconds))
    counts, seconds = measure(proxy, peer_cycle)
    rows.append(("peer: steady cycle (GetSecretValue each)", counts, seconds))
    steady_peer = sum(counts.values())

    print("| run | calls | by operation | seconds (moto) |")
    print("|---|---:|---|---:|")
    for label, counts, seconds in rows:
        print(f"| {label} | {sum(counts.values()):,} | {describe(counts)} | {seconds:.2f} |")
    for who, calls in (("bridge", steady_bridge), ("peer", steady_peer)):
        monthly = calls * cycles_per_month
        print(f"\n{who}: {calls:,} calls per steady cycle -> {monthly:,.0f} calls/month "
              f"= ${monthly / 10_000 * PRICE_PER_10K:,.2f}/month at the refresh interval given", end="")
    print(f"\n\nsteady-state reduction: {steady_peer / max(steady_bridge, 1):,.0f}x fewer calls")
    aws.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100,1000,10000", help="comma-separated secret counts")
    parser.add_argument("--interval", default="5m", help="refresh interval for the monthly cost line")
    args = parser.parse_args()
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    if len(sizes) > len(REGIONS):
        parser.error(f"at most {len(REGIONS)} sizes")
    cycles_per_month = 30 * 86400 / parse_duration(args.interval)
    isolate_environment()
    process, moto_url = start_moto()
    proxy = CountingProxy(moto_url)
    try:
        print(f"# AWS Secrets Manager calls (moto through a counting proxy; refresh every {args.interval})")
        for n, region in zip(sizes, REGIONS, strict=False):
            run_size(moto_url, proxy, n, region, cycles_per_month)
    finally:
        proxy.close()
        stop(process)


if __name__ == "__main__":
    main()
