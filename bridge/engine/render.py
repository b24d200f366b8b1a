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
import shlex
import urllib.parse
from collections.abc import Iterator
from functools import cache
from typing import TYPE_CHECKING, Any

from bridge.engine.extract import field_bytes
from bridge.engine.sandbox import TemplateTooBig, budget_tree, budgeted, consume, make_environment
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
        for parent in parents(key):
            if parent in doc:
                raise ExtractError(f"key {key!r} lies inside key {parent!r}, which is a file")
    # one parse for all keys (extract() per key would parse the map once per key: quadratic)
    return {key: field_bytes(field) for key, field in doc.items()}


class _FilterError(ValueError):
    """One of our own filters refused its input: the text is fixed, so it may be shown."""


def parents(path: str) -> Iterator[str]:
    """The folders a relative file name lies in, nearest first ("a/b/c": "a/b", "a"). Made from
    the name's parts, so it ends for any text ("/a" and "//" included, where dirname never does)."""
    parts = path.split("/")
    for end in range(len(parts) - 1, 0, -1):
        yield "/".join(parts[:end])


def _b64decode(text: str) -> str:
    try:
        return base64.b64decode("".join(text.split()), validate=True).decode()
    except (binascii.Error, ValueError):
        raise _FilterError("b64decode: not valid base64 text") from None


def _filters() -> dict[str, Any]:
    return {
        "urlencode": lambda v: urllib.parse.quote(str(v), safe=""),
        "shell_quote": lambda v: shlex.quote(str(v)),
        "json": lambda v: json.dumps(v, separators=(",", ":"), sort_keys=True),
        # a number is encoded as its text, as `{{ v }}` would write it (bytes(5432) is 5432 zero bytes)
        "b64encode": lambda v: base64.b64encode(v if isinstance(v, bytes) else str(v).encode()).decode(),
        "b64decode": _b64decode,
    }


class _MissingText(str):
    """The text of a missing-value error, with the parts it was made of: the name looked up and
    the type it was looked up in (never a value), so the message can be built from known parts."""

    name: object
    owner: str | None


@cache
def environment() -> ImmutableSandboxedEnvironment:
    """One sandboxed, budgeted environment (imported only when a config has templates)."""
    from jinja2 import StrictUndefined
    from jinja2.utils import missing, object_type_repr

    class Undefined(StrictUndefined):
        __slots__ = ()

        @property
        def _undefined_message(self) -> str:
            text = _MissingText("a value is missing")
            text.name = self._undefined_name
            text.owner = None if self._undefined_obj is missing else object_type_repr(self._undefined_obj)
            return text

    return make_environment(Undefined, _filters())


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
    # The names written in the template are config, so a render error may repeat them (and no other).
    written = {n.name for n in tree.find_all(nodes.Name)} | {n.attr for n in tree.find_all(nodes.Getattr)}
    written |= {str(n.value) for n in tree.find_all(nodes.Const)}
    template = env.from_string(budget_tree(tree))
    template.bridge_names = frozenset(written)  # type: ignore[attr-defined]
    return template


def _missing(exc: Exception, written: frozenset[str]) -> str:
    """What is missing, from the parts the undefined value recorded: the name only when the
    template itself wrote it (a name computed from a value is never repeated)."""
    text = exc.args[0] if exc.args else None
    if not isinstance(text, _MissingText) or str(text.name) not in written:
        return "a key looked up with a computed name (perhaps a value) is missing"
    if text.owner is None:
        return f"{text.name!r} is undefined"
    kind = "element" if isinstance(text.name, int) else "attribute"
    return f"{text.owner} has no {kind} {text.name!r}"


def render_template(template: Template, values: dict[str, Any]) -> bytes:
    """Render with the values under a budget of items, time and size; a missing key or a failing
    filter is an ExtractError built from known parts (the key when the template wrote it, the
    exception's class), never from an exception's text, which may quote a value."""
    from jinja2 import UndefinedError
    from jinja2.exceptions import SecurityError

    try:
        with budgeted():
            return consume(template.generate(values)).encode()
    except TemplateTooBig as exc:
        raise ExtractError(f"template: too big: {exc}") from None
    except UndefinedError as exc:
        raise ExtractError(f"template: {_missing(exc, getattr(template, 'bridge_names', frozenset()))}") from None
    except SecurityError:
        raise ExtractError("template: unsafe access refused by the sandbox") from None
    except _FilterError as exc:
        raise ExtractError(f"template: {exc}") from None
    except Exception as exc:
        raise ExtractError(f"template: cannot render ({type(exc).__name__})") from None
