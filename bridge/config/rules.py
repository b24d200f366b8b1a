"""The rules a whole configuration keeps beyond each field's own type, one function per rule.

Each rule takes the validated file and the map of every target it names (target -> entry), and
raises `FieldError` naming the field that breaks it; `check` runs them in order, so the first
broken rule is the error. A rule never echoes an input value.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from bridge.config.fields import RESERVED_PREFIX, FieldError, check_target
from bridge.config.sections import EnvConfig, OnChange, SecretConfig


class BridgeConfig(Protocol):
    """What the rules read of the whole config (`bridge.config.loader.BridgeConfig`, which runs
    them while it validates itself)."""

    output_dir: Path
    audit_log: Path | None
    providers: dict[str, dict[str, Any]]
    secrets: dict[str, SecretConfig]
    on_change: list[OnChange]
    env: dict[str, EnvConfig]

#: a POSIX environment variable name (an `env:` key)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

Targets = dict[str, str]


def check(config: BridgeConfig) -> None:
    """Every rule in turn; raises FieldError for the first one broken."""
    targets = _targets(config)
    for rule in RULES:
        rule(config, targets)


def _targets(config: BridgeConfig) -> Targets:
    """Each file the entries make (an entry's name, or `entry/file` of a `files:` entry) -> its entry."""
    targets: Targets = {}
    for name, secret in config.secrets.items():
        for file in secret.file_rules():
            targets[f"{name}/{file}"] = name
        targets[name] = name
    return targets


def entry_names_are_targets(config: BridgeConfig, targets: Targets) -> None:
    for name in config.secrets:
        check_target(name, output_dir=config.output_dir)


def entries_have_a_source(config: BridgeConfig, targets: Targets) -> None:
    for name, secret in config.secrets.items():
        for required in ("provider", "ref"):
            if secret.template is None and getattr(secret, required) is None:
                raise FieldError(("secrets", name, required), "required field missing (or give template)")


def sources_name_providers(config: BridgeConfig, targets: Targets) -> None:
    sections: list[tuple[str, dict[str, SecretConfig] | dict[str, EnvConfig]]] = [
        ("secrets", config.secrets), ("env", config.env)]
    for section, entries in sections:
        for name, entry in entries.items():
            for value_name, source in entry.sources().items():
                if source.provider not in config.providers:
                    loc = (section, name, "values", value_name, "provider") if value_name else (
                        section, name, "provider")
                    raise FieldError(loc, f"no provider named {source.provider!r}")


def file_names_are_targets(config: BridgeConfig, targets: Targets) -> None:
    for name, secret in config.secrets.items():
        for file in secret.file_rules():
            check_target(file, ("secrets", name, "files", file))  # a name of its own, as a "*" key is
            check_target(f"{name}/{file}", ("secrets", name, "files", file), config.output_dir)


def templates_compile(config: BridgeConfig, targets: Targets) -> None:
    sections: list[tuple[str, dict[str, SecretConfig] | dict[str, EnvConfig]]] = [
        ("secrets", config.secrets), ("env", config.env)]
    for section, entries in sections:
        for name, entry in entries.items():
            if entry.template is None:
                continue
            from bridge.template.language import compile_template  # Jinja2 only when a config has templates

            try:
                compile_template(entry.template, set(entry.values or {}))
            except ValueError as exc:
                raise FieldError((section, name, "template"), str(exc)) from None


def files_and_folders_apart(config: BridgeConfig, targets: Targets) -> None:
    """A target never lies inside another entry's file, nor inside a `files:` entry's folder."""
    folders = {name for name, s in config.secrets.items() if s.files is not None}
    for target, entry in targets.items():
        parent = posixpath.dirname(target)
        while parent:  # targets are checked relative names: dirname reaches ""
            if parent in config.secrets and parent not in folders:
                raise FieldError(("secrets", entry), f"{parent!r} is a file, not a folder")
            if parent in folders and parent != entry:
                raise FieldError(("secrets", entry), f"{parent!r} is the folder of a files: entry")
            parent = posixpath.dirname(parent)


def env_names_are_variables(config: BridgeConfig, targets: Targets) -> None:
    for name in config.env:
        if not _ENV_NAME.fullmatch(name):
            raise FieldError(("env", name), "not a POSIX variable name ([A-Za-z_][A-Za-z0-9_]*)")
        if f"${name}" in config.secrets:
            raise FieldError(("secrets", f"${name}"), f"the name of env variable {name} in logs; rename the file")


def hooks_name_targets(config: BridgeConfig, targets: Targets) -> None:
    for i, hook in enumerate(config.on_change):
        for name in hook.secrets or ():
            if name not in targets:
                raise FieldError(("on_change", str(i), "secrets"), f"no secret or file named {name!r}")


def audit_log_outside_the_secrets(config: BridgeConfig, targets: Targets) -> None:
    """Inside output_dir the audit log would be a name the bridge manages (a target, the state
    file, a generation): appends would corrupt it, or a commit would remove it."""
    if config.audit_log is None:
        return
    relative = os.path.relpath(os.path.abspath(config.audit_log), os.path.abspath(config.output_dir))
    if relative.startswith(".." + os.sep) or relative == "..":
        return
    if relative == ".":
        raise FieldError(("audit_log",), "is output_dir itself: name a file outside it")
    first = relative.split(os.sep)[0]
    if first.startswith((RESERVED_PREFIX, "..")) or first in {t.split("/")[0] for t in targets}:
        raise FieldError(("audit_log",), "names a file the bridge manages in output_dir")


def providers_have_a_type(config: BridgeConfig, targets: Targets) -> None:
    for name, section in config.providers.items():
        if not isinstance(section.get("type"), str):
            raise FieldError(("providers", name, "type"), "missing provider type")


RULES: tuple[Callable[[BridgeConfig, Targets], None], ...] = (
    entry_names_are_targets,
    entries_have_a_source,
    env_names_are_variables,
    sources_name_providers,
    file_names_are_targets,
    templates_compile,
    files_and_folders_apart,
    hooks_name_targets,
    audit_log_outside_the_secrets,
    providers_have_a_type,
)
