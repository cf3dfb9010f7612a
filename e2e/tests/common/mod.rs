//! Helpers shared by the black-box tests: per-backend test generation, status assertions,
//! products, hand-made tokens, and (in [`rest`]) the HTTP client of the gateway tests.
#![allow(dead_code, unused_imports, unused_macros)]

pub mod rest;

use std::fmt::Debug;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
pub use tonic::transport::Channel;
use tonic::{Code, Response, Status};
pub use weft_proto::{
    auth::{
        AuthTokens, GetJwksRequest, LoginRequest, LogoutRequest, RefreshRequest, RegisterRequest,
    },
    order::{
        CancelOrderRequest, CreateOrderRequest, CreateProductRequest, GetOrderRequest,
        GetProductRequest, ListOrdersRequest, ListProductsRequest, Order, OrderLine, OrderStatus,
        Product, RestockProductRequest, order_service_client::OrderServiceClient,
    },
    user::{
        CreateUserRequest, GetMeRequest, GetUserRequest, ListUsersRequest, Role, UpdateUserRequest,
        User,
    },
};
pub use weft_testkit::{
    ADMIN_EMAIL, Backend, Claims, MeshOptions, TestMesh, bearer, tokens::ISSUER, unix_now,
};

/// Generates, for each `async fn name(backend: Backend)`, a module `name` with the tests
/// `sqlite` and `postgres` (the latter skipped with a note outside CI when
/// `WEFT_TEST_POSTGRES_URL` is unset, failing under `CI=true`).
macro_rules! backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(weft_testkit::Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(backend) = weft_testkit::Backend::postgres() {
                    super::$name(backend).await;
                }
            }
        }
    )*};
}

/// The message of a successful call; panics with the status otherwise.
#[track_caller]
pub fn ok<T>(result: Result<Response<T>, Status>) -> T {
    match result {
        Ok(response) => response.into_inner(),
        Err(status) => panic!(
            "expected OK, got {:?}: {:?}",
            status.code(),
            status.message()
        ),
    }
}

/// The status of a failed call; panics unless it failed with `code` and a message containing
/// every one of `needles`.
#[track_caller]
pub fn err<T: Debug>(result: Result<Response<T>, Status>, code: Code, needles: &[&str]) -> Status {
    let status = match result {
        Ok(response) => panic!("expected {code:?}, got OK: {:?}", response.get_ref()),
        Err(status) => status,
    };
    assert_eq!(
        status.code(),
        code,
        "expected {code:?}, got {:?}: {:?}",
        status.code(),
        status.message()
    );
    for needle in needles {
        assert!(
            status.message().contains(needle),
            "{code:?} message {:?} does not mention {needle:?}",
            status.message()
        );
    }
    status
}

/// INVALID_ARGUMENT whose message names `field`, and a `google.rpc.BadRequest` detail whose
/// violation (field path and description) says it too.
#[track_caller]
pub fn invalid<T: Debug>(result: Result<Response<T>, Status>, field: &str) -> Status {
    use tonic_types::StatusExt as _;
    let status = err(result, Code::InvalidArgument, &[field]);
    let details = status.get_error_details();
    let violations = details
        .bad_request()
        .map(|bad| bad.field_violations.as_slice())
        .unwrap_or_default();
    assert!(
        violations
            .iter()
            .any(|v| format!("{}: {}", v.field, v.description).contains(field)),
        "a BadRequest detail naming `{field}`: {violations:?} in {status:?}"
    );
    status
}

/// A product made by the admin.
pub async fn product(
    mesh: &TestMesh,
    name: &str,
    price: i64,
    currency: &str,
    stock: i64,
) -> Product {
    let admin = mesh.admin().await;
    ok(mesh
        .order()
        .create_product(bearer(
            &admin.access_token,
            CreateProductRequest {
                product: Some(Product {
                    name: name.into(),
                    description: format!("{name}, for tests"),
                    unit_price_cents: price,
                    currency: currency.into(),
                    stock,
                    ..Default::default()
                }),
            },
        ))
        .await)
}

/// The current stock of a product.
pub async fn stock(mesh: &TestMesh, id: &str) -> i64 {
    ok(mesh
        .order()
        .get_product(GetProductRequest { id: id.into() })
        .await)
    .stock
}

/// One order line.
pub fn line(product_id: &str, quantity: i64) -> OrderLine {
    OrderLine {
        product_id: product_id.into(),
        quantity,
    }
}

/// A CreateOrder request.
pub fn order_request(key: &str, items: Vec<OrderLine>) -> CreateOrderRequest {
    CreateOrderRequest {
        idempotency_key: key.into(),
        items,
    }
}

/// Every order of the token's owner, following page tokens (`page_size` per page).
pub async fn all_orders(mesh: &TestMesh, token: &str, page_size: i32) -> Vec<Order> {
    let mut orders = Vec::new();
    let mut page_token = String::new();
    for _ in 0..10_000 {
        let page = ok(mesh
            .order()
            .list_orders(bearer(
                token,
                ListOrdersRequest {
                    page_size,
                    page_token: page_token.clone(),
                },
            ))
            .await);
        orders.extend(page.orders);
        if page.next_page_token.is_empty() {
            return orders;
        }
        page_token = page.next_page_token;
    }
    panic!("ListOrders did not end");
}

/// The `user` of AuthTokens (which must be present).
pub fn user_of(tokens: &AuthTokens) -> User {
    tokens.user.clone().expect("AuthTokens.user is missing")
}

/// The decoded JSON payload of a JWT.
pub fn jwt_payload(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(payload)
            .expect("payload is base64url"),
    )
    .expect("payload is JSON")
}

/// The decoded JSON header of a JWT.
pub fn jwt_header(token: &str) -> serde_json::Value {
    let header = token.split('.').next().expect("a JWT has a header");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("header is base64url"))
        .expect("header is JSON")
}

/// A token with valid claims signed by a freshly made Ed25519 key that the mesh never saw,
/// with header `kid`.
pub fn foreign_token(claims: &Claims, kid: &str) -> String {
    let mut seed = [0u8; 32];
    seed[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    seed[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let der = key.to_pkcs8_der().expect("PKCS#8 encoding");
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.into());
    weft_mesh::jwt_crypto::install();
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(der.as_bytes()))
        .expect("signing")
}

/// The claims of an access token (audience `weft`, the kit's issuer) that verifies with the
/// Ed25519 public key `x` of a JWK, as any verifier outside the mesh would check it.
pub fn verify_with_jwk(token: &str, x: &str) -> Result<Claims, jsonwebtoken::errors::Error> {
    weft_mesh::jwt_crypto::install();
    let mut validation = jsonwebtoken::Validation::new(Algorithm::EdDSA);
    validation.set_audience(&["weft"]);
    validation.set_issuer(&[ISSUER]);
    let key = jsonwebtoken::DecodingKey::from_ed_components(x)?;
    Ok(jsonwebtoken::decode::<Claims>(token, &key, &validation)?.claims)
}

/// An unsigned token: header `{"alg":"none"}` and an empty signature.
pub fn alg_none_token(claims: &Claims, kid: &str) -> String {
    let header = serde_json::json!({"alg": "none", "typ": "JWT", "kid": kid});
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(serde_json::to_string(claims).expect("claims serialise"))
    )
}

/// An HS256 token whose HMAC secret is `secret` (the public key, in the classic algorithm
/// confusion attack), signed here with a real HMAC: the mesh's JWT library is built for
/// Ed25519 only.
pub fn hs256_token(claims: &Claims, kid: &str, secret: &[u8]) -> String {
    use hmac::Mac as _;
    let header = serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": kid});
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(serde_json::to_string(claims).expect("claims serialise"))
    );
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(signed.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signed}.{signature}")
}

/// `token` with its payload replaced by `claims`, the original signature kept.
pub fn tampered_token(token: &str, claims: &serde_json::Value) -> String {
    let mut parts = token.split('.');
    let header = parts.next().expect("header");
    let _ = parts.next();
    let signature = parts.next().expect("signature");
    format!(
        "{header}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// A random tag for unique names.
pub fn tag() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_string()
}

/// Starts a mesh with the gateway in front, `toml` merged over its mesh-config.
pub async fn gateway_mesh(backend: Backend, toml: &str) -> TestMesh {
    let options = MeshOptions {
        gateway: true,
        toml: toml.into(),
        ..MeshOptions::default()
    };
    TestMesh::start_with(backend, options).await
}

/// The sum of the samples of `name` whose labels include every pair of `labels`, in the
/// Prometheus text `metrics`.
pub fn sample_sum(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.split(['{', ' ']).next() == Some(name))
        .filter(|line| {
            labels
                .iter()
                .all(|(key, value)| line.contains(&format!("{key}=\"{value}\"")))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
