//! `weft-observe`: What the mesh sees: request ids and trace context carried from call to call, logs and
//! OpenTelemetry spans, Prometheus metrics (a registry the other layers register into).
//!
//! Part of the mesh library (see `ARCHITECTURE.md`); services and the gateway use it through
//! the `weft-mesh` facade. Imports go one way: this crate uses only the crates below it.

pub mod logs;
pub mod metrics;
pub mod propagate;
pub mod telemetry;
pub mod trace_mode;

// The modules of the crates below, under the names this crate's modules know them by.
use weft_core::{config, contract, grpc};
