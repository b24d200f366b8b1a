"""Fetch units and entries: the engine's model of a configuration.

A fetch unit is one (provider, ref, version, params): fetched once per cycle however many entries
name it, and for a leased secret one lease. An entry (a plain entry, a `files:` entry, a
`template:` entry) derives files from its units. This module builds both from the config and
renders an entry's files; it never fetches, writes or logs a value.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bridge.config.loader import Config, SecretConfig, check_target
from bridge.engine.extract import extract
from bridge.engine.lifetimes import Lease
from bridge.engine.render import compile_template, parents, render_template, top_level_files, value_of
from bridge.errors import ExtractError, ProviderError
from bridge.provider import Fetched, Provider, Request
from bridge.writer.atomic import FileSpec

if TYPE_CHECKING:
    from jinja2 import Template


@dataclass(eq=False)
class Unit:
    """One fetch unit and what the engine knows of it between cycles (value never in the repr).
    Only the engine's cycle (bridge/engine/cycle.py) assigns its state; when it is next due is the
    schedule's own."""

    provider: str
    request: Request
    interval: float
    #: pinned to a version that never moves: not polled once fetched
    fixed: bool
    entries: list[str] = field(default_factory=list)
    optional: bool = True
    fetched: Fetched | None = field(default=None, repr=False)
    version: str | None = None
    attempts: int = 0
    error: ProviderError | None = None
    failing_since: float | None = None
    #: wall-clock time the value was last confirmed current (fetched or checked unchanged)
    refreshed_at: float | None = None
    #: the lifecycle of a leased value (renew, issue anew); None for values polled by interval
    lease: Lease | None = None

    def describe(self) -> str:
        where = self.request.ref + (f"@{self.request.version}" if self.request.version else "")
        return f"{self.provider}:{where}"


@dataclass(eq=False)
class Entry:
    """One `secrets:` entry: the units it reads (by value name; "" for a single source) and the
    files it has now."""

    name: str
    config: SecretConfig
    units: dict[str, Unit]
    template: Template | None = None
    #: the files this entry makes, when known without a fetch (None for `files: "*"`)
    expected: frozenset[str] | None = None
    #: the files it has in the output directory now
    files: set[str] = field(default_factory=set)
    error: ProviderError | None = None
    #: monotonic time the entry started failing to render (its files are stale from then)
    failing_since: float | None = None

    @property
    def optional(self) -> bool:
        return self.config.optional

    def ready_to_render(self) -> bool:
        return all(u.fetched is not None for u in self.units.values())

    def version(self) -> str | None:
        """The version of what this entry renders: the unit's, or `name=version,...` for a template."""
        if "" in self.units:
            return self.units[""].version
        return ",".join(f"{n}={u.version or '-'}" for n, u in sorted(self.units.items()))

    @functools.cached_property
    def _source(self) -> tuple[str, str]:
        units = [self.units[n] for n in sorted(self.units)]
        return ",".join(dict.fromkeys(u.provider for u in units)), ",".join(u.request.ref for u in units)

    def source(self) -> tuple[str, str]:
        """(provider, ref), comma-joined for a template."""
        return self._source

    def owns(self, file: str) -> bool:
        if self.expected is not None:
            return file in self.expected
        return file.startswith(self.name + "/")

    def render(self, config: Config) -> dict[str, FileSpec]:
        """The entry's files from its units' current values; ExtractError names what is wrong.

        A `files:` entry is all or nothing: files cut from one fetch (a certificate and its key)
        never come from two different values."""
        settings, secret = config.settings, self.config
        if self.template is not None:
            values = {n: value_of(_value(u)) for n, u in self.units.items()}
            content = render_template(self.template, values)
            return {self.name: FileSpec(content, settings.mode_of(secret), *settings.owner_of(secret))}
        fetched = _value(self.units[""])
        if secret.files == "*":
            specs = {}
            for key, content in top_level_files(fetched).items():
                try:
                    check_target(key)  # a key is a name of its own: no "..data", no "a/../b"
                    check_target(f"{self.name}/{key}", output_dir=settings.output_dir)
                except ValueError:
                    raise ExtractError(f"key {key!r} cannot be a file name") from None
                specs[f"{self.name}/{key}"] = FileSpec(content, settings.mode_of(secret), *settings.owner_of(secret))
            return specs
        if secret.files is not None:
            return {
                f"{self.name}/{file}": FileSpec(
                    _extract_file(fetched, rule.key, rule.encoding, rule.format, f"{self.name}/{file}"),
                    settings.mode_of(secret, rule), *settings.owner_of(secret, rule))
                for file, rule in secret.file_rules().items()
            }
        content = extract(fetched, key=secret.key, encoding=secret.encoding, fmt=secret.format)
        return {self.name: FileSpec(content, settings.mode_of(secret), *settings.owner_of(secret))}


def _value(unit: Unit) -> Fetched:
    assert unit.fetched is not None
    return unit.fetched


def _extract_file(fetched: Fetched, key: str, encoding: str | None, fmt: str | None, file: str) -> bytes:
    try:
        return extract(fetched, key=key, encoding=encoding, fmt=fmt)
    except ExtractError as exc:
        raise ExtractError(f"{file}: {exc.message}") from None


def build(config: Config, providers: dict[str, Provider]) -> tuple[dict[tuple[str, Request], Unit], dict[str, Entry]]:
    """Units keyed by (provider, Request), shared between entries; entries by name."""
    settings = config.settings
    units: dict[tuple[str, Request], Unit] = {}
    entries: dict[str, Entry] = {}
    for name, secret in settings.secrets.items():
        interval = settings.interval_of(secret)
        mine: dict[str, Unit] = {}
        for value_name, source in secret.sources().items():
            request = Request(source.ref, source.version, Request.canonical_params(source.params))
            key = (source.provider, request)
            unit = units.get(key)
            if unit is None:
                fixed = source.version is not None and not providers[source.provider].moves(source.version)
                unit = units[key] = Unit(source.provider, request, interval, fixed)
            unit.interval = min(unit.interval, interval)
            unit.entries.append(name)
            unit.optional = unit.optional and secret.optional
            mine[value_name] = unit
        template = compile_template(secret.template, set(mine)) if secret.template is not None else None
        expected: frozenset[str] | None
        if secret.files == "*":
            expected = None
        elif secret.files is not None:
            expected = frozenset(f"{name}/{f}" for f in secret.file_rules())
        else:
            expected = frozenset((name,))
        entries[name] = Entry(name, secret, mine, template, expected)
    return units, entries


def owner_index(entries: dict[str, Entry]) -> Callable[[str], Entry | None]:
    """A lookup from a file name to the entry that makes it, O(depth) per file."""
    static = {f: e for e in entries.values() if e.expected is not None for f in e.expected}
    folders = {e.name: e for e in entries.values() if e.expected is None}

    def owner(file: str) -> Entry | None:
        if file in static:
            return static[file]
        return next((folders[p] for p in parents(file) if p in folders), None)

    return owner
