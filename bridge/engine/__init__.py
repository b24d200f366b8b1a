"""The engine: one cycle from configuration to files. `units` (fetch units), `outputs` (what is made
from them, one class per kind: a file entry's kinds and an `env:` variable), `schedule`
(what is due), `leases` (leased values), `render`/`extract` (values to file contents), `failures`
(how failures are told), `cycle` (plan, fetch, render, commit, announce).

May import: `bridge.config`, `bridge.provider`, `bridge.writer`, `bridge.observe`, `bridge.errors`.
Never the runtime: the loop that drives cycles lives there."""
