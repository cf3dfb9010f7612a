//! `weft-server`: The server stack every service runs on: the gRPC server builder (health, reflection, drain),
//! token verification and access control, load shedding, fault injection, the gateway's rate
//! limits, and the services' database pools and SQLite writer thread.
//!
//! Part of the mesh library (see `ARCHITECTURE.md`); services and the gateway use it through
//! the `weft-mesh` facade. Imports go one way: this crate uses only the crates below it.

pub mod admin;
pub mod auth;
pub mod callers;
pub mod db;
pub mod fault;
pub mod jwt_crypto;
pub mod listener;
pub mod ratelimit;
pub mod server;
pub mod shed;
pub mod sqlite_writer;
pub mod unary;

// The modules of the crates below, under the names this crate's modules know them by.
use weft_client::{client, deadline};
use weft_core::{config, contract, grpc, live, policy, reload};
use weft_observe::{metrics, propagate, telemetry};
