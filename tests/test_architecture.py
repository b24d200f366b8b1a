"""The rooms of bridge/ as README "Architecture" draws them: data flows one way, no import cycle
(imports under TYPE_CHECKING included), and the core names no provider."""

from __future__ import annotations

import ast
from pathlib import Path

BRIDGE = Path(__file__).parent.parent / "bridge"

#: what each room may import (besides itself); the leaves `bridge.errors`, `bridge.certificates` and
#: `bridge.inotify_queue` (which a provider uses too) are open to all
ALLOWED = {
    "observe": set(),
    "template": set(),
    "provider": {"observe"},
    "config": {"provider", "observe", "template"},
    "writer": {"config", "observe"},
    "engine": {"config", "provider", "template", "writer", "observe"},
    "runtime": {"config", "provider", "engine", "writer", "observe"},
    "cli": {"config", "provider", "engine", "writer", "runtime", "observe", "startup"},
}


_LEAVES = {"errors", "certificates", "inotify_queue", "bridge"}


def _module(path: Path) -> str:
    parts = path.relative_to(BRIDGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Each bridge module and the bridge modules it imports, wherever in the file."""
    modules = {_module(p): p for p in BRIDGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bridge"):
                found |= {f"{node.module}.{a.name}" for a in node.names} & modules.keys() or {node.module}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("bridge")}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def _room(module: str) -> str:
    parts = module.split(".")
    name = parts[1] if len(parts) > 1 else "bridge"
    return {"provider_rules": "provider"}.get(name, name)


def test_no_import_cycles() -> None:
    """No module reaches itself through imports (type-checking imports count)."""
    graph = _imports()
    cycles = []
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append(" -> ".join([*path, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert cycles == []


def test_rooms_import_only_upstream() -> None:
    """Each room imports only the rooms its package docstring allows."""
    wrong = sorted(f"{m} -> {d}" for m, deps in _imports().items() for d in deps
                   if _room(m) in ALLOWED and _room(d) not in ALLOWED[_room(m)] | {_room(m), *_LEAVES})
    assert wrong == []


def test_the_core_names_no_provider() -> None:
    """No module of bridge/ imports a provider module or an SDK, or names a built-in provider type."""
    named = []
    for path in BRIDGE.rglob("*.py"):
        text = path.read_text()
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in {
                    "providers", "hvac", "boto3", "botocore", "azure", "google"}:
                named.append(f"{path.name}: from {node.module}")
            if isinstance(node, ast.Constant) and node.value in {
                    "aws-secretsmanager", "azure-keyvault", "gcp-secretmanager", "aws-ssm", "hvac", "botocore"}:
                named.append(f"{path.name}: {node.value!r}")
    assert named == []
