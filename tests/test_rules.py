"""The whole-configuration rules (bridge/config/rules.py): targets apart from each other and from
the bridge's own files, sources naming providers, hooks naming targets, templates that compile,
env names; each broken rule is one ConfigError line naming the field."""

from __future__ import annotations

import pytest

from bridge.config.loader import parse_config
from bridge.errors import ConfigError
from tests.config_fixtures import BASE, PROVIDER, config_error


def test_a_target_inside_a_files_entry_folder_is_refused() -> None:
    """An entry whose file would land inside another entry's `files:` folder names the folder."""
    text = BASE + "  tls: {provider: dev, ref: a, files: {cert.pem: crt}}\n  tls/key.pem: {provider: dev, ref: b}\n"
    assert config_error(text) == "secrets.tls/key.pem: 'tls' is the folder of a files: entry"


def test_a_files_entry_may_name_its_own_files() -> None:
    """The files of a `files:` entry live in its folder without clashing with it."""
    config = parse_config(BASE + "  tls: {provider: dev, ref: a, files: {cert.pem: crt, sub/key.pem: key}}\n")
    assert set(config.settings.secrets["tls"].file_rules()) == {"cert.pem", "sub/key.pem"}


@pytest.mark.parametrize("audit_log", ["/run/secrets/a", "/run/secrets/a/inside", "/run/secrets/.secrets-bridge-audit",
                                       "/run/secrets/..data/x"])
def test_audit_log_naming_a_managed_file_is_refused(audit_log: str) -> None:
    """An audit log on a target, the bridge's own files or a generation in output_dir is refused."""
    text = f"output_dir: /run/secrets\naudit_log: {audit_log}\n" + BASE + "  a: {provider: dev, ref: a}\n"
    assert config_error(text) == "audit_log: names a file the bridge manages in output_dir"


@pytest.mark.parametrize("audit_log", ["/run/secrets", "/run/secrets/", "/run/secrets/."])
def test_audit_log_on_the_output_dir_itself_is_refused(audit_log: str) -> None:
    """The output directory is no file to append to: refused at load, not an error at every change."""
    text = f"output_dir: /run/secrets\naudit_log: {audit_log}\n" + BASE + "  a: {provider: dev, ref: a}\n"
    assert config_error(text) == "audit_log: is output_dir itself: name a file outside it"


@pytest.mark.parametrize("audit_log", ["/var/log/audit.jsonl", "/run/secrets/other.jsonl", "/run/secrets-audit"])
def test_audit_log_beside_the_managed_files_is_accepted(audit_log: str) -> None:
    """An audit log outside output_dir, or on a name in it no entry makes, loads."""
    text = f"output_dir: /run/secrets\naudit_log: {audit_log}\n" + BASE + "  a: {provider: dev, ref: a}\n"
    assert str(parse_config(text).settings.audit_log) == audit_log


def test_a_file_named_like_an_env_variable_is_refused() -> None:
    """A file `$NAME` beside an env variable NAME would share its name in logs, so it is refused."""
    text = (PROVIDER + "secrets:\n  $TOKEN: {provider: dev, ref: a}\n"
            "env:\n  TOKEN: {provider: dev, ref: a}\n")
    assert config_error(text).startswith("secrets.$TOKEN: the name of env variable TOKEN in logs")


def test_a_template_value_naming_no_provider_names_the_value() -> None:
    """A template's value with an unknown provider names the value's path."""
    text = PROVIDER + "secrets:\n  t: {template: '{{ s }}', values: {s: {provider: nope, ref: x}}}\n"
    assert config_error(text) == "secrets.t.values.s.provider: no provider named 'nope'"


def test_the_first_broken_rule_is_the_error() -> None:
    """With several rules broken, the error is the first in `RULES` order (source before hook)."""
    text = BASE + "  a: {provider: nope, ref: a}\non_change:\n  - {secrets: [missing], exec: [/bin/true]}\n"
    assert config_error(text) == "secrets.a.provider: no provider named 'nope'"
    fixed = text.replace("nope", "dev")
    assert config_error(fixed) == "on_change.0.secrets: no secret or file named 'missing'"


def test_a_hook_may_name_a_file_of_a_files_entry() -> None:
    """`on_change.secrets` names an entry or one file of a `files:` entry (`entry/file`)."""
    text = BASE + ("  tls: {provider: dev, ref: a, files: {cert.pem: crt}}\n"
                   "on_change:\n  - {secrets: [tls/cert.pem], exec: [/bin/true]}\n")
    assert parse_config(text).settings.on_change[0].secrets == ["tls/cert.pem"]


@pytest.mark.parametrize("template", ["{{ s | nosuchfilter }}", "{{ s is nosuchtest }}"])
def test_a_template_naming_an_unknown_filter_or_test_is_one_config_line(template: str) -> None:
    """An unknown filter or test is found when the template compiles: a ConfigError naming the field
    (it was `internal error (TemplateAssertionError)`)."""
    text = (f"providers: {{dev: {{type: env}}}}\nsecrets:\n  t: {{template: \"{template}\", "
            "values: {s: {provider: dev, ref: X}}}\n")
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert str(info.value).startswith("secrets.t.template: template does not compile")

