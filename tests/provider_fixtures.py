"""A provider of our own for the tests of the provider seam and its shared rules (test_provider,
test_provider_rules): answers from a table, no SDK."""

from __future__ import annotations

import threading

from bridge.provider import Fetched, Provider, Request


class Scripted(Provider):
    """Answers from a table: a value, or an error to raise; records every call it receives."""

    def __init__(self, name: str, answers: dict[str, object]) -> None:
        super().__init__(name, None)
        self.answers = answers
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def fetch(self, request: Request) -> Fetched:
        with self._lock:
            self.calls.append(request.ref)
        answer = self.answers[request.ref]
        if isinstance(answer, Exception):
            raise answer
        return Fetched(str(answer).encode(), "1")

