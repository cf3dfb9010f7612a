//! Keys and data at rest: the SQLite files and the folders made for them are readable by their
//! owner only whatever the umask; weft-auth's signing key may come from a file and then never
//! reaches the database; `weft keys rotate` publishes the new key beside the old one.

#[macro_use]
mod common;

use std::{
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use common::*;
use tonic::Code;
use weft_testkit::{SigningKey, binary, process::free_loopback_addrs};

backends!(
    a_signing_key_from_a_file_signs_and_stays_out_of_the_database,
    weft_keys_rotate_publishes_the_new_key_beside_the_old,
);

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// weft-user started under `umask 000` on a SQLite file in a folder that does not exist yet:
/// the folder is 0700 and the database, its WAL and its shared-memory file are 0600.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_files_are_private_whatever_the_umask() {
    let mesh = TestMesh::start(Backend::Sqlite).await;
    let data = mesh.dir().join("private/data");
    let db = data.join("user.db");
    let ports = free_loopback_addrs(2);
    let (listen, admin) = (ports[0], ports[1]);
    let mut command = tokio::process::Command::new("sh");
    command
        .arg("-c")
        .arg("umask 000; exec \"$0\" --config \"$1\"")
        .arg(binary("weft-user"))
        .arg(mesh.config_path())
        .current_dir(mesh.dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    weft_testkit::process::clean_env(&mut command, false);
    command
        .env("WEFT_SERVICES__USER__LISTEN", listen.to_string())
        .env("WEFT_SERVICES__USER__ADMIN_LISTEN", admin.to_string())
        .env(
            "WEFT_SERVICES__USER__DATABASE_URL",
            format!("sqlite://{}", db.display()),
        );
    let mut child = command.spawn().expect("cannot start weft-user");
    // WAL mode gives the database its -wal and -shm files once migrations have run.
    let started = Instant::now();
    while !(data.join("user.db-wal").exists() && data.join("user.db-shm").exists()) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("weft-user exited with {status}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "weft-user made no WAL files in {}",
            data.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Serving means the pools are open, the files final.
    while tokio::net::TcpStream::connect(listen).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "weft-user did not listen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(mode(&data), 0o700, "the folder made for the database");
    assert_eq!(
        mode(&mesh.dir().join("private")),
        0o700,
        "its parent, made too"
    );
    for file in ["user.db", "user.db-wal", "user.db-shm"] {
        assert_eq!(mode(&data.join(file)), 0o600, "{file}");
    }
    child.kill().await.expect("cannot stop weft-user");
    mesh.stop().await;
}

async fn a_signing_key_from_a_file_signs_and_stays_out_of_the_database(backend: Backend) {
    let key_dir = tempfile::tempdir().unwrap();
    let key_path = key_dir.path().join("signing-key.pem");
    let file_key = SigningKey::generate();
    file_key.write_pem(&key_path);
    let options = MeshOptions {
        env: vec![(
            "WEFT_AUTH__SIGNING_KEY_FILE".into(),
            key_path.display().to_string(),
        )],
        ..MeshOptions::default()
    };
    let mesh = TestMesh::start_with(backend, options).await;
    let tokens = mesh.new_user().await;

    // The file's key is the one published, and it signs.
    let jwks = ok(mesh.auth().get_jwks(GetJwksRequest {}).await);
    let published: Vec<&str> = jwks.keys.iter().map(|k| k.x.as_str()).collect();
    assert_eq!(
        published,
        [file_key.public_x().as_str()],
        "only the file's key"
    );
    let kid = jwt_header(&tokens.access_token)["kid"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(kid, jwks.keys[0].kid);
    verify_with_jwk(&tokens.access_token, &jwks.keys[0].x)
        .expect("the token verifies with the published key");
    ok(mesh
        .user()
        .get_me(bearer(&tokens.access_token, GetMeRequest {}))
        .await);

    // The key the kit stored in the database before (`import-key`) verifies nothing now.
    let forged = mesh.sign_token(&mesh.claims(&user_of(&tokens).id, "admin"));
    err(
        mesh.user().get_me(bearer(&forged, GetMeRequest {})).await,
        Code::Unauthenticated,
        &[],
    );

    // No copy of the file's private key in weft-auth's database.
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(mesh.database_url("auth"))
        .await
        .unwrap();
    let stored: Vec<String> = sqlx::query_scalar("SELECT private_key FROM signing_keys")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    let file_der = STANDARD.encode(&file_key.der);
    assert!(
        !stored.contains(&file_der),
        "the file's private key was written to the database"
    );
    mesh.assert_no_panics();
    mesh.stop().await;
}

async fn weft_keys_rotate_publishes_the_new_key_beside_the_old(backend: Backend) {
    let options = MeshOptions {
        toml: "[auth]\nkey_reload_interval_ms = 100\n".into(),
        ..MeshOptions::default()
    };
    let mesh = TestMesh::start_with(backend, options).await;
    let old_kid = mesh.signing_key().kid.clone();
    let rotated = mesh.run_weft(&["keys", "rotate"], "").await;
    let stdout = String::from_utf8_lossy(&rotated.stdout);
    assert!(
        rotated.status.success(),
        "weft keys rotate failed: {}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    let new_kid = stdout.trim().to_string();
    assert!(!new_kid.is_empty() && new_kid != old_kid, "{stdout:?}");
    // weft-auth picks the rotation up within its reload interval: both keys are published, the
    // old one still signing (the new one signs only after the activation delay).
    let started = Instant::now();
    loop {
        let jwks = ok(mesh.auth().get_jwks(GetJwksRequest {}).await);
        let kids: Vec<&str> = jwks.keys.iter().map(|k| k.kid.as_str()).collect();
        if kids.contains(&new_kid.as_str()) {
            assert!(kids.contains(&old_kid.as_str()), "{kids:?}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the new key is not published 5 s after the rotation: {kids:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tokens = mesh.new_user().await;
    assert_eq!(jwt_header(&tokens.access_token)["kid"], old_kid.as_str());
    mesh.assert_no_panics();
    mesh.stop().await;
}
