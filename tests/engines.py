"""The one engine builder for in-process tests: a started `Engine` from the YAML of its `secrets:`
(and `providers:`, and top-level settings over the tests' defaults), with provider objects of our
own where a test gives them; and `FakeProvider`, an in-memory fake of our own Provider interface
(never of an SDK: the wire is tested per provider against real servers)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bridge.config.loader import parse_config
from bridge.engine.cycle import Engine
from bridge.errors import SecretNotFound
from bridge.provider import Fetched, Provider, ProviderSettings, Request

#: what every test engine has unless a test says otherwise: any directory, no waiting, no endpoint
DEFAULTS: dict[str, object] = {"require_tmpfs": "false", "refresh_interval": "1s", "jitter": 0, "listen": "null"}


def config_text(out: Path, secrets: str, *, providers: str = "", instances: Mapping[str, Provider] = {},
                sections: str = "", **settings: object) -> str:
    """The config document: `output_dir: out`, the defaults overridden by `settings` (YAML values),
    `providers:` (YAML lines, plus a `{type: env}` placeholder for each of `instances` not in them),
    `secrets:` (YAML lines; none if empty), then `sections`, more top-level YAML (`env:` ...)."""
    fields = {"output_dir": out, **DEFAULTS, **settings}
    stand_ins = "".join(f"  {name}: {{type: env}}\n" for name in instances if f"  {name}:" not in providers)
    return ("".join(f"{key}: {value}\n" for key, value in fields.items())
            + f"providers:\n{providers}{stand_ins}" + (f"secrets:\n{secrets}" if secrets else "") + sections)


def make_engine(out: Path, secrets: str, *, providers: str = "", instances: Mapping[str, Provider] | None = None,
                sections: str = "", engine_args: Mapping[str, Any] | None = None, **settings: object) -> Engine:
    """A started Engine writing to `out` (see `config_text`); `instances`: provider objects by
    name, used as given (beside those the YAML `providers` builds); `engine_args`: more Engine
    arguments (`env=True`, `writer=...`)."""
    config = parse_config(config_text(out, secrets, providers=providers, instances=instances or {}, sections=sections,
                                      **settings))
    built = {**config.build_providers(), **instances} if instances and providers else instances
    engine = Engine(config, providers=dict(built) if built else None, **(engine_args or {}))
    engine.start()
    return engine


def fake_engine(out: Path, secrets: str, **settings: object) -> tuple[Engine, FakeProvider]:
    """`make_engine` with one FakeProvider named `fake`, and that fake."""
    fake = FakeProvider()
    return make_engine(out, secrets, instances={"fake": fake}, **settings), fake


class FakeProvider(Provider):
    """Versions per ref in memory; counts calls; can be told to fail."""

    def __init__(self) -> None:
        super().__init__("fake", ProviderSettings(type="fake"))
        self.history: dict[str, list[bytes]] = {}
        self.fetches: list[Request] = []
        self.checks: list[list[str]] = []
        self.failure: Exception | None = None

    def put(self, ref: str, value: bytes) -> None:
        self.history.setdefault(ref, []).append(value)

    def fetch(self, request: Request) -> Fetched:
        self.fetches.append(request)
        if self.failure is not None:
            raise self.failure
        history = self.history.get(request.ref)
        if not history:
            raise SecretNotFound("no such secret")
        index = {None: len(history), "prev": len(history) - 1}.get(request.version) or int(request.version or 0)
        if not 1 <= index <= len(history):
            raise SecretNotFound("no such version")
        return Fetched(history[index - 1], str(index))

    def moves(self, version: str) -> bool:
        return version == "prev"  # a label, like AWSPREVIOUS

    def versions(self, requests):  # type: ignore[no-untyped-def]
        """The latest without a fetch; a moving pin by fetching it (the default's way)."""
        self.checks.append([r.ref for r in requests if r.version is None])
        out = {}
        for request in requests:
            if request.version is not None:
                out.update(super().versions([request]))
            elif self.failure is not None:
                out[request] = self.failure
            elif request.ref not in self.history:
                out[request] = SecretNotFound("no such secret")
            else:
                out[request] = str(len(self.history[request.ref]))
        return out
