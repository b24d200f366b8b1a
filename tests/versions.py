"""The change check asked the way tests read best: by ref, for the latest version."""

from __future__ import annotations

from collections.abc import Iterable

from bridge.errors import ProviderError
from bridge.provider import Provider, Request, VersionOutcome


def latest(provider: Provider, refs: Iterable[str]) -> dict[str, VersionOutcome]:
    """`provider.versions()` for the latest version of each ref, keyed by ref."""
    return {r.ref: v for r, v in provider.versions([Request(ref) for ref in dict.fromkeys(refs)]).items()}


def latest_one(provider: Provider, ref: str) -> str | None:
    """The latest version of one ref; its error raised."""
    outcome = provider.versions([Request(ref)])[Request(ref)]
    if isinstance(outcome, ProviderError):
        raise outcome
    return outcome
