"""What a fetched value is to an output: the text or JSON map a template sees (`value_of`), the
files of `files: "*"` (`top_level_files`), the folders a file name lies in (`parents`). The
template language itself is `bridge.template`. Errors name the key or the problem, never a value.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from bridge.engine.extract import field_bytes
from bridge.errors import ExtractError

if TYPE_CHECKING:
    from bridge.provider import Fetched


def value_of(fetched: Fetched) -> Any:
    """A template sees the decoded JSON map when the secret is a JSON object, else its text."""
    try:
        doc = json.loads(fetched.value)
    except (UnicodeDecodeError, json.JSONDecodeError):
        doc = None
    if isinstance(doc, dict):
        return doc
    try:
        return fetched.value.decode()
    except UnicodeDecodeError:
        raise ExtractError("value is binary, so a template cannot use it (write it with a plain entry)") from None


def top_level_files(fetched: Fetched) -> dict[str, bytes]:
    """`files: "*"`: every top-level key of the JSON map, a string as is, anything else as JSON."""
    doc = value_of(fetched)
    if not isinstance(doc, dict):
        raise ExtractError('value is not a JSON object, so files: "*" has no keys to write')
    for key in doc:
        # "b" and "b/c" cannot both be files: caught here, it fails this entry, not the whole commit
        for parent in parents(key):
            if parent in doc:
                raise ExtractError(f"key {key!r} lies inside key {parent!r}, which is a file")
    # one parse for all keys (extract() per key would parse the map once per key: quadratic)
    return {key: field_bytes(field) for key, field in doc.items()}


def parents(path: str) -> Iterator[str]:
    """The folders a relative file name lies in, nearest first ("a/b/c": "a/b", "a"). Made from
    the name's parts, so it ends for any text ("/a" and "//" included, where dirname never does)."""
    parts = path.split("/")
    for end in range(len(parts) - 1, 0, -1):
        yield "/".join(parts[:end])


