"""A third-party provider in one class: values from a JSON file of {ref: [version1, version2, ...]}.

It implements the seam's one required method (`fetch`), declares what it can do, the variable its
credential would come from, and its SDK's logger; everything else comes from the base class."""

from __future__ import annotations

import json
import os
from pathlib import Path

from bridge.errors import AccessDenied, SecretNotFound
from bridge.provider import PREVIOUS, Capabilities, Fetched, Provider, ProviderSettings, Request


class MemorySettings(ProviderSettings):
    type: str = "example-memory"
    path: Path


class MemoryProvider(Provider):
    Settings = MemorySettings
    settings: MemorySettings
    capabilities = Capabilities(previous=True)
    credential_env = ("EXAMPLE_MEMORY_TOKEN",)
    sdk_loggers = ("example_memory_sdk",)

    def fetch(self, request: Request) -> Fetched:
        if os.environ.get("EXAMPLE_MEMORY_TOKEN") != "let-me-in":
            raise AccessDenied("EXAMPLE_MEMORY_TOKEN is not the expected token", provider=self.name, ref=request.ref)
        history = json.loads(self.settings.path.read_text()).get(request.ref)
        if not history:
            raise SecretNotFound("no such secret", provider=self.name, ref=request.ref)
        index = {None: len(history), PREVIOUS: len(history) - 1}.get(request.version)
        index = int(request.version or 0) if index is None else index
        if not 1 <= index <= len(history):
            raise SecretNotFound("no such version", provider=self.name, ref=request.ref, version=request.version)
        return Fetched(history[index - 1].encode(), str(index))

    def moves(self, version: str) -> bool:
        return version == PREVIOUS
