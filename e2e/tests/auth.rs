//! AuthService over real gRPC: registration, sign-in, refresh-token rotation with reuse
//! detection, sign-out, account-enumeration resistance and the JWKS.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use common::*;
use ed25519_dalek::pkcs8::DecodePrivateKey as _;
use tonic::Code;

backends!(
    register_login_refresh_reuse_logout,
    wrong_password_and_unknown_email_look_alike,
    register_validates_its_input,
    concurrent_registrations_of_one_email_have_one_winner,
    emails_are_normalised,
    jwks_publishes_the_signing_key,
    issued_tokens_expire,
    a_sign_in_cannot_be_refreshed_past_its_lifetime,
    a_login_flood_is_refused_beyond_the_hashing_bound,
    a_key_rotation_keeps_old_tokens_valid,
);

async fn register_login_refresh_reuse_logout(backend: Backend) {
    let mesh = TestMesh::start(backend).await;
    let mut auth = mesh.auth();

    let registered = mesh
        .register("flow@example.com", "password-123", "Flow")
        .await;
    assert_eq!(registered.token_type, "Bearer");
    assert_eq!(
        registered.expires_in, 300,
        "default access token lifetime: 5 minutes"
    );
    assert!(!registered.refresh_token.is_empty());
    assert_eq!(registered.access_token.split('.').count(), 3, "a JWT");
    let user = user_of(&registered);
    assert!(!user.id.is_empty());
    assert_eq!(user.email, "flow@example.com");
    assert_eq!(user.display_name, "Flow");
    assert_eq!(user.role, Role::User as i32);
    assert!(user.create_time.is_some() && user.update_time.is_some());
    let me = ok(mesh
        .user()
        .get_me(bearer(&registered.access_token, GetMeRequest {}))
        .await);
    assert_eq!(me, user, "GetMe with the new token returns the new profile");

    let login = ok(auth
        .login(LoginRequest {
            email: "flow@example.com".into(),
            password: "password-123".into(),
        })
        .await);
    assert_eq!(user_of(&login).id, user.id);
    assert_eq!(login.token_type, "Bearer");
    assert_ne!(login.refresh_token, registered.refresh_token);

    // Rotation: the presented token dies, a new one is issued.
    let rotated = ok(auth
        .refresh(RefreshRequest {
            refresh_token: login.refresh_token.clone(),
        })
        .await);
    assert_ne!(rotated.refresh_token, login.refresh_token);
    assert_eq!(user_of(&rotated).id, user.id);
    let me = ok(mesh
        .user()
        .get_me(bearer(&rotated.access_token, GetMeRequest {}))
        .await);
    assert_eq!(me.id, user.id);

    // Reuse of the dead token is refused and revokes the whole family...
    err(
        auth.refresh(RefreshRequest {
            refresh_token: login.refresh_token.clone(),
        })
        .await,
        Code::Unauthenticated,
        &[],
    );
    // ...so the token that replaced it is dead too.
    err(
        auth.refresh(RefreshRequest {
            refresh_token: rotated.refresh_token.clone(),
        })
        .await,
        Code::Unauthenticated,
        &[],
    );

    // Another family (the registration's) is untouched.
    let other = ok(auth
        .refresh(RefreshRequest {
            refresh_token: registered.refresh_token.clone(),
        })
        .await);

    // Logout revokes it; logging out again is fine.
    ok(auth
        .logout(LogoutRequest {
            refresh_token: other.refresh_token.clone(),
        })
        .await);
    err(
        auth.refresh(RefreshRequest {
            refresh_token: other.refresh_token.clone(),
        })
        .await,
        Code::Unauthenticated,
        &[],
    );
    ok(auth
        .logout(LogoutRequest {
            refresh_token: other.refresh_token.clone(),
        })
        .await);

    // Unknown refresh tokens.
    for bogus in ["not-a-refresh-token", &"x".repeat(64)] {
        err(
            auth.refresh(RefreshRequest {
                refresh_token: bogus.to_string(),
            })
            .await,
            Code::Unauthenticated,
            &[],
        );
    }

    // Signing in again still works after all that.
    ok(auth
        .login(LoginRequest {
            email: "flow@example.com".into(),
            password: "password-123".into(),
        })
        .await);
    mesh.assert_no_panics();
    mesh.stop().await;
}

async fn wrong_password_and_unknown_email_look_alike(backend: Backend) {
    let mesh = TestMesh::start(backend).await;
    let mut auth = mesh.auth();
    mesh.register("known@example.com", "password-123", "Known")
        .await;

    let attempt = |email: &str, password: &str| LoginRequest {
        email: email.into(),
        password: password.into(),
    };
    let wrong_password = err(
        auth.login(attempt("known@example.com", "password-124"))
            .await,
        Code::Unauthenticated,
        &[],
    );
    let unknown_email = err(
        auth.login(attempt("nobody@example.com", "password-123"))
            .await,
        Code::Unauthenticated,
        &[],
    );
    assert_eq!(
        wrong_password.message(),
        unknown_email.message(),
        "the answers must not tell which emails have accounts"
    );

    // About the same time: an unknown email must cost a password hash too. Medians of a few
    // tries, compared loosely (2 cores, other tests running), catch a skipped hash (~50x).
    let mut wrong = Vec::new();
    let mut unknown = Vec::new();
    for i in 0..5 {
        let started = Instant::now();
        let _ = auth
            .login(attempt("known@example.com", "not-the-password"))
            .await;
        wrong.push(started.elapsed());
        let started = Instant::now();
        let _ = auth
            .login(attempt(
                &format!("nobody{i}@example.com"),
                "not-the-password",
            ))
            .await;
        unknown.push(started.elapsed());
    }
    wrong.sort();
    unknown.sort();
    let (wrong, unknown) = (wrong[2], unknown[2]);
    println!("median Login time: wrong password {wrong:?}, unknown email {unknown:?}");
    assert!(
        unknown * 4 >= wrong || wrong < Duration::from_millis(4),
        "unknown email answered in {unknown:?}, wrong password in {wrong:?}: \
         the timing tells which emails have accounts"
    );
    mesh.assert_no_panics();
    mesh.stop().await;
}

async fn register_validates_its_input(backend: Backend) {
    let mesh = TestMesh::start(backend).await;
    let mut auth = mesh.auth();
    let request = |email: &str, password: &str, name: &str| RegisterRequest {
        email: email.into(),
        password: password.into(),
        display_name: name.into(),
    };

    for email in [
        "",
        "ada",
        "ada@",
        "@example.com",
        "a b@example.com",
        "ada@example",
        "a@@x.io",
    ] {
        invalid(
            auth.register(request(email, "password-123", "Ada")).await,
            "email",
        );
    }
    invalid(
        auth.register(request("short@example.com", "1234567", "Short"))
            .await,
        "password",
    );
    invalid(
        auth.register(request("long@example.com", &"p".repeat(1025), "Long"))
            .await,
        "password",
    );
    invalid(
        auth.register(request("noname@example.com", "password-123", ""))
            .await,
        "display_name",
    );
    // A refused registration leaves nothing behind: the email is still free.
    mesh.register("short@example.com", "12345678", "Eight")
        .await;
    mesh.register("long@example.com", &"p".repeat(1024), "Long")
        .await;
    ok(auth
        .login(LoginRequest {
            email: "long@example.com".into(),
            password: "p".repeat(1024),
        })
        .await);

    // Taken emails, whatever their case and surrounding spaces.
    mesh.register("taken@example.com", "password-123", "First")
        .await;
    for email in ["taken@example.com", "  Taken@Example.COM "] {
        err(
            auth.register(request(email, "password-456", "Second"))
                .await,
            Code::AlreadyExists,
            &[],
        );
    }
    // The first account is unchanged.
    ok(auth
        .login(LoginRequest {
            email: "taken@example.com".into(),
            password: "password-123".into(),
        })
        .await);
    err(
        auth.login(LoginRequest {
            email: "taken@example.com".into(),
            password: "password-456".into(),
        })
        .await,
        Code::Unauthenticated,
        &[],
    );
    mesh.assert_no_panics();
    mesh.stop().await;
}

async fn concurrent_registrations_of_one_email_have_one_winner(backend: Backend) {
    const ROUNDS: usize = 6;
    const RACERS: usize = 4;
    let mesh = TestMesh::start(backend).await;
    for round in 0..ROUNDS {
        let email = format!("race-{round}@example.com");
        // Each racer has its own password and display name.
        let racer = |k: usize| (format!("password-{round}-{k}"), format!("Racer {k}"));
        let mut calls = tokio::task::JoinSet::new();
        for k in 0..RACERS {
            let mut auth = mesh.auth();
            let (password, name) = racer(k);
            let email = email.clone();
            calls.spawn(async move {
                let result = auth
                    .register(RegisterRequest {
                        email,
                        password,
                        display_name: name,
                    })
                    .await;
                (k, result)
            });
        }
        let mut winners = Vec::new();
        while let Some(joined) = calls.join_next().await {
            let (k, result) = joined.expect("a register task panicked");
            match result {
                Ok(tokens) => winners.push((k, tokens.into_inner())),
                Err(status) => assert_eq!(
                    status.code(),
                    Code::AlreadyExists,
                    "racer {k} of round {round}: {:?} {}",
                    status.code(),
                    status.message()
                ),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one registration wins"
        );
        let (winner, tokens) = winners.remove(0);
        let name = racer(winner).1;
        // The winner got the profile it asked for, and its password is the account's.
        assert_eq!(user_of(&tokens).display_name, name, "round {round}");
        let me = ok(mesh
            .user()
            .get_me(bearer(&tokens.access_token, GetMeRequest {}))
            .await);
        assert_eq!(me.display_name, name, "round {round}");
        let mut auth = mesh.auth();
        for k in 0..RACERS {
            let login = auth
                .login(LoginRequest {
                    email: email.clone(),
                    password: racer(k).0,
                })
                .await;
            if k == winner {
                assert_eq!(user_of(&ok(login)).id, me.id);
            } else {
                err(login, Code::Unauthenticated, &[]);
            }
        }
    }
    mesh.assert_no_panics();
    mesh.stop().await;
}

async fn emails_are_normalised(backend: Backend) {
    let mesh = TestMesh::start(backend).await;
    let mixed = mesh
        .register("  Mixed.Case@Example.COM ", "password-123", "Mixed")
        .await;
    assert_eq!(user_of(&mixed).email, "mixed.case@example.com");
    let again = mesh.login("mixed.case@example.com", "password-123").await;
    assert_eq!(user_of(&again).id, user_of(&mixed).id);
    assert_eq!(user_of(&mixed).role, Role::User as i32);
    assert_eq!(jwt_payload(&mixed.access_token)["role"], "user");
    // The operator's grant matches the email however it is written.
    mesh.register(" BOSS@weft.test ", "password-123", "Boss")
        .await;
    mesh.grant_role("Boss@Weft.Test", "admin").await;
    let boss = mesh.login("boss@weft.test", "password-123").await;
    assert_eq!(user_of(&boss).role, Role::Admin as i32);
    assert_eq!(jwt_payload(&boss.access_token)["role"], "admin");
    mesh.assert_no_panics();
    mesh.stop().await;
}

async fn jwks_publishes_the_signing_key(backend: Backend) {
    let mesh = TestMesh::start(backend).await;
    let tokens = mesh.new_user().await;
    let jwks = ok(mesh.auth().get_jwks(GetJwksRequest {}).await);
    assert!(!jwks.keys.is_empty(), "JWKS has keys");
    for key in &jwks.keys {
        assert_eq!(key.kty, "OKP");
        assert_eq!(key.crv, "Ed25519");
        assert_eq!(key.alg, "EdDSA");
        assert_eq!(key.r#use, "sig");
        assert!(!key.kid.is_empty());
        let x = URL_SAFE_NO_PAD
            .decode(&key.x)
            .expect("x is base64url without padding");
        assert_eq!(x.len(), 32, "an Ed25519 public key");
    }

    // The access token's header names a published key, which verifies it offline.
    let header = jwt_header(&tokens.access_token);
    assert_eq!(header["alg"], "EdDSA");
    let kid = header["kid"].as_str().expect("kid in the header");
    let jwk = jwks
        .keys
        .iter()
        .find(|k| k.kid == kid)
        .expect("the token's kid is in the JWKS");
    let claims = verify_with_jwk(&tokens.access_token, &jwk.x)
        .expect("the access token verifies with the published key");
    assert_eq!(claims.sub, user_of(&tokens).id);
    assert_eq!(claims.role, "user");
    assert_eq!(claims.exp - claims.iat, 300);
    assert!(!claims.jti.is_empty());

    // The key that signed it is the one the kit imported (`weft-auth import-key`), and the
    // published key is its public half.
    let imported = mesh.signing_key();
    assert_eq!(imported.kid, kid);
    let signing =
        ed25519_dalek::SigningKey::from_pkcs8_der(&imported.der).expect("PKCS#8 Ed25519 key");
    assert_eq!(
        URL_SAFE_NO_PAD.encode(signing.verifying_key().as_bytes()),
        jwk.x
    );

    // Each token has its own id.
    let other = mesh.new_user().await;
    assert_ne!(
        jwt_payload(&other.access_token)["jti"],
        jwt_payload(&tokens.access_token)["jti"]
    );
    mesh.assert_no_panics();
    mesh.stop().await;
}

async fn issued_tokens_expire(backend: Backend) {
    let options = MeshOptions {
        toml: "[jwt]\naccess_ttl_secs = 1\nrefresh_ttl_secs = 2\nleeway_secs = 0\n".into(),
        ..MeshOptions::default()
    };
    let mesh = TestMesh::start_with(backend, options).await;
    let registered = mesh.new_user().await;
    assert_eq!(registered.expires_in, 1);
    let rotated = ok(mesh
        .auth()
        .refresh(RefreshRequest {
            refresh_token: registered.refresh_token.clone(),
        })
        .await);
    ok(mesh
        .user()
        .get_me(bearer(&rotated.access_token, GetMeRequest {}))
        .await);

    tokio::time::sleep(Duration::from_millis(3100)).await;
    // The access token has expired, everywhere...
    err(
        mesh.user()
            .get_me(bearer(&rotated.access_token, GetMeRequest {}))
            .await,
        Code::Unauthenticated,
        &[],
    );
    err(
        mesh.order()
            .list_orders(bearer(&rotated.access_token, ListOrdersRequest::default()))
            .await,
        Code::Unauthenticated,
        &[],
    );
    // ...and so has the refresh token.
    err(
        mesh.auth()
            .refresh(RefreshRequest {
                refresh_token: rotated.refresh_token.clone(),
            })
            .await,
        Code::Unauthenticated,
        &[],
    );
    mesh.assert_no_panics();
    mesh.stop().await;
}

async fn a_sign_in_cannot_be_refreshed_past_its_lifetime(backend: Backend) {
    // Each refresh token lives an hour, but the sign-in (the family) only 2 s in all.
    let options = MeshOptions {
        toml: "[jwt]\nrefresh_ttl_secs = 3600\nrefresh_family_max_secs = 2\n".into(),
        ..MeshOptions::default()
    };
    let mesh = TestMesh::start_with(backend, options).await;
    let registered = mesh.new_user().await;
    let mut auth = mesh.auth();
    let first = ok(auth
        .refresh(RefreshRequest {
            refresh_token: registered.refresh_token.clone(),
        })
        .await);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    // The token is an unused, unexpired one of a live family: only the family's age stops it.
    err(
        auth.refresh(RefreshRequest {
            refresh_token: first.refresh_token.clone(),
        })
        .await,
        Code::Unauthenticated,
        &["invalid refresh token"],
    );
    // Signing in again starts a new family, which refreshes.
    let again = ok(auth
        .login(LoginRequest {
            email: user_of(&registered).email,
            password: "password-123".into(),
        })
        .await);
    ok(auth
        .refresh(RefreshRequest {
            refresh_token: again.refresh_token,
        })
        .await);
    mesh.assert_no_panics();
    mesh.stop().await;
}

/// The peak resident memory (`VmHWM`) of process `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"))
}

async fn a_login_flood_is_refused_beyond_the_hashing_bound(backend: Backend) {
    const CALLS: usize = 200;
    const RSS_BOUND_KIB: u64 = 400 * 1024;
    let mesh = TestMesh::start(backend).await;
    let user = mesh.new_user().await;
    let email = user_of(&user).email;
    let pid = mesh.pid("auth");

    // 200 Logins at once straight to weft-auth, half with the right password, a quarter with
    // a wrong one and a quarter for an unknown email: each costs one Argon2id hash (19 MiB).
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..CALLS {
        let mut auth = mesh.auth();
        let (email, password) = match i % 4 {
            0 | 1 => (email.clone(), "password-123"),
            2 => (email.clone(), "wrong-password"),
            _ => (format!("nobody-{i}@example.com"), "password-123"),
        };
        calls.spawn(async move {
            let login = auth.login(LoginRequest {
                email,
                password: password.into(),
            });
            tokio::time::timeout(Duration::from_secs(60), login).await
        });
    }
    let (mut signed_in, mut refused, mut exhausted) = (0, 0, 0);
    while let Some(result) = calls.join_next().await {
        match result.expect("a login task panicked") {
            Err(_) => panic!("a Login had no answer within 60 s"),
            Ok(Ok(_)) => signed_in += 1,
            Ok(Err(status)) => match status.code() {
                Code::Unauthenticated => refused += 1,
                Code::ResourceExhausted => {
                    assert!(status.message().contains("retry"), "{status:?}");
                    exhausted += 1;
                }
                code => panic!("unexpected {code:?}: {}", status.message()),
            },
        }
    }
    assert!(
        exhausted > 0,
        "no Login was refused with RESOURCE_EXHAUSTED ({signed_in} signed in, {refused} refused)"
    );
    assert!(
        signed_in > 0,
        "no Login got through ({exhausted} exhausted, {refused} refused)"
    );
    let peak = peak_rss_kib(pid);
    assert!(
        peak < RSS_BOUND_KIB,
        "weft-auth peaked at {} MiB during the flood (bound {} MiB)",
        peak / 1024,
        RSS_BOUND_KIB / 1024
    );
    // The flood is over: a Login gets through at once.
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

async fn a_key_rotation_keeps_old_tokens_valid(backend: Backend) {
    let options = MeshOptions {
        toml: "[auth]\nkey_reload_interval_ms = 100\n[jwt]\njwks_min_refresh_interval_ms = 100\n"
            .into(),
        ..MeshOptions::default()
    };
    let mesh = TestMesh::start_with(backend, options).await;
    let alice = mesh.new_user().await;
    let old_kid = jwt_header(&alice.access_token)["kid"]
        .as_str()
        .expect("kid")
        .to_string();
    // The verifiers of both services have cached the first key.
    ok(mesh
        .user()
        .get_me(bearer(&alice.access_token, GetMeRequest {}))
        .await);
    ok(mesh
        .order()
        .list_orders(bearer(&alice.access_token, ListOrdersRequest::default()))
        .await);

    let new_kid = mesh.rotate_signing_key().await;
    assert_ne!(new_kid, old_kid);
    // weft-auth publishes it within its reload interval (100 ms here).
    let started = Instant::now();
    loop {
        let jwks = ok(mesh.auth().get_jwks(GetJwksRequest {}).await);
        if jwks.keys.iter().any(|k| k.kid == new_kid) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the new key is not published 2 s after the rotation"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The new key is published at once and signs only after the activation delay (reload
    // interval + JWKS refresh interval + 1 s here), so every Login succeeds throughout: no
    // verifier ever sees a kid it cannot fetch.
    let started = Instant::now();
    let mut transient = Vec::new();
    let fresh = loop {
        let result = mesh
            .auth()
            .login(LoginRequest {
                email: user_of(&alice).email,
                password: "password-123".into(),
            })
            .await;
        match result {
            Ok(tokens) if jwt_header(&tokens.get_ref().access_token)["kid"] == new_kid.as_str() => {
                break tokens.into_inner();
            }
            Ok(_) => {}
            Err(status) => transient.push(format!("{:?}: {}", status.code(), status.message())),
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "weft-auth does not sign with the new key 10 s after a rotation; errors: {transient:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        transient.is_empty(),
        "Logins failed during the rotation: {transient:?}"
    );
    // Past the refresh interval, every verifier may fetch the new key on first sight.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let jwks = ok(mesh.auth().get_jwks(GetJwksRequest {}).await);
    let kids: Vec<&str> = jwks.keys.iter().map(|k| k.kid.as_str()).collect();
    assert!(
        kids.contains(&old_kid.as_str()),
        "the previous key is still published: {kids:?}"
    );
    assert!(
        kids.contains(&new_kid.as_str()),
        "the new key is published: {kids:?}"
    );

    // Old and new tokens both verify, on both services (new kid: a JWKS refresh).
    for token in [&alice.access_token, &fresh.access_token] {
        ok(mesh.user().get_me(bearer(token, GetMeRequest {})).await);
        ok(mesh
            .order()
            .list_orders(bearer(token, ListOrdersRequest::default()))
            .await);
    }
    // Also after a restart of weft-auth.
    mesh.restart("auth").await;
    let jwks = ok(mesh.auth().get_jwks(GetJwksRequest {}).await);
    assert!(jwks.keys.iter().any(|k| k.kid == old_kid));
    ok(mesh
        .user()
        .get_me(bearer(&alice.access_token, GetMeRequest {}))
        .await);
    mesh.assert_no_panics();
    mesh.stop().await;
}
