//! Black-box tests of Weft: the real `weft-auth`, `weft-user` and `weft-order` binaries, started
//! together on ephemeral loopback ports by `weft_mesh::testing::TestMesh` and called over gRPC
//! with the generated clients. The tests live in `tests/`, one file per area; each test runs
//! once on SQLite and once on PostgreSQL (`<test>::sqlite`, `<test>::postgres`).
//!
//! The `gateway_*` tests start `weft-gateway` in front of the three services
//! (`MeshOptions::gateway`) and call it over HTTP/1.1, h2c and TLS with the small hyper client
//! of `tests/common/rest.rs`; `gateway_foreign` also fronts a test-only gRPC API (`proto/`,
//! compiled by `build.rs`) served in-process. `/openapi.json` is checked with
//! `scripts/validate-openapi.sh` when `CI=true` or `WEFT_VALIDATE_OPENAPI=1`.
//!
//! ```text
//! cargo build --workspace --bins --features weft-mesh/testing
//! WEFT_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres cargo nextest run -p weft-e2e
//! ```
//!
//! Without `WEFT_TEST_POSTGRES_URL` the PostgreSQL runs are skipped with a note, except under
//! `CI=true`, where they fail. A failing test keeps its mesh directory (config, databases, one
//! log per service) and prints the tail of each log.
