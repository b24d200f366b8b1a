"""The engine: one cycle from configuration to files. `units` (fetch units and entries), `schedule`
(what is due), `leases` (leased values), `render`/`extract` (values to file contents), `failures`
(how failures are told), `cycle` (plan, fetch, render, commit, announce).

May import: `bridge.config`, `bridge.provider`, `bridge.writer`, `bridge.observe`, `bridge.errors`.
Never the runtime: the loop that drives cycles lives there."""
