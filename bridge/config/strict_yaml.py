"""Reading the config's YAML strictly: LibYAML's safe loader (where present), duplicate keys refused,
collections refused as keys, decimal integers marked (so a mode written 400 can be refused), and
documents that aliases expand past MAX_EXPANDED refused. Every problem is one
`ConfigError` line naming the line of the file; nothing else escapes, whatever the input.

A plain document (no anchor, tag or merge key: nearly every config) is built straight from
LibYAML's parse events with the loader's own resolver and constructors, in half the time; anything
else, and anything wrong, goes through the loader, which says what and where.
"""

from __future__ import annotations

from typing import Any

import yaml

from bridge.config.fields import DecimalInt, shorten
from bridge.errors import ConfigError

#: a document's size with every alias expanded (a character of text or a node each): as large as
#: the largest config file, so aliases may shorten a config but never blow it up
MAX_EXPANDED = 16 * 2**20
_IN_PROGRESS = -1


def load_yaml(text: str, source: str) -> Any:
    """The document in `text`, or one-line ConfigError (`source: invalid YAML: line N: ...`)."""
    try:
        data = _plain(text)
        if data is _NOT_PLAIN:
            data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {_yaml_problem(exc)}") from None
    except ValueError:  # an integer of more than 4,300 digits (sys.get_int_max_str_digits)
        raise ConfigError(f"{source}: invalid YAML: a number too large") from None
    if isinstance(data, dict | list) and "&" in text:  # an alias needs an anchor: no `&`, nothing to expand
        _check_aliases(data, source)
    return data


_NOT_PLAIN = object()


def _plain(text: str) -> Any:
    """The document built straight from LibYAML's events, when it is plain: one document of
    mappings, sequences and scalars, without anchors, tags, merge keys, collections as keys or a
    key twice; `_NOT_PLAIN` otherwise (the loader then reads it, and says what is wrong). The same
    values as the loader's (scalars through the same resolver and constructors), in a third of the
    time: the loader's node graph (600,000 nodes at 100,000 entries) is never built."""
    built = _Builder()
    try:
        for event in yaml.parse(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
            if not built.take(event):
                return _NOT_PLAIN
    except _NotPlainError:
        return _NOT_PLAIN
    return built.document


class _NotPlainError(Exception):
    pass


class _Builder:
    """Containers under construction, each with the key waiting for its value."""

    _START = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
    _END = (yaml.MappingEndEvent, yaml.SequenceEndEvent)

    def __init__(self) -> None:
        self.document: Any = None
        self._open: list[list[Any]] = []  # [container, key waiting for a value, or _NO_KEY]
        self._documents = 0
        self._texts: dict[str, str] = {}
        self._scalars = _StrictLoader("")

    def take(self, event: yaml.Event) -> bool:
        """Add one event; False when the document is not plain."""
        kind = type(event)
        if kind is yaml.ScalarEvent:
            if event.anchor is not None or event.tag not in (None, "!"):  # type: ignore[attr-defined]
                return False
            self._add(self._scalar(event))  # type: ignore[arg-type]
        elif kind in self._START:
            if event.anchor is not None or event.tag not in (None, "!"):  # type: ignore[attr-defined]
                return False
            self._open.append([{} if kind is yaml.MappingStartEvent else [], _NO_KEY])
        elif kind in self._END:
            self._add(self._open.pop()[0])
        elif kind is yaml.DocumentStartEvent:
            self._documents += 1
            return self._documents == 1
        return kind is not yaml.AliasEvent

    def _scalar(self, event: yaml.ScalarEvent) -> Any:
        tag = self._scalars.resolve(yaml.ScalarNode, event.value, event.implicit)
        if tag == "tag:yaml.org,2002:str":
            text = self._texts.get(event.value)
            if text is None:
                text = self._texts[event.value] = event.value
            return text
        if tag == _MERGE:
            raise _NotPlainError
        node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)  # type: ignore[arg-type]
        construct = self._scalars.yaml_constructors.get(tag, type(self._scalars).construct_undefined)
        return construct(self._scalars, node)

    def _add(self, value: Any) -> None:
        if not self._open:
            self.document = value
            return
        top = self._open[-1]
        container, key = top
        if isinstance(container, list):
            container.append(value)
        elif key is _NO_KEY:
            if not isinstance(value, str | int | float | bool | None) or value in container:
                raise _NotPlainError  # a collection or a date as a key, a key twice: the loader says which line
            top[1] = value
        else:
            container[key] = value
            top[1] = _NO_KEY


_NO_KEY = object()
_MERGE = "tag:yaml.org,2002:merge"


def _check_aliases(data: Any, source: str) -> None:
    """Refuse a document whose aliases expand it past MAX_EXPANDED (a "billion laughs", of
    collections or of one long text repeated): every later walk, comparison or copy of the config
    would pay for the expansion. Each node's expanded size is worked out once (linear in the
    nodes parsed, however often they are repeated); an alias inside itself is refused too."""
    sizes: dict[int, int] = {}
    pending: list[tuple[Any, bool]] = [(data, False)]
    while pending:
        node, children_done = pending.pop()
        if id(node) in sizes and not children_done:
            continue
        children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
        if not children_done:
            sizes[id(node)] = _IN_PROGRESS
            pending.append((node, True))
            pending.extend((c, False) for c in children if isinstance(c, dict | list) and id(c) not in sizes)
            continue
        total = 1
        for child in children:
            size = sizes[id(child)] if isinstance(child, dict | list) else _scalar_size(child)
            if size == _IN_PROGRESS:
                raise ConfigError(f"{source}: a YAML alias refers to a node that contains it")
            total += size
        if total > MAX_EXPANDED:
            raise ConfigError(f"{source}: YAML aliases expand the document past {MAX_EXPANDED // 2**20} MiB")
        sizes[id(node)] = total


def _scalar_size(value: Any) -> int:
    return len(value) + 1 if isinstance(value, str) else 1


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = shorten(" ".join(str(getattr(exc, "problem", None) or exc).split()), 200)
    return f"line {mark.line + 1}: {problem}" if mark else problem


class _StrictLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """SafeLoader (LibYAML's parser where present: 10,000 entries parse in a tenth of the time)
    that refuses duplicate keys (a silently overridden secret is a bug)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        #: each distinct text of the document, once, copied out of the parser's nodes
        self.texts: dict[str, str] = {}


def _construct_str(loader: _StrictLoader, node: yaml.ScalarNode) -> str:
    """A text of its own, one per distinct text: the parser's node holds the text it read, and a
    document's nodes (100,000 entries: 600,000 of them) are freed after loading. Texts kept from
    them would keep their memory too (at 100,000 entries 190 MiB more for as long as the bridge
    runs); "provider" and "ref" are one text each, not one per entry."""
    value: str = loader.construct_scalar(node)  # type: ignore[no-untyped-call]
    text = loader.texts.get(value)
    if text is None:
        text = loader.texts[value] = value.encode("utf-8", "surrogatepass").decode("utf-8", "surrogatepass")
    return text


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
_StrictLoader.add_constructor("tag:yaml.org,2002:str", _construct_str)
