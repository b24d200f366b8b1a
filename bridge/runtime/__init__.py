"""The long-running process: `runner` (start, reloads, shutdown), `loop` (cycles, provider upkeep,
drift sweeps, pruning, sleeping), `server` (/healthz, /readyz, /metrics), `notify` (on_change
actions), `wakeup` (the self-pipe signals write to), `inotify` (the one file watcher) and `watch`
(what it watches: the config file, the output directory).

May import every other room; nothing imports the runtime but the CLI."""
