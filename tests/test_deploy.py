"""The shipped Dockerfile, manifests and example configs are valid as written."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from bridge.config import parse_config
from tests.servers import venv_binary

ROOT = Path(__file__).resolve().parent.parent


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_dockerfile_lints_clean() -> None:
    """hadolint finds nothing in the Dockerfile."""
    proc = _run(venv_binary("hadolint"), "Dockerfile")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_file_matches_compose_spec() -> None:
    """deploy/compose.yaml validates against the Compose specification's schema."""
    proc = _run(venv_binary("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "deploy/compose.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_kubernetes_manifests_validate() -> None:
    """Every Kubernetes manifest validates strictly against the API schemas."""
    manifests = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "deploy" / "kubernetes").glob("*.yaml"))
    proc = _run(venv_binary("kubernetes-validate"), "--strict", *manifests)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _configs() -> list[tuple[str, str]]:
    found = [(str(p.relative_to(ROOT)), p.read_text()) for p in sorted((ROOT / "examples").glob("*.yaml"))]
    for doc in sorted(ROOT.glob("*.md")) + sorted((ROOT / "docs").glob("*.md")):
        blocks = re.findall(r"```yaml\n(.*?)```", doc.read_text(), re.S)
        found += [(f"{doc.relative_to(ROOT)}#{i}", block) for i, block in enumerate(blocks) if "secrets:" in block]
    for manifest in sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(manifest.read_text()):
            if doc and doc.get("kind") == "ConfigMap":
                for key, text in doc.get("data", {}).items():
                    found.append((f"{manifest.name}:{key}", text))
    return found


@pytest.mark.parametrize(("where", "text"), _configs(), ids=[w for w, _ in _configs()])
def test_example_configs_are_valid(where: str, text: str) -> None:
    """Each example config, ConfigMap config and YAML block of the docs passes the bridge's own validation."""
    config = parse_config(text, source=where)
    assert config.settings.secrets
