"""Google Cloud Secret Manager API calls a cycle costs: the bridge's scheme vs a metadata-read check.

Runs the project's TLS fake of Secret Manager (tests/gcp_fake.py) in process, writes N secrets per
size, and counts every request at the fake (outside the code measured), split by quota: `access`
calls (90,000 a minute per project) and metadata reads (600 a minute per project):

- bridge cold sync: `fetch_many` over all N (one access each; there is no batch read);
- bridge cycle, nothing changed: `versions` over all N (access `latest`, compare the number);
- bridge cycle with 1% rotated: the same check, then `fetch_many` of what moved (served by the check);
- `previous` pins: `versions` over N `previous` entries (one version listing each);
- the alternative check: `versions.get` of `latest` per secret (a metadata read), then access what moved.

Usage: python bench/gcp_calls.py [--sizes 10,100,1000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.servers import free_port

# google-auth reads the metadata address when first imported: loopback, before anything imports it
_METADATA_PORT = free_port()
os.environ.update(GCE_METADATA_HOST=f"127.0.0.1:{_METADATA_PORT}", GCE_METADATA_IP=f"127.0.0.1:{_METADATA_PORT}",
                  NO_PROXY="127.0.0.1,localhost")
for _name in ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "http_proxy",
              "https_proxy", "HTTP_PROXY"):
    os.environ.pop(_name, None)

from bridge.provider import PREVIOUS, Request  # noqa: E402
from providers.gcp_secretmanager import GcpSecretManagerProvider  # noqa: E402
from tests.gcp_fake import FakeSecretManager  # noqa: E402

PROJECT = "bench-project"
#: published per-project, per-minute quotas
ACCESS_PER_MINUTE = 90_000
METADATA_PER_MINUTE = 600


def counted(fake: FakeSecretManager, action: Callable[[], object]) -> tuple[Counter[str], float]:
    before = len(fake.requests())
    started = time.perf_counter()
    action()
    elapsed = time.perf_counter() - started
    counts: Counter[str] = Counter()
    for method, path, _, _ in fake.requests()[before:]:
        counts["access" if path.endswith(":access") else "metadata" if method == "GET" else "write"] += 1
    return counts, elapsed


def show(counts: Counter[str]) -> str:
    return f"{counts['access']:>5} access + {counts['metadata']:>5} metadata"


def run_size(fake: FakeSecretManager, provider: GcpSecretManagerProvider, n: int) -> None:
    refs = [f"s{n}-{i}" for i in range(n)]
    for ref in refs:
        fake.add_version(PROJECT, ref, b"first")
        fake.add_version(PROJECT, ref, f"value-{ref}".encode())
    latest = [Request(ref) for ref in refs]
    cold, cold_s = counted(fake, lambda: provider.fetch_many(latest))
    steady, steady_s = counted(fake, lambda: provider.versions(latest))
    k = max(1, n // 100)
    rotated = refs[:: n // k][:k]

    def changed_cycle() -> None:
        for ref in rotated:
            fake.add_version(PROJECT, ref, b"rotated")
        current = provider.versions(latest)
        provider.fetch_many([r for r in latest if current[r] != "2"])

    changed_cycle_counts, _ = counted(fake, changed_cycle)
    assert changed_cycle_counts["access"] == n, "a rotated secret cost a second call"
    previous, _ = counted(fake, lambda: provider.versions([Request(ref, PREVIOUS) for ref in refs]))
    client = provider._sm()  # the same client, for the alternative scheme

    def metadata_cycle() -> None:
        for ref in refs:
            client.get_secret_version(name=f"projects/{PROJECT}/secrets/{ref}/versions/latest", retry=None)

    alternative, _ = counted(fake, metadata_cycle)
    per_minute = max(1, ACCESS_PER_MINUTE // n)
    print(f"{n:>6} | cold {show(cold)} ({cold_s:.2f}s) | unchanged {show(steady)} ({steady_s:.2f}s) | "
          f"1% rotated ({len(rotated)}) {show(changed_cycle_counts)} | previous {show(previous)} | "
          f"metadata check {show(alternative)} | refreshes/min within quota: bridge {per_minute}, "
          f"metadata check {METADATA_PER_MINUTE / n:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,100,1000")
    args = parser.parse_args()
    fake = FakeSecretManager(metadata_port=_METADATA_PORT)
    fake.add_project(PROJECT)
    with tempfile.TemporaryDirectory() as tmp:
        key, ca = Path(tmp) / "key.json", Path(tmp) / "ca.pem"
        key.write_text(json.dumps(fake.add_service_account(PROJECT)))
        fake.write_ca(str(ca))
        os.environ["HTTPS_PROXY"] = fake.proxy_url
        settings = GcpSecretManagerProvider.Settings(type="gcp-secretmanager", ca_cert=ca, credentials_file=key)
        provider = GcpSecretManagerProvider("bench", settings)
        try:
            for n in (int(s) for s in args.sizes.split(",")):
                run_size(fake, provider, n)
        finally:
            provider.close()
            fake.close()


if __name__ == "__main__":
    main()
