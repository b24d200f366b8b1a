"""secrets-bridge: keep a directory of files in step with external vaults."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    # Looked up on first use: importlib.metadata costs ~30 ms that the CLI's start-up should not pay
    # before it has set up its signal handling (bridge/startup.py).
    if name != "__version__":
        raise AttributeError(name)
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("secrets-bridge")
    except PackageNotFoundError:  # running from a source tree without installing
        return "0.0.0"
