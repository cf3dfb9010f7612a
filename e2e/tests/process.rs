//! The processes themselves: health, graceful shutdown, restarts keeping data and keys,
//! `migrate` (a deployment's migration step), and start-up failures on bad configuration.

#[macro_use]
mod common;

use std::process::Command;

use common::*;
use futures::StreamExt as _;
use tonic::Code;
use weft_mesh::config::process_name;
use weft_testkit::{ServingStatus::Serving, binary, config::WEFT_SERVICES};

backends!(
    health_restarts_and_graceful_shutdown,
    calls_beyond_the_limit_are_shed,
    a_service_down_fails_calls_cleanly,
    migrate_applies_the_schema_once_and_exits,
);

/// `weft-<service> migrate` on an empty database applies every migration and exits 0; run
/// again, it finds the database up to date.
async fn migrate_applies_the_schema_once_and_exits(backend: Backend) {
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().unwrap();
    for (name, _) in WEFT_SERVICES {
        let database = weft_testkit::TestDatabase::in_dir(&backend, dir.path(), name).await;
        let config = dir.path().join(format!("{name}.toml"));
        let toml = format!(
            "[services.{name}]\nlisten = \"127.0.0.1:0\"\ndatabase_url = \"{}\"\n",
            database.url()
        );
        std::fs::write(&config, toml).unwrap();
        let program = binary(&process_name(name));
        let mut said = String::new();
        for round in ["first", "second"] {
            let output = Command::new(&program)
                .args(["migrate", "--config"])
                .arg(&config)
                .output()
                .unwrap();
            said = String::from_utf8_lossy(&output.stdout).into_owned();
            assert!(
                output.status.success() && said.contains("database up to date ("),
                "{name} migrate ({round} run): {}\n{said}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let pool = sqlx::AnyPool::connect(database.url()).await.unwrap();
        let applied: Vec<(i64,)> =
            sqlx::query_as("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&pool)
                .await
                .unwrap();
        pool.close().await;
        assert!(!applied.is_empty(), "{name}: no migration recorded");
        let count = format!("({} migration", applied.len());
        assert!(said.contains(&count), "{name}: {said} vs {count}");
    }
}

async fn health_restarts_and_graceful_shutdown(backend: Backend) {
    let mesh = TestMesh::start(backend).await;
    for (name, service) in [
        ("auth", "weft.auth.v1.AuthService"),
        ("user", "weft.user.v1.UserService"),
        ("order", "weft.order.v1.OrderService"),
    ] {
        assert_eq!(
            mesh.health(name, "").await.expect("health"),
            Serving,
            "{name}"
        );
        assert_eq!(
            mesh.health(name, service).await.expect("health"),
            Serving,
            "{name}"
        );
    }

    // Data, the signing key and issued tokens survive restarts of every service.
    let alice = mesh
        .register("persist@example.com", "password-123", "Persist")
        .await;
    let p = product(&mesh, "Durable", 100, "USD", 10).await;
    let order = ok(mesh
        .order()
        .create_order(bearer(
            &alice.access_token,
            order_request("k", vec![line(&p.id, 2)]),
        ))
        .await);
    for (name, _) in WEFT_SERVICES {
        mesh.restart(name).await;
    }
    let me = ok(mesh
        .user()
        .get_me(bearer(&alice.access_token, GetMeRequest {}))
        .await);
    assert_eq!(
        me,
        user_of(&alice),
        "the old token verifies after the restarts"
    );
    let again = ok(mesh
        .order()
        .get_order(bearer(
            &alice.access_token,
            GetOrderRequest {
                id: order.id.clone(),
            },
        ))
        .await);
    assert_eq!(again, order);
    assert_eq!(stock(&mesh, &p.id).await, 8);
    ok(mesh
        .auth()
        .refresh(RefreshRequest {
            refresh_token: alice.refresh_token.clone(),
        })
        .await);
    ok(mesh
        .auth()
        .login(LoginRequest {
            email: "persist@example.com".into(),
            password: "password-123".into(),
        })
        .await);

    // SIGTERM: each exits 0, reporting a clean stop.
    for name in ["order", "user", "auth"] {
        let status = mesh.terminate(name).await;
        assert!(
            status.success(),
            "{name} exited with {status} after SIGTERM"
        );
        assert!(!mesh.is_running(name));
    }
    mesh.assert_no_panics();
    mesh.stop().await;
}

async fn calls_beyond_the_limit_are_shed(backend: Backend) {
    let options = MeshOptions {
        toml: "[server]\nmax_concurrent_requests = 2\n".into(),
        ..MeshOptions::default()
    };
    let mesh = TestMesh::start_with(backend, options).await;
    let alice = mesh.new_user().await;
    let email = user_of(&alice).email;
    let client = mesh.auth();

    // Each Login hashes a password (tens of ms): 20 at once exceed 2 in flight.
    let results: Vec<Result<tonic::Response<AuthTokens>, tonic::Status>> =
        futures::stream::iter(0..20)
            .map(|_| {
                let mut client = client.clone();
                let request = LoginRequest {
                    email: email.clone(),
                    password: "wrong-password".into(),
                };
                async move { client.login(request).await }
            })
            .buffer_unordered(20)
            .collect()
            .await;
    let codes: Vec<Code> = results
        .iter()
        .map(|r| r.as_ref().map_or_else(|s| s.code(), |_| Code::Ok))
        .collect();
    assert!(
        codes
            .iter()
            .all(|c| matches!(c, Code::Unauthenticated | Code::Unavailable)),
        "{codes:?}"
    );
    assert!(
        codes.contains(&Code::Unavailable),
        "nothing was shed: {codes:?}"
    );
    assert!(
        codes.contains(&Code::Unauthenticated),
        "nothing was served: {codes:?}"
    );

    // Once the load is gone, calls are served again.
    ok(mesh
        .auth()
        .login(LoginRequest {
            email,
            password: "password-123".into(),
        })
        .await);
    mesh.assert_no_panics();
    mesh.stop().await;
}

async fn a_service_down_fails_calls_cleanly(backend: Backend) {
    let mesh = TestMesh::start(backend).await;
    let alice = mesh.new_user().await;
    let p = product(&mesh, "Patient", 100, "USD", 10).await;
    mesh.kill("user").await;

    // weft-order cannot check the user: UNAVAILABLE, and no stock is taken.
    err(
        mesh.order()
            .create_order(bearer(
                &alice.access_token,
                order_request("while-down", vec![line(&p.id, 1)]),
            ))
            .await,
        Code::Unavailable,
        &[],
    );
    assert_eq!(stock(&mesh, &p.id).await, 10);
    // weft-auth cannot create the profile: the registration fails and leaves nothing behind.
    let register = RegisterRequest {
        email: "late@example.com".into(),
        password: "password-123".into(),
        display_name: "Late".into(),
    };
    err(
        mesh.auth().register(register.clone()).await,
        Code::Unavailable,
        &[],
    );
    err(
        mesh.auth()
            .login(LoginRequest {
                email: "late@example.com".into(),
                password: "password-123".into(),
            })
            .await,
        Code::Unauthenticated,
        &[],
    );

    // Back up: the same calls succeed, once.
    mesh.restart("user").await;
    let tokens = ok(mesh.auth().register(register).await);
    assert_eq!(user_of(&tokens).email, "late@example.com");
    let order = ok(mesh
        .order()
        .create_order(bearer(
            &alice.access_token,
            order_request("while-down", vec![line(&p.id, 1)]),
        ))
        .await);
    assert_eq!(stock(&mesh, &p.id).await, 9);
    assert_eq!(
        all_orders(&mesh, &alice.access_token, 0).await,
        std::slice::from_ref(&order)
    );
    mesh.assert_no_panics();
    mesh.stop().await;
}

/// Runs `service --config <file with text>` and returns (exit success, stderr).
fn run_with_config(service: &str, text: &str) -> (std::process::ExitStatus, String) {
    let dir = std::env::temp_dir().join(format!("weft-bad-config-{}", tag()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("bad.toml");
    std::fs::write(&path, text).expect("write config");
    let mut command = Command::new(binary(&process_name(service)));
    command.arg("--config").arg(&path).current_dir(&dir);
    for (key, _) in std::env::vars() {
        if key.starts_with("WEFT_") || key == "RUST_LOG" {
            command.env_remove(key);
        }
    }
    let output = command.output().expect("run the binary");
    let _ = std::fs::remove_dir_all(&dir);
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_bad_config_names_the_key() {
    for (service, _) in WEFT_SERVICES {
        let (status, stderr) =
            run_with_config(service, "[server]\nmax_concurrent_requests = \"many\"\n");
        assert!(!status.success(), "{service} started with a bad config");
        assert!(
            stderr.contains("server.max_concurrent_requests"),
            "{service}: stderr does not name the key: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{service} panicked: {stderr}");
    }

    let (status, stderr) = run_with_config("order", "[server]\nmax_conccurent_requests = 5\n");
    assert!(!status.success());
    assert!(stderr.contains("max_conccurent_requests"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let (status, stderr) =
        run_with_config("order", "[services.order]\nlisten = \"not-an-address\"\n");
    assert!(!status.success());
    assert!(stderr.contains("services.order.listen"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // Nothing is built in: a process whose config does not declare it refuses to start.
    let (status, stderr) = run_with_config("order", "environment = \"test\"\n");
    assert!(!status.success());
    assert!(stderr.contains("services.order"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let (status, stderr) = run_with_config("order", "[server\n");
    assert!(!status.success());
    assert!(stderr.contains("bad.toml"), "names the file: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // A missing file is an error too, naming it.
    let output = Command::new(binary("weft-order"))
        .args(["--config", "/nonexistent/weft/mesh.toml"])
        .output()
        .expect("run the binary");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("/nonexistent/weft/mesh.toml"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
