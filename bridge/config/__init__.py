"""Configuration: the YAML file and `SECRETS_BRIDGE_*` overrides, validated completely before
anything runs (`loader`), the value types (`fields`), the sections (`sections`) and the strict
YAML reader (`strict_yaml`).

May import: `bridge.errors`, `bridge.provider` (each provider validates its own section). Never the
engine, the writer or the runtime: configuration is upstream of everything."""
