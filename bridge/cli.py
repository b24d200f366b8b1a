"""The command line: parse, load the config, call one function, map the error class to an exit
status. No traceback for a user mistake unless --debug; never a value in any output."""

from __future__ import annotations

import bridge.startup  # noqa: F401 - first: holds SIGHUP during the imports below  # isort: skip
import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from bridge import __version__
from bridge.config import STATE_FILE, Config, config_path, load_config
from bridge.engine import Engine
from bridge.errors import BridgeError, ConfigError
from bridge.runner import Runner
from bridge.state import read_state

log = logging.getLogger("secrets_bridge")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _setup_logging(args.debug)
    path = config_path(args.config)
    try:
        config = load_config(path)
        if args.command == "run":
            return Runner(path, config).run()
        if args.command == "inspect":
            return cmd_inspect(config, args.name)
        return {"sync": cmd_sync, "check": cmd_check, "ls": cmd_ls}[args.command](config)
    except BridgeError as exc:
        if args.debug:
            log.exception("failed")
        print(f"secrets-bridge: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.debug:
            raise
        # Unknown failures print only their class: their text may come from an SDK.
        print(f"secrets-bridge: internal error ({type(exc).__name__}); run with --debug for details",
              file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="secrets-bridge", description=__doc__)
    parser.add_argument("--version", action="version", version=f"secrets-bridge {__version__}")
    parser.add_argument("--config", help="YAML config (default $SECRETS_BRIDGE_CONFIG or ./secrets-bridge.yaml)")
    parser.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", help="sync, then keep the files in step until SIGTERM")
    sub.add_parser("sync", help="one pass, then exit (init containers)")
    sub.add_parser("check", help="validate, authenticate and resolve every version; writes nothing")
    sub.add_parser("ls", help="list the secrets in the output directory (metadata only)")
    inspect = sub.add_parser("inspect", help="JSON metadata of one secret, never its value")
    inspect.add_argument("name")
    return parser


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Only our own loggers go to debug: SDK debug logs can carry request headers.
    logging.getLogger("secrets_bridge").setLevel(logging.DEBUG if debug else logging.INFO)
    for noisy in ("urllib3", "botocore", "boto3", "azure", "msal", "hvac", "watchdog"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def cmd_sync(config: Config) -> int:
    engine = Engine(config)
    try:
        engine.start()
        result = engine.sync()
    finally:
        engine.close()
    if result.write_error is not None:
        raise result.write_error
    required = [n for n in result.failed if not config.settings.secrets[n].optional]
    log.info("sync: %d entries, %d failed", len(config.settings.secrets), len(result.failed))
    return 1 if required else 0


def cmd_check(config: Config) -> int:
    """A dry `sync` through the engine's own path: fetch (batched), extract and render every
    entry, write nothing; print each resolved version or error, never a value."""
    engine = Engine(config)
    try:
        failed = engine.check()
    finally:
        engine.close()
    rows = []
    for name, entry in engine.entries.items():
        provider, ref = entry.source()
        error = failed.get(name)
        status = "ok" if error is None else f"{error.code}: {error}"
        rows.append((name, provider, ref, (entry.version() if error is None else None) or "-", status))
    _table(("NAME", "PROVIDER", "REF", "VERSION", "STATUS"), rows)
    return 1 if any(not config.settings.secrets[n].optional for n in failed) else 0


def _state_of(config: Config) -> dict[str, dict[str, object]]:
    path = Path(config.settings.output_dir) / STATE_FILE
    records = read_state(path)
    if not records:
        raise ConfigError(f"no state in {config.settings.output_dir}: run `secrets-bridge sync` first")
    return {name: asdict(record) for name, record in records.items()}


def cmd_ls(config: Config) -> int:
    rows = []
    for name, r in _state_of(config).items():
        size = "-" if r["size"] is None else str(r["size"])
        rows.append((name, str(r["provider"]), str(r["ref"]), str(r["version"] or "-"), size,
                     str(r["updated"] or "-")))
    _table(("NAME", "PROVIDER", "REF", "VERSION", "SIZE", "UPDATED"), rows)
    return 0


def cmd_inspect(config: Config, name: str) -> int:
    state = _state_of(config)
    if name not in state:
        print(f"secrets-bridge: no secret named {name!r} in {config.settings.output_dir}", file=sys.stderr)
        return 1
    print(json.dumps([state[name]], indent=4))
    return 0


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())


if __name__ == "__main__":
    sys.exit(main())
