"""The atomic writer: Kubernetes' `..data` generation layout in the output directory. `atomic`
(the Writer and its commit), `generation` (operations through directory fds), `links` (the
visible links), `spares` (prepared generations), `state` (the metadata file `ls` reads).

May import: `bridge.errors`, `bridge.config.fields` (reserved names). Never a provider, never a
value in anything but the files it commits."""
