//! `weft up` end to end: the real binaries on free loopback ports with a temporary data folder,
//! a child killed under it, and a graceful stop.
//!
//! Needs weft-auth, weft-user, weft-order and weft-gateway next to the `weft` binary (build
//! them with `cargo build --workspace --bins`); without them the test is skipped, except under
//! `CI=true`, where it fails.

mod common;

use std::{net::SocketAddr, time::Duration};

use common::{HTTP_TIMEOUT, WAIT, bin_dir, start};
use weft::{child::signal, probe::http_get};

#[tokio::test]
async fn weft_up_runs_reports_a_crash_and_stops_cleanly() {
    let Some(bin_dir) = bin_dir() else { return };
    let mut up = start(&bin_dir, &[]).await;
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
    // The banner names the trace viewer, which serves its page.
    let viewer = up
        .wait_for("viewer URL", |l| l.contains("traces    http://"))
        .await
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .parse::<SocketAddr>()
        .unwrap();
    let page = http_get(viewer, "/", HTTP_TIMEOUT).await.unwrap();
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("Weft traces"), "{}", page.body);
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
