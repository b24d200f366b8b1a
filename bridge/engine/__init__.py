"""The engine: one cycle from configuration to files. `units` (fetch units), `outputs` (what is made
from them, one class per kind: a file entry's kinds and an `env:` variable), `schedule` (what is
due), `steps` (the pure decision per due unit), `phases` (one provider's batched check, renew and
fetch), `settle` (the one module that assigns a unit's state), `lifetimes` (a leased value's life,
pure) and `leases` (the lease keeper and store), `records` (one record per managed file; the state
file's records), `render`/`extract` (values to file contents), `failures` (how failures are told),
`cycle` (plan, fetch, render, commit, announce).

May import: `bridge.config`, `bridge.provider`, `bridge.certificates`, `bridge.writer`, `bridge.observe`,
`bridge.errors`.
Never the runtime: the loop that drives cycles lives there."""
