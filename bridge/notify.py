"""Tell the application that files changed: a signal, a command, or an HTTP call.

Runs after a commit, for each `on_change` entry whose secrets changed. A failing hook is logged
and never stops the bridge. A started command gets a minimal environment (never the bridge's own,
which may hold a vault token) and the changed names in SECRETS_BRIDGE_CHANGED, never values.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import urllib.request
from collections.abc import Sequence

from bridge.config import OnChange

log = logging.getLogger("secrets_bridge.notify")

_PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "HOME")


class Notifier:
    def __init__(self, hooks: Sequence[OnChange]) -> None:
        self.hooks = list(hooks)

    def __call__(self, changed: list[str]) -> None:
        for hook in self.hooks:
            if hook.secrets is not None and not set(hook.secrets) & set(changed):
                continue
            try:
                self._run(hook, changed)
            except Exception as exc:  # a hook must never take the bridge down
                log.warning("on_change hook %s failed: %s", _describe(hook), exc)

    def _run(self, hook: OnChange, changed: list[str]) -> None:
        if hook.signal is not None and hook.pid_file is not None:
            pid = int(hook.pid_file.read_text().strip())
            name = hook.signal.upper()
            signum = signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
            os.kill(pid, signum)
            log.info("on_change: sent %s to pid %d", signum.name, pid)
        elif hook.exec is not None:
            env = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
            env["SECRETS_BRIDGE_CHANGED"] = ",".join(changed)
            result = subprocess.run(hook.exec, env=env, timeout=hook.timeout, check=False,
                                    stdin=subprocess.DEVNULL, capture_output=True)
            if result.returncode != 0:
                raise RuntimeError(f"exit status {result.returncode}")
            log.info("on_change: ran %s", hook.exec[0])
        elif hook.http is not None:
            request = urllib.request.Request(hook.http.url, method=hook.http.method,  # noqa: S310
                                             data=b"" if hook.http.method != "GET" else None)
            with urllib.request.urlopen(request, timeout=hook.timeout) as response:  # noqa: S310
                log.info("on_change: %s %s -> %d", hook.http.method, hook.http.url, response.status)


def _describe(hook: OnChange) -> str:
    if hook.signal is not None:
        return f"signal {hook.signal}"
    if hook.exec is not None:
        return f"exec {hook.exec[0]}"
    return f"http {hook.http.url if hook.http else ''}"
