"""Entries to files: a plain entry, a `files:` entry, a `template:` entry.

Owns turning fetched values into file contents. The same for every provider. A render error
names the file and the missing key or the problem, never a value: Jinja2 runs sandboxed with
strict undefined, so a template can neither reach Python internals nor write a blank where a
secret should be.
"""

from __future__ import annotations

import base64
import binascii
import json
import posixpath
import re
import shlex
import urllib.parse
from functools import cache
from typing import TYPE_CHECKING, Any

from bridge.engine.extract import field_bytes
from bridge.errors import ExtractError

if TYPE_CHECKING:
    from jinja2 import Template
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from bridge.provider import Fetched


def value_of(fetched: Fetched) -> Any:
    """A template sees the decoded JSON map when the secret is a JSON object, else its text."""
    try:
        doc = json.loads(fetched.value)
    except (UnicodeDecodeError, json.JSONDecodeError):
        doc = None
    if isinstance(doc, dict):
        return doc
    try:
        return fetched.value.decode()
    except UnicodeDecodeError:
        raise ExtractError("value is binary, so a template cannot use it (write it with a plain entry)") from None


def top_level_files(fetched: Fetched) -> dict[str, bytes]:
    """`files: "*"`: every top-level key of the JSON map, a string as is, anything else as JSON."""
    doc = value_of(fetched)
    if not isinstance(doc, dict):
        raise ExtractError('value is not a JSON object, so files: "*" has no keys to write')
    for key in doc:
        # "b" and "b/c" cannot both be files: caught here, it fails this entry, not the whole commit
        parent = posixpath.dirname(key)
        while parent:
            if parent in doc:
                raise ExtractError(f"key {key!r} lies inside key {parent!r}, which is a file")
            parent = posixpath.dirname(parent)
    # one parse for all keys (extract() per key would parse the map once per key: quadratic)
    return {key: field_bytes(field) for key, field in doc.items()}


def _b64decode(text: str) -> str:
    try:
        return base64.b64decode("".join(text.split()), validate=True).decode()
    except (binascii.Error, ValueError):
        raise ValueError("b64decode: not valid base64 text") from None


def _filters() -> dict[str, Any]:
    return {
        "urlencode": lambda v: urllib.parse.quote(str(v), safe=""),
        "shell_quote": lambda v: shlex.quote(str(v)),
        "json": lambda v: json.dumps(v, separators=(",", ":"), sort_keys=True),
        "b64encode": lambda v: base64.b64encode(v.encode() if isinstance(v, str) else bytes(v)).decode(),
        "b64decode": _b64decode,
    }


#: a rendered file larger than this is a runaway template, not a secret file
MAX_OUTPUT_BYTES = 1 << 20
#: the items all `range()` calls of one render may make together (nested loops multiply)
MAX_RANGE_ITEMS = 100_000


class TemplateTooBig(Exception):
    """A render went past MAX_OUTPUT_BYTES or MAX_RANGE_ITEMS (it would stall the loop or fill memory)."""


class _Budget:
    """The work one render may do; `range` and the big operators draw from it."""

    def __init__(self) -> None:
        self.items = MAX_RANGE_ITEMS

    def range(self, *args: int) -> range:
        made = range(*args)
        self.items -= len(made)
        if self.items < 0:
            raise TemplateTooBig(f"loops make more than {MAX_RANGE_ITEMS} items")
        return made


@cache
def environment() -> ImmutableSandboxedEnvironment:
    """One sandboxed environment (imported only when a config has templates): immutable values,
    no Python internals, `*` and `**` checked so an operand cannot blow up memory."""
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Sandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**"])

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "**" and isinstance(right, int) and abs(right) > 64:
                raise TemplateTooBig("exponent too large")
            if operator == "*" and isinstance(left, str | bytes | list | tuple) and isinstance(right, int) \
                    and len(left) * right > MAX_OUTPUT_BYTES:
                raise TemplateTooBig(f"a repeated text past {MAX_OUTPUT_BYTES} bytes")
            if operator == "*" and isinstance(right, str | bytes | list | tuple) and isinstance(left, int) \
                    and len(right) * left > MAX_OUTPUT_BYTES:
                raise TemplateTooBig(f"a repeated text past {MAX_OUTPUT_BYTES} bytes")
            return super().call_binop(context, operator, left, right)

    env = Sandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
    env.filters.update(_filters())
    return env


def compile_template(source: str, declared: set[str]) -> Template:
    """Parse `source` and check it names only `declared` values; raise ValueError naming the problem."""
    from jinja2 import TemplateSyntaxError, meta, nodes

    env = environment()
    try:
        tree = env.parse(source)
    except TemplateSyntaxError as exc:
        raise ValueError(f"template does not parse: line {exc.lineno}: {exc.message}") from None
    if next(tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)), None) is not None:
        raise ValueError("template loads another template (extends, include or import): a template is one text")
    unknown = sorted(meta.find_undeclared_variables(tree) - declared)
    if unknown:
        raise ValueError(f"template names {', '.join(unknown)}, not declared in values")
    template = env.from_string(source)
    # The names written in the template are config, so a render error may repeat them (and no other).
    written = {n.name for n in tree.find_all(nodes.Name)} | {n.attr for n in tree.find_all(nodes.Getattr)}
    written |= {str(n.value) for n in tree.find_all(nodes.Const)}
    template.bridge_names = frozenset(written)  # type: ignore[attr-defined]
    return template


def _names_in(message: str) -> list[str]:
    """The names an UndefinedError message mentions ("'dict object' has no attribute 'x'",
    "str object has no element 3", "'x' is undefined"), without the type names."""
    quoted = [q for q in re.findall(r"'([^']*)'", message) if not q.endswith(" object")]
    element = re.search(r" has no element (.*)$", message)
    return quoted + ([element.group(1)] if element else [])


def render_template(template: Template, values: dict[str, Any]) -> bytes:
    """Render with the values; a missing key or a failing filter is an ExtractError that names the
    problem (Jinja2's UndefinedError text names the key and the object type, never a value)."""
    from jinja2 import UndefinedError
    from jinja2.exceptions import SecurityError

    budget = _Budget()
    try:
        out, size = [], 0
        for chunk in template.generate({**values, "range": budget.range}):
            size += len(chunk)
            if size > MAX_OUTPUT_BYTES:
                raise TemplateTooBig(f"output past {MAX_OUTPUT_BYTES} bytes")
            out.append(chunk)
        return "".join(out).encode()
    except TemplateTooBig as exc:
        raise ExtractError(f"template: too big: {exc}") from None
    except UndefinedError as exc:
        # The missing key may itself come from a value (`{{ users[db.username] }}`): then say less.
        message = exc.message or "undefined"
        written: frozenset[str] = getattr(template, "bridge_names", frozenset())
        if not all(name in written for name in _names_in(message)):
            message = "a key looked up with a computed name (perhaps a value) is missing"
        raise ExtractError(f"template: {message}") from None
    except SecurityError:
        raise ExtractError("template: unsafe access refused by the sandbox") from None
    except ValueError as exc:
        # Our own filters raise ValueError with a fixed text; others only by class.
        text = str(exc) if str(exc).startswith("b64decode:") else type(exc).__name__
        raise ExtractError(f"template: {text}") from None
    except Exception as exc:
        raise ExtractError(f"template: cannot render ({type(exc).__name__})") from None
