"""Configuration: the SPEC's YAML, then SECRETS_BRIDGE_* environment overrides.

Owns parsing and validation only; every error becomes one `ConfigError` line naming the field
path (`secrets.db.mode: ...`). It never echoes an input value, since a value may be a credential.
Each provider section is validated by that provider's own model, imported only when named.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path
from signal import Signals
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bridge.errors import ConfigError
from bridge.provider import Provider, ProviderSettings, provider_class

DEFAULT_CONFIG = "secrets-bridge.yaml"
#: the metadata file kept beside the secrets (names and versions, never values)
STATE_FILE = ".secrets-bridge-state.json"

#: `version: previous`, the uniform relative pin
PREVIOUS = "previous"
#: the shortest refresh interval (a smaller one would be a busy loop against the vault)
MIN_REFRESH_SECONDS = 0.1
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """`500ms`, `30s`, `5m`, `1h`, `1h30m` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION_PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(f"invalid duration {text!r}: use 500ms, 30s, 5m, 1h or seconds") from None
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    else:
        raise ValueError("expected a duration such as 30s, 5m or 1h")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


class _DecimalInt(int):
    """An integer the YAML file wrote in decimal (so a mode written as 400 can be refused)."""


def parse_mode(value: Any) -> int:
    """`"0400"` (string) or YAML octal `0400`; a bare decimal that reads like octal is refused."""
    if isinstance(value, bool):
        raise ValueError("expected an octal file mode such as \"0400\"")
    if isinstance(value, str):
        try:
            mode = int(value.strip(), 8)
        except ValueError:
            raise ValueError(f"invalid file mode {value!r}: use an octal string such as \"0400\"") from None
    elif isinstance(value, int):
        # YAML reads 0400 as octal but 400 as decimal (0620): a decimal mode is almost surely a mistake.
        if isinstance(value, _DecimalInt) and value >= 8:
            raise ValueError(f"mode {value} is a decimal number; write it as octal: \"0{value}\"")
        mode = int(value)
    else:
        raise ValueError("expected an octal file mode such as \"0400\"")
    if not 0 <= mode <= 0o777:
        raise ValueError("file mode out of range (0000-0777; set-id and sticky bits make no sense on a secret)")
    return mode


def _version_text(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a version id")
    return str(value) if isinstance(value, int) else value


Duration = Annotated[float, BeforeValidator(parse_duration)]
Mode = Annotated[int, BeforeValidator(parse_mode)]
Version = Annotated[str, BeforeValidator(_version_text)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileDefaults(_Model):
    mode: Mode = 0o444
    uid: int | None = Field(default=None, ge=0)
    gid: int | None = Field(default=None, ge=0)


class FileRule(_Model):
    """One file of a `files:` entry: a key of the fetched map, written with its own options."""

    key: str = Field(min_length=1)
    encoding: Literal["base64"] | None = None
    format: Literal["pem"] | None = None
    mode: Mode | None = None
    uid: int | None = Field(default=None, ge=0)
    gid: int | None = Field(default=None, ge=0)


class ValueSource(_Model):
    """One value of a template: what to fetch (the same fetch unit as an entry naming the same)."""

    provider: str
    ref: str = Field(min_length=1)
    version: Version | None = None
    params: dict[str, Any] | None = None


class SecretConfig(_Model):
    """One entry under `secrets:`; its key is the target file (or, with `files:`, folder) name.

    Three shapes: a plain entry (provider + ref -> one file), a `files:` entry (provider + ref ->
    several files under the folder), a `template:` entry (values -> one file)."""

    provider: str | None = None
    ref: str | None = Field(default=None, min_length=1)
    key: str | None = None
    version: Version | None = None
    params: dict[str, Any] | None = None
    encoding: Literal["base64"] | None = None
    format: Literal["pem"] | None = None
    mode: Mode | None = None
    uid: int | None = Field(default=None, ge=0)
    gid: int | None = Field(default=None, ge=0)
    optional: bool = False
    refresh_interval: Duration | None = Field(default=None, ge=MIN_REFRESH_SECONDS)
    files: Literal["*"] | dict[str, str | FileRule] | None = None
    template: str | None = None
    values: dict[str, ValueSource] | None = None

    @model_validator(mode="after")
    def _one_shape(self) -> SecretConfig:
        if self.template is not None:
            if not self.values:
                raise ValueError("template needs values: (the named secrets it renders)")
            extra = [f for f in ("provider", "ref", "key", "version", "params", "encoding", "format", "files")
                     if getattr(self, f) is not None]
            if extra:
                raise ValueError(f"a template entry takes its sources from values:, not {', '.join(extra)}")
            return self
        if self.values is not None:
            raise ValueError("values: belongs to a template entry (add template:)")
        if self.files is not None and self.key is not None:
            raise ValueError("key goes on each file of files:, not on the entry")
        if isinstance(self.files, dict) and not self.files:
            raise ValueError("files: names no file")
        return self

    def sources(self) -> dict[str, ValueSource]:
        """The fetch units this entry reads, by value name (the entry's own name for one source)."""
        if self.values is not None:
            return dict(self.values)
        assert self.provider is not None and self.ref is not None
        return {"": ValueSource(provider=self.provider, ref=self.ref, version=self.version, params=self.params)}

    def file_rules(self) -> dict[str, FileRule]:
        """Each named file of a `files:` entry with its rule (the entry's encoding/format as defaults)."""
        if not isinstance(self.files, dict):
            return {}
        rules = {}
        for name, rule in self.files.items():
            if isinstance(rule, str):
                rule = FileRule(key=rule)
            rules[name] = rule.model_copy(update={
                "encoding": rule.encoding or self.encoding, "format": rule.format or self.format})
        return rules


#: the longest an on_change action may run, or a notification wait
MAX_HOOK_SECONDS = 3600.0


def _check_hook_url(url: str) -> str:
    """http(s) only, with a host and a valid port; the URL is never echoed (it may hold a password)."""
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise ValueError("URL must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise ValueError("not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("only http:// and https:// URLs are allowed")
    if not parts.hostname:
        raise ValueError("URL has no host")
    return url


class HttpHook(_Model):
    url: Annotated[str, AfterValidator(_check_hook_url)]
    method: Literal["GET", "POST", "PUT"] = "POST"


class HookWait(_Model):
    """consul-template's quiescence: fire `min` after the last change, at most `max` after the first."""

    min: Duration = Field(ge=0, le=MAX_HOOK_SECONDS)
    #: default 4 x min, as consul-template does
    max: Duration | None = Field(default=None, ge=0, le=MAX_HOOK_SECONDS)

    @model_validator(mode="after")
    def _ordered(self) -> HookWait:
        if self.max is None:
            return self.model_copy(update={"max": min(4 * self.min, MAX_HOOK_SECONDS)})
        if self.max < self.min:
            raise ValueError("wait.max must not be shorter than wait.min")
        return self


class OnChange(_Model):
    """One notification run after a commit that changed any of `secrets` (default: any), each
    name an entry or a file under output_dir."""

    secrets: list[str] | None = None
    signal: str | None = None
    pid_file: Path | None = None
    exec: list[str] | None = Field(default=None, min_length=1)
    http: HttpHook | None = None
    timeout: Duration = Field(default=10.0, gt=0, le=MAX_HOOK_SECONDS)
    wait: HookWait | None = None

    @model_validator(mode="after")
    def _one_action(self) -> OnChange:
        actions = [a for a in ("signal", "exec", "http") if getattr(self, a) is not None]
        if len(actions) != 1:
            raise ValueError("give exactly one of signal, exec or http")
        if self.signal is not None:
            if self.pid_file is None or not str(self.pid_file).strip():
                raise ValueError("signal needs pid_file")
            if self.signum is None:
                raise ValueError(f"unknown signal {self.signal!r}")
        if self.exec is not None and (not self.exec[0] or any("\0" in arg for arg in self.exec)):
            raise ValueError("exec needs a command, and no argument may contain a NUL byte")
        return self

    @property
    def signum(self) -> Signals | None:
        if self.signal is None:
            return None
        name = self.signal.upper() if self.signal.upper().startswith("SIG") else f"SIG{self.signal.upper()}"
        return Signals.__members__.get(name)

    @property
    def kind(self) -> Literal["signal", "exec", "http"]:
        """The action's kind, as the notifications metric labels it."""
        return "signal" if self.signal is not None else "exec" if self.exec is not None else "http"


class BridgeConfig(BaseSettings):
    """The whole configuration file."""

    model_config = SettingsConfigDict(
        env_prefix="SECRETS_BRIDGE_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    output_dir: Path = Path("/run/secrets")
    refresh_interval: Duration = Field(default=300.0, ge=MIN_REFRESH_SECONDS)
    jitter: float = Field(default=0.1, ge=0, le=1)
    max_staleness: Duration = Field(default=3600.0, gt=0)
    require_tmpfs: bool = True
    defaults: FileDefaults = FileDefaults()
    listen: str | None = "0.0.0.0:9098"
    cleanup_on_exit: bool = False
    providers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    secrets: dict[str, SecretConfig] = Field(default_factory=dict)
    on_change: list[OnChange] = Field(default_factory=list)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML arrives as init kwargs; the environment overrides it.
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _check_targets(self) -> BridgeConfig:
        targets: dict[str, str] = {}
        for name, secret in self.secrets.items():
            check_target(name)
            for required in ("provider", "ref"):
                if secret.template is None and getattr(secret, required) is None:
                    raise _FieldError(("secrets", name, required), "required field missing (or give template)")
            for value_name, source in secret.sources().items():
                if source.provider not in self.providers:
                    loc = ("secrets", name, "values", value_name, "provider") if value_name else (
                        "secrets", name, "provider")
                    raise _FieldError(loc, f"no provider named {source.provider!r}")
            for file in secret.file_rules():
                check_target(file, ("secrets", name, "files", file))
                targets[f"{name}/{file}"] = name
            targets[name] = name
            if secret.template is not None:
                from bridge.render import compile_template

                try:
                    compile_template(secret.template, set(secret.values or {}))
                except ValueError as exc:
                    raise _FieldError(("secrets", name, "template"), str(exc)) from None
        folders = {name for name, s in self.secrets.items() if s.files is not None}
        for target, entry in targets.items():
            parent = posixpath.dirname(target)
            while parent:
                if parent in self.secrets and parent not in folders:
                    raise _FieldError(("secrets", entry), f"{parent!r} is a file, not a folder")
                if parent in folders and parent != entry:
                    raise _FieldError(("secrets", entry), f"{parent!r} is the folder of a files: entry")
                parent = posixpath.dirname(parent)
        for i, hook in enumerate(self.on_change):
            for name in hook.secrets or ():
                if name not in targets:
                    raise _FieldError(("on_change", str(i), "secrets"), f"no secret or file named {name!r}")
        for name, section in self.providers.items():
            if not isinstance(section.get("type"), str):
                raise _FieldError(("providers", name, "type"), "missing provider type")
        return self

    def mode_of(self, secret: SecretConfig, rule: FileRule | None = None) -> int:
        """A file's mode: its own (in files:), else the entry's, else defaults."""
        for mode in (rule.mode if rule else None, secret.mode):
            if mode is not None:
                return mode
        return self.defaults.mode

    def owner_of(self, secret: SecretConfig, rule: FileRule | None = None) -> tuple[int, int]:
        """uid/gid: the file's own, else the entry's, else defaults, else the bridge's own."""
        def first(*ids: int | None) -> int | None:
            return next((i for i in ids if i is not None), None)
        uid = first(rule.uid if rule else None, secret.uid, self.defaults.uid)
        gid = first(rule.gid if rule else None, secret.gid, self.defaults.gid)
        return (os.getuid() if uid is None else uid, os.getgid() if gid is None else gid)

    def interval_of(self, secret: SecretConfig) -> float:
        return self.refresh_interval if secret.refresh_interval is None else secret.refresh_interval


class _FieldError(ValueError):
    """A validation error raised with its own field path (outside pydantic's loc)."""

    def __init__(self, loc: tuple[str, ...], message: str) -> None:
        super().__init__(f"{'.'.join(loc)}: {message}")


def check_target(name: str, loc: tuple[str, ...] | None = None) -> None:
    """Validate a target file name: relative, in normal form, outside the writer's `..` names."""
    loc = loc or ("secrets", name)
    if not name or name.startswith("/"):
        raise _FieldError(loc, "target must be a relative path")
    parts = name.split("/")
    if any(p == ".." for p in parts):
        raise _FieldError(loc, "target must not contain '..'")
    if name.startswith(".."):
        raise _FieldError(loc, "target must not begin with '..' (reserved for generations)")
    if any(p in ("", ".") for p in parts):
        raise _FieldError(loc, "target must not have empty or '.' parts (write it as a/b)")
    if name == STATE_FILE or "\0" in name:
        raise _FieldError(loc, "target name is reserved")


class Config:
    """A validated configuration: the settings plus each provider's validated section."""

    def __init__(self, settings: BridgeConfig, providers: dict[str, tuple[type[Provider], ProviderSettings]]):
        self.settings = settings
        self.providers = providers

    def build_providers(self) -> dict[str, Provider]:
        return {name: cls(name, section) for name, (cls, section) in self.providers.items()}


def config_path(cli_value: str | None) -> Path:
    return Path(cli_value or os.environ.get("SECRETS_BRIDGE_CONFIG") or DEFAULT_CONFIG)


def load_config(path: Path) -> Config:
    """Read, validate and return the configuration, or raise one-line `ConfigError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path} (use --config or SECRETS_BRIDGE_CONFIG)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    return parse_config(text, source=str(path))


def parse_config(text: str, source: str = "<config>") -> Config:
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {_yaml_problem(exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(f"{key}: unknown field")
    settings = _validate(lambda: BridgeConfig(**data), ())
    providers: dict[str, tuple[type[Provider], ProviderSettings]] = {}
    for name, section in settings.providers.items():
        try:
            cls = provider_class(section["type"])
        except ConfigError as exc:
            raise ConfigError(f"providers.{name}.type: {exc}") from None
        parsed = _validate(lambda cls=cls, section=section: cls.Settings(**section), ("providers", name))
        providers[name] = (cls, parsed)
    for name, secret in settings.secrets.items():
        for value_name, origin in secret.sources().items():
            cls = providers[origin.provider][0]
            loc = f"secrets.{name}" + (f".values.{value_name}" if value_name else "")
            if origin.version == PREVIOUS and not getattr(cls, "supports_previous", False):
                raise ConfigError(f"{loc}.version: provider {origin.provider!r} keeps no previous version")
            if origin.params is not None and not getattr(cls, "supports_params", False):
                raise ConfigError(f"{loc}.params: provider {origin.provider!r} takes no params")
    return Config(settings, providers)


def _validate(build: Any, prefix: tuple[str, ...]) -> Any:
    try:
        return build()
    except ValidationError as exc:
        raise ConfigError(_describe(exc, prefix)) from None
    except _FieldError as exc:
        raise ConfigError(str(exc)) from None


def _describe(exc: ValidationError, prefix: tuple[str, ...]) -> str:
    lines = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in (*prefix, *err["loc"]))
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        elif err["type"] == "missing":
            message = "required field missing"
        else:
            message = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{loc}: {message}" if loc else message)
    more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
    return lines[0] + more


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"line {mark.line + 1}: {problem}" if mark else problem


class _StrictLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """SafeLoader (LibYAML's parser where present: 10,000 entries parse in a tenth of the time)
    that refuses duplicate keys (a silently overridden secret is a bug)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        mapping[key] = loader.construct_object(value_node, deep=deep)  # type: ignore[no-untyped-call]
    return mapping


def _construct_int(loader: _StrictLoader, node: yaml.ScalarNode) -> int:
    value: int = loader.construct_yaml_int(node)  # type: ignore[no-untyped-call]
    digits = str(node.value).replace("_", "").lstrip("+-")
    return _DecimalInt(value) if digits.isdigit() and not digits.startswith("0") else value


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_StrictLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
