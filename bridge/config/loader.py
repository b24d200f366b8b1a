"""Configuration: the SPEC's YAML, then SECRETS_BRIDGE_* environment overrides.

Owns parsing and validation only; every error becomes one `ConfigError` line naming the field
path (`secrets.db.mode: ...`). It never echoes an input value, since a value may be a credential.
Each provider section is validated by that provider's own model, imported only when named.
The value types (durations, modes, ids, listen, paths, target names) live in bridge/fields.py.
Nothing but `ConfigError` leaves `parse_config`: not a RecursionError from deep YAML, not a
SettingsError from a malformed SECRETS_BRIDGE_* variable, not an OverflowError from a huge number.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from bridge.config import rules
from bridge.config.fields import (
    MAX_DURATION_SECONDS,
    MIN_REFRESH_SECONDS,
    Duration,
    FieldError,
    Listen,
    LocalPath,
    field_path,
    printable,
    refuse_bool,
)
from bridge.config.sections import MAX_HOOKS, EnvConfig, ExecConfig, FileDefaults, FileRule, OnChange, SecretConfig
from bridge.config.strict_yaml import load_yaml
from bridge.errors import ConfigError
from bridge.provider import PREVIOUS, Provider, ProviderSettings, provider_class

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

DEFAULT_CONFIG = "secrets-bridge.yaml"
#: a config file larger than this is a mistake (a log file, /dev/zero copied), not a config
MAX_CONFIG_BYTES = 16 * 2**20
ENV_PREFIX = "SECRETS_BRIDGE_"


class BridgeConfig(BaseModel):
    """The whole configuration file. With SECRETS_BRIDGE_* variables set it is validated as
    `_with_environment()`, a subclass that lets them override the file."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, validate_default=True)

    output_dir: LocalPath = Path("/run/secrets")
    refresh_interval: Duration = Field(default=300.0, ge=MIN_REFRESH_SECONDS)
    jitter: Annotated[float, BeforeValidator(refuse_bool)] = Field(default=0.1, ge=0, le=1)
    max_staleness: Duration = Field(default=3600.0, gt=0)
    require_tmpfs: bool = True
    defaults: FileDefaults = FileDefaults()
    listen: Listen | None = "0.0.0.0:9098"
    cleanup_on_exit: bool = False
    #: auto: JSON lines when stderr is not a terminal, text when it is
    log_format: Literal["auto", "text", "json"] = "auto"
    #: a file the audit events are appended to (JSON lines, mode 0600), besides the log
    audit_log: LocalPath | None = None
    providers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    secrets: dict[str, SecretConfig] = Field(default_factory=dict)
    #: each entry gets a thread while it has work: the count bounds the notifier's threads
    on_change: list[OnChange] = Field(default_factory=list, max_length=MAX_HOOKS)
    #: variables for the child of `exec` (run and sync ignore them)
    env: dict[str, EnvConfig] = Field(default_factory=dict)
    exec: ExecConfig = ExecConfig()

    @model_validator(mode="after")
    def _check_rules(self) -> BridgeConfig:
        rules.check(self)  # bridge/config/rules.py: one function per rule
        return self

    def mode_of(self, secret: SecretConfig, rule: FileRule | None = None) -> int:
        """A file's mode: its own (in files:), else the entry's, else defaults."""
        for mode in (rule.mode if rule else None, secret.mode):
            if mode is not None:
                return mode
        return self.defaults.mode

    def owner_of(self, secret: SecretConfig, rule: FileRule | None = None) -> tuple[int, int]:
        """uid/gid: the file's own, else the entry's, else defaults, else the bridge's own."""
        uid = rule.uid if rule is not None and rule.uid is not None else secret.uid
        gid = rule.gid if rule is not None and rule.gid is not None else secret.gid
        uid = self.defaults.uid if uid is None else uid
        gid = self.defaults.gid if gid is None else gid
        return (os.getuid() if uid is None else uid, os.getgid() if gid is None else gid)

    def interval_of(self, secret: SecretConfig | EnvConfig) -> float:
        return self.refresh_interval if secret.refresh_interval is None else secret.refresh_interval




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
        # O_NONBLOCK: a FIFO at the path must not hang start-up or the running bridge's reload
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path} (use --config or SECRETS_BRIDGE_CONFIG)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ConfigError(f"config file {path} is not a regular file")
            data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES // 2**20} MiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return parse_config(text, source=str(path))


def parse_config(text: str, source: str = "<config>") -> Config:
    """Validate a whole configuration, or raise one-line `ConfigError`. Nothing else escapes:
    deep nesting, huge numbers and malformed environment JSON are config errors too."""
    try:
        return _parse_config(text, source)
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply") from None


def _parse_config(text: str, source: str) -> Config:
    data = _top_level(load_yaml(text, source), source)
    _check_environment()
    settings = _validate(lambda: _settings(data), ())
    providers = {name: _provider(name, section) for name, section in settings.providers.items()}
    _check_capabilities(settings, providers)
    return Config(settings, providers)


def _top_level(data: Any, source: str) -> dict[str, Any]:
    """The document as a mapping with text keys, never empty."""
    if data is None or data == {}:
        # an empty file (a bad mount, a truncated ConfigMap) must not mean "remove every secret"
        raise ConfigError(f"{source}: the config file is empty (write `secrets: {{}}` to sync none)")
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(f"{printable(str(key))}: unknown field")
    return data


def _provider(name: str, section: dict[str, Any]) -> tuple[type[Provider], ProviderSettings]:
    """A provider section validated by its own class's model (imported only now)."""
    try:
        cls = provider_class(section["type"])
    except ConfigError as exc:
        raise ConfigError(f"providers.{name}.type: {exc}") from None
    parsed = _validate(lambda: cls.Settings(**section), ("providers", name))
    _check_numbers(parsed, ("providers", name))
    return cls, parsed


def _check_capabilities(settings: BridgeConfig,
                        providers: dict[str, tuple[type[Provider], ProviderSettings]]) -> None:
    """A value asks only for what its provider declares it can do (`previous`, `params`)."""
    sections: list[tuple[str, str, SecretConfig | EnvConfig]] = [
        *(("secrets", n, s) for n, s in settings.secrets.items()),
        *(("env", n, e) for n, e in settings.env.items())]
    for top, name, section in sections:
        for value_name, origin in section.sources().items():
            cls = providers[origin.provider][0]
            loc = f"{top}.{name}" + (f".values.{value_name}" if value_name else "")
            if origin.version == PREVIOUS and not cls.capabilities.previous:
                raise ConfigError(f"{loc}.version: provider {origin.provider!r} keeps no previous version")
            if origin.params is not None and not cls.capabilities.params:
                raise ConfigError(f"{loc}.params: provider {origin.provider!r} takes no params")


def _check_numbers(settings: BaseModel, loc: tuple[str, ...]) -> None:
    """Every number in a provider's section is a timeout or a count: refuse inf, nan and floats
    past MAX_DURATION_SECONDS, which overflow a socket timeout at use. (A loop, not recursion.)"""
    pending: list[tuple[tuple[str, ...], Any]] = [(loc, settings)]
    while pending:
        where, value = pending.pop()
        if isinstance(value, BaseModel):
            pending += [((*where, k), v) for k, v in value.__dict__.items()]
        elif isinstance(value, dict):
            pending += [((*where, str(k)), v) for k, v in value.items()]
        elif isinstance(value, list | tuple):
            pending += [((*where, str(i)), v) for i, v in enumerate(value)]
        elif isinstance(value, float) and not (math.isfinite(value) and abs(value) <= MAX_DURATION_SECONDS):
            raise ConfigError(f"{field_path(where)}: expected a finite number of at most {MAX_DURATION_SECONDS:.0f}")


def _settings(data: dict[str, Any]) -> BridgeConfig:
    if not _overrides():
        return BridgeConfig(**data)
    from pydantic_settings import SettingsError

    try:
        return _with_environment()(**data)
    except SettingsError:
        # pydantic-settings could not decode a variable; say which one, never its value
        raise ConfigError(f"{_bad_json_variable() or ENV_PREFIX + '*'}: not valid JSON") from None


def _overrides() -> bool:
    """Whether any SECRETS_BRIDGE_* variable other than SECRETS_BRIDGE_CONFIG is set."""
    return any(v.upper().startswith(ENV_PREFIX) and v.upper() != ENV_PREFIX + "CONFIG" for v in os.environ)


@functools.cache
def _with_environment() -> type[BridgeConfig]:
    """BridgeConfig with SECRETS_BRIDGE_* variables over the file (pydantic-settings), made only
    when one is set: pydantic-settings and what it imports (asyncio, dotenv) cost ~30 ms and
    ~14 MiB of memory that a config without overrides never needs."""
    from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

    class BridgeConfigWithEnvironment(BaseSettings, BridgeConfig):  # type: ignore[misc]
        model_config = SettingsConfigDict(
            env_prefix=ENV_PREFIX,
            env_nested_delimiter="__",
            env_parse_none_str="null",  # SECRETS_BRIDGE_LISTEN=null disables, as in YAML
            extra="forbid",
            frozen=True,
            allow_inf_nan=False,
        )

        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            # The YAML arrives as init kwargs; the environment overrides it, its names of entries
            # and providers matched to the file's.
            return (_MatchedNames(settings_cls, env_settings, init_settings), init_settings)

    class _MatchedNames(PydanticBaseSettingsSource):
        """The environment's values, names of entries and providers matched to the file's."""

        def __init__(self, settings_cls: type[BaseSettings], environment: PydanticBaseSettingsSource,
                     file: PydanticBaseSettingsSource) -> None:
            super().__init__(settings_cls)
            self.environment, self.file = environment, file

        def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
            return None, field_name, False  # unused: __call__ gives every value

        def __call__(self) -> dict[str, Any]:
            return _match_names(self.environment(), getattr(self.file, "init_kwargs", {}))

    return BridgeConfigWithEnvironment


def _fold(name: str) -> str:
    """A name as an environment variable can spell it: lower case, `.`, `/` and `-` as `_`."""
    return re.sub(r"[./-]", "_", name.lower())


def _match_names(overrides: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """Point `SECRETS_BRIDGE_SECRETS__APP_ENV__...` at the file's entry `app.env` (or `App-Env`): a
    variable's name of an entry or provider matches the file's name that folds to it, when exactly
    one does; an exact name always wins, and one matching none adds an entry as before."""
    for section in ("secrets", "providers"):
        given, existing = overrides.get(section), data.get(section)
        if not isinstance(given, dict) or not isinstance(existing, dict):
            continue
        matched: dict[str, Any] = {}
        for key, value in given.items():
            names = [n for n in existing if isinstance(n, str) and _fold(n) == _fold(key)]
            if key in existing or not names:
                matched[key] = value
            elif len(names) == 1:
                matched[names[0]] = value
            else:
                raise ConfigError(
                    f"{ENV_PREFIX}{section.upper()}__{printable(key.upper())}: matches the entries "
                    f"{', '.join(sorted(printable(n) for n in names))}; set {ENV_PREFIX}{section.upper()} "
                    f"as JSON naming one exactly")
        overrides = {**overrides, section: matched}
    return overrides


def _check_environment() -> None:
    """Refuse SECRETS_BRIDGE_* variables that name no field: a typo must not pass silently."""
    fields = {name.upper() for name in BridgeConfig.model_fields} | {"CONFIG"}
    for variable in os.environ:
        if variable.upper().startswith(ENV_PREFIX):
            field = variable[len(ENV_PREFIX) :].upper().split("__")[0]
            if field not in fields:
                raise ConfigError(f"{printable(variable)}: no such setting (unknown {ENV_PREFIX}* variable)")


def _bad_json_variable() -> str | None:
    for variable, value in os.environ.items():
        field = variable[len(ENV_PREFIX) :].lower()
        if variable.upper().startswith(ENV_PREFIX) and field in BridgeConfig.model_fields:
            try:
                json.loads(value)
            except ValueError:
                if field in _JSON_FIELDS:
                    return printable(variable)
    return None


#: fields a variable gives as JSON (pydantic-settings decodes these itself)
_JSON_FIELDS = {"defaults", "providers", "secrets", "on_change", "env", "exec"}


def _validate(build: Any, prefix: tuple[str, ...]) -> Any:
    try:
        return build()
    except ValidationError as exc:
        raise ConfigError(_describe(exc, prefix)) from None
    except FieldError as exc:
        raise ConfigError(str(exc)) from None
    except (TypeError, KeyError, OverflowError, OSError) as exc:
        # a provider's own validator that failed other than by ValueError: still a config error
        # (the reload that meets it must reject it, not end the bridge); its text may echo a value
        raise ConfigError(f"{field_path(prefix) or 'config'}: invalid ({type(exc).__name__})") from None


def _describe_tag(loc: str, ctx: dict[str, Any]) -> tuple[str, str]:
    """A discriminated union's bad or missing tag (Vault's `auth.method`) as one plain line naming
    the valid choices, not pydantic's "Input tag ... does not match any of the expected tags"."""
    field = str(ctx.get("discriminator", "")).strip("'") or "type"
    choices = ", ".join(t.strip().strip("'") for t in str(ctx.get("expected_tags", "")).split(",") if t.strip())
    where = f"{loc}.{field}" if loc else field
    if "tag" not in ctx:  # pydantic names no choices here
        return where, "required field missing"
    return where, f"unknown {field} {printable(str(ctx['tag']))[:40]!r}; valid: {choices}"


#: the tags pydantic puts in an error's loc for the branches of a union (`files: "*" | {name: key | rule}`)
_UNION_TAG = re.compile(r"(literal|dict|list|union)\[.*\]|str|FileRule")


def _describe(exc: ValidationError, prefix: tuple[str, ...]) -> str:
    lines = []
    # The deepest error first: of a union's branches, the one that got furthest says what is wrong
    # (`secrets.e.files.a.mode`), not "Input should be '*'".
    errors = sorted(exc.errors(include_input=False, include_url=False), key=lambda e: -len(e["loc"]))
    for err in errors:
        tagged = any(isinstance(p, str) and p.startswith(("literal[", "dict[")) for p in err["loc"])
        where = [p for p in err["loc"] if not (tagged and isinstance(p, str) and _UNION_TAG.fullmatch(p))]
        loc = field_path((*prefix, *where))
        if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            message = "unknown field"
        elif err["type"] in ("missing", "missing_argument"):
            message = "required field missing"
        elif err["type"] in ("model_type", "dataclass_type"):
            message = "expected a mapping of fields"
        elif err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc, message = _describe_tag(loc, err.get("ctx") or {})
        else:
            message = str(err["msg"]).removeprefix("Value error, ")
        message = " ".join(message.splitlines())  # a provider's own message, kept to one line
        lines.append(f"{loc}: {message}" if loc else message)
    more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
    return lines[0] + more
