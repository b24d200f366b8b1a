"""Hypothesis strategies for configuration fuzzing: YAML documents near the real schema, with
hostile values mixed in (huge integers, inf, nan, control characters, deep nesting), and
SECRETS_BRIDGE_* environments. Shared by tests/test_loader.py (in process) and tests/test_cli.py."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import strategies as st

# no NUL in environment values (the OS refuses them) and no surrogates (os.environ refuses them)
_ENV_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)

hostile_numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**32 - 2, 2**32 - 1, 2**32, 2**63, -1, 0, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
)
hostile_text = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["inf", "nan", "-inf", "1e400", "30s", "5m", "1h30m", "0400", "0o777", "", " ", "null",
                     "[::1]:9098", "0.0.0.0:99999", "a\nb", "\x1b[31m", "..data", ".secrets-bridge-state.json"]),
)
scalars = st.one_of(st.none(), st.booleans(), hostile_numbers, hostile_text)
anything = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=8), inner, max_size=3), max_leaves=8)



def _mostly(valid: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Seven in eight draws valid, so a config with several fields still often loads."""
    # not one_of(valid, valid, valid, hostile): one_of flattens nested one_of branches
    return st.integers(0, 7).flatmap(lambda pick: hostile if pick == 0 else valid)


durations = _mostly(st.sampled_from(["100ms", "1s", "30s", "5m", "1h", 0.5, 60, "3650d"]),
                    hostile_numbers | hostile_text)
target_names = _mostly(
    st.sampled_from(["a", "db_password", "tls/cert.pem", "x/y/z", "x" * 239, "é" * 119]),
    st.sampled_from(["..data", ".secrets-bridge-leases.json", "a/../b", "/abs", "x" * 240, "d/" * 40 + "f", "a\tb"])
    | st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30),
)


def _maybe(key: str, value: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(st.just({}), value.map(lambda v: {key: v}))


@st.composite
def secret_entries(draw: st.DrawFn) -> dict[str, Any]:
    entry: dict[str, Any] = {"provider": draw(_mostly(st.just("dev"), st.just("nope"))),
                             "ref": draw(_mostly(st.sampled_from(["one", "two", "missing"]), hostile_text))}
    ids = _mostly(st.sampled_from([0, 1000, 2**32 - 2]), hostile_numbers)
    for key, value in (("mode", _mostly(st.sampled_from(["0400", "0644", 0o600]), st.just(400) | scalars)),
                       ("uid", ids), ("gid", ids),
                       ("refresh_interval", durations), ("optional", _mostly(st.booleans(), scalars)),
                       ("encoding", _mostly(st.just("base64"), st.just("hex")))):
        entry.update(draw(_maybe(key, value)))
    if draw(st.integers(0, 9)) == 0:
        entry[draw(st.text(max_size=8))] = draw(anything)  # an unknown field
    return entry


@st.composite
def config_documents(draw: st.DrawFn, base_dir: str, output_dir: str | None = None) -> dict[str, Any]:
    """A config mapping; `output_dir` pins where files go (for configs a test will really run)."""
    doc: dict[str, Any] = {
        "providers": {"dev": {"type": "file", "base_dir": base_dir}},
        "secrets": draw(st.dictionaries(target_names, secret_entries(), max_size=4)),
    }
    ids = _mostly(st.sampled_from([0, 1000, 2**32 - 2]), hostile_numbers)
    for key, value in (("refresh_interval", durations), ("max_staleness", durations),
                       ("jitter", _mostly(st.floats(0, 1), hostile_numbers | hostile_text)),
                       ("listen", _mostly(st.sampled_from([None, ":0", "127.0.0.1:0", "[::1]:0", "localhost:0"]),
                                          hostile_text)),
                       ("defaults", st.fixed_dictionaries({}, optional={"mode": _mostly(st.just("0440"), scalars),
                                                                        "uid": ids, "gid": ids})),
                       ("log_format", _mostly(st.sampled_from(["auto", "text", "json"]), st.just("xml") | scalars)),
                       ("require_tmpfs", _mostly(st.booleans(), scalars)),
                       ("cleanup_on_exit", _mostly(st.booleans(), scalars))):
        doc.update(draw(_maybe(key, value)))
    if output_dir is None:
        doc.update(draw(_maybe("output_dir", _mostly(st.just("/run/secrets"), hostile_text))))
        doc.update(draw(_maybe("audit_log", _mostly(st.just("/var/log/audit.jsonl"), hostile_text))))
        doc.update(draw(_maybe("on_change", anything)))
        if draw(st.integers(0, 9)) == 0:
            doc[draw(st.text(max_size=8))] = draw(anything)
        if draw(st.integers(0, 19)) == 0:
            doc["providers"]["dev"]["timeout"] = draw(hostile_numbers)
    else:
        doc["output_dir"] = output_dir
        doc["require_tmpfs"] = False
        doc.pop("listen", None)
    return doc


def to_yaml(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, allow_unicode=True)


#: variables a fuzzed environment may set: real fields, nested ones, and typos
_VARIABLES = ["JITTER", "REFRESH_INTERVAL", "MAX_STALENESS", "LISTEN", "LOG_FORMAT", "DEFAULTS", "DEFAULTS__MODE",
              "DEFAULTS__UID", "SECRETS", "SECRETS__A__MODE", "SECRETS__A", "PROVIDERS", "ON_CHANGE",
              "REQUIRE_TMPFS", "REFRESH_INTERVALL", "NOPE"]
_ENV_VALUES = st.one_of(_ENV_TEXT, st.sampled_from(["nan", "inf", "1e400", "null", "{", "[1,", "4294967295", "-1",
                                                    '{"a": {"provider": "dev"}}', "json", "30s"]))
environments = st.one_of(st.just({}), st.just({}), st.dictionaries(
    st.sampled_from(_VARIABLES).map(lambda v: "SECRETS_BRIDGE_" + v), _ENV_VALUES, max_size=3))
#: for configs a test really runs: nothing that could add an action or a provider
cli_environments = st.dictionaries(
    st.sampled_from([v for v in _VARIABLES if v not in ("ON_CHANGE", "PROVIDERS")]).map(
        lambda v: "SECRETS_BRIDGE_" + v),
    _ENV_VALUES, max_size=3)
