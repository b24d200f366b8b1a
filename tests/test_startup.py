"""Start-up: each command loads only what its path needs (bridge/startup.py and the lazy imports
across bridge/ and providers/), so a one-shot `sync` pays for no server, watcher, template engine,
environment parser or unnamed provider. Each case runs the real CLI in a fresh interpreter."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: what a one-shot `sync` of plain files must not load
HEAVY = ("prometheus_client", "jinja2", "pydantic_settings", "hvac", "requests", "botocore",
         "azure", "cryptography", "asyncio")

_PROBE = textwrap.dedent("""
    import json, sys
    from bridge.cli import main
    status = main(sys.argv[1:])
    print(json.dumps({"status": status, "loaded": sorted(sys.modules)}))
""")


#: `run` in the probe, stopped by its own SIGTERM once the first file is written
_RUN_PROBE = _PROBE.replace("from bridge.cli import main", textwrap.dedent("""
    import os, signal, threading, time
    from bridge.cli import main
    def stop():
        deadline = time.monotonic() + 30
        while not os.path.exists("out/a") and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=stop, daemon=True).start()
"""))


def _sync(tmp_path: Path, secrets: str, env: dict[str, str] | None = None, *, command: str = "sync",
          listen: str = "null") -> tuple[int, set[str], Path]:
    source = tmp_path / "src"
    source.mkdir(exist_ok=True)
    (source / "a.json").write_text('{"user": "u1", "token": "t1"}')
    out = tmp_path / "out"
    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: {out}\nrequire_tmpfs: false\nlisten: {listen}\n"
                      f"providers:\n  dev: {{type: file, base_dir: {source}}}\nsecrets:\n{secrets}")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SECRETS_BRIDGE_")}
    probe = _RUN_PROBE if command == "run" else _PROBE
    proc = subprocess.run([sys.executable, "-c", probe, "--config", str(config), "--log-format", "text", command],
                          capture_output=True, text=True, env={**clean, **(env or {})}, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    return report["status"], _packages(report["loaded"]), out


def _packages(modules: list[str]) -> set[str]:
    """Loaded modules as top-level packages, plus bridge's own modules by full name."""
    return {m.split(".")[0] for m in modules} | {m for m in modules if m.startswith("bridge.")}


def test_sync_of_plain_files_loads_nothing_heavy(tmp_path: Path) -> None:
    """A `sync` with one file provider and no template writes its file without loading metrics,
    the config watcher, jinja2, pydantic-settings, or any other provider's SDK."""
    status, loaded, out = _sync(tmp_path, "  a: {provider: dev, ref: a.json, key: user}\n")
    assert status == 0 and (out / "a").read_text() == "u1"
    assert sorted(loaded & set(HEAVY)) == []


def test_template_loads_jinja2(tmp_path: Path) -> None:
    """jinja2 is loaded when, and because, the config has a template."""
    secrets = "  app.env:\n    template: 'TOKEN={{ a.token }}'\n    values: {a: {provider: dev, ref: a.json}}\n"
    status, loaded, out = _sync(tmp_path, secrets)
    assert status == 0 and (out / "app.env").read_text() == "TOKEN=t1"
    assert "jinja2" in loaded and "prometheus_client" not in loaded


def test_environment_override_loads_pydantic_settings(tmp_path: Path) -> None:
    """A SECRETS_BRIDGE_* override still applies; only then is pydantic-settings loaded."""
    status, loaded, out = _sync(tmp_path, "  a: {provider: dev, ref: a.json, key: user}\n",
                                env={"SECRETS_BRIDGE_DEFAULTS__MODE": "0400"})
    assert status == 0 and (out / "a").stat().st_mode & 0o777 == 0o400
    assert "pydantic_settings" in loaded


@pytest.mark.parametrize("command", ["ls", "--version"])
def test_state_commands_load_no_engine(tmp_path: Path, command: str) -> None:
    """`ls` and `--version` load neither the engine nor the run-time modules."""
    _sync(tmp_path, "  a: {provider: dev, ref: a.json, key: user}\n")
    probe = _PROBE.replace("status = main(sys.argv[1:])",
                           "try:\n    status = main(sys.argv[1:])\nexcept SystemExit as e:\n    status = e.code")
    args = ["--config", str(tmp_path / "c.yaml"), command] if command == "ls" else [command]
    proc = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=tmp_path,
                          timeout=60)
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["status"] == 0
    loaded = _packages(report["loaded"])
    assert sorted(loaded & {"bridge.engine.cycle", "bridge.runtime.runner", "prometheus_client",
                            "bridge.runtime.inotify"}) == []


@pytest.mark.parametrize(("listen", "metrics"), [("null", False), ("'127.0.0.1:0'", True)])
def test_run_loads_metrics_only_with_a_listener(tmp_path: Path, listen: str, metrics: bool) -> None:
    """`run` loads prometheus_client and the HTTP server only when `listen` serves /metrics."""
    status, loaded, out = _sync(tmp_path, "  a: {provider: dev, ref: a.json, key: user}\n", command="run",
                                listen=listen)
    assert status == 0 and (out / "a").read_text() == "u1"
    assert "bridge.runtime.inotify" in loaded
    assert ("prometheus_client" in loaded, "bridge.runtime.server" in loaded) == (metrics, metrics)


def test_vault_sync_loads_no_charset_detector(tmp_path: Path, openbao) -> None:  # type: ignore[no-untyped-def]
    """A `sync` from Vault writes its file without loading charset_normalizer (requests' detector),
    which another library may still import afterwards."""
    openbao.client().secrets.kv.v2.create_or_update_secret(path="startup/detector", secret={"value": "v1"})
    out = tmp_path / "out"
    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: {out}\nrequire_tmpfs: false\nlisten: null\nproviders:\n"
                      f"  vault: {{type: vault, address: '{openbao.address}'}}\n"
                      "secrets:\n  a: {provider: vault, ref: secret/startup/detector, key: value}\n")
    probe = _PROBE.replace('print(json.dumps({"status": status, "loaded": sorted(sys.modules)}))',
                           'loaded = sorted(sys.modules)\nimport charset_normalizer\n'
                           'print(json.dumps({"status": status, "loaded": loaded}))')
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SECRETS_BRIDGE_")}
    proc = subprocess.run([sys.executable, "-W", "error", "-c", probe, "--config", str(config), "sync"],
                          capture_output=True, text=True, env={**clean, "VAULT_TOKEN": openbao.root_token},
                          cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["status"] == 0 and (out / "a").read_text() == "v1"
    assert "requests" in report["loaded"] and "charset_normalizer" not in report["loaded"]


_NOT_JSON_PROBE = textwrap.dedent("""
    import json, sys, threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from providers.vault import VaultProvider, VaultSettings
    from bridge.provider import Request

    class Page(BaseHTTPRequestHandler):
        def do_GET(self):
            body = "<html>passerelle en \\u00e9chec</html>".encode("latin-1")
            self.send_response(502)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"http://127.0.0.1:{server.server_address[1]}"
    provider = VaultProvider("v", VaultSettings(type="vault", address=address))
    outcome = provider.fetch_many([Request("secret/a")])[Request("secret/a")]
    print(json.dumps({"error": type(outcome).__name__, "message": str(outcome),
                      "detector": "charset_normalizer" in sys.modules}))
""")


def test_vault_error_page_that_is_not_json(tmp_path: Path) -> None:
    """Without the detector, an error answer that is not JSON (a proxy's page in Latin-1) is the same
    Unavailable as with it, and loading requests so warns of nothing (warnings are errors here)."""
    proc = subprocess.run([sys.executable, "-W", "error", "-c", _NOT_JSON_PROBE], capture_output=True, text=True,
                          env={**os.environ, "VAULT_TOKEN": "s.unused"}, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report == {"error": "Unavailable", "message": "v: secret/a: server error: BadGateway", "detector": False}


_LARGE_FREES = textwrap.dedent("""
    import sys
    import bridge.startup
    if sys.argv[1] == "fixed":
        assert bridge.startup.return_large_frees()
    def rss_mib():
        return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) // 1024
    big = bytearray(8 << 20)
    del big  # one big mapped block freed: glibc's own threshold rises to 8 MiB
    blocks = [bytearray(1 << 20) for _ in range(64)]  # 64 MiB in blocks of 1 MiB, then freed
    last = blocks.pop()
    blocks.clear()
    print(rss_mib())
""")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mmap threshold; this C library has another")
def test_large_blocks_freed_leave_the_process() -> None:
    """With glibc's mmap threshold kept fixed, 64 MiB of 1 MiB blocks freed after a large block was
    freed go back to the system; with glibc's rising threshold they stay in the heap, held by the one
    block still in use above them (the pattern of a 100,000-secret start)."""
    def rss(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", _LARGE_FREES, mode], capture_output=True, text=True,
                              check=True, env={k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")})
        return int(done.stdout)
    assert rss("fixed") + 48 < rss("default")
