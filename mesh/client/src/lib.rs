//! `weft-client`: The client stack: channels to upstreams with deadlines, retries within budgets, adaptive
//! throttling and P2C peak-EWMA balancing over HTTP/2 connections.
//!
//! Part of the mesh library (see `ARCHITECTURE.md`); services and the gateway use it through
//! the `weft-mesh` facade. Imports go one way: this crate uses only the crates below it.

pub mod balance;
pub mod breaker;
pub mod client;
pub mod connection;
pub mod deadline;
pub mod discovery;
pub mod retry;

// The modules of the crates below, under the names this crate's modules know them by.
use weft_core::{config, contract, grpc, live, policy, reload};
use weft_observe::{metrics, propagate};
