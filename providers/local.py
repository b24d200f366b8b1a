"""Local sources for development parity with Compose: `file` (a file under base_dir) and `env`.

The version id of a local value is its modification time (file) or absent (env), so the engine
compares content for `env`. Neither provider ever logs or echoes the value.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from bridge.errors import AccessDenied, SecretNotFound, Unavailable
from bridge.provider import Fetched, Provider, ProviderSettings, Request, VersionOutcome


class FileSettings(ProviderSettings):
    type: str = "file"
    base_dir: Path = Path(".")


class FileProvider(Provider):
    """`ref` is a path relative to `base_dir` (Compose's `secrets: x: file:`)."""

    Settings = FileSettings
    settings: FileSettings

    def _path(self, ref: str) -> Path:
        path = Path(ref)
        if path.is_absolute() or ".." in path.parts:
            raise SecretNotFound("ref must be a path relative to base_dir, without '..'", provider=self.name, ref=ref)
        return self.settings.base_dir / path

    def fetch(self, request: Request) -> Fetched:
        path = self._path(request.ref)
        try:
            data = path.read_bytes()
            version = str(os.stat(path).st_mtime_ns)
        except FileNotFoundError:
            raise SecretNotFound("no such file", provider=self.name, ref=request.ref) from None
        except PermissionError:
            raise AccessDenied("permission denied", provider=self.name, ref=request.ref) from None
        except OSError as exc:
            raise Unavailable(exc.strerror or "cannot read", provider=self.name, ref=request.ref) from None
        if request.version is not None and request.version != version:
            raise SecretNotFound("a file keeps only its latest version", provider=self.name,
                                 ref=request.ref, version=request.version)
        return Fetched(data, version)

    def current_version(self, ref: str) -> str | None:
        return self.current_versions([ref])[ref]  # type: ignore[return-value]

    def current_versions(self, refs: Sequence[str]) -> dict[str, VersionOutcome]:
        """A stat per file, with the paths worked out once: 10,000 files in a few milliseconds."""
        paths = self.__dict__.setdefault("_paths", {})
        out: dict[str, VersionOutcome] = {}
        for ref in refs:
            try:
                path = paths.get(ref)
                if path is None:
                    path = paths[ref] = os.fspath(self._path(ref))
                out[ref] = str(os.stat(path).st_mtime_ns)
            except FileNotFoundError:
                out[ref] = SecretNotFound("no such file", provider=self.name, ref=ref)
            except SecretNotFound as exc:
                out[ref] = exc
            except OSError as exc:
                out[ref] = Unavailable(exc.strerror or "cannot stat", provider=self.name, ref=ref)
        return out


class EnvSettings(ProviderSettings):
    type: str = "env"


class EnvProvider(Provider):
    """`ref` is an environment variable name (Compose's `secrets: x: environment:`)."""

    Settings = EnvSettings

    def fetch(self, request: Request) -> Fetched:
        value = os.environ.get(request.ref)
        if value is None:
            raise SecretNotFound("environment variable not set", provider=self.name, ref=request.ref)
        return Fetched(value.encode(), None)

    def current_version(self, ref: str) -> str | None:
        if ref not in os.environ:
            raise SecretNotFound("environment variable not set", provider=self.name, ref=ref)
        return None
