"""The template language of `template:` entries: Jinja2, sandboxed and budgeted, with strict
undefined and the bridge's filters (`urlencode`, `shell_quote`, `json`, `b64encode`, `b64decode`).

`compile_template` is used by the configuration (a template that does not parse, or names an
undeclared value, is a config error) and by the engine; `render_template` by the engine. A render
error is built from known parts (the key when the template itself wrote it, an exception's
class), never from an exception's text, which may quote a value.
"""

from __future__ import annotations

import base64
import binascii
import json
import shlex
import urllib.parse
from functools import cache
from typing import TYPE_CHECKING, Any

from bridge.errors import ExtractError
from bridge.template.sandbox import TemplateTooBig, budget_tree, budgeted, consume, make_environment

if TYPE_CHECKING:
    from jinja2 import Template
    from jinja2.sandbox import ImmutableSandboxedEnvironment


class _FilterError(ValueError):
    """One of our own filters refused its input: the text is fixed, so it may be shown."""


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
    try:  # this compiles the template: an unknown filter or test fails here
        unknown = sorted(meta.find_undeclared_variables(tree) - declared)
    except TemplateSyntaxError as exc:  # TemplateAssertionError; its text is the config's own
        raise ValueError(f"template does not compile: line {exc.lineno}: {exc.message}") from None
    if unknown:
        raise ValueError(f"template names {', '.join(unknown)}, not declared in values")
    # The names written in the template are config, so a render error may repeat them (and no other).
    written = {n.name for n in tree.find_all(nodes.Name)} | {n.attr for n in tree.find_all(nodes.Getattr)}
    written |= {str(n.value) for n in tree.find_all(nodes.Const)}
    try:
        template = env.from_string(budget_tree(tree))
    except TemplateSyntaxError as exc:  # an unknown filter or test (TemplateAssertionError); the text is config
        raise ValueError(f"template does not compile: line {exc.lineno}: {exc.message}") from None
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
