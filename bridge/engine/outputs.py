"""Outputs: what the bridge makes from fetched values, one class per kind.

An output reads one or more fetch units (by value name; "" for a single source) and renders what
it makes from their current values: a plain entry one file, a `files:` entry the files under its
folder, a `template:` entry one file, an `env:` entry one variable for the child of `exec`. Each
kind says which units it needs, what it makes, how it renders, and where the metadata of its files
comes from (key, pin, mode, owner), so the engine and the state file never branch on a kind.
A new kind is one class here and one line in `build`. This module never fetches, writes or logs
a value, and a render error never carries one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bridge.config.fields import check_target
from bridge.config.loader import BridgeConfig, Config
from bridge.config.sections import EnvConfig, SecretConfig
from bridge.engine.extract import extract
from bridge.engine.render import parents, top_level_files, value_of
from bridge.engine.units import OneUnit, Unit
from bridge.errors import ExtractError, ProviderError
from bridge.observe.changes import Change
from bridge.provider import Fetched, Provider, Request
from bridge.template.language import compile_template, render_template
from bridge.writer.atomic import FileSpec

if TYPE_CHECKING:
    from jinja2 import Template

#: an env output's name in a unit's list of outputs and in logs, metrics and audit events (`$DB_URL`)
ENV_PREFIX = "$"
#: an output's files are kept in a tuple up to this many
_FEW = 4


@dataclass(frozen=True, slots=True)
class FileMeta:
    """Where a file's record in the state file comes from (never its content)."""

    key: str | None
    pinned_version: str | None
    mode: int
    uid: int
    gid: int


@dataclass(eq=False, slots=True)
class Output:
    """One output: the units it reads (by value name; "" for a single source) and what it has made."""

    name: str
    units: Mapping[str, Unit]
    optional: bool = False
    #: the files it has in the output directory now: a tuple while they are few (one set an output
    #: took 20 MiB at 100,000 entries), a set past that (`add_file`, `drop_file`)
    files: tuple[str, ...] | set[str] = ()
    error: ProviderError | None = None
    #: monotonic time the output started failing to render (what it made is stale from then)
    failing_since: float | None = None

    @property
    def expected(self) -> frozenset[str] | None:
        """The files this output makes, when known without a fetch (None for `files: "*"`); made
        when asked, not kept (kept, one set an entry took 20 MiB at 100,000 entries)."""
        return frozenset()

    def add_file(self, file: str) -> None:
        if file in self.files:
            return
        if isinstance(self.files, set):
            self.files.add(file)
        else:
            self.files = (*self.files, file) if len(self.files) < _FEW else {*self.files, file}

    def drop_file(self, file: str) -> None:
        if isinstance(self.files, set):
            self.files.discard(file)
        elif file in self.files:
            self.files = tuple(f for f in self.files if f != file)

    def ready_to_render(self) -> bool:
        return all(u.fetched is not None for u in self.units.values())

    def version(self) -> str | None:
        """The version of what this output renders: the unit's, or `name=version,...` for several."""
        if "" in self.units:
            return self.units[""].version
        return ",".join(f"{n}={u.version or '-'}" for n, u in sorted(self.units.items()))

    def source(self) -> tuple[str, str]:
        """(provider, ref), comma-joined for several values."""
        if "" in self.units:
            unit = self.units[""]
            return unit.provider, unit.request.ref
        units = [self.units[n] for n in sorted(self.units)]
        return ",".join(dict.fromkeys(u.provider for u in units)), ",".join(u.request.ref for u in units)

    def owns(self, file: str) -> bool:
        if self.expected is not None:
            return file in self.expected
        return file.startswith(self.name + "/")

    def missing(self) -> bool:
        """A required output that has not made what it makes yet (readiness, start-up)."""
        if self.expected is not None:
            return not all(f in self.files for f in self.expected)
        # a files: "*" entry over an empty map rightly has no file
        return not self.files and (self.error is not None or not self.ready_to_render())

    def render(self, settings: BridgeConfig) -> dict[str, FileSpec]:
        """The files from the units' current values; ExtractError names what is wrong."""
        raise NotImplementedError

    def parts(self) -> list[bytes]:
        """The values inside what this output makes that are secrets of their own (the fields a
        template reads), for `exec --mask`; a plain value is one part, the whole."""
        return []

    def origin(self, file: str) -> tuple[str | None, str | None]:
        """(key, pinned version) one of this output's files is cut from, for its state record."""
        raise NotImplementedError

    def meta(self, file: str, settings: BridgeConfig) -> FileMeta:
        """The metadata of one of this output's files, for its state record."""
        raise NotImplementedError


@dataclass(eq=False, slots=True)
class FileEntry(Output):
    """A `secrets:` entry: the kinds below differ in what they render; the metadata is the entry's."""

    config: SecretConfig = field(kw_only=True)

    @property
    def expected(self) -> frozenset[str] | None:
        return frozenset((self.name,))

    def spec(self, content: bytes, settings: BridgeConfig) -> FileSpec:
        return FileSpec(content, settings.mode_of(self.config), *settings.owner_of(self.config))

    def origin(self, file: str) -> tuple[str | None, str | None]:
        return self.config.key, self.config.version

    def meta(self, file: str, settings: BridgeConfig) -> FileMeta:
        return FileMeta(*self.origin(file), settings.mode_of(self.config), *settings.owner_of(self.config))


@dataclass(eq=False, slots=True)
class PlainFile(FileEntry):
    """provider + ref (+ key, encoding, format) -> one file named for the entry."""

    def render(self, settings: BridgeConfig) -> dict[str, FileSpec]:
        secret = self.config
        content = extract(_value(self.units[""]), key=secret.key, encoding=secret.encoding, fmt=secret.format)
        return {self.name: self.spec(content, settings)}


@dataclass(eq=False, slots=True)
class NamedFiles(FileEntry):
    """`files: {name: key | rule}`: one file per named key of one fetch, each with its own options.
    All or nothing: files cut from one fetch (a certificate and its key) never come from two values."""

    @property
    def expected(self) -> frozenset[str] | None:
        return frozenset(f"{self.name}/{f}" for f in self.config.file_rules())

    def render(self, settings: BridgeConfig) -> dict[str, FileSpec]:
        fetched, secret = _value(self.units[""]), self.config
        return {
            f"{self.name}/{file}": FileSpec(
                _extract_file(fetched, rule.key, rule.encoding, rule.format, f"{self.name}/{file}"),
                settings.mode_of(secret, rule), *settings.owner_of(secret, rule))
            for file, rule in secret.file_rules().items()
        }

    def origin(self, file: str) -> tuple[str | None, str | None]:
        rule = self.config.file_rules().get(file.removeprefix(self.name + "/"))
        return (self.config.key if rule is None else rule.key), self.config.version

    def meta(self, file: str, settings: BridgeConfig) -> FileMeta:
        rule = self.config.file_rules().get(file.removeprefix(self.name + "/"))
        return FileMeta(*self.origin(file), settings.mode_of(self.config, rule), *settings.owner_of(self.config, rule))


@dataclass(eq=False, slots=True)
class EveryKey(FileEntry):
    """`files: "*"`: one file per top-level key of the fetched JSON map."""

    @property
    def expected(self) -> frozenset[str] | None:
        return None

    def render(self, settings: BridgeConfig) -> dict[str, FileSpec]:
        specs = {}
        for key, content in top_level_files(_value(self.units[""])).items():
            try:
                check_target(key)  # a key is a name of its own: no "..data", no "a/../b"
                check_target(f"{self.name}/{key}", output_dir=settings.output_dir)
            except ValueError:
                raise ExtractError(f"key {key!r} cannot be a file name") from None
            specs[f"{self.name}/{key}"] = self.spec(content, settings)
        return specs


@dataclass(eq=False, slots=True)
class TemplateFile(FileEntry):
    """`template:` + `values:` -> one file rendered from several fetch units."""

    template: Template | None = None

    def render(self, settings: BridgeConfig) -> dict[str, FileSpec]:
        assert self.template is not None
        return {self.name: self.spec(_render(self.template, self.units), settings)}

    def parts(self) -> list[bytes]:
        return _fields_read(self.template, self.units)


@dataclass(eq=False, slots=True)
class EnvVar(Output):
    """An `env:` entry: one variable for the child of `exec`, from one value (provider + ref + key)
    or a template. It makes no file; `value` is what it rendered last."""

    config: EnvConfig = field(kw_only=True)
    template: Template | None = None
    value: bytes | None = field(default=None, repr=False)
    #: the version `value` was rendered from
    rendered_version: str | None = None

    @property
    def variable(self) -> str:
        return self.name.removeprefix(ENV_PREFIX)

    def missing(self) -> bool:
        return self.value is None

    def render_value(self) -> bytes:
        """The variable's value; ExtractError when it cannot be one (a NUL byte)."""
        if self.template is not None:
            value = _render(self.template, self.units)
        else:
            env = self.config
            value = extract(_value(self.units[""]), key=env.key, encoding=env.encoding, fmt=None)
        if b"\0" in value:
            raise ExtractError("the value holds a NUL byte, which an environment variable cannot carry")
        return value

    def render(self, settings: BridgeConfig) -> dict[str, FileSpec]:
        return {}

    def parts(self) -> list[bytes]:
        return _fields_read(self.template, self.units)

    def origin(self, file: str) -> tuple[str | None, str | None]:
        return self.config.key, self.config.version

    def meta(self, file: str, settings: BridgeConfig) -> FileMeta:
        return FileMeta(*self.origin(file), 0, 0, 0)


class EnvValues:
    """The variables of `exec`'s child: a rendered value that differs waits here until the cycle
    takes it (with the commit of the files rendered beside it)."""

    def __init__(self, outputs: dict[str, Output]) -> None:
        self.by_name = {n: o for n, o in outputs.items() if isinstance(o, EnvVar)}
        self._pending: dict[str, bytes] = {}

    def rendered(self, entry: EnvVar) -> None:
        """Render `entry`'s value; ExtractError when it cannot be one."""
        value = entry.render_value()
        if value != entry.value:
            self._pending[entry.name] = value
        else:
            self._pending.pop(entry.name, None)

    def take(self) -> list[Change]:
        """Make the rendered values current; one Change (kind "env") per changed variable."""
        changes = []
        for name, value in self._pending.items():
            entry = self.by_name[name]
            provider, ref = entry.source()
            changes.append(Change(name, name, provider, ref, entry.rendered_version, entry.version(), None,
                                  "added" if entry.value is None else "updated", kind="env"))
            entry.value, entry.rendered_version = value, entry.version()
        self._pending.clear()
        return changes

    def values(self) -> dict[str, bytes]:
        """The current value of each variable rendered so far, by variable name."""
        return {o.variable: o.value for o in self.by_name.values() if o.value is not None}


def _value(unit: Unit) -> Fetched:
    assert unit.fetched is not None
    return unit.fetched


def _render(template: Template, units: Mapping[str, Unit]) -> bytes:
    return render_template(template, {n: value_of(_value(u)) for n, u in units.items()})


def _fields_read(template: Template | None, units: Mapping[str, Unit]) -> list[bytes]:
    """The text fields of the units' JSON maps that the template names (`db.password`)."""
    names: frozenset[str] = getattr(template, "bridge_names", frozenset())
    parts = []
    for unit in units.values():
        if unit.fetched is None:
            continue
        try:
            doc = value_of(unit.fetched)
        except ExtractError:
            continue
        if isinstance(doc, dict):
            parts += [v.encode() for k, v in doc.items() if k in names and isinstance(v, str)]
    return parts


def _extract_file(fetched: Fetched, key: str, encoding: str | None, fmt: str | None, file: str) -> bytes:
    try:
        return extract(fetched, key=key, encoding=encoding, fmt=fmt)
    except ExtractError as exc:
        raise ExtractError(f"{file}: {exc.message}") from None


def _file_entry(name: str, secret: SecretConfig, units: Mapping[str, Unit]) -> FileEntry:
    """The kind of a `secrets:` entry, from its shape."""
    if secret.template is not None:
        return TemplateFile(name, units, secret.optional, config=secret,
                            template=compile_template(secret.template, set(units)))
    if secret.files == "*":
        return EveryKey(name, units, secret.optional, config=secret)
    if secret.files is not None:
        return NamedFiles(name, units, secret.optional, config=secret)
    return PlainFile(name, units, secret.optional, config=secret)


def _env_var(name: str, env: EnvConfig, units: Mapping[str, Unit]) -> EnvVar:
    template = compile_template(env.template, set(units)) if env.template is not None else None
    return EnvVar(ENV_PREFIX + name, units, env.optional, config=env, template=template)


def build(config: Config, providers: dict[str, Provider], *,
          env: bool = False) -> tuple[dict[tuple[str, Request], Unit], dict[str, Output]]:
    """Units keyed by (provider, Request), shared between outputs of every kind; outputs by name
    (`$NAME` for an env variable, made only with `env`)."""
    settings = config.settings
    units: dict[tuple[str, Request], Unit] = {}
    outputs: dict[str, Output] = {}
    sections: list[tuple[str, SecretConfig | EnvConfig, Callable[..., Output]]] = [
        *((name, secret, _file_entry) for name, secret in settings.secrets.items()),
        *((name, variable, _env_var) for name, variable in settings.env.items() if env),
    ]
    for name, section, make in sections:
        interval = settings.interval_of(section)
        key = name if isinstance(section, SecretConfig) else ENV_PREFIX + name
        mine: dict[str, Unit] = {}
        for value_name, source in section.sources().items():
            request = Request(source.ref, source.version, Request.canonical_params(source.params))
            unit = units.get((source.provider, request))
            if unit is None:
                fixed = source.version is not None and not providers[source.provider].moves(source.version)
                unit = units[(source.provider, request)] = Unit(source.provider, request, interval, fixed)
            unit.interval = min(unit.interval, interval)
            unit.entries += (key,)
            unit.optional = unit.optional and section.optional
            mine[value_name] = unit
        outputs[key] = make(name, section, OneUnit(mine[""]) if mine.keys() == {""} else mine)
    return units, outputs


def owner_index(entries: dict[str, Output]) -> Callable[[str], Output | None]:
    """A lookup from a file name to the output that makes it, O(depth) per file."""
    static = {f: e for e in entries.values() if e.expected is not None for f in e.expected}
    folders = {e.name: e for e in entries.values() if e.expected is None}

    def owner(file: str) -> Output | None:
        if file in static:
            return static[file]
        return next((folders[p] for p in parents(file) if p in folders), None)

    return owner
