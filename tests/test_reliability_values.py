"""Hypothesis-generated secret values (binary, unicode, huge, JSON and not) through the `file` provider
and `secrets-bridge sync`, into a plain entry, a `files:` entry, a `files: "*"` entry and a template."""

from __future__ import annotations

import base64
import functools
import json
import random
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.der import with_mac_iterations
from tests.harness import Bridge
from tests.reliability_kit import Leaks, record, tmpfs_dir

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


@functools.cache
def _own_words() -> bytes:
    """The bridge's own source, every text it could print of its own."""
    root = Path(__file__).resolve().parent.parent
    return b"\n".join(p.read_bytes() for folder in ("bridge", "providers") for p in (root / folder).rglob("*.py"))


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
        # raw text, not \u escapes: JSON writes a character past U+FFFF as a surrogate pair, which
        # YAML refuses (the key is printable, so YAML takes it as it is)
        pick = f"  pick: {{provider: dev, ref: v, files: {{a: {json.dumps(_pick_key(doc), ensure_ascii=False)}}}}}\n"
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
        bridge = Bridge(config, options=("--debug", "--log-format", "text"), inherit=False)
        done = bridge("sync", check=None, timeout=120)
        stderr = done.stderr
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
        # a value of few distinct bytes may occur in a log by chance; and Hypothesis draws the
        # constants of the code under test, so a value may be one of the bridge's own words
        # (`bad_value`, an error code it prints): neither tells of a leak
        if len(set(value)) >= 6 and value not in _own_words():
            leaks.secret(value)
        leaks.text("log", bridge.raw())  # bytes: a value need not be UTF-8
        leaks.file("state", out / ".secrets-bridge-state.json")
        leaks.check("values")
    finally:
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(src, ignore_errors=True)
    record("values", examples=1, bytes=len(value), **{f"exit_{done.returncode}": 1})


# -- hostile values: each fails its own entry, fast, and never reaches a message ------------------

_HOSTILE_SECRET = "hostile-it's-the-value-7f3a"  # an apostrophe: repr() quotes it with double quotes


def _pkcs12_with_mac_iterations(iterations: int) -> bytes:
    """A password-less PKCS#12 bundle whose MacData asks for `iterations` rounds."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import pkcs12
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hostile")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    bundle = pkcs12.serialize_key_and_certificates(b"t", key, cert, None, serialization.NoEncryption())
    return with_mac_iterations(bundle, iterations)


_HOSTILE_ENTRIES = {
    # entry: (source file content, entry config)
    "star_root": (json.dumps({"/a": "1", "b": "2"}), '{provider: dev, ref: star_root, files: "*"}'),
    "star_slashes": (json.dumps({"//": "1"}), '{provider: dev, ref: star_slashes, files: "*"}'),
    "pem_iterations": (None, "{provider: dev, ref: pem_iterations, format: pem}"),
    "loops": ("x" * 100_000, '{template: "{% for a in v %}{% for b in v %}{% endfor %}{% endfor %}",'
              " values: {v: {provider: dev, ref: loops}}}"),
    "center": ("x", """{template: "{{ 'x'|center(900000000) }}{{ v }}", values: {v: {provider: dev, ref: center}}}"""),
    "quoted": (json.dumps({"k": _HOSTILE_SECRET}),
               '{template: "{{ db[db.k] }}", values: {db: {provider: dev, ref: quoted}}}'),
}


def test_hostile_values_fail_their_own_entry_fast() -> None:
    """A `files: "*"` key starting with "/", a PKCS#12 asking for 2^31-1 MAC iterations, nested
    template loops over a 100,000-character value, a huge `center` and a missing key named by a
    value holding quotes: `sync` ends within seconds, each fails its own entry with a one-line
    message, the good entries (b64encode of a number among them) are written, no value is shown."""
    out = tmpfs_dir("hostile")
    src = out.with_name(out.name + "-src")
    src.mkdir()
    try:
        (src / "pem_iterations").write_bytes(base64.b64encode(_pkcs12_with_mac_iterations(2**31 - 1)))
        entries = "".join(f"  {name}: {entry}\n" for name, (_, entry) in _HOSTILE_ENTRIES.items())
        for name, (content, _) in _HOSTILE_ENTRIES.items():
            if content is not None:
                (src / name).write_text(content)
        (src / "num").write_text('{"n": 5432}')
        entries += ('  good: {provider: dev, ref: num}\n'
                    '  b64: {template: "{{ d.n|b64encode }}", values: {d: {provider: dev, ref: num}}}\n')
        config = src / "c.yaml"
        config.write_text(f"output_dir: {out}\nlisten: null\nproviders:\n  dev: {{type: file, base_dir: {src}}}\n"
                          f"secrets:\n{entries}")
        started = time.monotonic()
        bridge = Bridge(config, options=("--debug", "--log-format", "text"), inherit=False)
        done = bridge("sync", check=None, timeout=120)
        took = time.monotonic() - started
        stderr = done.stderr
        assert done.returncode == 1 and "Traceback" not in stderr and "internal error" not in stderr, stderr[-3000:]
        assert took < 30, took
        for name in _HOSTILE_ENTRIES:
            assert re.search(rf"\b{name}\b.*(cannot|too big|missing|iterations)", stderr), (name, stderr[-3000:])
            assert not (out / name).exists(), name
        assert (out / "good").read_text() == '{"n": 5432}'
        assert (out / "b64").read_text() == "NTQzMg=="
        assert _HOSTILE_SECRET not in stderr + done.stdout and "hostile-it" not in stderr
    finally:
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(src, ignore_errors=True)
    record("values", fixed={"hostile_sync_seconds": round(took, 1)})


