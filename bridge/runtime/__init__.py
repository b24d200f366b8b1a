"""The long-running process: `runner` (the `run` loop, reloads, shutdown), `server` (/healthz,
/readyz, /metrics), `notify` (on_change actions), `wakeup` (the self-pipe signals write to),
`config_watch`/`drift_watch` (file events).

May import every other room; nothing imports the runtime but the CLI."""
