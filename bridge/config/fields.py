"""The value types of the configuration: durations, file modes, owner ids, listen addresses, paths
and target names, each checked completely at load, so nothing fails only at use (an OverflowError
in chown, a timer that overflows, a name too long for the filesystem).

Each check raises ValueError (pydantic turns it into a field error) or `FieldError` with its own
field path. Messages name what is wrong; they quote a value only where it cannot be a credential
(a duration, a mode), and then escaped and cut to one short line.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import unicodedata
import urllib.parse
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

#: the bridge's own files beside the secrets; every top-level name starting with
#: RESERVED_PREFIX is refused as a target, so later ones need no config change
RESERVED_PREFIX = ".secrets-bridge"
#: the metadata file kept beside the secrets (names and versions, never values)
STATE_FILE = ".secrets-bridge-state.json"
#: the lease store kept beside the secrets
LEASE_FILE = ".secrets-bridge-leases.json"

#: the shortest refresh interval (a smaller one would be a busy loop against the vault)
MIN_REFRESH_SECONDS = 0.1
#: the longest duration taken anywhere: longer ones overflow timers or are typos
MAX_DURATION_SECONDS = 10 * 365 * 86400.0
#: the largest uid/gid: 2**32-1 is the "unchanged" value of chown(2)
MAX_ID = 2**32 - 2
#: NAME_MAX (255 bytes) less room for a 16-byte prefix the writer puts on a component when it
#: builds its temporary names (`..link_<name>`): every target component is at most this long
MAX_COMPONENT = 255 - 16
#: PATH_MAX (4096 bytes with its NUL): output_dir, a generation folder and the target together
MAX_PATH = 4095
#: the generation folder's part of a path: `/..2026_11_28_02_10_00.123456789/`
_GENERATION_PART = 33
#: folders a target may nest (deeper ones serve no one and would only cost recursion)
MAX_TARGET_DEPTH = 32
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
#: seconds as a plain decimal number; float() alone would also take inf, nan and 1_0
_PLAIN_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """`500ms`, `30s`, `5m`, `1h`, `1h30m` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 1h")
    try:
        if isinstance(value, int | float):
            seconds = float(value)
        elif isinstance(value, str) and value.strip():
            seconds = _duration_text(value.strip())
        else:
            raise ValueError("expected a duration such as 30s, 5m or 1h")
    except OverflowError:
        seconds = math.inf
    if math.isnan(seconds):
        raise ValueError("expected a duration such as 30s, 5m or 1h, not nan")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError("duration too long (at most 10 years)")
    return seconds


def _duration_text(text: str) -> float:
    if _PLAIN_NUMBER.fullmatch(text):
        return float(text)
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid duration {shorten(text)!r}: use 500ms, 30s, 5m, 1h or seconds")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


class DecimalInt(int):
    """An integer the YAML file wrote in decimal (so a mode written as 400 can be refused)."""


def parse_mode(value: Any) -> int:
    """`"0400"` (string) or YAML octal `0400`; a bare decimal that reads like octal is refused."""
    if isinstance(value, bool):
        raise ValueError("expected an octal file mode such as \"0400\"")
    if isinstance(value, str):
        try:
            mode = int(value.strip(), 8)
        except ValueError:
            raise ValueError(f"invalid file mode {shorten(value)!r}: use an octal string such as \"0400\"") from None
    elif isinstance(value, int):
        # YAML reads 0400 as octal but 400 as decimal (0620): a decimal mode is almost surely a mistake.
        if isinstance(value, DecimalInt) and 8 <= value <= 7777:
            raise ValueError(f"mode {value} is a decimal number; write it as octal: \"0{value}\"")
        mode = int(value)
    else:
        raise ValueError("expected an octal file mode such as \"0400\"")
    if not 0 <= mode <= 0o777:
        raise ValueError("file mode out of range (0000-0777; set-id and sticky bits make no sense on a secret)")
    return mode


def _version_text(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a version id")
    return str(value) if isinstance(value, int) else value


def refuse_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a number, not true/false")
    return value


def parse_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT` (`0.0.0.0:9098`, `[::1]:9098`, `localhost:9098`, `:9098` for every address):
    the host an IP address or a DNS name, the port 0-65535 (0: any free port)."""
    match = _LISTEN.fullmatch(value)
    if match is None:
        raise ValueError("expected HOST:PORT, such as 0.0.0.0:9098 or [::1]:9098")
    port = int(match["port"])
    if port > 65535:
        raise ValueError("port out of range (0-65535)")
    if match["v6"] is not None:
        try:
            ipaddress.IPv6Address(match["v6"])
        except ValueError:
            raise ValueError("not an IPv6 address inside [ ]") from None
        return match["v6"], port
    host = match["host"]
    if not host:
        return "0.0.0.0", port
    if _NUMERIC_HOST.fullmatch(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError("not an IPv4 address") from None
    elif len(host) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in host.split(".")):
        raise ValueError("host is neither an IP address nor a DNS name")
    return host, port


_LISTEN = re.compile(
    r"(?:\[(?P<v6>[0-9A-Fa-f:.]+(?:%[A-Za-z0-9_.-]+)?)\]|(?P<host>[A-Za-z0-9.-]*)):(?P<port>[0-9]{1,5})"
)
_NUMERIC_HOST = re.compile(r"[0-9.]+")
_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _listen(value: Any) -> Any:
    if isinstance(value, str):
        parse_listen(value)
    return value


def parse_http_url(value: str) -> str:
    """An http(s) URL with a host, a valid port if any, no credentials (a URL is logged) and no
    whitespace or control characters. For `on_change` http actions and providers' endpoints."""
    if any(c.isspace() or unicodedata.category(c) in _INVISIBLE for c in value):
        raise ValueError("a URL cannot contain spaces or control characters")
    try:
        url = urllib.parse.urlsplit(value)
        port = url.port
    except ValueError:
        raise ValueError("not a valid URL (check the host and port)") from None
    if url.scheme not in ("http", "https"):
        raise ValueError("expected an http:// or https:// URL")
    if not url.hostname:
        raise ValueError("the URL names no host")
    if url.username is not None or url.password is not None:
        raise ValueError("credentials do not belong in the URL (it is logged); use the provider's auth fields")
    if port == 0:
        raise ValueError("port 0 cannot be connected to")
    return value


def _http_url(value: Any) -> Any:
    if isinstance(value, str):
        parse_http_url(value)
    return value


def _local_path(value: Any) -> Any:
    """A path the OS can take: not empty, no NUL byte, not past PATH_MAX."""
    text = os.fspath(value) if isinstance(value, str | os.PathLike) else value
    if isinstance(text, str):
        if not text:
            raise ValueError("expected a path, got an empty string")
        if "\0" in text:
            raise ValueError("a path cannot contain a NUL byte")
        if len(os.fsencode(text)) > MAX_PATH:
            raise ValueError(f"path too long (at most {MAX_PATH} bytes)")
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
Mode = Annotated[int, BeforeValidator(parse_mode)]
Version = Annotated[str, BeforeValidator(_version_text)]
#: a uid or gid the OS accepts (chown(2) takes 0..2**32-2)
OwnerId = Annotated[int, BeforeValidator(refuse_bool), Field(ge=0, le=MAX_ID)]
LocalPath = Annotated[Path, BeforeValidator(_local_path)]
Listen = Annotated[str, BeforeValidator(_listen)]
#: an http(s) URL (see parse_http_url)
HttpUrl = Annotated[str, BeforeValidator(_http_url)]


class FieldError(ValueError):
    """A validation error raised with its own field path (outside pydantic's loc)."""

    def __init__(self, loc: tuple[str, ...], message: str) -> None:
        super().__init__(f"{field_path(loc)}: {message}")


def field_path(loc: tuple[object, ...]) -> str:
    return ".".join(printable(str(part)) for part in loc)


def printable(text: str) -> str:
    """A name as it can stand in a one-line message: control characters escaped, long ones cut."""
    if not text.isprintable():
        text = text.encode("unicode_escape", "backslashreplace").decode("ascii")
    return shorten(text)


def shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: control characters (C0, DEL, C1), format characters (bidi overrides) and line/paragraph separators:
#: nothing a terminal, a log line or a reader of `ls` should meet in a file name
_INVISIBLE = frozenset({"Cc", "Cf", "Zl", "Zp"})


def check_target(name: str, loc: tuple[str, ...] | None = None, output_dir: Path | None = None) -> None:
    """Validate a target path under output_dir (an entry's name, or `entry/file` of a files: entry):
    relative, in normal form, outside the writer's `..` names and the bridge's own files, printable,
    and short enough for the filesystem (with `output_dir`, also within PATH_MAX). Errors name `loc`
    (default `secrets.NAME`). The engine calls it too for file names that arrive at run time
    (`files: "*"`)."""
    # the usual name (`db_password`, `tls.crt`) matches _PLAIN: nothing the two checks ask can fail
    problem = None if _PLAIN.fullmatch(name) else _text_problem(name) or _parts_problem(name.split("/"))
    if problem is None and output_dir is not None and (
            len(os.fsencode(output_dir)) + _GENERATION_PART + len(name.encode()) > MAX_PATH):
        problem = f"output_dir and target together pass PATH_MAX ({MAX_PATH} bytes)"
    if problem is not None:
        raise FieldError(loc or ("secrets", name), problem)


#: one part of letters, digits, `_`, `.`, `-`, not beginning with a dot, within MAX_COMPONENT bytes
_PLAIN = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9_.-]{{0,{MAX_COMPONENT - 1}}}")


def _text_problem(name: str) -> str | None:
    """What is wrong with a target as text, if anything."""
    if not name or name.startswith("/"):
        return "target must be a relative path"
    if any(unicodedata.category(c) in _INVISIBLE for c in name):
        return "target must not contain control characters (or bidi/format or line separators)"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "target must be valid UTF-8"
    return None


def _parts_problem(parts: list[str]) -> str | None:
    """What is wrong with a target's parts, if anything."""
    if any(p == ".." for p in parts):
        return "target must not contain '..'"
    if parts[0].startswith(".."):
        return "target must not begin with '..' (reserved for generations)"
    if any(p in ("", ".") for p in parts):
        return "target must not have empty or '.' parts (write it as a/b)"
    if parts[0].startswith(RESERVED_PREFIX):
        return f"names beginning with {RESERVED_PREFIX!r} are reserved for the bridge's own files"
    if any(len(p.encode()) > MAX_COMPONENT for p in parts):
        return f"a part of the target is longer than {MAX_COMPONENT} bytes"
    if len(parts) > MAX_TARGET_DEPTH:
        return f"target nests more than {MAX_TARGET_DEPTH} folders deep"
    return None
