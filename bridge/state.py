"""The state file kept beside the secrets, read by `ls` and `inspect`.

Metadata only: names, provider, ref, resolved version, size, mode, owner, times, the last error.
Never a value, never a hash of a value, never a credential.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from bridge.config import STATE_FILE, Config, SecretConfig
from bridge.errors import ProviderError

if TYPE_CHECKING:
    from bridge.writer import Writer


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class SecretRecord:
    name: str
    provider: str
    provider_type: str
    ref: str
    key: str | None
    pinned_version: str | None
    version: str | None
    size: int | None
    mode: str
    uid: int
    gid: int
    updated: str | None
    error: dict[str, str | None] | None

    @classmethod
    def of(
        cls,
        name: str,
        secret: SecretConfig,
        config: Config,
        *,
        version: str | None,
        size: int | None,
        updated: float | None,
        error: ProviderError | None,
    ) -> SecretRecord:
        settings = config.settings
        uid, gid = settings.owner_of(secret)
        return cls(
            name=name,
            provider=secret.provider,
            provider_type=settings.providers[secret.provider]["type"],
            ref=secret.ref,
            key=secret.key,
            pinned_version=secret.version,
            version=version,
            size=size,
            mode=f"{settings.mode_of(secret):04o}",
            uid=uid,
            gid=gid,
            updated=_iso(updated),
            error=None if error is None else {"code": error.code, "message": str(error)},
        )

    def matches(self, secret: SecretConfig) -> bool:
        """Same source as configured now (so the recorded version still describes the file)."""
        return (self.provider, self.ref, self.key, self.pinned_version) == (
            secret.provider, secret.ref, secret.key, secret.version)

    def updated_epoch(self) -> float | None:
        return None if self.updated is None else datetime.fromisoformat(self.updated).timestamp()


class State:
    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    @property
    def path(self) -> Path:
        return self.writer.output_dir / STATE_FILE

    def load(self) -> dict[str, SecretRecord]:
        return read_state(self.path)

    def save(self, records: dict[str, SecretRecord], config: Config) -> None:
        doc = {
            "written": _iso(time.time()),
            "output_dir": str(config.settings.output_dir),
            "secrets": {name: asdict(r) for name, r in sorted(records.items())},
        }
        self.writer.write_state(STATE_FILE, json.dumps(doc, indent=2).encode() + b"\n")


def read_state(path: Path) -> dict[str, SecretRecord]:
    """Records from a state file; empty when there is none or it is unreadable."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return {name: SecretRecord(**fields) for name, fields in doc["secrets"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}
