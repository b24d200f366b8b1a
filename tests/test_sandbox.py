"""The template sandbox (bridge/template/sandbox.py): a template cannot reach Python internals or
mutate a value, and one render's loops, calls, sizes and time draw from one budget, refused with
a fixed "too big" before a huge result is built."""

from __future__ import annotations

import time

import pytest

from bridge.errors import ExtractError
from bridge.template.language import compile_template, render_template
from bridge.template.sandbox import MAX_ITEMS, MAX_OUTPUT_BYTES


@pytest.mark.parametrize("template", [
    "{{ v.__class__.__mro__[1].__subclasses__() }}",
    "{{ db.pop('user') }}",
    "{{ db.update({'user': 'x'}) }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ v.format.__globals__ }}",
])
def test_internals_and_mutation_are_refused(template: str) -> None:
    """Reaching for Python internals or mutating a value is the sandbox's own refusal, in a fixed line."""
    compiled = compile_template(template, {"v", "db"})
    db = {"user": "u1"}
    with pytest.raises(ExtractError) as info:
        render_template(compiled, {"v": "hunter2", "db": db})
    assert str(info.value) == "template: unsafe access refused by the sandbox"
    assert db == {"user": "u1"}


@pytest.mark.parametrize(("template", "fits"), [
    (f"{{% for i in range({MAX_ITEMS // 2 - 10}) %}}{{% endfor %}}ok", True),
    (f"{{% for i in range({MAX_ITEMS // 2 + 10}) %}}{{% endfor %}}ok", False),
    ("{% for i in range(400) %}{% for j in range(400) %}{% endfor %}{% endfor %}ok", False),
])
def test_loops_share_one_item_budget(template: str, fits: bool) -> None:
    """The items a range makes and a loop takes count together (nested loops multiply), up to MAX_ITEMS."""
    compiled = compile_template(template, set())
    if fits:
        assert render_template(compiled, {}) == b"ok"
    else:
        with pytest.raises(ExtractError, match="too big"):
            render_template(compiled, {})


def test_output_past_the_bound_is_refused_and_the_budget_is_per_render() -> None:
    """A render past MAX_OUTPUT_BYTES is too big; the next render starts with a whole budget."""
    compiled = compile_template("{{ v * n }}", {"v", "n"})
    with pytest.raises(ExtractError, match="too big"):
        render_template(compiled, {"v": "x", "n": MAX_OUTPUT_BYTES + 1})
    assert render_template(compiled, {"v": "x", "n": MAX_OUTPUT_BYTES // 2}) == b"x" * (MAX_OUTPUT_BYTES // 2)


def test_constant_filters_run_only_at_render() -> None:
    """A filter over constants is not folded while the config compiles: compiling a runaway
    constant is instant, and rendering it is refused."""
    started = time.monotonic()
    compiled = compile_template("{{ 'x'|center(900000000) }}", set())
    assert time.monotonic() - started < 0.5
    with pytest.raises(ExtractError, match="too big"):
        render_template(compiled, {})


@pytest.mark.parametrize("template", [
    "{{ 'x'|center(900000000) }}", "{{ v.center(900000000) }}", "{{ '{:>999999999}'.format(1) }}",
    "{{ '%0999999999d' % 1 }}", "{{ v|replace('', v * 1000) }}", "{{ (v * 1000)|indent(100000) }}",
    "{% set ns = namespace(s=v) %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "{% macro f(s) %}{{ f(s ~ s) }}{% endmacro %}{{ f(v) }}",
    "{% set ns = namespace(s=v) %}{% for i in range(40) %}{% set ns.s %}{{ ns.s }}{{ ns.s }}{% endset %}{% endfor %}",
    "{{ (v * 1000)|indent(width=100000) }}", "{{ v|wordwrap(1, wrapstring=v * 1000) }}",
    "{{ (v * 1000)|map('list')|sum(start=[]) }}", "{{ '%*d' % (1000000000, 1) }}",
    "{{ '{:{}}'.format(1, 1000000000) }}", "{{ [1, 2]|batch(1000000000, 0)|list }}",
])
def test_growing_template_refused_before_it_allocates(template: str) -> None:
    """A width, replacement or doubling that would build hundreds of megabytes is refused ("too
    big") before it is built: the render's memory peak stays under 16 MB."""
    import tracemalloc

    from bridge.errors import ExtractError
    from bridge.template.language import compile_template, render_template

    compiled = compile_template(template, {"v"})
    tracemalloc.start()
    try:
        with pytest.raises(ExtractError, match="too big"):
            render_template(compiled, {"v": "x\n" * 500})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, peak


def test_big_numbers_in_a_template_are_only_values() -> None:
    """An expiry time or an id past a million is substituted, not refused: only a width or a count
    taken from a number is limited."""
    from bridge.template.language import compile_template, render_template

    template = ("{{ '%d'|format(v.exp) }} {{ '%d' % v.exp }} {{ '{}'.format(v.exp) }} "
                "{{ dict(a=v.exp).a }} {{ 'id: 12345678 %s'|format(v.exp) }}")
    assert render_template(compile_template(template, {"v"}), {"v": {"exp": 1733437445}}) == (
        b"1733437445 1733437445 1733437445 1733437445 id: 12345678 1733437445")

