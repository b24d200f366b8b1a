"""Azure Key Vault cold fetch: one GET after another vs the bounded pool `fetch_many` uses.

Key Vault has no batch read, so a cold start of N secrets is N GETs. This starts the project's TLS
Key Vault fake (tests/azure_fake.py) on loopback, writes N secrets, and times a cold `fetch_many`
with a fresh provider each round: serially (`each` with one worker) and on the pool
(`each_concurrently`, 8 workers). Each round includes the challenge and the token request.
The fake serves from one Python process on a shared machine, so with no added latency the ratio
shows only the TLS and HTTP work the pool overlaps; `--latency` adds a round trip per vault request,
as a real vault region away would (Key Vault answers in ~10-30 ms in-region).

Usage: python bench/azure_cold_fetch.py [--secrets 100] [--rounds 5] [--latency 0.02]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.provider import Fetched, Request
from bridge.provider_rules import each_concurrently
from providers.azure_keyvault import KeyVaultProvider
from tests.azure_fake import FakeKeyVault


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secrets", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each vault response")
    args = parser.parse_args()
    fake = FakeKeyVault()
    fake.state.latency_seconds = args.latency
    ca = fake.write_ca(str(Path(tempfile.mkdtemp()) / "ca.pem"))
    client_id, secret = fake.add_client()
    for name in [k for k in os.environ if k.upper() in ("HTTP_PROXY", "ALL_PROXY") or k.startswith("AZURE_")]:
        del os.environ[name]
    os.environ.update({"HTTPS_PROXY": fake.proxy_url, "NO_PROXY": "127.0.0.1,localhost",
                       "IDENTITY_ENDPOINT": fake.identity_endpoint, "IDENTITY_HEADER": "unused"})
    url = f"https://kv-{uuid.uuid4().hex[:12]}.vault.azure.net"
    names = [f"s{i:04d}" for i in range(args.secrets)]
    for name in names:
        fake.set_secret(url, name, f"value-{name}")
    requests = [Request(n) for n in names]
    settings = KeyVaultProvider.Settings(type="azure-keyvault", vault_url=url, ca_cert=ca, credential={
        "method": "client_secret", "tenant_id": fake.tenant_id, "client_id": client_id, "client_secret": secret})

    def cold(workers: int) -> float:
        provider = KeyVaultProvider("bench", settings)
        try:
            start = time.perf_counter()
            got = each_concurrently(provider, [(r, r) for r in requests], provider.fetch, workers=workers)
            elapsed = time.perf_counter() - start
        finally:
            provider.close()
        assert all(isinstance(o, Fetched) for o in got.values()), "a fetch failed"
        return elapsed

    results: dict[int, list[float]] = {1: [], 8: []}
    for _ in range(args.rounds):
        for workers in results:
            results[workers].append(cold(workers))
    serial, pooled = (statistics.median(results[w]) for w in (1, 8))
    print(f"Azure Key Vault (fake, TLS over loopback, +{args.latency * 1000:.0f} ms per request), "
          f"cold fetch of {args.secrets} secrets, median of {args.rounds} rounds:")
    print(f"  one after another: {serial:.3f} s")
    print(f"  pool of 8:         {pooled:.3f} s  ({serial / pooled:.1f}x faster)")
    fake.close()


if __name__ == "__main__":
    main()
