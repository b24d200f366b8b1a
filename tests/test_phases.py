"""One provider's share of a cycle (bridge/engine/phases.py): an unexpected exception is
Unavailable, and a batch stops after an Unavailable."""

from __future__ import annotations

from pathlib import Path

from bridge.errors import Unavailable
from tests.engines import fake_engine


def test_unexpected_provider_exception_is_unavailable(tmp_path: Path) -> None:
    """A provider bug (any exception) fails its secrets as unavailable; the bridge goes on."""
    engine, fake = fake_engine(tmp_path, "  a: {provider: fake, ref: r1}\n")
    fake.put("r1", b"one")
    engine.sync()
    fake.failure = KeyError("odd server answer")
    result = engine.cycle(engine.units.values())
    assert isinstance(result.failed["a"], Unavailable) and "KeyError" in str(result.failed["a"])
    assert (tmp_path / "a").read_bytes() == b"one"


def test_batch_stops_after_unavailable(tmp_path: Path) -> None:
    """Once the backend is unavailable, the rest of a batch is not tried (no timeout per secret)."""
    secrets = "".join(f"  s{i}: {{provider: fake, ref: r{i}}}\n" for i in range(5))
    engine, fake = fake_engine(tmp_path, secrets)
    fake.failure = Unavailable("down")
    result = engine.sync()
    assert len(result.failed) == 5 and len(fake.fetches) == 1
