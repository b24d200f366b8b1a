"""What the bridge tells the world about itself: `logs` (stderr and the audit trail), `metrics`
(Prometheus), `changes` (the per-file change records a commit announces).

May import: `bridge.errors` only; every other room may import it. Nothing here ever sees a value."""
