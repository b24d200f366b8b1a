"""The sections of a configuration: secret entries (plain, `files:`, `template:`), `env:` entries,
the `on_change` actions and the `exec:` settings. Validation only; `bridge.config.loader`
assembles them into the whole file. Never echoes an input value.
"""

from __future__ import annotations

from pathlib import Path
from signal import Signals
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.dataclasses import dataclass

from bridge.config.fields import MIN_REFRESH_SECONDS, Duration, HttpUrl, Mode, OwnerId, Version

#: `format`: the whole PEM (key, certificate, chain) or one part of it
PemFormat = Literal["pem", "pem-key", "pem-cert", "pem-chain", "pem-fullchain"]

#: allow_inf_nan: no number anywhere in the config may be inf or nan
_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


class _Model(BaseModel):
    model_config = ConfigDict(**_STRICT, frozen=True)


#: an entry of `secrets:` or `env:`, of which there may be 100,000: a slotted dataclass, not a model
#: (a model's `__dict__` and fields set took 540 bytes an entry, a dataclass's slots take 150)
_entry = dataclass(frozen=True, slots=True, config=_STRICT)


class FileDefaults(_Model):
    mode: Mode = 0o444
    uid: OwnerId | None = None
    gid: OwnerId | None = None


class FileRule(_Model):
    """One file of a `files:` entry: a key of the fetched map, written with its own options."""

    key: str = Field(min_length=1)
    encoding: Literal["base64"] | None = None
    format: PemFormat | None = None
    mode: Mode | None = None
    uid: OwnerId | None = None
    gid: OwnerId | None = None


class ValueSource(_Model):
    """One value of a template: what to fetch (the same fetch unit as an entry naming the same)."""

    provider: str
    ref: str = Field(min_length=1)
    version: Version | None = None
    params: dict[str, Any] | None = None


@_entry
class SecretConfig:
    """One entry under `secrets:`; its key is the target file (or, with `files:`, folder) name.

    Three shapes: a plain entry (provider + ref -> one file), a `files:` entry (provider + ref ->
    several files under the folder), a `template:` entry (values -> one file)."""

    provider: str | None = None
    ref: str | None = Field(default=None, min_length=1)
    key: str | None = None
    version: Version | None = None
    params: dict[str, Any] | None = None
    encoding: Literal["base64"] | None = None
    format: PemFormat | None = None
    mode: Mode | None = None
    uid: OwnerId | None = None
    gid: OwnerId | None = None
    optional: bool = False
    refresh_interval: Duration | None = Field(default=None, ge=MIN_REFRESH_SECONDS)
    files: Literal["*"] | dict[str, str | FileRule] | None = None
    template: str | None = None
    values: dict[str, ValueSource] | None = None

    @model_validator(mode="after")
    def _one_shape(self) -> SecretConfig:
        if _template_shape(self, "entry", ("format", "files")):
            return self
        if self.files is not None and self.key is not None:
            raise ValueError("key goes on each file of files:, not on the entry")
        if isinstance(self.files, dict) and not self.files:
            raise ValueError("files: names no file")
        return self

    def sources(self) -> dict[str, ValueSource | Source]:
        """The fetch units this entry reads, by value name ("" for its one source)."""
        return _sources(self)

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


@_entry
class EnvConfig:
    """One entry under `env:`; its key is the variable's name. Two shapes: one value (provider +
    ref, with key and encoding) or a template over `values:` (the same fetch units as files)."""

    provider: str | None = None
    ref: str | None = Field(default=None, min_length=1)
    key: str | None = None
    version: Version | None = None
    params: dict[str, Any] | None = None
    encoding: Literal["base64"] | None = None
    optional: bool = False
    refresh_interval: Duration | None = Field(default=None, ge=MIN_REFRESH_SECONDS)
    template: str | None = None
    values: dict[str, ValueSource] | None = None

    @model_validator(mode="after")
    def _one_shape(self) -> EnvConfig:
        if _template_shape(self, "variable"):
            return self
        if self.provider is None or self.ref is None:
            raise ValueError("give provider and ref (or template and values)")
        return self

    def sources(self) -> dict[str, ValueSource | Source]:
        """The fetch units this variable reads, by value name ("" for its one source)."""
        return _sources(self)



def _template_shape(item: SecretConfig | EnvConfig, what: str, more: tuple[str, ...] = ()) -> bool:
    """Whether `item` is a template (checked: values given, no source fields of its own); a
    `values:` without `template:` is an error."""
    if item.template is None:
        if item.values is not None:
            raise ValueError(f"values: belongs to a template {what} (add template:)")
        return False
    if not item.values:
        raise ValueError("template needs values: (the named secrets it renders)")
    extra = [f for f in ("provider", "ref", "key", "version", "params", "encoding", *more)
             if getattr(item, f) is not None]
    if extra:
        raise ValueError(f"a template {what} takes its sources from values:, not {', '.join(extra)}")
    return True

class Source(NamedTuple):
    """What one value is fetched from: a template's `ValueSource`, or an entry's own fields."""

    provider: str
    ref: str
    version: str | None
    params: dict[str, Any] | None


def _sources(item: SecretConfig | EnvConfig) -> dict[str, ValueSource | Source]:
    """A template's named values, or the one (provider, ref, version, params) of anything else."""
    if item.values is not None:
        return dict(item.values)
    assert item.provider is not None and item.ref is not None
    # fields validated with the entry already: a tuple of them, not a model validated again (300,000
    # calls at 100,000 entries: 2.5 s of a cold sync validated, 0.7 s constructed as models)
    return {"": Source(item.provider, item.ref, item.version, item.params)}

#: the longest an on_change action may run, or a notification wait
MAX_HOOK_SECONDS = 3600.0
#: the most `on_change` entries: each runs on a thread of its own while it has work
MAX_HOOKS = 100


class HttpHook(_Model):
    url: HttpUrl  # no credentials: a URL is logged
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
        return None if self.signal is None else _signal_number(self.signal)

    @property
    def kind(self) -> Literal["signal", "exec", "http"]:
        """The action's kind, as the notifications metric labels it."""
        return "signal" if self.signal is not None else "exec" if self.exec is not None else "http"




def _signal_number(name: str) -> Signals | None:
    upper = name.upper() if name.upper().startswith("SIG") else f"SIG{name.upper()}"
    return Signals.__members__.get(upper)


class ExecConfig(_Model):
    """How `exec` restarts its child when what it was given changes."""

    #: env: a changed env value restarts the child; any: a changed file too; never
    restart_on: Literal["env", "any", "never"] = "env"
    stop_signal: str = "SIGTERM"
    stop_timeout: Duration = Field(default=10.0, ge=0, le=MAX_HOOK_SECONDS)
    #: quiescence before a restart, as on_change's wait (default none: restart at once)
    wait: HookWait = HookWait(min=0.0, max=0.0)

    @model_validator(mode="after")
    def _known_signal(self) -> ExecConfig:
        if _signal_number(self.stop_signal) is None:
            raise ValueError(f"unknown signal {self.stop_signal!r}")
        return self

    @property
    def stop_signum(self) -> Signals:
        signum = _signal_number(self.stop_signal)
        assert signum is not None
        return signum
