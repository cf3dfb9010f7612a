//! `weft up` end to end: the real binaries on free loopback ports with a temporary data folder,
//! a child killed under it, and a graceful stop.
//!
//! Needs weft-auth, weft-user, weft-order and weft-gateway next to the `weft` binary (build
//! them with `cargo build --workspace --bins`); without them the test is skipped, except under
//! `CI=true`, where it fails.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::{Child, Command},
};
use weft::{child::signal, probe::http_get};
use weft_testkit::{
    config::{self, Placement, WEFT_SERVICES},
    process::free_loopback_addrs,
};

const NAMES: [&str; 4] = ["weft-auth", "weft-user", "weft-order", "weft-gateway"];
const WAIT: Duration = Duration::from_secs(60);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// The folder of the binaries, or `None` (after saying why) when the test cannot run.
fn bin_dir() -> Option<PathBuf> {
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
struct Up {
    child: Child,
    pid: u32,
    lines: Arc<Mutex<Vec<String>>>,
    dir: PathBuf,
    pids: HashMap<String, u32>,
}

impl Up {
    fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits for an output line matching `pred`; panics with the whole output after [`WAIT`].
    async fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
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
    fn read_pids(&mut self) {
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

async fn start(bin_dir: &Path) -> Up {
    let dir = std::env::temp_dir().join(format!("weft-up-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    // The test kit's mesh-config: Weft's three services and their upstreams, the gateway.
    let addrs = free_loopback_addrs(NAMES.len());
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

    let mut command = Command::new(env!("CARGO_BIN_EXE_weft"));
    command
        .arg("up")
        .arg("--config")
        .arg(&config_path)
        .arg("--bin-dir")
        .arg(bin_dir)
        .current_dir(&dir)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, _) in std::env::vars() {
        if key.starts_with("WEFT_") {
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
        pids: HashMap::new(),
    }
}

#[tokio::test]
async fn weft_up_runs_reports_a_crash_and_stops_cleanly() {
    let Some(bin_dir) = bin_dir() else { return };
    let mut up = start(&bin_dir).await;
    let ready = up.wait_for("ready line", |l| l.contains("ready:")).await;
    assert!(ready.contains("weft-gateway"), "{ready}");
    up.read_pids();
    let gateway = up
        .wait_for("gateway URL", |l| l.contains("REST API"))
        .await
        .rsplit("http://")
        .next()
        .unwrap()
        .trim()
        .parse::<SocketAddr>()
        .unwrap();
    let output = up.output();
    assert!(
        output.contains(&format!("curl http://{gateway}/v1/products")),
        "{output}"
    );
    assert!(
        output.contains(&format!("http://{gateway}/docs")),
        "{output}"
    );
    assert!(
        output.contains("[weft-order]"),
        "child lines are prefixed:\n{output}"
    );

    let health = http_get(gateway, "/healthz", HTTP_TIMEOUT).await.unwrap();
    assert_eq!(health.status, 200, "{}", health.body);
    let products = http_get(gateway, "/v1/products", HTTP_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(products.status, 200, "{}", products.body);
    let body: serde_json::Value = serde_json::from_str(&products.body).unwrap();
    let products = body["products"].as_array().unwrap();
    assert_eq!(products.len(), 5, "the demo products: {body}");
    for product in products {
        assert_eq!(product["currency"], "USD", "{product}");
        let stock: i64 = product["stock"].as_str().unwrap().parse().unwrap();
        assert!((10..=10_000).contains(&stock), "{product}");
    }

    // A child that dies is reported; the others, the gateway included, keep running.
    let user = up.pids["weft-user"];
    assert!(signal(user, "KILL").await.unwrap());
    let report = up
        .wait_for("crash report", |l| {
            l.contains("weft-user") && l.contains("exited") && l.contains("signal 9")
        })
        .await;
    assert!(report.contains(&format!("pid {user}")), "{report}");
    let health = http_get(gateway, "/healthz", HTTP_TIMEOUT).await.unwrap();
    assert_eq!(health.status, 200, "{}", health.body);
    let ready = http_get(gateway, "/readyz", HTTP_TIMEOUT).await.unwrap();
    assert_eq!(ready.status, 503, "weft-user is gone: {}", ready.body);
    let products = http_get(gateway, "/v1/products", HTTP_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(
        products.status, 200,
        "weft-order still serves: {}",
        products.body
    );

    // SIGTERM stops everything gracefully and `weft up` exits 0.
    assert!(signal(up.pid, "TERM").await.unwrap());
    let status = tokio::time::timeout(WAIT, up.child.wait())
        .await
        .unwrap_or_else(|_| panic!("`weft up` did not exit:\n{}", up.output()))
        .unwrap();
    // Let the readers catch the last lines.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(status.success(), "{status}:\n{}", up.output());
    for name in ["weft-auth", "weft-order", "weft-gateway"] {
        up.wait_for("stop report", |l| {
            l.contains(&format!("{name} stopped (exit code 0)"))
        })
        .await;
    }
    for (name, pid) in &up.pids {
        assert!(
            !signal(*pid, "0").await.unwrap(),
            "{name} (pid {pid}) is still running:\n{}",
            up.output()
        );
    }
    up.pids.clear();
}
