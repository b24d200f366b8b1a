"""secrets-bridge: keep a directory of files in step with external vaults."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("secrets-bridge")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"
