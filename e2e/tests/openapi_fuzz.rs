//! The gateway's OpenAPI document, held to by the running mesh. Schemathesis
//! (`scripts/fuzz-openapi.sh`) draws requests from the document: its examples, boundary values,
//! random data that follows it, data that breaks it, and chains of calls. Any answer that the
//! document did not announce fails the test: a 5xx, a request that follows the document refused
//! as invalid, one that breaks it accepted, a response outside its schema or status codes.
//! On both databases, since PostgreSQL refuses text that SQLite stores (NUL characters).
//!
//! Runs with `CI=true` or `WEFT_FUZZ_OPENAPI=1` (Schemathesis comes from PyPI into `.venv`;
//! `make test` installs it first).

#[macro_use]
mod common;

use std::path::Path;

use common::*;

backends!(the_running_mesh_keeps_to_its_openapi_document);

/// Examples per operation and phase: enough to reach every rule, bounded in time (~15 s);
/// `WEFT_FUZZ_EXAMPLES` asks for more.
const MAX_EXAMPLES: &str = "25";

async fn the_running_mesh_keeps_to_its_openapi_document(backend: Backend) {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let asked = std::env::var("WEFT_FUZZ_OPENAPI").is_ok_and(|v| v == "1");
    if !(ci || asked) {
        eprintln!(
            "note: not fuzzing /openapi.json with Schemathesis (set WEFT_FUZZ_OPENAPI=1 or CI=true)"
        );
        return;
    }
    // One client sends thousands of requests: the per-client limit would answer most with 429.
    let mesh = gateway_mesh(backend, "[gateway.rate_limit]\nrules = []\n").await;
    let admin = mesh.admin().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fuzz-openapi.sh");
    let dropped = mesh.dir().join("fuzz-dropped.jsonl");
    let examples = std::env::var("WEFT_FUZZ_EXAMPLES").unwrap_or_else(|_| MAX_EXAMPLES.into());
    let output = tokio::process::Command::new("bash")
        .arg(&script)
        .arg(format!("http://{}", mesh.gateway_addr()))
        .args([
            "-H",
            &format!("Authorization: Bearer {}", admin.access_token),
        ])
        .args(["--max-examples", &examples, "--seed", "1"])
        .env("WEFT_FUZZ_DROPPED", &dropped)
        .current_dir(mesh.dir())
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "Schemathesis found the mesh breaking its OpenAPI document:\n{report}"
    );
    assert!(report.contains(" passed"), "no test case ran:\n{report}");
    // What the hooks dropped (state-dependent refusals, update masks) is listed for review.
    if let Ok(lines) = std::fs::read_to_string(&dropped) {
        eprintln!("dropped as not the document's to state:\n{lines}");
    }
    mesh.assert_no_panics();
}
