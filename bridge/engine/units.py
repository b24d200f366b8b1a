"""Fetch units: the engine's model of what to fetch.

A fetch unit is one (provider, ref, version, params): fetched once per cycle however many outputs
name it (files and env variables alike), and for a leased secret one lease. The outputs that read
units are in bridge/engine/outputs.py. This module never fetches, writes or logs a value.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from bridge.engine.lifetimes import Lease
from bridge.errors import ProviderError
from bridge.provider import Fetched, Request


@dataclass(eq=False, slots=True)
class Unit:
    """One fetch unit and what the engine knows of it between cycles (value never in the repr).
    Only the engine's cycle (bridge/engine/cycle.py) assigns its state; when it is next due is the
    schedule's own."""

    provider: str
    request: Request
    interval: float
    #: pinned to a version that never moves: not polled once fetched
    fixed: bool
    #: the outputs that read it, by name (a tuple: nearly always one)
    entries: tuple[str, ...] = ()
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


class OneUnit(Mapping[str, Unit]):
    """The units of an output that reads one source, `{"": unit}`, in 40 bytes where a dict takes
    184 (14 MiB at 100,000 secrets)."""

    __slots__ = ("unit",)

    def __init__(self, unit: Unit) -> None:
        self.unit = unit

    def __getitem__(self, name: str) -> Unit:
        if name != "":
            raise KeyError(name)
        return self.unit

    def __contains__(self, name: object) -> bool:
        return name == ""

    def __iter__(self) -> Iterator[str]:
        return iter(("",))

    def __len__(self) -> int:
        return 1

    def __repr__(self) -> str:
        return repr({"": self.unit})
