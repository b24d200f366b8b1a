"""What a fetched value is to an output (bridge/engine/render.py): the text or map a template sees,
the files of `files: "*"`, the folders a file name lies in; errors name keys, never values."""

from __future__ import annotations

import json

import pytest

from bridge.engine.render import parents, top_level_files, value_of
from bridge.errors import ExtractError
from bridge.provider import Fetched


def test_value_of_a_json_object_is_its_map() -> None:
    """A JSON object is given to a template as the decoded map."""
    assert value_of(Fetched(b'{"user": "app", "port": 5432}', "1")) == {"user": "app", "port": 5432}


def test_value_of_other_json_or_text_is_the_text() -> None:
    """A JSON list, a JSON string or plain text is given as the text itself."""
    assert value_of(Fetched(b"[1, 2]", "1")) == "[1, 2]"
    assert value_of(Fetched(b'"quoted"', "1")) == '"quoted"'
    assert value_of(Fetched("plain ünïcode".encode(), "1")) == "plain ünïcode"


def test_value_of_binary_is_refused_without_the_value() -> None:
    """A binary value is an ExtractError saying to use a plain entry, and the message holds no byte of it."""
    with pytest.raises(ExtractError, match="binary") as raised:
        value_of(Fetched(b"\xff\xfesecret-bytes", "1"))
    assert "secret" not in str(raised.value)


def test_top_level_files_strings_as_is_the_rest_as_json() -> None:
    """Each top-level key is a file: a string as it is, a number or a map as compact JSON."""
    files = top_level_files(Fetched(b'{"a": "x", "n": 3, "m": {"k": [1]}, "sub/f": "y"}', "1"))
    assert files == {"a": b"x", "n": b"3", "m": b'{"k":[1]}', "sub/f": b"y"}


def test_top_level_files_of_a_non_object_is_refused() -> None:
    """A value that is no JSON object has no keys to write: an ExtractError naming the problem, not the value."""
    with pytest.raises(ExtractError, match="not a JSON object") as raised:
        top_level_files(Fetched(b"hunter2", "1"))
    assert "hunter2" not in str(raised.value)


def test_a_key_inside_another_key_is_refused() -> None:
    """Keys "b" and "b/c/d" cannot both be files: the error names both keys."""
    with pytest.raises(ExtractError, match="'b/c/d' lies inside key 'b'"):
        top_level_files(Fetched(b'{"b": "1", "b/c/d": "2"}', "1"))


def test_parents_nearest_first() -> None:
    """The folders of "a/b/c" are "a/b" then "a"; a bare name has none."""
    assert list(parents("a/b/c")) == ["a/b", "a"]
    assert list(parents("file")) == []


def test_parents_end_for_any_text() -> None:
    """Leading, doubled and trailing slashes give a finite list (dirname would loop on "/")."""
    assert list(parents("/a")) == [""]
    assert list(parents("//")) == ["/", ""]
    assert list(parents("a/")) == ["a"]


def test_a_star_entry_parses_its_map_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """`files: "*"` over 2,000 keys parses the JSON once, not once per key (quadratic before: 5,000 keys
    took 3.9 s from a source change to the file)."""
    doc = {f"k{i}": {"n": i} if i % 2 else f"v{i}" for i in range(2000)}
    calls = []
    real = json.loads
    monkeypatch.setattr(json, "loads", lambda *a, **k: calls.append(1) or real(*a, **k))
    files = top_level_files(Fetched(json.dumps(doc).encode(), "1"))
    assert len(calls) == 1
    assert files["k2"] == b"v2" and files["k3"] == b'{"n":3}' and len(files) == 2000

