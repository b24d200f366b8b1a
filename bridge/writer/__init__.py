"""The atomic writer: Kubernetes' `..data` generation layout in the output directory. `atomic`
(the Writer and its `commit`, whose doc comment numbers its steps), `directory` (the held output
directory, following its removal, the metadata files beside the secrets), `generation`
(operations through directory fds), `links` (the visible links and `..data`), `spares` (prepared
and replaced generations), `drift` (what `check_drift` compares), `sidefiles` (metadata file I/O),
`state` (the metadata file `ls` reads).

May import: `bridge.errors`, `bridge.config.fields` (reserved names). Never a provider, never a
value in anything but the files it commits."""
