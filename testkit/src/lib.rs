//! Weft's test kit (dev-only; never linked into a shipped binary): starts the real binaries of
//! the mesh on free loopback ports with fresh databases (SQLite, and PostgreSQL when
//! `WEFT_TEST_POSTGRES_URL` is set), hands out clients, and collects the spans the processes
//! export. It speaks to the services through their APIs and command lines only, never through
//! their tables.
//!
//! ```ignore
//! use weft_testkit::{Backend, MeshOptions, TestMesh, bearer};
//! use weft_proto::user::GetMeRequest;
//!
//! let mesh = TestMesh::start(Backend::Sqlite).await;
//! let alice = mesh.new_user().await;
//! let me = mesh.user().get_me(bearer(&alice.access_token, GetMeRequest {})).await?;
//!
//! // With the gateway in front, over HTTP at mesh.gateway_url():
//! let options = MeshOptions { gateway: true, ..MeshOptions::default() };
//! let mesh = TestMesh::start_with(Backend::Sqlite, options).await;
//! mesh.kill("user").await;
//! mesh.restart("user").await;
//! mesh.stop().await;
//! ```
//!
//! - [`mesh`]: [`TestMesh`], the processes (start, stop, kill, restart, replicas, gateway);
//! - [`config`]: the mesh-config it generates for them;
//! - [`database`]: [`TestDatabase`], the one helper for temporary databases on both engines,
//!   also used by the services' own store tests;
//! - [`collector`]: an in-process OTLP collector and the [`CollectedSpan`]s it keeps;
//! - [`tokens`]: bearer metadata, claims, and the signing key the kit gives weft-auth;
//! - [`process`]: binaries, free ports, graceful stops;
//! - [`netns`]: several hosts on one machine (network namespaces), for the multi-host test.
//!
//! The binaries are looked up next to the test executable (`target/<profile>/`), or in
//! `WEFT_BIN_DIR`; build them first with `cargo build --workspace --bins`.

pub mod collector;
pub mod config;
pub mod database;
pub mod mesh;
pub mod netns;
pub mod process;
pub mod tokens;

pub use collector::{
    COLLECT_TIMEOUT, CollectedSpan, Collector, SPAN_KIND_CLIENT, SPAN_KIND_SERVER, closed_endpoint,
    otel_env,
};
pub use database::{Backend, POSTGRES_URL_ENV, TestDatabase};
pub use mesh::{
    ADMIN_EMAIL, ADMIN_PASSWORD, ExtraService, GATEWAY, MeshOptions, ServingStatus, TestMesh,
};
pub use process::binary;
pub use tokens::{Claims, SigningKey, bearer, claims, unix_now};
