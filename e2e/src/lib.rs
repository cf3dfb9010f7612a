//! Black-box tests of Weft: the real `weft-auth`, `weft-user` and `weft-order` binaries, started
//! together on ephemeral loopback ports by `weft_mesh::testing::TestMesh` and called over gRPC
//! with the generated clients. The tests live in `tests/`, one file per area; each test runs
//! once on SQLite and once on PostgreSQL (`<test>::sqlite`, `<test>::postgres`).
//!
//! ```text
//! cargo build --bins
//! WEFT_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres cargo nextest run -p weft-e2e
//! ```
//!
//! Without `WEFT_TEST_POSTGRES_URL` the PostgreSQL runs are skipped with a note, except under
//! `CI=true`, where they fail. A failing test keeps its mesh directory (config, databases, one
//! log per service) and prints the tail of each log.
