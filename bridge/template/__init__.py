"""The template language of `template:` entries (`language`: environment, filters, compile,
render) and its sandbox and budget (`sandbox`). Shared by the configuration, which compiles every
template when it loads, and the engine, which renders them.

May import: `bridge.errors` only. Never sees anything but the values a render is given.
"""
