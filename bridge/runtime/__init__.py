"""The long-running process: `runner` (start, reloads, shutdown), `loop` (cycles, provider upkeep,
drift sweeps, pruning, sleeping), `server` (/healthz, /readyz, /metrics), `notify` (on_change
actions), `wakeup` (the self-pipe signals write to), `inotify` (the one file watcher), `watch`
(what it watches: the config file, the output directory), and for `exec`: `exec_runner` (the run
loop with the application as its child), `child` (its environment, start, signals, stop, exit
status, and a PID 1's reaping) and `mask` (`--mask`: values concealed in its output).

May import every other room; nothing imports the runtime but the CLI."""
