"""`secrets-bridge run` through a fault proxy in front of OpenBao, moto and the Azure Key Vault fake,
while the secrets rotate upstream: files stay whole, retries stay bounded, Retry-After is honoured,
and the files converge once the faults stop."""

from __future__ import annotations

import json
import random
import re
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.aws_counting_proxy import free_port, start_moto, stop
from tests.azure_fake import FakeKeyVault
from tests.azure_fixtures import VAULT_URL, ca_file, fake  # noqa: F401 - fixtures
from tests.conftest import OpenBao
from tests.fault_proxy import KINDS, FaultProxy
from tests.harness import Bridge
from tests.reliability_kit import Leaks, merge_reports, readers, record, tmpfs_dir, wait_for

REGION = "us-east-1"
PER_PROVIDER = 5
INTERVAL = 1.0
JITTER = 0.1
FAULT_SECONDS = 40.0
RATES = {"reset": 0.06, "hang": 0.03, "5xx": 0.08, "429": 0.06, "slow": 0.06}
_NAME = re.compile(r"(rel-[0-9a-f]{6}-\d+)")


def _names_in(text: str) -> list[str]:
    return sorted(set(_NAME.findall(text)))


def _vault_keys(method: str, path: str, body: bytes) -> list[str]:
    return _names_in(path) or [path.split("?")[0]]


def _aws_keys(method: str, path: str, body: bytes) -> list[str]:
    return _names_in(body.decode("utf-8", "replace")) or ["(listing)"]


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    process, url = start_moto()
    yield url
    stop(process)


class Upstreams:
    """The three real servers, written to directly (never through the proxies), and what was written."""

    def __init__(self, openbao: OpenBao, moto_url: str, fake: FakeKeyVault) -> None:  # noqa: F811
        import boto3

        tag = uuid.uuid4().hex[:6]
        self.names = {kind: [f"rel-{tag}-{i}" for i in range(PER_PROVIDER * n, PER_PROVIDER * (n + 1))]
                      for n, kind in enumerate(("vault", "aws", "azure"))}
        self.vault = openbao.client()
        self.aws = boto3.client("secretsmanager", region_name=REGION, endpoint_url=moto_url,
                                aws_access_key_id="testing", aws_secret_access_key="testing")
        self.fake = fake
        self.written: dict[str, list[str]] = {}
        self.lock = threading.Lock()
        for kind, names in self.names.items():
            for name in names:
                self.rotate(kind, name, create=True)

    def rotate(self, kind: str, name: str, create: bool = False) -> str:
        with self.lock:
            value = f"{name}-v{len(self.written.get(name, []))}-{uuid.uuid4().hex}"
            self.written.setdefault(name, []).append(value)
        if kind == "vault":
            self.vault.secrets.kv.v2.create_or_update_secret(path=name, secret={"value": value})
        elif kind == "aws" and create:
            self.aws.create_secret(Name=name, SecretString=value)
        elif kind == "aws":
            self.aws.put_secret_value(SecretId=name, SecretString=value)
        else:
            self.fake.set_secret(VAULT_URL, name, value)
        return value

    def latest(self, name: str) -> str:
        with self.lock:
            return self.written[name][-1]

    def kind_of(self, name: str) -> str:
        return next(kind for kind, names in self.names.items() if name in names)


def _config(out: Path, vault: FaultProxy, aws: FaultProxy, token_file: Path, ca: Path, ups: Upstreams,
            port: int) -> str:
    entries = "".join(
        f"  {name}: {{provider: vault, ref: secret/{name}, key: value}}\n" for name in ups.names["vault"]
    ) + "".join(f"  {name}: {{provider: aws, ref: {name}}}\n" for name in ups.names["aws"]
    ) + "".join(f"  {name}: {{provider: azure, ref: {name}}}\n" for name in ups.names["azure"])
    return (
        f"output_dir: {out}\nrefresh_interval: {INTERVAL}s\njitter: {JITTER}\nlisten: '127.0.0.1:{port}'\n"
        "providers:\n"
        f"  vault: {{type: vault, address: '{vault.url}', timeout: 1.5,"
        f" auth: {{method: token, token_file: '{token_file}'}}}}\n"
        f"  aws: {{type: aws-secretsmanager, region: {REGION}, endpoint_url: '{aws.url}', timeout_seconds: 1.5}}\n"
        f"  azure: {{type: azure-keyvault, vault_url: '{VAULT_URL}', ca_cert: '{ca}', timeout_seconds: 1.5}}\n"
        f"secrets:\n{entries}"
    )


def _azure_env(server: FakeKeyVault, proxy: FaultProxy) -> dict[str, str]:
    """The CONNECT proxy the Azure SDK goes through is the fault proxy, which terminates TLS with a
    certificate from the fake's own CA and forwards each request to the fake's TLS port."""
    return {"HTTPS_PROXY": proxy.url, "NO_PROXY": "127.0.0.1,localhost", "AZURE_TENANT_ID": server.tenant_id,
            "AZURE_CLIENT_ID": "env-client", "AZURE_CLIENT_SECRET": server.state.clients["env-client"],
            "IDENTITY_ENDPOINT": server.identity_endpoint, "IDENTITY_HEADER": server.state.identity_header,
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.mark.slow
def test_run_through_faults(openbao: OpenBao, moto_url: str, fake: FakeKeyVault, ca_file: Path,  # noqa: F811
                            tmp_path: Path) -> None:
    """Through resets, hangs, 5xx, 429s and slow bodies from all three providers while secrets rotate:
    readers never see an empty, partial or unwritten value, each secret's requests per minute stay
    under the backoff's bound, no request comes before its Retry-After, and after the faults stop
    every file converges to the latest value."""
    if "env-client" not in fake.state.clients:
        fake.add_client("env-client")
    ups = Upstreams(openbao, moto_url, fake)
    proxies = {
        "vault": FaultProxy(openbao.address, key_of=_vault_keys, seed=1),
        "aws": FaultProxy(moto_url, key_of=_aws_keys, seed=2),
        "azure": FaultProxy(f"https://127.0.0.1:{fake._tls.server_address[1]}", key_of=_vault_keys, seed=3,
                            mitm=fake.ca.issue_cert("*.vault.azure.net", "login.microsoftonline.com"),
                            upstream_ca=str(ca_file)),
    }
    out = tmpfs_dir("faults")
    token_file = tmp_path / "token"
    token_file.write_text(openbao.root_token)
    port = free_port()
    config = tmp_path / "bridge.yaml"
    config.write_text(_config(out, proxies["vault"], proxies["aws"], token_file, ca_file, ups, port))
    bridge = Bridge(config, options=("--debug", "--log-format", "json"), env=_azure_env(fake, proxies["azure"]))
    leaks = Leaks()
    leaks.secret(openbao.root_token, fake.state.clients["env-client"], fake.state.identity_header)
    every = [name for names in ups.names.values() for name in names]
    rotations: Counter[str] = Counter()
    try:
        bridge.start()
        assert wait_for(lambda: all(_read(out / n) == ups.latest(n) for n in every), 60), bridge.output()[-3000:]
        with readers(2, out, every, work=tmp_path) as reports:
            for proxy in proxies.values():
                proxy.inject(RATES)
            started = time.monotonic()
            counts_before = {kind: Counter(p.seen) for kind, p in proxies.items()}
            rng = random.Random(7)
            while time.monotonic() - started < FAULT_SECONDS:
                name = rng.choice(every)
                ups.rotate(ups.kind_of(name), name)
                rotations[ups.kind_of(name)] += 1
                time.sleep(0.15)
            faulted = time.monotonic() - started
            for proxy in proxies.values():
                proxy.heal()
            for name in every:
                ups.rotate(ups.kind_of(name), name)
            converged = wait_for(lambda: all(_read(out / n) == ups.latest(n) for n in every), 90)
            healed = time.monotonic() - started - faulted
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            leaks.text("metrics", response.read())
        assert bridge.stop() == 0
    finally:
        bridge.kill()
        for proxy in proxies.values():
            proxy.close()
    assert converged, f"files did not converge after the faults stopped\n{bridge.output()[-3000:]}"

    merged = merge_reports(reports)
    torn = {n: [v for v in e["values"] if v not in ups.written[n]] for n, e in merged.items()}
    bad = {n: {"torn": t[:2], "empty": len(merged[n]["empty"]), "missing": len(merged[n]["missing"]),
               "errors": merged[n]["errors"][:2]}
           for n, t in torn.items() if t or merged[n]["empty"] or merged[n]["missing"] or merged[n]["errors"]}
    assert not bad, bad
    reads = sum(e["reads"] for e in merged.values())
    assert reads > 0 and set(merged) == set(every)

    # retries bounded: a cycle is at most a change check and a fetch (plus a mount lookup for Vault);
    # never more often than every interval less its jitter. A retry loop without backoff would
    # make hundreds of requests per second.
    bound = 3 * 60 / (INTERVAL * (1 - JITTER))
    minutes = (faulted + healed) / 60
    rates = {}
    for kind, proxy in proxies.items():
        for name in ups.names[kind]:
            rates[name] = (proxy.seen[name] - counts_before[kind][name]) / minutes
    worst = max(rates.values())
    assert worst < bound, sorted(rates.items(), key=lambda kv: -kv[1])[:3]

    early = {kind: p.early for kind, p in proxies.items() if p.early}
    assert not early, f"requests before their Retry-After passed: {early}"
    injected = Counter[str]()
    for proxy in proxies.values():
        injected.update(proxy.faults)
    assert all(injected[kind] > 0 for kind in KINDS), injected

    leaks.secret(*(v for values in ups.written.values() for v in values))
    leaks.text("log", bridge.output())
    leaks.file("state", out / ".secrets-bridge-state.json")
    leaks.check("faults")
    record("faults", trials=1, seconds_under_faults=round(faulted), rotations=sum(rotations.values()),
           requests=sum(p.requests() for p in proxies.values()), reads=reads,
           faults_by_kind=dict(injected), faults_by_provider={k: sum(p.faults.values()) for k, p in proxies.items()},
           torn_empty_missing=0, retry_after_early=0, peak={"max_requests_per_secret_minute": round(worst),
                                                             "converged_seconds": round(healed, 1)},
           fixed={"bound_per_secret_minute": round(bound)})


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None



def test_fault_proxy_injects_each_kind(openbao: OpenBao) -> None:
    """The proxy's faults are what a client sees: a reset, a timeout, a 503, a 429 with Retry-After,
    a slow but whole body; a request inside the Retry-After is recorded as early, and faults and
    requests are counted."""
    import http.client
    import urllib.error

    proxy = FaultProxy(openbao.address, hang_seconds=2.0, retry_after=30)
    url = f"{proxy.url}/v1/sys/health"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            direct = response.read()
        proxy.inject(schedule=["reset", "hang", "5xx", "429", None, "slow"])
        with pytest.raises((ConnectionError, http.client.RemoteDisconnected, urllib.error.URLError)):
            urllib.request.urlopen(url, timeout=5)
        with pytest.raises((TimeoutError, urllib.error.URLError)) as timed_out:
            urllib.request.urlopen(url, timeout=0.5)
        assert "timed out" in str(timed_out.value)
        with pytest.raises(urllib.error.HTTPError) as server_error:
            urllib.request.urlopen(url, timeout=5)
        assert server_error.value.code == 503
        with pytest.raises(urllib.error.HTTPError) as throttled:
            urllib.request.urlopen(url, timeout=5)
        assert (throttled.value.code, throttled.value.headers["Retry-After"]) == (429, "30")
        with urllib.request.urlopen(url, timeout=5) as response:  # inside the Retry-After: early
            assert response.status == 200
        with urllib.request.urlopen(url, timeout=5) as response:  # slow: whole, a few bytes at a time
            assert json.loads(response.read()).keys() == json.loads(direct).keys()  # its clock field moves
    finally:
        proxy.close()
    assert proxy.faults == Counter({"reset": 1, "hang": 1, "5xx": 1, "429": 1, "slow": 1})
    assert proxy.requests() == 7 and [key for key, _ in proxy.early] == ["/v1/sys/health"]
