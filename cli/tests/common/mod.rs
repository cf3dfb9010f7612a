//! The harness of the `weft up` tests: the real binaries on free loopback ports (the trace
//! viewer's too) with a temporary data folder, `weft up`'s output collected line by line.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::{Child, Command},
};
use weft_testkit::{
    config::{self, Placement, WEFT_SERVICES},
    process::free_loopback_addrs,
};

pub const NAMES: [&str; 4] = ["weft-auth", "weft-user", "weft-order", "weft-gateway"];
pub const WAIT: Duration = Duration::from_secs(60);
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// The folder of the binaries, or `None` (after saying why) when the test cannot run.
pub fn bin_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_BIN_EXE_weft"))
        .parent()?
        .to_path_buf();
    let missing: Vec<&str> = NAMES
        .into_iter()
        .filter(|name| !weft::child::binary_in(&dir, name).is_file())
        .collect();
    if missing.is_empty() {
        return Some(dir);
    }
    let message = format!(
        "{} missing in {}: run `cargo build --workspace --bins` first",
        missing.join(", "),
        dir.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message}");
    }
    eprintln!("note: skipping the `weft up` test: {message}");
    None
}

/// A running `weft up`, its output so far, and the children's pids; kills everything on drop.
pub struct Up {
    /// The `weft up` process.
    pub child: Child,
    /// Its pid.
    pub pid: u32,
    lines: Arc<Mutex<Vec<String>>>,
    /// Its working folder (data, mesh-config).
    pub dir: PathBuf,
    /// The mesh-config it runs.
    pub config: PathBuf,
    /// The children's pids, once [`Up::read_pids`] ran.
    pub pids: HashMap<String, u32>,
}

impl Up {
    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits for an output line matching `pred`; panics with the whole output after [`WAIT`].
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(line) = self.lines.lock().unwrap().iter().find(|l| pred(l)) {
                return line.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no {what} in `weft up`'s output within {WAIT:?}:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The pid of each child, from the `starting weft-x (pid N, ...)` lines.
    pub fn read_pids(&mut self) {
        for line in self.lines.lock().unwrap().iter() {
            for name in NAMES {
                let marker = format!("starting {name} (pid ");
                if let Some(rest) = line.split(&marker).nth(1) {
                    let pid = rest.split(',').next().unwrap().parse().unwrap();
                    self.pids.insert(name.to_string(), pid);
                }
            }
        }
        assert_eq!(self.pids.len(), 4, "pids of all four:\n{}", self.output());
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        // After a failed assertion: leave no process behind.
        for pid in self.pids.values().chain([&self.pid]) {
            let _ = std::process::Command::new("sh")
                .args(["-c", "kill -s KILL \"$0\"", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn collect(stream: impl AsyncRead + Unpin + Send + 'static, lines: Arc<Mutex<Vec<String>>>) {
    tokio::spawn(async move {
        let mut reader = BufReader::new(stream).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            lines.lock().unwrap().push(line);
        }
    });
}

/// Starts `weft up` with the kit's mesh-config, the trace viewer on a free port, and `args`.
pub async fn start(bin_dir: &Path, args: &[&str]) -> Up {
    let dir = std::env::temp_dir().join(format!("weft-up-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    // The test kit's mesh-config: Weft's three services and their upstreams, the gateway.
    let addrs = free_loopback_addrs(NAMES.len() + 1);
    let services: Vec<Placement> = WEFT_SERVICES
        .iter()
        .zip(&addrs)
        .map(|(&(name, grpc), &addr)| Placement {
            name: name.into(),
            addr,
            database_url: format!("sqlite://{}", dir.join(format!("{name}.db")).display()),
            grpc_services: vec![grpc.into()],
        })
        .collect();
    let config = config::generate(
        &services,
        Some(addrs[3]),
        "[server]\ndrain_timeout_ms = 3000\n[order]\nseed_demo_products = true\n",
    );
    let config_path = dir.join("mesh.toml");
    std::fs::write(&config_path, config).unwrap();
    let config = config_path.clone();

    let mut command = Command::new(env!("CARGO_BIN_EXE_weft"));
    command
        .arg("up")
        .arg("--config")
        .arg(&config_path)
        .arg("--bin-dir")
        .arg(bin_dir)
        .arg("--viewer-listen")
        .arg(addrs[4].to_string())
        .args(args)
        .current_dir(&dir)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, _) in std::env::vars() {
        if key.starts_with("WEFT_") || key.starts_with("OTEL_") {
            command.env_remove(key);
        }
    }
    let mut child = command.spawn().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    collect(child.stdout.take().unwrap(), lines.clone());
    collect(child.stderr.take().unwrap(), lines.clone());
    Up {
        pid: child.id().unwrap(),
        child,
        lines,
        dir,
        config,
        pids: HashMap::new(),
    }
}
