"""The template language (bridge/template/language.py): the bridge's filters, strict undefined
values named only when the template wrote the name, compile errors as one ValueError naming the
problem, and render errors built from known parts, never from a value."""

from __future__ import annotations

import pytest

from bridge.errors import ExtractError
from bridge.template.language import compile_template, render_template


def _render(source: str, **values: object) -> bytes:
    return render_template(compile_template(source, set(values)), values)


@pytest.mark.parametrize(("source", "expected"), [
    ("{{ v|urlencode }}", b"a%2Fb%20c%26d%3D%27%C3%A9"),
    ("{{ v|shell_quote }}", b"'a/b c&d='\"'\"'\xc3\xa9'"),
    ("{{ m|json }}", b'{"a":[1,2],"b":"x"}'),
    ("{{ v|b64encode }}", b"YS9iIGMmZD0nw6k="),
    ("{{ n|b64encode }}", b"NTQzMg=="),
    ("{{ 'YS9i\nIGM='|b64decode }}", b"a/b c"),
])
def test_bridge_filters(source: str, expected: bytes) -> None:
    """urlencode, shell_quote, json (sorted, compact), b64encode (a number as its text) and b64decode."""
    assert _render(source, v="a/b c&d='é", m={"b": "x", "a": [1, 2]}, n=5432) == expected


def test_bad_base64_is_a_fixed_message() -> None:
    """b64decode of text that is not base64 fails with a fixed message, never quoting the text."""
    with pytest.raises(ExtractError) as info:
        _render("{{ v|b64decode }}", v="not*base64-hunter2")
    assert str(info.value) == "template: b64decode: not valid base64 text"


def test_missing_key_named_only_when_the_template_wrote_it() -> None:
    """A missing key the template wrote is named; one looked up by a value's text is not repeated."""
    with pytest.raises(ExtractError, match=r"^template: dict object has no attribute 'password'$"):
        _render("{{ db.password }}", db={"user": "u"})
    with pytest.raises(ExtractError) as info:
        _render("{{ db[db.user] }}", db={"user": "hunter2-key"})
    assert "hunter2" not in str(info.value) and "computed name" in str(info.value)


@pytest.mark.parametrize(("source", "message"), [
    ("{{ a.x ", "template does not parse: line 1"),
    ("{{ b }}", "template names b, not declared in values"),
    ("{% include 'x' %}", "template loads another template"),
    ("{{ a|nosuchfilter }}", "template does not compile: line 1"),
])
def test_compile_errors_name_the_problem(source: str, message: str) -> None:
    """A template that does not parse, names an undeclared value, loads another or uses an unknown
    filter is a ValueError naming that (the configuration makes it one config line)."""
    with pytest.raises(ValueError, match=message):
        compile_template(source, {"a"})


def test_a_failing_builtin_filter_names_only_its_class() -> None:
    """A built-in filter failing on a value gives the exception's class, not its text (Jinja2's
    own says "No filter named 'hunter2-x'", quoting the value)."""
    with pytest.raises(ExtractError) as info:
        _render("{{ [1]|map(v)|list }}", v="hunter2-x")
    assert str(info.value) == "template: cannot render (TemplateRuntimeError)"
