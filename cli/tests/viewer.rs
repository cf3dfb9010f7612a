//! The trace viewer of `weft up` end to end: the real binaries, a real browser (Debian's
//! chromium driven by playwright-core, `browser/viewer.mjs`), then `weft trace` and a 5xx.
//!
//! - the page lists an order within 2 s of the gateway's answer without a reload, finds it by
//!   the request id the gateway echoed, and draws its waterfall with the right parents across
//!   gateway, order and user and the database spans under the order's call; a registration's
//!   waterfall crosses gateway, auth and user; a failed request is marked failed;
//! - `weft trace <request id>` prints the same tree in the terminal, and a bad id is refused
//!   clearly;
//! - with weft-user gone, the gateway answers 5xx and `weft up`'s line for it carries the
//!   viewer's link for that request id;
//! - `weft up --viewer-listen 0.0.0.0:...` refuses to start.
//!
//! Screenshots go to `<target>/tmp/viewer-browser/`. Needs the binaries (as `tests/up.rs`),
//! node and chromium (`/usr/bin/chromium`, or `WEFT_CHROMIUM`); without them the test is
//! skipped with a note, except under `CI=true`, where it fails.

mod common;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use common::{HTTP_TIMEOUT, Up, WAIT, bin_dir, start};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    process::Command,
};
use weft::child::signal;

const ADMIN_EMAIL: &str = "admin@example.com";
const ADMIN_PASSWORD: &str = "admin-password-123";
const BROWSER_TIMEOUT: Duration = Duration::from_secs(180);

/// Skips the test (outside CI) or fails it (under `CI=true`) with `why`.
fn skip(why: &str) -> Option<PathBuf> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("the browser test cannot run: {why}");
    }
    eprintln!("note: skipping the trace viewer's browser test: {why}");
    None
}

/// The browser, or `None` after saying why there is none.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("WEFT_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if path.is_file() {
        return Some(path);
    }
    skip(&format!(
        "no chromium at {} (`apt-get install chromium`, as .ci/run does)",
        path.display()
    ))
}

/// The node_modules folder with playwright-core (installed by scripts/playwright.sh), or
/// `None` after saying why.
async fn playwright(root: &Path) -> Option<PathBuf> {
    let output = Command::new(root.join("scripts/playwright.sh"))
        .stdin(Stdio::null())
        .output()
        .await;
    match output {
        Ok(out) if out.status.success() => Some(PathBuf::from(
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        )),
        Ok(out) => skip(&format!(
            "scripts/playwright.sh failed (node and npm needed): {}",
            String::from_utf8_lossy(&out.stderr)
        )),
        Err(err) => skip(&format!("cannot run scripts/playwright.sh: {err}")),
    }
}

/// The address in the line of `up`'s banner starting with `label`.
async fn banner_addr(up: &Up, label: &str) -> SocketAddr {
    up.wait_for(label, |l| l.contains(label) && l.contains("http://"))
        .await
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| c.is_whitespace() || c == '/').next())
        .unwrap()
        .parse()
        .unwrap()
}

/// `POST path` with a JSON body and a bearer token on a fresh connection; the status and the
/// `X-Request-Id` the gateway answered with.
async fn post(addr: SocketAddr, path: &str, token: &str, body: &str) -> (u16, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        String::from_utf8_lossy(&raw).into_owned()
    };
    let raw = tokio::time::timeout(HTTP_TIMEOUT * 3, exchange)
        .await
        .unwrap();
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw:?}"));
    let request_id = raw
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("x-request-id")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no X-Request-Id in {raw:?}"));
    (status, request_id)
}

/// Runs `weft <args>` to its end; its exit success, standard output and error.
async fn weft(args: &[&str], dir: &Path, stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_viewer_shows_requests_live_in_a_browser_and_in_the_terminal() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let Some(bin_dir) = bin_dir() else { return };
    let Some(chromium) = chromium() else { return };
    let Some(modules) = playwright(root).await else {
        return;
    };
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("viewer-browser");
    let _ = std::fs::remove_dir_all(&out_dir);

    let mut up = start(&bin_dir, &[]).await;
    up.wait_for("ready line", |l| l.contains("ready:")).await;
    up.read_pids();
    let gateway = banner_addr(&up, "REST API").await;
    let viewer = banner_addr(&up, "traces ").await;
    let viewer_url = format!("http://{viewer}");

    // An administrator, made the operator's way.
    let config = up.config.display().to_string();
    let bins = bin_dir.display().to_string();
    let (ok, stdout, stderr) = weft(
        &[
            "admin",
            "create",
            "--email",
            ADMIN_EMAIL,
            "--password-file",
            "-",
            "--config",
            &config,
            "--bin-dir",
            &bins,
        ],
        &up.dir,
        &format!("{ADMIN_PASSWORD}\n"),
    )
    .await;
    assert!(ok, "weft admin create failed:\n{stdout}\n{stderr}");

    // --- the browser ---
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/viewer.mjs");
    let browser = Command::new("node")
        .arg(&script)
        .env("GATEWAY", format!("http://{gateway}"))
        .env("VIEWER", &viewer_url)
        .env("ADMIN_EMAIL", ADMIN_EMAIL)
        .env("ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("OUT_DIR", &out_dir)
        .env("CHROMIUM", &chromium)
        .env("PLAYWRIGHT_MODULES", &modules)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let browser = tokio::time::timeout(BROWSER_TIMEOUT, browser)
        .await
        .unwrap_or_else(|_| panic!("the browser test did not finish in {BROWSER_TIMEOUT:?}"))
        .expect("cannot run node");
    let said = String::from_utf8_lossy(&browser.stdout);
    let log = String::from_utf8_lossy(&browser.stderr);
    assert!(
        browser.status.success(),
        "the browser test failed ({}):\n{log}\n{said}\n--- weft up ---\n{}",
        browser.status,
        up.output()
    );
    eprintln!("{log}");
    let result: serde_json::Value = serde_json::from_str(said.trim()).unwrap();
    let order_id = result["order"].as_str().unwrap();
    let token = result["token"].as_str().unwrap();
    let product = result["product"].as_str().unwrap();
    for shot in [
        "1-list.png",
        "2-search.png",
        "3-waterfall.png",
        "4-register.png",
        "5-failed.png",
    ] {
        assert!(out_dir.join(shot).is_file(), "no screenshot {shot}");
    }

    // --- the terminal: the same tree ---
    let (ok, tree, stderr) = weft(&["trace", order_id, "--viewer", &viewer_url], &up.dir, "").await;
    assert!(ok, "weft trace failed: {stderr}");
    assert!(tree.starts_with("POST /v1/orders -> 20"), "{tree}");
    assert!(tree.contains(&format!("request {order_id}")), "{tree}");
    let lines: Vec<&str> = tree.lines().collect();
    let line_of = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in\n{tree}"))
    };
    // Start and duration take two right-aligned columns of 10 and two spaces; the tree's
    // indentation follows.
    let indent = |n: usize| {
        let tree = &lines[n][23..];
        tree.len() - tree.trim_start().len()
    };
    let gw = line_of("weft-gateway  POST /v1/orders  [20");
    let order_server = line_of("weft-order  weft.order.v1.OrderService/CreateOrder  [OK]");
    let user_server = line_of("weft-user  weft.user.v1.UserService/GetUser  [OK]");
    let update = line_of("weft-order  UPDATE products");
    assert!(gw < order_server && order_server < user_server, "{tree}");
    assert!(indent(order_server) > indent(gw), "{tree}");
    assert!(indent(user_server) > indent(order_server), "{tree}");
    assert!(indent(update) > indent(order_server), "{tree}");
    assert!(
        tree.contains(&format!("{viewer_url}/#/request/{order_id}")),
        "{tree}"
    );
    let (ok, _, stderr) = weft(
        &["trace", "no such id!", "--viewer", &viewer_url],
        &up.dir,
        "",
    )
    .await;
    assert!(!ok);
    assert!(
        stderr.contains("\"no such id!\" is not a request id or trace id"),
        "{stderr}"
    );
    let (ok, _, stderr) = weft(
        &[
            "trace",
            "0123456789abcdef0123456789abcdef",
            "--viewer",
            &viewer_url,
        ],
        &up.dir,
        "",
    )
    .await;
    assert!(!ok);
    assert!(
        stderr.contains("no request or trace 0123456789abcdef0123456789abcdef"),
        "{stderr}"
    );

    // --- a 5xx: weft-user is gone, the order cannot be placed ---
    assert!(signal(up.pids["weft-user"], "KILL").await.unwrap());
    up.wait_for("weft-user's exit", |l| {
        l.contains("weft-user") && l.contains("exited")
    })
    .await;
    let body = format!(r#"{{"items":[{{"productId":"{product}","quantity":1}}]}}"#);
    let (status, failed_id) = post(gateway, "/v1/orders", token, &body).await;
    assert!(status >= 500, "an order without weft-user: {status}");
    let line = up
        .wait_for("the 5xx line", |l| {
            l.contains(&failed_id) && l.contains("answered")
        })
        .await;
    assert!(
        line.contains(&format!("answered {status} to POST /v1/orders")),
        "{line}"
    );
    assert!(
        line.contains(&format!("{viewer_url}/#/request/{failed_id}")),
        "{line}"
    );
    let (ok, errors, stderr) =
        weft(&["trace", "--errors", "--viewer", &viewer_url], &up.dir, "").await;
    assert!(ok, "{stderr}");
    assert!(
        errors.starts_with(&format!("POST /v1/orders -> {status} (failed)")),
        "the latest failed request first:\n{errors}"
    );

    // Stop; the harness kills what is left on drop.
    assert!(signal(up.pid, "TERM").await.unwrap());
    let _ = tokio::time::timeout(WAIT, up.child.wait()).await;
    up.pids.clear();

    // The page is never served beyond loopback: `weft up` refuses to start.
    let (ok, stdout, stderr) = weft(
        &[
            "up",
            "--config",
            &config,
            "--bin-dir",
            &bins,
            "--viewer-listen",
            "0.0.0.0:16686",
        ],
        &up.dir,
        "",
    )
    .await;
    assert!(!ok, "{stdout}\n{stderr}");
    assert!(
        stderr.contains(
            "the trace viewer serves on loopback only, and 0.0.0.0:16686 is not a loopback address"
        ),
        "{stderr}"
    );
}
