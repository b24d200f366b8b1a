"""The template sandbox: what a template may reach, and how much work one render may do.

Jinja2's immutable sandbox keeps a template away from Python internals and from mutating values.
This module adds the budget: a secret value is hostile input, so every loop item, every call and
filter, every growing operator draws from one per-render budget of items, time and size, checked
*before* a result is built where its size can be known in advance (`center(900000000)` never
allocates). Filters run only at render time, never while the config loads (Jinja2 would otherwise
evaluate constant expressions in its compiler). It must never let a message quote a value: every
refusal is a fixed text (`TemplateTooBig`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jinja2 import Undefined, nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

#: a rendered file (or any text or list made on the way) larger than this is a runaway template
MAX_OUTPUT_BYTES = 1 << 20
#: the loop items, range items and calls one render may make together (nested loops multiply)
MAX_ITEMS = 100_000
#: the wall-clock time one render may take
MAX_RENDER_SECONDS = 2.0
#: the largest number (in bits) an arithmetic operator may make
MAX_NUMBER_BITS = 4096

#: the names the budget's own filters take: a space keeps them out of any template's reach
LOOP_FILTER = "bridge loop"
SIZE_FILTER = "bridge size"

#: a width or precision in a format: written (`%099999999d`, `{:>99999999}`) or taken from the
#: arguments (`%*d`, `{:{}}`)
_WIDTH = re.compile(r"%[-#0 +]*(?:\d+|\*)?(?:\.(?:\d+|\*))?|\{[^{}]*:[^{}]*(?:\{|\d+)")
_WIDE = re.compile(r"\d{7,}")


class TemplateTooBig(Exception):
    """A render went past its budget (it would stall the loop or fill memory); the text is fixed."""


class Budget:
    """The work one render may still do."""

    def __init__(self) -> None:
        self.items = MAX_ITEMS
        self.deadline = time.monotonic() + MAX_RENDER_SECONDS

    def spend(self, items: int = 1) -> None:
        self.items -= items
        if self.items < 0:
            raise TemplateTooBig(f"loops and calls make more than {MAX_ITEMS} items")
        if time.monotonic() > self.deadline:
            raise TemplateTooBig(f"render took longer than {MAX_RENDER_SECONDS:g} s")


_BUDGET: ContextVar[Budget] = ContextVar("template_budget")


@contextmanager
def budgeted() -> Iterator[Budget]:
    """A fresh budget for the render run inside the block."""
    token = _BUDGET.set(Budget())
    try:
        yield _BUDGET.get()
    finally:
        _BUDGET.reset(token)


def _budget() -> Budget:
    try:
        return _BUDGET.get()
    except LookupError:  # outside a render (the compiler folding constants): refuse, so it is not folded
        raise TemplateTooBig("evaluated outside a render") from None


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str | bytes | list | tuple | dict) else 0


def _check_size(size: int, what: str = "a text or list") -> None:
    if size > MAX_OUTPUT_BYTES:
        raise TemplateTooBig(f"{what} past {MAX_OUTPUT_BYTES} bytes")


def _check_format(text: Any, args: Iterable[Any]) -> None:
    """Refuse a format whose width or precision would fill memory: written in it, or (`*`, a nested
    field) given by a number argument past the output limit. Other numbers are only substituted."""
    if not isinstance(text, str):
        return
    for width in _WIDTH.finditer(text):
        spec = width.group(0)
        if _WIDE.search(spec):
            raise TemplateTooBig("a format width past the output limit")
        if ("*" in spec or spec.endswith("{")) and any(
                isinstance(a, int) and abs(a) > MAX_OUTPUT_BYTES for a in args):
            raise TemplateTooBig("a format width past the output limit")


#: filters whose number argument is how many items they make
_COUNTS = {"batch": "linecount", "slice": "slices"}


def _joined_size(sep: Any, items: list[Any]) -> int:
    return sum(len(str(i)) for i in items) + len(str(sep)) * max(len(items) - 1, 0)


def _replaced_size(text: str, old: Any, new: Any) -> int:
    old, new = str(old), str(new)
    count = len(text) + 1 if not old else text.count(old)
    return len(text) + count * max(len(new) - len(old), 0)


def _argument(args: tuple[Any, ...], kwargs: dict[str, Any], position: int, name: str, default: Any) -> Any:
    """An argument given by position or by name."""
    return args[position] if len(args) > position else kwargs.get(name, default)


def _width(value: Any, default: int) -> int:
    return value if isinstance(value, int) else len(str(value)) if value is not None else default


def _wrapped_size(text: str, width: Any, wrapstring: str) -> int:
    """At most a break per `width` characters and one per space or line, each `wrapstring` long
    (one character long, the result's own size check is enough: it at most doubles)."""
    if len(wrapstring) <= 1:
        return 0
    breaks = len(text) // max(_width(width, 79), 1) + text.count(" ") + text.count("\n") + 1
    return len(text) + breaks * len(wrapstring)


def _expected_size(name: str, value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """The size a growing operation would make, worked out before it runs (0 when it cannot grow)."""
    if not isinstance(value, str):
        return 0
    lines = value.count("\n") + 1
    sizes: dict[str, Callable[[], int]] = {
        "center": lambda: _width(_argument(args, kwargs, 0, "width", 80), 80),
        "ljust": lambda: _width(_argument(args, kwargs, 0, "width", 0), 0),
        "rjust": lambda: _width(_argument(args, kwargs, 0, "width", 0), 0),
        "zfill": lambda: _width(_argument(args, kwargs, 0, "width", 0), 0),
        "indent": lambda: len(value) + lines * _width(_argument(args, kwargs, 0, "width", 4), 4),
        "expandtabs": lambda: len(value) + value.count("\t") * _width(_argument(args, kwargs, 0, "tabsize", 8), 8),
        "wordwrap": lambda: _wrapped_size(value, _argument(args, kwargs, 0, "width", 79),
                                          str(_argument(args, kwargs, 2, "wrapstring", "\n"))),
        "replace": lambda: _replaced_size(value, _argument(args, kwargs, 0, "old", ""),
                                          _argument(args, kwargs, 1, "new", "")),
    }
    if name == "translate":
        raise TemplateTooBig("translate is not allowed in a template")
    return sizes[name]() if name in sizes else 0


def _check_call(name: str, value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Refuse a call whose arguments would make it too big; return the args (an iterable to
    `join` made a list, so its size is known before joining)."""
    for arg in (*args, *kwargs.values()):
        _check_size(_size(arg))
    if name in ("format", "format_map"):
        _check_format(value, (*args, *kwargs.values()))
    count = _argument(args, kwargs, 0, _COUNTS[name], 0) if name in _COUNTS else 0
    if isinstance(count, int) and count > MAX_ITEMS:
        raise TemplateTooBig(f"{name} makes more than {MAX_ITEMS} items")
    if name == "sum" and isinstance(_argument(args, kwargs, 1, "start", 0), list | tuple):
        raise TemplateTooBig("a sum of lists (quadratic) is not allowed; use join or map")
    if name == "join":
        if isinstance(value, str):  # str.join(items)
            items = list(args[0]) if args else []
            _check_size(_joined_size(value, items))
            return (items, *args[1:])
        return args
    _check_size(_expected_size(name, value, args, kwargs))
    return args


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """`func` as a filter that runs only at render time (pass_context keeps the compiler from
    folding it) and draws from the render's budget."""
    from jinja2 import pass_context

    passes = getattr(getattr(func, "jinja_pass_arg", None), "name", None)

    @pass_context
    def guarded(context: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
        _budget().spend()
        if name == "join":
            items = list(value)
            _check_size(_joined_size(args[0] if args else kwargs.get("d", ""), items))
            value = items
        else:
            args = _check_call(name, value, args, kwargs)
        first = {"context": (context,), "eval_context": (context.eval_ctx,),
                 "environment": (context.environment,)}.get(passes or "", ())
        result = func(*first, value, *args, **kwargs)
        _check_size(_size(result))
        return result

    return guarded


def _loop(context: Any, iterable: Any) -> Iterator[Any]:
    """Every item a `for` loop takes costs one item of the budget."""
    budget = _budget()
    for item in iterable:
        budget.spend()
        yield item


def _sized(context: Any, value: Any) -> Any:
    _check_size(_size(value))
    return value


def _range(*args: int) -> range:
    made = range(*args)
    _budget().spend(len(made))
    return made


def _check_power(left: Any, right: Any) -> None:
    if isinstance(right, int) and abs(right) > 64:
        raise TemplateTooBig("exponent too large")


def _check_product(left: Any, right: Any) -> None:
    for seq, times in ((left, right), (right, left)):
        if isinstance(seq, str | bytes | list | tuple) and isinstance(times, int):
            _check_size(len(seq) * times, "a repeated text")
    if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > MAX_NUMBER_BITS:
        raise TemplateTooBig(f"a number past {MAX_NUMBER_BITS} bits")


def _check_sum(left: Any, right: Any) -> None:
    _check_size(_size(left) + _size(right))


def _check_percent(left: Any, right: Any) -> None:
    _check_format(left, right if isinstance(right, tuple) else (right,))


#: the operators a template's values could make huge with, each checked before it runs
_BINOP_CHECKS: dict[str, Callable[[Any, Any], None]] = {
    "**": _check_power, "*": _check_product, "+": _check_sum, "%": _check_percent}


def budget_tree(tree: nodes.Template) -> nodes.Template:
    """Wrap every `for` loop's iterable so its items are counted, and every `~` and block `set` so
    their sizes are."""
    from jinja2 import nodes
    from jinja2.visitor import NodeTransformer

    class Budgeted(NodeTransformer):
        def visit_For(self, node: nodes.For) -> nodes.Node:
            self.generic_visit(node)
            node.iter = nodes.Filter(node.iter, LOOP_FILTER, [], [], None, None, lineno=node.lineno)
            return node

        def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
            self.generic_visit(node)
            return nodes.Filter(node, SIZE_FILTER, [], [], None, None, lineno=node.lineno)

        def visit_AssignBlock(self, node: nodes.AssignBlock) -> nodes.Node:
            # `{% set x %}...{% endset %}` captures text that never reaches the output's count
            self.generic_visit(node)
            node.filter = nodes.Filter(node.filter, SIZE_FILTER, [], [], None, None, lineno=node.lineno)
            return node

    out: nodes.Template = Budgeted().visit(tree)
    return out


def make_environment(undefined: type[Undefined],
                     filters: dict[str, Callable[..., Any]]) -> ImmutableSandboxedEnvironment:
    """A sandboxed environment: immutable values, no Python internals, every filter (Jinja2's and
    `filters`), call, loop and growing operator budgeted."""
    from jinja2 import pass_context
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Sandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(_BINOP_CHECKS)

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            _budget().spend()
            _BINOP_CHECKS[operator](left, right)
            result = super().call_binop(context, operator, left, right)
            _check_size(_size(result))
            return result

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
            _budget().spend()
            name = getattr(__obj, "__name__", "")
            # a bound method's object; the sandbox hands out str.format wrapped (`__wrapped__`)
            bound = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)
            args = _check_call(name, bound, args, kwargs)
            result = super().call(__context, __obj, *args, **kwargs)
            _check_size(_size(result))
            return result

    env = Sandbox(undefined=undefined, autoescape=False, keep_trailing_newline=True)
    del env.globals["lipsum"]  # a generator of any amount of text, and no use for a secret
    env.globals["range"] = _range
    env.filters.update(filters)
    for name, func in list(env.filters.items()):
        env.filters[name] = _guard_filter(name, func)
    env.filters[LOOP_FILTER] = pass_context(_loop)
    env.filters[SIZE_FILTER] = pass_context(_sized)
    return env


def consume(chunks: Iterable[str]) -> str:
    """The render's output, refused once past MAX_OUTPUT_BYTES."""
    out, size = [], 0
    for chunk in chunks:
        size += len(chunk)
        _check_size(size, "output")
        out.append(chunk)
    return "".join(out)
