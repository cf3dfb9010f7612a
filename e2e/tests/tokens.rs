//! Access control enforced by the mesh: forged, expired and misdirected tokens are refused by
//! every service that needs a token, and CreateUser is for the auth service only.

#[macro_use]
mod common;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use common::*;
use tonic::{Code, Request, metadata::MetadataValue};

backends!(bad_tokens_are_refused_everywhere, create_user_is_internal);

async fn bad_tokens_are_refused_everywhere(backend: Backend) {
    let mesh = TestMesh::start(backend).await;
    let alice = mesh.new_user().await;
    let alice_id = user_of(&alice).id;
    let bob = mesh.new_user().await;
    let kid = mesh.signing_key().kid.clone();
    let jwks = ok(mesh.auth().get_jwks(GetJwksRequest {}).await);
    let public_x = URL_SAFE_NO_PAD
        .decode(
            &jwks
                .keys
                .iter()
                .find(|k| k.kid == kid)
                .expect("current key")
                .x,
        )
        .expect("x");

    // Sanity: the real token works on both services.
    ok(mesh
        .user()
        .get_me(bearer(&alice.access_token, GetMeRequest {}))
        .await);
    ok(mesh
        .order()
        .list_orders(bearer(&alice.access_token, ListOrdersRequest::default()))
        .await);

    let valid = mesh.claims(&alice_id, "user");
    let mut tampered_claims = jwt_payload(&alice.access_token);
    tampered_claims["sub"] = user_of(&bob).id.into();
    let mut tampered_role = jwt_payload(&alice.access_token);
    tampered_role["role"] = "admin".into();
    let mut flipped = alice.access_token.clone().into_bytes();
    let last = flipped.len() - 2;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).expect("ascii");

    let now = unix_now();
    let expired = Claims {
        iat: now - 7200,
        exp: now - 3600,
        ..valid.clone()
    };
    let other_aud = Claims {
        aud: "some-other-api".into(),
        ..valid.clone()
    };
    let other_iss = Claims {
        iss: "evil-issuer".into(),
        ..valid.clone()
    };
    let service_for_auth = Claims {
        sub: "service:weft-auth".into(),
        role: "service".into(),
        aud: "weft-auth".into(),
        ..valid.clone()
    };
    let unknown_role = Claims {
        role: "superuser".into(),
        ..valid.clone()
    };

    let bad: Vec<(&str, String)> = vec![
        (
            "tampered payload (sub)",
            tampered_token(&alice.access_token, &tampered_claims),
        ),
        (
            "tampered payload (role)",
            tampered_token(&alice.access_token, &tampered_role),
        ),
        ("flipped signature", flipped),
        ("expired", mesh.sign_token(&expired)),
        ("other aud", mesh.sign_token(&other_aud)),
        ("other iss", mesh.sign_token(&other_iss)),
        (
            "service token for another service",
            mesh.sign_token(&service_for_auth),
        ),
        ("unknown role", mesh.sign_token(&unknown_role)),
        ("other key, real kid", foreign_token(&valid, &kid)),
        (
            "other key, unknown kid",
            foreign_token(&valid, "no-such-kid"),
        ),
        ("alg none", alg_none_token(&valid, &kid)),
        (
            "HS256 with the public key",
            hs256_token(&valid, &kid, &public_x),
        ),
        ("not a JWT", "not-a-jwt".into()),
        ("three garbage parts", "a.b.c".into()),
    ];
    for (what, token) in &bad {
        let status = err(
            mesh.user().get_me(bearer(token, GetMeRequest {})).await,
            Code::Unauthenticated,
            &[],
        );
        assert!(!status.message().is_empty(), "{what}: empty message");
        let status = mesh
            .order()
            .list_orders(bearer(token, ListOrdersRequest::default()))
            .await
            .expect_err(what);
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        let status = mesh
            .user()
            .get_user(bearer(
                token,
                GetUserRequest {
                    id: alice_id.clone(),
                },
            ))
            .await
            .expect_err(what);
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
    }

    // A forged admin token does not open admin methods.
    let admin_claims = mesh.claims(&alice_id, "admin");
    for (what, token) in [
        ("foreign admin", foreign_token(&admin_claims, &kid)),
        ("alg none admin", alg_none_token(&admin_claims, &kid)),
        (
            "tampered role",
            tampered_token(&alice.access_token, &tampered_role),
        ),
    ] {
        let status = mesh
            .order()
            .create_product(bearer(
                &token,
                CreateProductRequest {
                    product: Some(Product {
                        name: "Forged".into(),
                        unit_price_cents: 1,
                        stock: 1,
                        ..Default::default()
                    }),
                },
            ))
            .await
            .expect_err(what);
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        let status = mesh
            .user()
            .list_users(bearer(&token, ListUsersRequest::default()))
            .await
            .expect_err(what);
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
    }

    // No token, or not a bearer token.
    err(
        mesh.user().get_me(GetMeRequest {}).await,
        Code::Unauthenticated,
        &[],
    );
    err(
        mesh.user()
            .get_user(GetUserRequest {
                id: alice_id.clone(),
            })
            .await,
        Code::Unauthenticated,
        &[],
    );
    err(
        mesh.order().list_orders(ListOrdersRequest::default()).await,
        Code::Unauthenticated,
        &[],
    );
    err(
        mesh.order()
            .create_order(order_request("", vec![line("nope", 1)]))
            .await,
        Code::Unauthenticated,
        &[],
    );
    let mut basic = Request::new(GetMeRequest {});
    basic.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Basic {}", alice.access_token)).expect("ascii"),
    );
    err(mesh.user().get_me(basic).await, Code::Unauthenticated, &[]);

    // Public methods ignore a bad token instead of refusing it.
    ok(mesh
        .order()
        .list_products(bearer("not-a-jwt", ListProductsRequest::default()))
        .await);
    ok(mesh
        .auth()
        .get_jwks(bearer("not-a-jwt", GetJwksRequest {}))
        .await);

    // The real token still works after the flood of forgeries.
    ok(mesh
        .user()
        .get_me(bearer(&alice.access_token, GetMeRequest {}))
        .await);
    mesh.assert_no_panics();
    mesh.stop().await;
}

async fn create_user_is_internal(backend: Backend) {
    let mesh = TestMesh::start(backend).await;
    let alice = mesh.new_user().await;
    let admin = mesh.admin().await;
    let request = |email: &str, key: &str| CreateUserRequest {
        email: email.into(),
        display_name: "Made Directly".into(),
        role: Role::User as i32,
        creation_key: key.into(),
    };

    err(
        mesh.user()
            .create_user(bearer(&alice.access_token, request("x1@example.com", "k1")))
            .await,
        Code::PermissionDenied,
        &[],
    );
    err(
        mesh.user()
            .create_user(bearer(&admin.access_token, request("x2@example.com", "k2")))
            .await,
        Code::PermissionDenied,
        &[],
    );
    err(
        mesh.user()
            .create_user(request("x3@example.com", "k3"))
            .await,
        Code::Unauthenticated,
        &[],
    );

    // A service token addressed to another service is not valid here.
    let now = unix_now();
    let service = |aud: &str| Claims {
        iss: ISSUER.into(),
        aud: aud.into(),
        sub: "service:weft-auth".into(),
        role: "service".into(),
        iat: now,
        exp: now + 60,
        jti: tag(),
    };
    let misdirected = mesh.sign_token(&service("weft-order"));
    err(
        mesh.user()
            .create_user(bearer(&misdirected, request("x4@example.com", "k4")))
            .await,
        Code::Unauthenticated,
        &[],
    );

    // The auth service's token (aud weft-user, role service) is accepted; the creation key
    // makes the call safe to repeat; a taken email is ALREADY_EXISTS.
    let token = mesh.sign_token(&service("weft-user"));
    let created = ok(mesh
        .user()
        .create_user(bearer(&token, request("Direct@Example.com", "direct-key")))
        .await);
    assert_eq!(created.email, "direct@example.com");
    assert_eq!(created.role, Role::User as i32);
    let again = ok(mesh
        .user()
        .create_user(bearer(&token, request("direct@example.com", "direct-key")))
        .await);
    assert_eq!(again.id, created.id, "same creation_key, same profile");
    err(
        mesh.user()
            .create_user(bearer(&token, request("direct@example.com", "another-key")))
            .await,
        Code::AlreadyExists,
        &[],
    );
    err(
        mesh.user()
            .create_user(bearer(&token, request(&user_of(&alice).email, "alice-key")))
            .await,
        Code::AlreadyExists,
        &[],
    );
    invalid(
        mesh.user()
            .create_user(bearer(&token, request("not-an-email", "bad-key")))
            .await,
        "email",
    );
    mesh.assert_no_panics();
    mesh.stop().await;
}
