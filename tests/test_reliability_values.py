"""Hypothesis-generated secret values (binary, unicode, huge, JSON and not) through the `file` provider
and `secrets-bridge sync`, into a plain entry, a `files:` entry, a `files: "*"` entry and a template."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability_kit import ROOT, Leaks, record, tmpfs_dir
from tests.servers import venv_binary

_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,40}")
_json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
_json = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
_safe_key = st.from_regex(_SAFE_NAME, fullmatch=True).filter(lambda k: not k.startswith(".."))


def _huge(draw: Any) -> bytes:
    size = draw(st.integers(1 << 20, 3 << 20))
    return random.Random(draw(st.integers(0, 2**32))).randbytes(size)


@st.composite
def values(draw: Any) -> bytes:
    kind = draw(st.sampled_from(["binary", "text", "huge", "object", "safe-object", "json", "surrogate"]))
    if kind == "binary":
        return draw(st.binary(max_size=2000))
    if kind == "text":
        return draw(st.text(max_size=500)).encode()
    if kind == "huge":
        return _huge(draw)
    if kind == "object":
        doc = draw(st.dictionaries(st.text(), _json, max_size=6))
        return json.dumps(doc, ensure_ascii=draw(st.booleans())).encode()
    if kind == "safe-object":
        return json.dumps(draw(st.dictionaries(_safe_key, _json, min_size=1, max_size=6))).encode()
    if kind == "surrogate":  # valid JSON whose strings are not valid Unicode text
        return b'{"k": "\\ud800", "%s": "x\\udfff"}' % draw(_safe_key).encode()
    return json.dumps(draw(_json)).encode()


def _field(doc: dict[str, Any], key: str) -> bytes | None:
    """A picked field as the SPEC says: a string as its text, anything else as compact JSON; None
    where the string is not valid Unicode text (it cannot be a file's UTF-8 content)."""
    field = doc[key]
    try:
        return field.encode() if isinstance(field, str) else json.dumps(field, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        return None


def _pick_key(doc: dict[str, Any]) -> str | None:
    """The key the `files:` entry picks: the first printable, non-empty one."""
    return next((k for k in doc if k and k.isprintable()), None)


def _expected(value: bytes, doc: Any) -> tuple[dict[str, bytes | None], str, set[str], set[str]]:
    """The files each entry should write (None: that entry fails), its template, the entries that
    must fail, and those that may (`files: "*"` over keys that are not plain file names)."""
    files: dict[str, bytes | None] = {"plain": value}
    maybe: set[str] = set()
    if isinstance(doc, dict):
        template = "{{ v | length }}"
        files["tpl"] = str(len(doc)).encode()
        key = _pick_key(doc)
        if key is not None:
            files["pick/a"] = _field(doc, key)
        if doc and all(_SAFE_NAME.fullmatch(k) and not k.startswith("..") for k in doc):
            for key in doc:
                files[f"star/{key}"] = _field(doc, key)
        else:
            maybe.add("star")
    else:
        template = "<{{ v }}>"
        try:
            files["tpl"] = f"<{value.decode()}>".encode()
        except UnicodeDecodeError:
            files["tpl"] = None
        files["star"] = None
    failing = {name.split("/")[0] for name, content in files.items() if content is None}
    return files, template, failing, maybe


def _config(out: Path, src: Path, doc: Any, template: str) -> str:
    pick = ""
    if isinstance(doc, dict) and _pick_key(doc) is not None:
        pick = f"  pick: {{provider: dev, ref: v, files: {{a: {json.dumps(_pick_key(doc))}}}}}\n"
    return (f"output_dir: {out}\nlisten: null\nproviders:\n  dev: {{type: file, base_dir: {src}}}\nsecrets:\n"
            "  plain: {provider: dev, ref: v}\n"
            f"{pick}"
            '  star: {provider: dev, ref: v, files: "*"}\n'
            f"  tpl: {{template: {json.dumps(template)}, values: {{v: {{provider: dev, ref: v}}}}}}\n")


@pytest.mark.slow
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(value=values())
def test_generated_values_sync_exactly(value: bytes) -> None:
    """For any value: `sync` exits 0 or 1 (1 only when an entry cannot use the value, each failure a
    one-line message naming it), never a traceback; every file is exactly the expected bytes; no
    value shows in any output or the state file."""
    out = tmpfs_dir("values")
    src = out.with_name(out.name + "-src")
    src.mkdir()
    try:
        (src / "v").write_bytes(value)
        try:
            doc = json.loads(value)
        except (UnicodeDecodeError, json.JSONDecodeError):
            doc = None
        files, template, failing, maybe = _expected(value, doc)
        config = src / f"c-{uuid.uuid4().hex[:6]}.yaml"
        config.write_text(_config(out, src, doc, template))
        done = subprocess.run([venv_binary("secrets-bridge"), "--debug", "--log-format", "text", "--config",
                               str(config), "sync"], capture_output=True, timeout=120,
                              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
        stderr = done.stderr.decode("utf-8", "replace")
        assert "Traceback" not in stderr and "internal error" not in stderr, stderr[-3000:]
        assert done.returncode in ({1} if failing else {0, 1} if maybe else {0}), (failing, stderr[-2000:])
        if done.returncode == 1 and not failing:
            failing = {e for e in maybe if re.search(rf"\b{e}\b", stderr)}
            assert failing, stderr[-2000:]
        for entry in failing:
            assert re.search(rf"\b{entry}\b", stderr), (entry, stderr[-2000:])
        for name, content in files.items():
            if content is not None and name.split("/")[0] not in failing:
                assert (out / name).read_bytes() == content, name
        for entry in failing:
            assert not (out / entry).exists(), f"{entry} failed but was written"

        leaks = Leaks()
        if len(set(value)) >= 6:  # a value of few distinct bytes may occur in a log by chance
            leaks.secret(value)
        leaks.text("stdout", done.stdout)
        leaks.text("stderr", done.stderr)
        leaks.file("state", out / ".secrets-bridge-state.json")
        leaks.check("values")
    finally:
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(src, ignore_errors=True)
    record("values", examples=1, bytes=len(value), **{f"exit_{done.returncode}": 1})
