"""SSM Parameter Store API calls: the bridge's change check against the alternatives.

Runs moto's server on loopback, creates N parameters per size (every other one a SecureString) in a
region of its own, and counts every request at a counting proxy in front of moto (outside the code
measured) for:

- bridge cold sync: `fetch_many` over all N names (GetParameters, 10 names a call, decrypted);
- bridge steady cycle, nothing changed: `versions` over all N (GetParameters without
  decryption, reading the Version each answer carries);
- bridge cycle with 1% changed: the same check, then `fetch_many` of what moved;
- alternative check: DescribeParameters with a `Name Equals` filter of up to 50 names, every page
  (it cannot answer a label pin, and a change still needs a GetParameters to read the value);
- a path of N parameters: the bridge's read and check (GetParametersByPath, recursive) and the
  DescribeParameters `Path Recursive` alternative;
- peer (ESO / Secrets Store CSI style): one GetParameter per parameter, every cycle.

Usage: python bench/ssm_calls.py [--sizes 10,100,1000]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import boto3

from bench.aws_calls import isolate_environment, measure
from bridge.provider import Fetched, Request
from providers.aws_ssm import ParameterStoreProvider, ParameterStoreSettings
from tests.aws_counting_proxy import CountingProxy, start_moto, stop

REGIONS = ["eu-west-1", "eu-central-1", "ap-northeast-1", "sa-east-1", "ca-central-1", "us-west-2"]
#: DescribeParameters takes up to 50 values in one filter and up to 50 results a page
DESCRIBE_NAMES = 50


def describe_pages(client: Any, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every page of DescribeParameters for these filters."""
    found: list[dict[str, Any]] = []
    params: dict[str, Any] = {"ParameterFilters": filters, "MaxResults": 50}
    while True:
        response = client.describe_parameters(**params)
        found.extend(response.get("Parameters", []))
        if not response.get("NextToken"):
            return found
        params["NextToken"] = response["NextToken"]


def run_size(moto_url: str, proxy: CountingProxy, n: int, region: str) -> None:
    writer = boto3.client("ssm", endpoint_url=moto_url, region_name=region)
    started = time.perf_counter()
    names = [f"/bench/app/p{i:05d}" for i in range(n)]
    for i, name in enumerate(names):
        writer.put_parameter(Name=name, Value=f"v{i}", Type="SecureString" if i % 2 else "String")
    print(f"\n## N = {n:,} parameters ({region}; created in {time.perf_counter() - started:.1f}s)\n")

    aws = ParameterStoreProvider("bench", ParameterStoreSettings(region=region, endpoint_url=proxy.url))
    reader: Any = boto3.client("ssm", endpoint_url=proxy.url, region_name=region)
    requests = [Request(name) for name in names]
    rows: list[tuple[str, Counter[str], float]] = []

    def add(label: str, action: Callable[[], object]) -> None:
        counts, seconds = measure(proxy, action)
        rows.append((label, counts, seconds))

    known: dict[Request, object] = {}
    add("bridge: cold sync (GetParameters, decrypted)", lambda: aws.fetch_many(requests))
    add("bridge: steady check (GetParameters, no decryption)", lambda: known.update(aws.versions(requests)))
    changed = names[:: 100]
    for name in changed:
        writer.put_parameter(Name=name, Value="changed", Type="String", Overwrite=True)

    def changed_cycle() -> None:
        now = aws.versions(requests)
        moved = [r for r in requests if now[r] != known[r]]
        fetched = aws.fetch_many(moved)
        assert len(moved) == len(changed) and all(isinstance(f, Fetched) for f in fetched.values())

    add(f"bridge: cycle with {len(changed)} changed (check, fetch those)", changed_cycle)

    def describe_check() -> None:
        for start in range(0, n, DESCRIBE_NAMES):
            chunk = names[start : start + DESCRIBE_NAMES]
            describe_pages(reader, [{"Key": "Name", "Option": "Equals", "Values": chunk}])

    add("alternative: DescribeParameters by name (50 a filter)", describe_check)

    def peer_cycle() -> None:
        for name in names:
            reader.get_parameter(Name=name, WithDecryption=True)

    add("peer: every cycle (GetParameter each)", peer_cycle)
    path = Request("/bench/app/")
    add("bridge: path read (GetParametersByPath, decrypted)", lambda: aws.fetch_many([path]))
    add("bridge: path check (GetParametersByPath, no decryption)", lambda: aws.versions([path]))
    add("alternative: path check by DescribeParameters (Path Recursive)",
        lambda: describe_pages(reader, [{"Key": "Path", "Option": "Recursive", "Values": ["/bench/app"]}]))

    print("| run | calls | by operation | seconds (moto) |")
    print("|---|---:|---|---:|")
    for label, counts, seconds in rows:
        described = ", ".join(f"{op} {k:,}" for op, k in sorted(counts.items())) or "none"
        print(f"| {label} | {sum(counts.values()):,} | {described} | {seconds:.2f} |")
    aws.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,100,1000", help="comma-separated parameter counts")
    args = parser.parse_args()
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    if len(sizes) > len(REGIONS):
        parser.error(f"at most {len(REGIONS)} sizes")
    isolate_environment()
    process, moto_url = start_moto()
    proxy = CountingProxy(moto_url)
    try:
        print("# SSM Parameter Store calls (moto through a counting proxy)")
        for n, region in zip(sizes, REGIONS, strict=False):
            run_size(moto_url, proxy, n, region)
    finally:
        proxy.close()
        stop(process)


if __name__ == "__main__":
    main()
