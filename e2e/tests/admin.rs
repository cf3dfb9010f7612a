//! Administrators are made by an operator, never by registering: with the shipped
//! mesh-configs' settings every account registers as an ordinary user, whatever its email;
//! `weft admin grant` (a role, in weft-user's database) and `weft admin create` (register, then
//! grant) make administrators, and the next sign-in's token carries the role.

#[macro_use]
mod common;

use std::path::Path;

use common::{
    rest::{Gateway, grpc},
    *,
};
use serde_json::json;

backends!(
    registering_never_makes_an_administrator,
    weft_admin_create_makes_a_new_administrator,
    weft_admin_errors_are_clear,
);

/// The `[auth]` tables of the shipped `mesh-config/local.toml` and `compose.toml`, as TOML to
/// run a test mesh with.
fn shipped_auth_settings() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../mesh-config");
    let mut auth = toml::Table::new();
    for file in ["local.toml", "compose.toml"] {
        let text = std::fs::read_to_string(dir.join(file)).expect("a shipped mesh-config");
        let root: toml::Table = text.parse().expect("shipped mesh-configs are TOML");
        if let Some(toml::Value::Table(table)) = root.get("auth") {
            weft_testkit::config::merge(&mut auth, table.clone());
        }
    }
    let mut root = toml::Table::new();
    root.insert("auth".into(), auth.into());
    toml::to_string(&root).expect("a TOML table serialises")
}

/// What a finished `weft` run printed, and whether it succeeded.
fn outcome(output: &std::process::Output) -> (bool, String, String) {
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn registering_never_makes_an_administrator(backend: Backend) {
    let options = MeshOptions {
        toml: shipped_auth_settings(),
        gateway: true,
        ..MeshOptions::default()
    };
    let mesh = TestMesh::start_with(backend, options).await;
    let gw = Gateway::of(&mesh);
    let credentials = json!({"email": "admin@example.com", "password": "admin password"});

    // The email the shipped configs used to promote registers as an ordinary user.
    let registered = gw
        .post("/v1/auth/register")
        .json(
            &json!({"email": "admin@example.com", "password": "admin password",
                      "displayName": "Admin"}),
        )
        .send()
        .await
        .ok();
    assert_eq!(registered["user"]["role"], "ROLE_USER");
    let user_token = registered["accessToken"].as_str().unwrap().to_string();
    assert_eq!(jwt_payload(&user_token)["role"], "user");
    gw.get("/v1/users")
        .bearer(&user_token)
        .send()
        .await
        .error(403, grpc::PERMISSION_DENIED, &[]);

    // The operator grants the role; the next sign-in carries it.
    let (granted, stdout, stderr) = outcome(
        &mesh
            .run_weft(&["admin", "grant", "--email", "admin@example.com"], "")
            .await,
    );
    assert!(granted, "weft admin grant failed: {stderr}");
    assert!(
        stdout.contains("admin@example.com is now admin"),
        "{stdout}"
    );
    let signed_in = gw
        .post("/v1/auth/login")
        .json(&credentials)
        .send()
        .await
        .ok();
    assert_eq!(signed_in["user"]["role"], "ROLE_ADMIN");
    let admin_token = signed_in["accessToken"].as_str().unwrap().to_string();
    assert_eq!(jwt_payload(&admin_token)["role"], "admin");
    gw.get("/v1/users").bearer(&admin_token).send().await.ok();
    // A token issued before the grant keeps the role it was issued with.
    gw.get("/v1/users")
        .bearer(&user_token)
        .send()
        .await
        .error(403, grpc::PERMISSION_DENIED, &[]);

    // And back: `--role user` demotes, from the next sign-in on.
    let demote = [
        "admin",
        "grant",
        "--email",
        "admin@example.com",
        "--role",
        "user",
    ];
    let (demoted, _, stderr) = outcome(&mesh.run_weft(&demote, "").await);
    assert!(demoted, "weft admin grant --role user failed: {stderr}");
    let signed_in = gw
        .post("/v1/auth/login")
        .json(&credentials)
        .send()
        .await
        .ok();
    assert_eq!(signed_in["user"]["role"], "ROLE_USER");
    mesh.assert_no_panics();
    mesh.stop().await;
}

async fn weft_admin_create_makes_a_new_administrator(backend: Backend) {
    let mesh = TestMesh::start(backend).await;

    // A password given on standard input.
    let create = [
        "admin",
        "create",
        "--email",
        "boss@example.com",
        "--password-file",
        "-",
    ];
    let (created, stdout, stderr) = outcome(&mesh.run_weft(&create, "boss password 1\n").await);
    assert!(created, "weft admin create failed: {stderr}");
    assert!(
        !stdout.contains("boss password 1"),
        "a given password is not echoed"
    );
    let boss = mesh.login("boss@example.com", "boss password 1").await;
    assert_eq!(user_of(&boss).role, Role::Admin as i32);
    assert_eq!(jwt_payload(&boss.access_token)["role"], "admin");
    ok(mesh
        .user()
        .list_users(bearer(&boss.access_token, ListUsersRequest::default()))
        .await);

    // No password given: one is generated and printed once.
    let create = ["admin", "create", "--email", "ops@example.com"];
    let (created, stdout, stderr) = outcome(&mesh.run_weft(&create, "").await);
    assert!(created, "weft admin create failed: {stderr}");
    let password = stdout
        .lines()
        .find_map(|line| line.strip_prefix("password: "))
        .unwrap_or_else(|| panic!("no generated password in {stdout:?}"));
    let ops = mesh.login("ops@example.com", password.trim()).await;
    assert_eq!(jwt_payload(&ops.access_token)["role"], "admin");

    // Creating it again is refused, pointing to `grant`.
    let (again, _, stderr) = outcome(&mesh.run_weft(&create, "").await);
    assert!(!again);
    assert!(stderr.contains("already registered"), "{stderr}");
    assert!(stderr.contains("weft admin grant"), "{stderr}");
    mesh.assert_no_panics();
    mesh.stop().await;
}

async fn weft_admin_errors_are_clear(backend: Backend) {
    let mesh = TestMesh::start(backend).await;
    let expect_failure = |output: std::process::Output, needle: &str| {
        let (success, stdout, stderr) = outcome(&output);
        assert!(
            !success,
            "expected a failure mentioning {needle:?}; it printed {stdout}"
        );
        assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    };
    expect_failure(
        mesh.run_weft(&["admin", "grant", "--email", "nobody@example.com"], "")
            .await,
        "no user has the email nobody@example.com",
    );
    expect_failure(
        mesh.run_weft(&["admin", "grant", "--email", "not an email"], "")
            .await,
        "email",
    );
    expect_failure(
        mesh.run_weft(
            &[
                "admin",
                "grant",
                "--email",
                "a@example.com",
                "--role",
                "root",
            ],
            "",
        )
        .await,
        "possible values: admin, user",
    );
    expect_failure(
        mesh.run_weft(
            &[
                "admin",
                "create",
                "--email",
                "c@example.com",
                "--password-file",
                "-",
            ],
            "short\n",
        )
        .await,
        "password",
    );

    // weft-user's database out of reach: a config whose database URL names nothing.
    let text = std::fs::read_to_string(mesh.config_path()).unwrap();
    let mut root: toml::Table = text.parse().unwrap();
    root.get_mut("services")
        .and_then(|services| services.get_mut("user"))
        .and_then(toml::Value::as_table_mut)
        .expect("the mesh config declares weft-user")
        .insert(
            "database_url".into(),
            "postgres://weft@127.0.0.1:1/nowhere".into(),
        );
    let broken = mesh.dir().join("broken.toml");
    std::fs::write(&broken, toml::to_string(&root).unwrap()).unwrap();
    let weft = weft_testkit::binary("weft");
    let bin_dir = weft.parent().unwrap();
    let output = tokio::process::Command::new(&weft)
        .args(["admin", "grant", "--email", "a@example.com", "--config"])
        .arg(&broken)
        .arg("--bin-dir")
        .arg(bin_dir)
        .env_remove("WEFT_CONFIG")
        .output()
        .await
        .unwrap();
    expect_failure(
        output,
        "cannot open database postgres://weft@127.0.0.1:1/nowhere",
    );
    mesh.assert_no_panics();
    mesh.stop().await;
}
