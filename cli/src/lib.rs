//! `weft`: the mesh's command-line tool (placeholder).
//!
//! `weft up` (start the whole mesh locally, with progress and crash reports) arrives with the
//! gateway issue; until then `make run` starts the services with `scripts/run-local.sh`.
