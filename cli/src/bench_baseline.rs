//! `weft bench --baseline`: starts a bare baseline server (`weft-bench-baseline` for REST,
//! `weft-bench-grpc-baseline` for gRPC) on a free loopback port, answering with the target's
//! own answer bytes so that both send the same sizes, and stops it when dropped.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// A running baseline server; killed on drop.
pub struct Baseline {
    /// `127.0.0.1:port`.
    pub authority: String,
    _child: Child,
    body_file: PathBuf,
}

impl Drop for Baseline {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.body_file);
    }
}

/// Starts `name` from `dir` answering with `body` (its built-in answer when empty), and
/// waits for its address.
pub async fn start(dir: &Path, name: &str, body: &[u8]) -> Result<Baseline, String> {
    let binary = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !binary.is_file() {
        return Err(format!(
            "--baseline: {} not found (build it with `cargo build -p weft-bench-baseline`, or \
             name its folder with --bin-dir)",
            binary.display()
        ));
    }
    let body_file = std::env::temp_dir().join(format!(
        "weft-bench-baseline-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let mut command = Command::new(&binary);
    command.arg("127.0.0.1:0");
    // No answer to copy: the baseline's built-in one.
    if !body.is_empty() {
        std::fs::write(&body_file, body)
            .map_err(|e| format!("--baseline: cannot write {}: {e}", body_file.display()))?;
        command.arg(&body_file);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("--baseline: cannot start {}: {e}", binary.display()))?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| "--baseline: no stderr".to_owned())?;
    let mut lines = BufReader::new(stderr).lines();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(addr) = line.split("listening on ").nth(1) {
                return Some(addr.trim().to_owned());
            }
        }
        None
    })
    .await;
    let authority = match found {
        Ok(Some(addr)) => addr,
        _ => {
            let _ = std::fs::remove_file(&body_file);
            return Err(format!("--baseline: {name} did not say where it listens"));
        }
    };
    // Keep reading its output so that it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Baseline {
        authority,
        _child: child,
        body_file,
    })
}
