//! The plumbing of starting processes: where the binaries are, free loopback ports, a clean
//! environment, graceful stops, and a bare HTTP probe.

use std::{
    fmt,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::Mutex,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    process::{Child, Command},
};
use tonic::transport::{Channel, Endpoint};

/// Environment variable naming the folder of the binaries, when not next to the test executable.
pub const BIN_DIR_ENV: &str = "WEFT_BIN_DIR";
/// How long a process may take to start (SERVING, or ready).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a process may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Per-call deadline of the kit's clients, so a hung service fails a test instead of hanging it.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The path of the binary `name` (`weft-auth`, `weft-gateway`, `weft-echo`), next to the test
/// executable (`target/<profile>/`) or in [`BIN_DIR_ENV`]; panics when it is missing.
pub fn binary(name: &str) -> PathBuf {
    let dir = match std::env::var_os(BIN_DIR_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("cannot find the test executable");
            let mut dir = exe
                .parent()
                .expect("the test executable has no folder")
                .to_path_buf();
            if dir.file_name().is_some_and(|n| n == "deps") {
                dir.pop();
            }
            dir
        }
    };
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        panic!(
            "{} not found: run `cargo build --workspace --bins` first (or set {BIN_DIR_ENV})",
            path.display()
        );
    }
    path
}

/// Keeps the test's own environment from reconfiguring a process (its `OTEL_*` variables pass
/// when `keep_otel`).
pub fn clean_env(command: &mut Command, keep_otel: bool) {
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with(weft_mesh::config::ENV_PREFIX)
            || (key.starts_with("OTEL_") && !keep_otel)
            || key == "RUST_LOG"
        {
            command.env_remove(key.as_ref());
        }
    }
}

/// Runs `binary --config <config> <args>` to completion in `dir` (bounded by
/// [`START_TIMEOUT`]); returns its standard output, panicking with its standard error when it
/// fails.
pub async fn run_to_end(binary: &Path, config: &Path, dir: &Path, args: &[&str]) -> String {
    let mut command = Command::new(binary);
    command
        .arg("--config")
        .arg(config)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    clean_env(&mut command, false);
    let what = format!("{} {}", binary.display(), args.join(" "));
    let output = tokio::time::timeout(START_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {START_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Sends SIGTERM to `child` and waits for it to exit (bounded by [`STOP_TIMEOUT`], after which
/// it is killed and the test panics).
pub async fn terminate_child(name: impl fmt::Display, child: &mut Child) -> ExitStatus {
    if let Ok(Some(status)) = child.try_wait() {
        return status;
    }
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => panic!("cannot wait for {name}: {e}"),
        Err(_) => {
            let _ = child.kill().await;
            panic!("{name} did not exit within {STOP_TIMEOUT:?} of SIGTERM");
        }
    }
}

/// `n` free loopback ports: bound together (so they differ), then released for the processes.
pub fn free_loopback_addrs(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("cannot bind a loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("a bound listener has an address"))
        .collect()
}

/// A lazily connecting channel to `addr`, with the kit's timeouts.
pub fn channel_to(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a loopback address is a valid endpoint")
        .connect_timeout(Duration::from_secs(5))
        .timeout(CALL_TIMEOUT)
        .tcp_nodelay(true)
        .connect_lazy()
}

/// The status code of `GET path` over plain HTTP/1.1 (bounded by 2 s).
pub async fn http_get_status(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("cannot send: {e}"))?;
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .await
            .map_err(|e| format!("cannot read: {e}"))?;
        let answer = String::from_utf8_lossy(&answer);
        let status_line = answer.lines().next().unwrap_or_default();
        status_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("not an HTTP answer: {status_line:?}"))
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

/// Locks `mutex`, ignoring poisoning (a panicking test must still clean up).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
