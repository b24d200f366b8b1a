"""Reading the config's YAML strictly: LibYAML's safe loader (where present), duplicate keys refused,
collections refused as keys, decimal integers marked (so a mode written 400 can be refused), and
documents that expand past MAX_ALIAS_REPEATS nodes through aliases refused. Every problem is one
`ConfigError` line naming the line of the file; nothing else escapes, whatever the input.
"""

from __future__ import annotations

from typing import Any

import yaml

from bridge.config.fields import DecimalInt, shorten
from bridge.errors import ConfigError

#: YAML aliases may repeat a node this many times in all: more is an alias bomb, not a config
MAX_ALIAS_REPEATS = 10_000


def load_yaml(text: str, source: str) -> Any:
    """The document in `text`, or one-line ConfigError (`source: invalid YAML: line N: ...`)."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {_yaml_problem(exc)}") from None
    except ValueError:  # an integer of more than 4,300 digits (sys.get_int_max_str_digits)
        raise ConfigError(f"{source}: invalid YAML: a number too large") from None
    _check_aliases(data, source)
    return data


def _check_aliases(data: Any, source: str) -> None:
    """Refuse a document whose aliases expand past MAX_ALIAS_REPEATS nodes (a "billion laughs"):
    every later walk or comparison of the config would pay for the expansion."""
    seen: set[int] = set()
    repeats = 0
    pending: list[Any] = [data]
    while pending:
        node = pending.pop()
        if not isinstance(node, dict | list):
            continue
        if id(node) in seen:
            repeats += 1
            if repeats > MAX_ALIAS_REPEATS:
                raise ConfigError(f"{source}: YAML aliases repeat more than {MAX_ALIAS_REPEATS} nodes")
        seen.add(id(node))
        pending.extend(node.values() if isinstance(node, dict) else node)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = shorten(" ".join(str(getattr(exc, "problem", None) or exc).split()), 200)
    return f"line {mark.line + 1}: {problem}" if mark else problem


class _StrictLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """SafeLoader (LibYAML's parser where present: 10,000 entries parse in a tenth of the time)
    that refuses duplicate keys (a silently overridden secret is a bug)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        if not isinstance(key, str | int | float | bool | None):
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark
            )
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        mapping[key] = loader.construct_object(value_node, deep=deep)  # type: ignore[no-untyped-call]
    return mapping


def _construct_int(loader: _StrictLoader, node: yaml.ScalarNode) -> int:
    value: int = loader.construct_yaml_int(node)  # type: ignore[no-untyped-call]
    digits = str(node.value).replace("_", "").lstrip("+-")
    return DecimalInt(value) if digits.isdigit() and not digits.startswith("0") else value


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_StrictLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
