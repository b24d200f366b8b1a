"""The command line: parse, set up logging, load the config, call one function, map the error
class to an exit status. No traceback for a user mistake unless --debug; never a value in any output.
The README's command table and `--help` state the same exit statuses; keep them in step."""

from __future__ import annotations

import bridge.startup  # first: holds SIGHUP during the imports below  # isort: skip
import argparse
import contextlib
import gc
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from bridge.config.fields import STATE_FILE
from bridge.config.loader import BridgeConfig, Config, config_path, load_config
from bridge.errors import BridgeError, ConfigError, WriteError
from bridge.observe import metrics
from bridge.observe.logs import AuditLog, one_line, setup_logging
from bridge.writer.atomic import is_memory_backed
from bridge.writer.state import SecretRecord, read_state

log = logging.getLogger("secrets_bridge")

DESCRIPTION = """\
Keep a directory of files (default /run/secrets, a tmpfs shared with your application) in step
with secrets in HashiCorp Vault / OpenBao, AWS Secrets Manager, Azure Key Vault, or local files
and environment variables. Applications read /run/secrets/NAME as they read Docker secrets."""

EPILOG = """\
exit status: 0 success; 1 a required secret failed, the bridge could not start, or (inspect) no
secret of that name; 2 a configuration or usage error, or (ls, inspect) no state yet; exec: the
command's own.
Options may come before or after the command. Run `secrets-bridge COMMAND --help` for more."""

#: name, one-line help, description, exit statuses (as the README's command table says)
COMMANDS = (
    ("run", "sync, then keep the files in step until SIGTERM",
     "Sync every secret, then keep the files in step: re-check each secret every refresh_interval, "
     "rotate files atomically, run on_change actions, reload the config on SIGHUP or when its file "
     "changes, and serve /healthz, /readyz and /metrics on `listen`.",
     "exit status: 0 clean shutdown (SIGTERM/SIGINT); 1 cannot start; 2 config error"),
    ("sync", "one pass, then exit (init containers)",
     "Fetch every secret once, write them in one atomic commit, and exit.",
     "exit status: 0 every required secret written; 1 any failed (the rest are still written), "
     "one has no visible link (a folder planted at its name) or the output directory cannot be used; "
     "2 config error"),
    ("check", "validate, authenticate and resolve every version; writes nothing",
     "Fetch every secret as sync would and apply key, encoding and format, but write nothing; print "
     "each resolved version or error, never a value.",
     "exit status: 0 every required secret resolves; 1 any does not; 2 config error"),
    ("exec", "run a command with secrets as env values and files; restart it on rotation",
     "Sync every secret and env: value, then run COMMAND as the bridge's child with the env: values in "
     "its environment (less the bridge's own credentials and SECRETS_BRIDGE_* variables), keep files and "
     "values in step as run does, and restart COMMAND when an env: value changes (exec.restart_on). "
     "SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2 and SIGWINCH go to COMMAND; the config reloads "
     "when its file changes. --mask conceals every delivered value in COMMAND's stdout and stderr.",
     "exit status: COMMAND's own (128+N when signal N ended it); 1 a required secret or env value failed "
     "at start (COMMAND not started) or the bridge could not start; 2 config or usage error; 126 COMMAND "
     "cannot be run; 127 COMMAND not found"),
    ("ls", "list the secrets in the output directory (metadata only)",
     "List name, provider, ref, version, size and update time of each file the last sync or run "
     "wrote, from the state file beside them. Contacts no provider. As `docker secret ls`: -q prints "
     "names only; --format json one JSON object a line; --format TEMPLATE fills {{.Name}}, {{.Entry}}, "
     "{{.Provider}}, {{.ProviderType}}, {{.Ref}}, {{.Key}}, {{.PinnedVersion}}, {{.Version}}, {{.Size}}, "
     "{{.Mode}}, {{.Uid}}, {{.Gid}}, {{.Updated}}, {{.Error}} (\\t and \\n as tab and newline).",
     "exit status: 0; 2 config error, a bad --format, or no state yet (run `secrets-bridge sync` first)"),
    ("inspect", "JSON metadata of secrets, never their values",
     "Print the state the bridge keeps about each named secret as one JSON array (like `docker secret "
     "inspect`), never a value; the name of a files: entry gives each of its files. Contacts no provider.",
     "exit status: 0; 1 a name has no secret (the others are printed); 2 config error or no state yet"),
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit status. Without `argv` this is the program itself (the
    console script, `python -m bridge.cli`): it then ends the process as soon as the command is
    done, since the interpreter's teardown of the ~500 modules loaded takes 40-90 ms, as long as
    a whole `sync` of 100 secrets takes to fetch them."""
    status = _main(argv)
    if argv is None:
        end_process(status)
    return status


def end_process(status: int) -> NoReturn:
    """Flush the logs and standard streams, then exit without the interpreter's teardown. Nothing
    is left to it: files are written and closed by the writer and the audit log (unbuffered),
    provider connections are closed, and every thread has been joined or is a daemon."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)


#: each thread's stack: the bridge's threads (endpoints, watchers, notifications) run shallow code,
#: and the default (ulimit -s, often 8 MiB each) is what a small memory limit (`ulimit -v`) runs out of
THREAD_STACK_BYTES = 1 << 20


def _main(argv: Sequence[str] | None) -> int:
    threading.stack_size(THREAD_STACK_BYTES)
    bridge.startup.return_large_frees()
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "exec":
        args.argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not args.argv:
            parser.error("exec needs a command: secrets-bridge exec [--mask] [--] COMMAND [ARG...]")
    setup_logging(args.log_format or "auto", args.debug)
    try:
        status = _dispatch(args)
        sys.stdout.flush()  # here, not at exit: a reader that left is handled below
        return status
    except BridgeError as exc:
        if args.debug:
            log.exception("failed")
        print(f"secrets-bridge: {one_line(str(exc))}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `secrets-bridge ls | head`: the reader left; stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except MemoryError:
        print(f"secrets-bridge: {OUT_OF_MEMORY}", file=sys.stderr)
        return 1
    except Exception as exc:
        if isinstance(exc, RuntimeError) and _no_thread(exc):
            print(f"secrets-bridge: {OUT_OF_THREADS}", file=sys.stderr)
            return 1
        if args.debug:
            raise
        # Unknown failures print only their class: their text may come from an SDK.
        print(f"secrets-bridge: internal error ({type(exc).__name__}); run with --debug for details",
              file=sys.stderr)
        return 1


OUT_OF_MEMORY = "out of memory: the memory limit (ulimit -v, the container's limit) is too low for this config"
OUT_OF_THREADS = ("cannot start a thread: the memory limit (ulimit -v) or the thread limit (ulimit -u, "
                  "pids.max) is too low")


def _no_thread(exc: RuntimeError) -> bool:
    """Python's own error when the system refuses a new thread (its fixed text, never a value)."""
    return str(exc) == "can't start new thread"


def _dispatch(args: argparse.Namespace) -> int:
    """Load the config, apply its log format, refuse a disk output_dir, run one command."""
    # Start-up builds what lives as long as the process (at 100,000 secrets, millions of objects):
    # the collector walking it again and again while it grows took a fifth of a cold sync. A
    # one-shot command leaves it off; `run` and `exec` turn it on after their first sync.
    gc.disable()
    path = config_path(args.config)
    config = load_config(path)
    if args.log_format is None:
        setup_logging(config.settings.log_format, args.debug)
    if args.command in ("run", "sync", "exec"):
        refuse_disk_output_dir(config.settings)
    if args.command in ("run", "exec"):
        from bridge.runtime.runner import Runner  # the file watcher and the server: only run and exec pay for them

        runner = Runner(path, config, log_format=args.log_format, debug=args.debug)
        if args.command == "exec":
            from bridge.runtime.exec_runner import ExecRunner

            runner = ExecRunner(path, config, args.argv, mask=args.mask, log_format=args.log_format,
                                debug=args.debug)
        if config.settings.listen:
            return runner.run()
        with metrics.unrecorded():  # no /metrics to read them (the listener is set at start only)
            return runner.run()
    if args.command == "inspect":
        return cmd_inspect(config, args.names)
    if args.command == "ls":
        return cmd_ls(config, args.format, args.quiet)
    return {"sync": cmd_sync, "check": cmd_check}[args.command](config)


def _options(default: object) -> argparse.ArgumentParser:
    """The options every command takes. The copy on each subcommand has SUPPRESS defaults, so an
    option given before the command is not overwritten by the subcommand's default."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=default,
                        help="the YAML config (default: $SECRETS_BRIDGE_CONFIG, else ./secrets-bridge.yaml)")
    common.add_argument("--debug", action="store_true", default=False if default is None else default,
                        help="debug logs of the bridge itself (never of the SDKs) and tracebacks")
    common.add_argument("--log-format", choices=("auto", "text", "json"), default=default,
                        help="log lines on stderr; overrides the config's log_format (default auto: "
                             "JSON lines unless stderr is a terminal)")
    return common


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="secrets-bridge", description=DESCRIPTION, epilog=EPILOG, parents=[_options(None)],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    common = _options(argparse.SUPPRESS)
    for name, short, description, statuses in COMMANDS:
        command = sub.add_parser(name, parents=[common], help=short, description=description, epilog=statuses)
        command.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")
        if name == "inspect":
            command.add_argument("names", nargs="+", metavar="NAME", help="a secret's file name, as in `ls`")
        if name == "ls":
            command.add_argument("-q", "--quiet", action="store_true", help="print the names only")
            command.add_argument("--format", metavar="json|TEMPLATE",
                                 help="one JSON object a line, or a template such as '{{.Name}}\\t{{.Version}}'")
        if name == "exec":
            command.add_argument("--mask", action="store_true",
                                 help="pass COMMAND's stdout and stderr through the bridge, every delivered "
                                      "value of 6 bytes or more replaced by <concealed by secrets-bridge>")
            command.add_argument("argv", nargs=argparse.REMAINDER, metavar="[--] COMMAND [ARG...]",
                                 help="the command to run, with its arguments")
    return parser


class _Version(argparse.Action):
    """--version, looked up only when asked: importlib.metadata costs every other command ~20 ms."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        from bridge import __version__

        print(f"secrets-bridge {__version__}")
        parser.exit()


def refuse_disk_output_dir(settings: BridgeConfig) -> None:
    """With require_tmpfs, refuse a disk-backed output_dir before anything creates it: checked on
    the directory, or, while it does not exist, on the nearest folder above it that does."""
    if not settings.require_tmpfs:
        return
    nearest = Path(settings.output_dir).absolute()
    while not os.path.lexists(nearest) and nearest != nearest.parent:
        nearest = nearest.parent
    if not is_memory_backed(nearest):
        raise WriteError(
            f"output_dir {settings.output_dir} is on a disk-backed filesystem; mount a tmpfs there "
            f"(Compose: a tmpfs volume; Kubernetes: emptyDir with medium: Memory; by hand: "
            f"mount -t tmpfs tmpfs {settings.output_dir}) or set require_tmpfs: false"
        )


def cmd_sync(config: Config) -> int:
    from bridge.engine.cycle import Engine  # not for ls and inspect, which read the state file only

    # No metrics: nothing can scrape a process about to exit, and prometheus_client stays unloaded.
    with metrics.unrecorded():
        engine = Engine(config, subscribers=[AuditLog(config.settings.audit_log)])
        try:
            engine.start()
            result = engine.sync()
        finally:
            engine.close()
    required = [n for n in result.failed if not config.settings.secrets[n].optional]
    if result.write_error is not None:
        log.error("%s", result.summary(engine.outputs))
        raise result.write_error
    (log.warning if required else log.info)("%s", result.summary(engine.outputs))
    if engine.writer.links.unlinked is not None:  # written, but not where the application looks
        log.error("sync: a secret has no visible link in %s: %s", config.settings.output_dir,
                  engine.writer.links.unlinked)
        return 1
    return 1 if required else 0


def cmd_check(config: Config) -> int:
    """A dry `sync` through the engine's own path: fetch (batched), extract and render every
    entry, write nothing; print each resolved version or error, never a value."""
    from bridge.engine.cycle import Engine

    with metrics.unrecorded():  # as in cmd_sync
        engine = Engine(config, env=True)
        try:
            failed = engine.check()
        finally:
            engine.close()
    rows = []
    for name, entry in engine.outputs.items():
        provider, ref = entry.source()
        error = failed.get(name)
        status = "ok" if error is None else f"{error.code}: {error}"
        rows.append((name, provider, ref, (entry.version() if error is None else None) or "-", status))
    _table(("NAME", "PROVIDER", "REF", "VERSION", "STATUS"), rows)
    return 1 if any(not engine.outputs[n].optional for n in failed) else 0


def _state_of(config: Config) -> dict[str, dict[str, object]]:
    path = Path(config.settings.output_dir) / STATE_FILE
    records = read_state(path)
    if not records:
        raise ConfigError(f"no state in {config.settings.output_dir}: run `secrets-bridge sync` first")
    return {name: record._asdict() for name, record in records.items()}


def cmd_ls(config: Config, fmt: str | None = None, quiet: bool = False) -> int:
    render = listing_format(fmt) if fmt is not None else None  # a bad template fails before any reading
    state = _state_of(config)
    if quiet:
        for name in state:
            print(one_line(name))
    elif fmt == "json":
        for record in state.values():
            print(json.dumps(record))
    elif render is not None:
        for record in state.values():
            print(render(record))
    else:
        rows = []
        for name, r in state.items():
            size = "-" if r["size"] is None else str(r["size"])
            rows.append((name, str(r["provider"]), str(r["ref"]), str(r["version"] or "-"), size,
                         str(r["updated"] or "-")))
        _table(("NAME", "PROVIDER", "REF", "VERSION", "SIZE", "UPDATED"), rows)
    return 0


def cmd_inspect(config: Config, names: Sequence[str]) -> int:
    state = _state_of(config)
    found, missing = [], []
    for name in names:
        # a file, or an entry: a `files:` entry's name gives each of its files
        records = [state[name]] if name in state else [r for r in state.values() if r["entry"] == name]
        if records:
            found.extend(records)
        else:
            missing.append(name)
    if found:
        print(json.dumps(found, indent=4))
    for name in missing:
        print(f"secrets-bridge: no secret named {one_line(repr(name))} in {config.settings.output_dir}",
              file=sys.stderr)
    return 1 if missing else 0


#: the fields of a state record, in order (`ls --format`, `inspect`)
STATE_FIELDS = SecretRecord._fields
#: `ls --format TEMPLATE`: `{{.Field}}`, as docker's Go templates name a field (nothing else is run)
_PLACEHOLDER = re.compile(r"\{\{\s*\.([A-Za-z]+)\s*\}\}")


def listing_format(fmt: str) -> Callable[[dict[str, object]], str] | None:
    """A function filling `fmt`'s placeholders from a state record (None for `json`); ConfigError
    naming the first placeholder that is not a field. A plain substitution: no expression runs."""
    if fmt == "json":
        return None
    names = {"".join(part.title() for part in key.split("_")): key for key in STATE_FIELDS}
    template = fmt.replace("\\t", "\t").replace("\\n", "\n")
    for match in _PLACEHOLDER.finditer(template):
        if match.group(1) not in names:
            raise ConfigError(f"--format: unknown field {match.group(1)!r}; fields: {', '.join(names)}")
    leftover = _PLACEHOLDER.sub("", template)
    if "{{" in leftover or "}}" in leftover:
        raise ConfigError("--format: only {{.Field}} placeholders are understood (or json)")

    def fill(record: dict[str, object]) -> str:
        def value(match: re.Match[str]) -> str:
            field = record[names[match.group(1)]]
            text = "" if field is None else field if isinstance(field, str) else json.dumps(field)
            return one_line(str(text))  # a ref or name may hold anything: never a control character
        return _PLACEHOLDER.sub(value, template)

    return fill


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    rows = [tuple(one_line(str(c)) for c in row) for row in rows]  # a ref may hold anything
    widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())


if __name__ == "__main__":
    sys.exit(main())
