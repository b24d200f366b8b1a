"""Small config texts and the one-line-error helper shared by the configuration tests
(test_loader, test_fields, test_rules, test_sections, test_strict_yaml)."""

from __future__ import annotations

import pytest

from bridge.config.loader import parse_config
from bridge.errors import ConfigError

#: a file provider and an open `secrets:` mapping: append entries indented two spaces
BASE = """
providers:
  dev: {type: file, base_dir: /tmp}
secrets:
"""

PROVIDER = "providers:\n  dev: {type: file, base_dir: /tmp}\n"


def config_error(text: str) -> str:
    """The ConfigError `parse_config(text)` raises, checked to be one line."""
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    message = str(info.value)
    assert "\n" not in message
    return message
