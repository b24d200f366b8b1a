"""The long-running process: `runner` (the `run` loop, reloads, shutdown), `server` (/healthz,
/readyz, /metrics), `notify` (on_change actions), `wakeup` (the self-pipe signals write to),
`inotify` (the one file watcher) and `watch` (what it
watches: the config file, the output directory).

May import every other room; nothing imports the runtime but the CLI."""
