//! Every route of the contract through weft-gateway, over HTTP, as a REST client sees it:
//! status codes, headers and JSON bodies (lowerCamelCase answers, camelCase and snake_case
//! requests, int64 as strings, defaults and empty lists emitted, enums by name, times in RFC
//! 3339), errors in the contract's shape with grpc-gateway's status mapping, query-string
//! pagination, update masks from the query, and the `:restock` / `:cancel` verbs.

#[macro_use]
mod common;

use common::{
    rest::{Findings, Gateway, encode, grpc, unauthenticated},
    *,
};
use serde_json::{Value, json};

backends!(auth_and_user_routes, product_and_order_routes);

const PASSWORD: &str = "password-123";

async fn auth_and_user_routes(backend: Backend) {
    let mesh = gateway_mesh(backend, "").await;
    let gw = Gateway::of(&mesh);
    let mut findings = Findings::default();

    // --- POST /v1/auth/register: camelCase or snake_case, email normalised ---
    let alice = gw
        .post("/v1/auth/register")
        .json(&json!({
            "email": "  Alice.Gw@Example.COM ",
            "password": PASSWORD,
            "displayName": "Alice"
        }))
        .send()
        .await
        .ok();
    assert_tokens(&alice);
    let alice_user = alice["user"].clone();
    assert_user(&alice_user, "alice.gw@example.com", "Alice", "ROLE_USER");
    let alice_id = alice_user["id"].as_str().unwrap().to_string();
    let alice_token = access(&alice);

    let bob = gw
        .post("/v1/auth/register")
        .json(&json!({
            "email": "bob.gw@example.com",
            "password": PASSWORD,
            "display_name": "Bob"
        }))
        .send()
        .await
        .ok();
    assert_user(&bob["user"], "bob.gw@example.com", "Bob", "ROLE_USER");
    let bob_id = bob["user"]["id"].as_str().unwrap().to_string();
    let bob_token = access(&bob);

    let admin = register_admin(&mesh, &gw).await;
    assert_user(&admin["user"], ADMIN_EMAIL, "Admin", "ROLE_ADMIN");
    let admin_token = access(&admin);

    gw.post("/v1/auth/register")
        .json(&json!({"email": "ALICE.gw@example.com", "password": PASSWORD, "displayName": "A"}))
        .send()
        .await
        .error(409, grpc::ALREADY_EXISTS, &[]);
    gw.post("/v1/auth/register")
        .json(&json!({"email": "not-an-email", "password": PASSWORD, "displayName": "X"}))
        .send()
        .await
        .error(400, grpc::INVALID_ARGUMENT, &["email"]);
    gw.post("/v1/auth/register")
        .json(&json!({"email": "short@example.com", "password": "short", "displayName": "X"}))
        .send()
        .await
        .error(400, grpc::INVALID_ARGUMENT, &["password"]);

    // --- POST /v1/auth/login ---
    let login = gw
        .post("/v1/auth/login")
        .json(&json!({"email": "alice.gw@example.com", "password": PASSWORD}))
        .send()
        .await
        .ok();
    assert_tokens(&login);
    assert_eq!(login["user"], alice_user);
    let wrong = gw
        .post("/v1/auth/login")
        .json(&json!({"email": "alice.gw@example.com", "password": "wrong-password"}))
        .send()
        .await;
    let wrong_body = wrong.error(401, grpc::UNAUTHENTICATED, &[]);
    let unknown = gw
        .post("/v1/auth/login")
        .json(&json!({"email": "nobody@example.com", "password": PASSWORD}))
        .send()
        .await;
    let unknown_body = unknown.error(401, grpc::UNAUTHENTICATED, &[]);
    assert_eq!(
        wrong_body["message"], unknown_body["message"],
        "no account enumeration through the gateway"
    );

    // --- POST /v1/auth/refresh: rotation, camelCase and snake_case, reuse refused ---
    let first_refresh = login["refreshToken"].as_str().unwrap().to_string();
    let refreshed = gw
        .post("/v1/auth/refresh")
        .json(&json!({"refreshToken": first_refresh}))
        .send()
        .await
        .ok();
    assert_tokens(&refreshed);
    assert_eq!(refreshed["user"]["id"], alice_user["id"]);
    let second_refresh = refreshed["refreshToken"].as_str().unwrap().to_string();
    assert_ne!(second_refresh, first_refresh, "refresh tokens rotate");
    let again = gw
        .post("/v1/auth/refresh")
        .json(&json!({"refresh_token": second_refresh}))
        .send()
        .await
        .ok();
    let third_refresh = again["refreshToken"].as_str().unwrap().to_string();
    gw.post("/v1/auth/refresh")
        .json(&json!({"refreshToken": second_refresh}))
        .send()
        .await
        .error(401, grpc::UNAUTHENTICATED, &[]);

    // --- POST /v1/auth/logout: Empty is {}, idempotent ---
    let fresh = gw
        .post("/v1/auth/login")
        .json(&json!({"email": "bob.gw@example.com", "password": PASSWORD}))
        .send()
        .await
        .ok();
    let bob_refresh = fresh["refreshToken"].as_str().unwrap().to_string();
    for _ in 0..2 {
        let out = gw
            .post("/v1/auth/logout")
            .json(&json!({"refresh_token": bob_refresh}))
            .send()
            .await
            .ok();
        assert_eq!(
            out,
            json!({}),
            "Logout answers google.protobuf.Empty as {{}}"
        );
    }
    gw.post("/v1/auth/refresh")
        .json(&json!({"refreshToken": bob_refresh}))
        .send()
        .await
        .error(401, grpc::UNAUTHENTICATED, &[]);
    // Reuse detection revoked alice's family: the third token is dead too.
    gw.post("/v1/auth/refresh")
        .json(&json!({"refreshToken": third_refresh}))
        .send()
        .await
        .error(401, grpc::UNAUTHENTICATED, &[]);

    // --- GET /v1/auth/jwks ---
    let jwks = gw.get("/v1/auth/jwks").send().await.ok();
    let keys = jwks["keys"].as_array().expect("keys is a list");
    assert!(!keys.is_empty(), "{jwks}");
    for key in keys {
        assert_eq!(key["kty"], "OKP", "{key}");
        assert_eq!(key["crv"], "Ed25519", "{key}");
        assert_eq!(key["alg"], "EdDSA", "{key}");
        assert_eq!(key["use"], "sig", "{key}");
        assert!(key["x"].as_str().is_some_and(|x| !x.is_empty()), "{key}");
    }
    let kid = jwt_header(&alice_token)["kid"].clone();
    assert!(
        keys.iter().any(|k| k["kid"] == kid),
        "the access token's kid {kid} is published: {jwks}"
    );

    // --- GET /v1/me ---
    assert_eq!(
        gw.get("/v1/me").bearer(&alice_token).send().await.ok(),
        alice_user
    );
    assert_eq!(
        gw.get("/v1/me").bearer(&bob_token).send().await.ok()["id"],
        bob_id
    );
    unauthenticated(&gw.get("/v1/me").send().await);
    unauthenticated(&gw.get("/v1/me").bearer("not-a-jwt").send().await);
    unauthenticated(
        &gw.get("/v1/me")
            .header("authorization", "Basic YWxpY2U6cHc=")
            .send()
            .await,
    );

    // --- GET /v1/users/{id}: self or admin; others' and unknown ids are 404 ---
    let path = format!("/v1/users/{alice_id}");
    assert_eq!(
        gw.get(&path).bearer(&alice_token).send().await.ok(),
        alice_user
    );
    assert_eq!(
        gw.get(&path).bearer(&admin_token).send().await.ok(),
        alice_user
    );
    gw.get(&path)
        .bearer(&bob_token)
        .send()
        .await
        .error(404, grpc::NOT_FOUND, &[]);
    gw.get("/v1/users/nope")
        .bearer(&admin_token)
        .send()
        .await
        .error(404, grpc::NOT_FOUND, &[]);
    unauthenticated(&gw.get(&path).send().await);

    // --- PATCH /v1/users/{user.id}: body is the user, mask from the query ---
    let patch = |token: &str, query: &str, body: Value| {
        gw.patch(&format!("/v1/users/{alice_id}{query}"))
            .bearer(token)
            .json(&body)
    };
    let updated = patch(
        &alice_token,
        "?updateMask=displayName",
        json!({"displayName": "Alice Two", "email": "ignored@example.com"}),
    )
    .send()
    .await
    .ok();
    assert_eq!(updated["displayName"], "Alice Two");
    assert_eq!(updated["email"], "alice.gw@example.com", "not in the mask");
    assert_eq!(updated["id"], alice_user["id"]);
    assert_eq!(updated["createTime"], alice_user["createTime"]);
    // grpc-gateway takes a FieldMask query value as comma-separated paths, so the proto
    // field names (snake_case) work there too.
    let snake = patch(
        &alice_token,
        "?update_mask=display_name",
        json!({"display_name": "Alice Three"}),
    )
    .send()
    .await;
    findings.check(
        "PATCH ?update_mask=display_name (snake_case mask paths)",
        || {
            assert_eq!(snake.ok()["displayName"], "Alice Three");
        },
    );
    // No mask: every writable field the body sets.
    let updated = patch(&alice_token, "", json!({"displayName": "Alice Four"}))
        .send()
        .await
        .ok();
    assert_eq!(updated["displayName"], "Alice Four");
    assert_eq!(updated["role"], "ROLE_USER");
    // A mask with two paths, comma-separated as FieldMask's JSON form says.
    let updated = patch(
        &admin_token,
        "?updateMask=displayName,role",
        json!({"displayName": "Alice Five", "role": "ROLE_ADMIN"}),
    )
    .send()
    .await
    .ok();
    assert_eq!(
        (&updated["displayName"], &updated["role"]),
        (&json!("Alice Five"), &json!("ROLE_ADMIN"))
    );
    // Enums by number in requests too; answers always by name.
    let updated = patch(&admin_token, "?updateMask=role", json!({"role": 1}))
        .send()
        .await
        .ok();
    assert_eq!(updated["role"], "ROLE_USER");
    patch(
        &alice_token,
        "?updateMask=role",
        json!({"role": "ROLE_ADMIN"}),
    )
    .send()
    .await
    .error(403, grpc::PERMISSION_DENIED, &[]);
    patch(
        &alice_token,
        "?updateMask=nope",
        json!({"displayName": "X"}),
    )
    .send()
    .await
    .error(400, grpc::INVALID_ARGUMENT, &["update_mask"]);
    patch(
        &alice_token,
        "?updateMask=displayName",
        json!({"displayName": ""}),
    )
    .send()
    .await
    .error(400, grpc::INVALID_ARGUMENT, &["display_name"]);
    patch(
        &bob_token,
        "?updateMask=displayName",
        json!({"displayName": "Mallory"}),
    )
    .send()
    .await
    .error(404, grpc::NOT_FOUND, &[]);
    unauthenticated(
        &gw.patch(&format!("/v1/users/{alice_id}"))
            .json(&json!({"displayName": "X"}))
            .send()
            .await,
    );
    assert_eq!(
        gw.get("/v1/me").bearer(&alice_token).send().await.ok()["displayName"],
        "Alice Five"
    );

    // --- GET /v1/users: admin only, paginated with pageSize/pageToken in the query ---
    for _ in 0..3 {
        mesh.new_user().await;
    }
    let mut seen: Vec<String> = Vec::new();
    let mut token = String::new();
    for page in 0.. {
        assert!(page < 20, "ListUsers does not end");
        // Alternate the camelCase and snake_case parameter names.
        let query = if page % 2 == 0 {
            format!("?pageSize=2&pageToken={}", encode(&token))
        } else {
            format!("?page_size=2&page_token={}", encode(&token))
        };
        let body = gw
            .get(&format!("/v1/users{query}"))
            .bearer(&admin_token)
            .send()
            .await
            .ok();
        let users = body["users"].as_array().expect("users is a list");
        assert!(users.len() <= 2, "pageSize is honoured: {body}");
        for user in users {
            assert_user_shape(user);
            seen.push(user["id"].as_str().unwrap().to_string());
        }
        token = body["nextPageToken"]
            .as_str()
            .expect("nextPageToken is always present")
            .to_string();
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen.len(), 6, "alice, bob, admin and three more: {seen:?}");
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "no user twice across pages");
    assert!(seen.contains(&alice_id) && seen.contains(&bob_id));
    let all = gw.get("/v1/users").bearer(&admin_token).send().await.ok();
    assert_eq!(all["users"].as_array().unwrap().len(), 6);
    assert_eq!(
        all["nextPageToken"], "",
        "the last page's token is present and empty"
    );
    gw.get("/v1/users?pageToken=garbage")
        .bearer(&admin_token)
        .send()
        .await
        .error(400, grpc::INVALID_ARGUMENT, &[]);
    gw.get("/v1/users")
        .bearer(&alice_token)
        .send()
        .await
        .error(403, grpc::PERMISSION_DENIED, &[]);
    unauthenticated(&gw.get("/v1/users").send().await);

    findings.assert_none();
    mesh.assert_no_panics();
    mesh.stop().await;
}

async fn product_and_order_routes(backend: Backend) {
    let mesh = gateway_mesh(backend, "").await;
    let gw = Gateway::of(&mesh);
    let admin = access(&register_admin(&mesh, &gw).await);
    let alice = register(&gw, "alice.shop@example.com", "Alice").await;
    let alice_id = alice["user"]["id"].as_str().unwrap().to_string();
    let alice = access(&alice);
    let bob = access(&register(&gw, "bob.shop@example.com", "Bob").await);

    // --- POST /v1/products: admin only, the body is the product ---
    let widget = gw
        .post("/v1/products")
        .bearer(&admin)
        .json(&json!({
            "name": "Widget",
            "description": "A widget",
            "unitPriceCents": "250",
            "currency": "USD",
            "stock": 0
        }))
        .send()
        .await
        .ok();
    assert_product_shape(&widget);
    assert_eq!(widget["name"], "Widget");
    assert_eq!(widget["unitPriceCents"], "250", "int64 as a JSON string");
    assert_eq!(widget["stock"], "0", "a zero stock is present, as a string");
    let widget_id = widget["id"].as_str().unwrap().to_string();
    let gadget = gw
        .post("/v1/products")
        .bearer(&admin)
        .json(&json!({"name": "Gadget", "unit_price_cents": 100, "stock": "5"}))
        .send()
        .await
        .ok();
    assert_product_shape(&gadget);
    assert_eq!(gadget["currency"], "USD", "the default currency");
    assert_eq!(gadget["description"], "", "an empty string is present");
    assert_eq!(gadget["stock"], "5");
    let gadget_id = gadget["id"].as_str().unwrap().to_string();
    let euro = gw
        .post("/v1/products")
        .bearer(&admin)
        .json(&json!({"name": "Euro", "unitPriceCents": 300, "currency": "EUR", "stock": 9}))
        .send()
        .await
        .ok();
    let euro_id = euro["id"].as_str().unwrap().to_string();
    gw.post("/v1/products")
        .bearer(&alice)
        .json(&json!({"name": "Nope", "unitPriceCents": 1}))
        .send()
        .await
        .error(403, grpc::PERMISSION_DENIED, &[]);
    unauthenticated(
        &gw.post("/v1/products")
            .json(&json!({"name": "Nope", "unitPriceCents": 1}))
            .send()
            .await,
    );
    gw.post("/v1/products")
        .bearer(&admin)
        .json(&json!({"name": "", "unitPriceCents": 1}))
        .send()
        .await
        .error(400, grpc::INVALID_ARGUMENT, &["name"]);

    // --- GET /v1/products/{id}: public ---
    assert_eq!(
        gw.get(&format!("/v1/products/{widget_id}"))
            .send()
            .await
            .ok(),
        widget
    );
    gw.get("/v1/products/nope")
        .send()
        .await
        .error(404, grpc::NOT_FOUND, &["nope"]);
    gw.get("/v1/products/does-not-exist")
        .send()
        .await
        .error(404, grpc::NOT_FOUND, &[]);

    // --- GET /v1/products: public, paginated ---
    let first = gw.get("/v1/products?pageSize=2").send().await.ok();
    let page = first["products"].as_array().expect("products is a list");
    assert_eq!(page.len(), 2, "{first}");
    page.iter().for_each(assert_product_shape);
    let next = first["nextPageToken"].as_str().unwrap();
    assert!(!next.is_empty(), "a next page: {first}");
    let second = gw
        .get(&format!(
            "/v1/products?page_size=2&pageToken={}",
            encode(next)
        ))
        .send()
        .await
        .ok();
    assert_eq!(second["products"].as_array().unwrap().len(), 1, "{second}");
    assert_eq!(second["nextPageToken"], "");
    let mut ids: Vec<&str> = page
        .iter()
        .chain(second["products"].as_array().unwrap())
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    let mut expected = vec![widget_id.as_str(), gadget_id.as_str(), euro_id.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected);
    gw.get("/v1/products?pageSize=abc").send().await.error(
        400,
        grpc::INVALID_ARGUMENT,
        &["pageSize"],
    );

    // --- POST /v1/products/{id}:restock: admin only ---
    let restocked = gw
        .post(&format!("/v1/products/{widget_id}:restock"))
        .bearer(&admin)
        .json(&json!({"quantity": "3"}))
        .send()
        .await
        .ok();
    assert_eq!(restocked["stock"], "3");
    assert_eq!(restocked["id"], widget["id"]);
    gw.post(&format!("/v1/products/{widget_id}:restock"))
        .bearer(&alice)
        .json(&json!({"quantity": 1}))
        .send()
        .await
        .error(403, grpc::PERMISSION_DENIED, &[]);
    gw.post(&format!("/v1/products/{widget_id}:restock"))
        .bearer(&admin)
        .json(&json!({"quantity": 0}))
        .send()
        .await
        .error(400, grpc::INVALID_ARGUMENT, &["quantity"]);
    gw.post("/v1/products/nope:restock")
        .bearer(&admin)
        .json(&json!({"quantity": 1}))
        .send()
        .await
        .error(404, grpc::NOT_FOUND, &[]);
    unauthenticated(
        &gw.post(&format!("/v1/products/{widget_id}:restock"))
            .json(&json!({"quantity": 1}))
            .send()
            .await,
    );

    // --- POST /v1/orders ---
    let order = gw
        .post("/v1/orders")
        .bearer(&alice)
        .json(&json!({
            "idempotencyKey": "k-1",
            "items": [{"productId": widget_id, "quantity": "2"}]
        }))
        .send()
        .await
        .ok();
    assert_order_shape(&order);
    assert_eq!(order["userId"], alice_id.as_str());
    assert_eq!(order["status"], "ORDER_STATUS_CONFIRMED");
    assert_eq!(
        order["items"],
        json!([{
            "productId": widget_id,
            "productName": "Widget",
            "quantity": "2",
            "unitPriceCents": "250"
        }])
    );
    assert_eq!(order["totalCents"], "500");
    assert_eq!(order["currency"], "USD");
    assert_eq!(order["idempotencyKey"], "k-1");
    let order_id = order["id"].as_str().unwrap().to_string();
    assert_eq!(stock(&gw, &widget_id).await, "1");

    let second_order = gw
        .post("/v1/orders")
        .bearer(&alice)
        .json(&json!({
            "idempotency_key": "k-2",
            "items": [{"product_id": gadget_id, "quantity": 1}]
        }))
        .send()
        .await
        .ok();
    assert_eq!(second_order["items"][0]["productId"], gadget_id.as_str());
    let second_id = second_order["id"].as_str().unwrap().to_string();
    let no_key = gw
        .post("/v1/orders")
        .bearer(&bob)
        .json(&json!({"items": [{"productId": gadget_id, "quantity": 1}]}))
        .send()
        .await
        .ok();
    assert_eq!(no_key["idempotencyKey"], "", "an empty key is present");

    // The same key and items: the same order, stock taken once.
    let replay = gw
        .post("/v1/orders")
        .bearer(&alice)
        .json(&json!({
            "idempotencyKey": "k-1",
            "items": [{"productId": widget_id, "quantity": 2}]
        }))
        .send()
        .await
        .ok();
    assert_eq!(replay, order);
    assert_eq!(stock(&gw, &widget_id).await, "1");
    gw.post("/v1/orders")
        .bearer(&alice)
        .json(&json!({"idempotencyKey": "k-1", "items": [{"productId": widget_id, "quantity": 1}]}))
        .send()
        .await
        .error(409, grpc::ALREADY_EXISTS, &["idempotency key"]);
    let short = gw
        .post("/v1/orders")
        .bearer(&alice)
        .json(&json!({"items": [{"productId": widget_id, "quantity": 5}]}))
        .send()
        .await;
    short.error(400, grpc::FAILED_PRECONDITION, &[&widget_id]);
    gw.post("/v1/orders")
        .bearer(&alice)
        .json(&json!({"items": [{"productId": "nope", "quantity": 1}]}))
        .send()
        .await
        .error(404, grpc::NOT_FOUND, &["nope"]);
    gw.post("/v1/orders")
        .bearer(&alice)
        .json(&json!({"items": [
            {"productId": widget_id, "quantity": 1},
            {"productId": euro_id, "quantity": 1}
        ]}))
        .send()
        .await
        .error(400, grpc::INVALID_ARGUMENT, &[]);
    gw.post("/v1/orders")
        .bearer(&alice)
        .json(&json!({"items": []}))
        .send()
        .await
        .error(400, grpc::INVALID_ARGUMENT, &["items"]);
    gw.post("/v1/orders")
        .bearer(&alice)
        .json(&json!({"items": [{"productId": widget_id, "quantity": 0}]}))
        .send()
        .await
        .error(400, grpc::INVALID_ARGUMENT, &["quantity"]);
    unauthenticated(
        &gw.post("/v1/orders")
            .json(&json!({"items": [{"productId": widget_id, "quantity": 1}]}))
            .send()
            .await,
    );
    // A valid token for a user weft-user does not know: FAILED_PRECONDITION.
    let ghost = mesh.sign_token(&mesh.claims(&uuid::Uuid::new_v4().simple().to_string(), "user"));
    gw.post("/v1/orders")
        .bearer(&ghost)
        .json(&json!({"items": [{"productId": gadget_id, "quantity": 1}]}))
        .send()
        .await
        .error(400, grpc::FAILED_PRECONDITION, &["user"]);
    assert_eq!(
        stock(&gw, &widget_id).await,
        "1",
        "failed orders took nothing"
    );

    // --- GET /v1/orders/{id}: owner or admin ---
    let path = format!("/v1/orders/{order_id}");
    assert_eq!(gw.get(&path).bearer(&alice).send().await.ok(), order);
    assert_eq!(gw.get(&path).bearer(&admin).send().await.ok(), order);
    gw.get(&path)
        .bearer(&bob)
        .send()
        .await
        .error(404, grpc::NOT_FOUND, &[]);
    gw.get("/v1/orders/nope")
        .bearer(&alice)
        .send()
        .await
        .error(404, grpc::NOT_FOUND, &[]);
    unauthenticated(&gw.get(&path).send().await);

    // --- GET /v1/orders: the caller's, newest first, paginated ---
    let first = gw
        .get("/v1/orders?pageSize=1")
        .bearer(&alice)
        .send()
        .await
        .ok();
    assert_eq!(first["orders"].as_array().unwrap().len(), 1);
    assert_eq!(first["orders"][0]["id"], second_id.as_str(), "newest first");
    let next = first["nextPageToken"].as_str().unwrap().to_string();
    assert!(!next.is_empty());
    let rest = gw
        .get(&format!(
            "/v1/orders?page_size=10&page_token={}",
            encode(&next)
        ))
        .bearer(&alice)
        .send()
        .await
        .ok();
    assert_eq!(rest["orders"].as_array().unwrap().len(), 1);
    assert_eq!(rest["orders"][0], order);
    assert_eq!(rest["nextPageToken"], "");
    let carol = access(&register(&gw, "carol.shop@example.com", "Carol").await);
    assert_eq!(
        gw.get("/v1/orders").bearer(&carol).send().await.ok(),
        json!({"orders": [], "nextPageToken": ""}),
        "an empty list is [] and the token is present"
    );
    unauthenticated(&gw.get("/v1/orders").send().await);

    // --- POST /v1/orders/{id}:cancel: stock back, repeatable ---
    gw.post(&format!("/v1/orders/{order_id}:cancel"))
        .bearer(&bob)
        .json(&json!({}))
        .send()
        .await
        .error(404, grpc::NOT_FOUND, &[]);
    let cancelled = gw
        .post(&format!("/v1/orders/{order_id}:cancel"))
        .bearer(&alice)
        .json(&json!({}))
        .send()
        .await
        .ok();
    assert_eq!(cancelled["status"], "ORDER_STATUS_CANCELLED");
    assert_eq!(cancelled["id"], order["id"]);
    assert_eq!(stock(&gw, &widget_id).await, "3", "the stock is back");
    let again = gw
        .post(&format!("/v1/orders/{order_id}:cancel"))
        .bearer(&alice)
        .json(&json!({}))
        .send()
        .await
        .ok();
    assert_eq!(
        again, cancelled,
        "cancelling a cancelled order changes nothing"
    );
    assert_eq!(stock(&gw, &widget_id).await, "3");
    // `body: "*"` with no body at all: the admin cancels alice's other order.
    let by_admin = gw
        .post(&format!("/v1/orders/{second_id}:cancel"))
        .bearer(&admin)
        .send()
        .await
        .ok();
    assert_eq!(by_admin["status"], "ORDER_STATUS_CANCELLED");
    assert_eq!(stock(&gw, &gadget_id).await, "4", "5 - 1 (bob's) + 0");
    gw.post("/v1/orders/nope:cancel")
        .bearer(&alice)
        .json(&json!({}))
        .send()
        .await
        .error(404, grpc::NOT_FOUND, &[]);
    unauthenticated(
        &gw.post(&format!("/v1/orders/{order_id}:cancel"))
            .json(&json!({}))
            .send()
            .await,
    );

    mesh.assert_no_panics();
    mesh.stop().await;
}

/// Registers through the gateway; the AuthTokens JSON.
async fn register(gw: &Gateway, email: &str, name: &str) -> Value {
    gw.post("/v1/auth/register")
        .json(&json!({"email": email, "password": PASSWORD, "displayName": name}))
        .send()
        .await
        .ok()
}

/// Registers [`ADMIN_EMAIL`] through the gateway (an ordinary user, as every account starts),
/// has the operator grant it the role, and signs it in again: that sign-in's AuthTokens JSON.
async fn register_admin(mesh: &TestMesh, gw: &Gateway) -> Value {
    let registered = register(gw, ADMIN_EMAIL, "Admin").await;
    assert_user(&registered["user"], ADMIN_EMAIL, "Admin", "ROLE_USER");
    mesh.grant_role(ADMIN_EMAIL, "admin").await;
    gw.post("/v1/auth/login")
        .json(&json!({"email": ADMIN_EMAIL, "password": PASSWORD}))
        .send()
        .await
        .ok()
}

/// The access token of an AuthTokens JSON.
fn access(tokens: &Value) -> String {
    tokens["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("no accessToken in {tokens}"))
        .to_string()
}

/// A product's stock, read through the gateway.
async fn stock(gw: &Gateway, id: &str) -> String {
    gw.get(&format!("/v1/products/{id}")).send().await.ok()["stock"]
        .as_str()
        .expect("stock is a JSON string")
        .to_string()
}

#[track_caller]
fn assert_keys(value: &Value, keys: &[&str]) {
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"));
    let mut actual: Vec<&str> = object.keys().map(String::as_str).collect();
    actual.sort_unstable();
    let mut expected = keys.to_vec();
    expected.sort_unstable();
    assert_eq!(
        actual, expected,
        "lowerCamelCase keys, every one present: {value}"
    );
}

/// An RFC 3339 UTC time as the proto3 JSON mapping writes Timestamps.
#[track_caller]
fn assert_time(value: &Value) {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("a time must be a string: {value}"));
    let bytes = text.as_bytes();
    let shape_ok = text.len() >= 20
        && text.ends_with('Z')
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes[10] == b'T'
        && bytes[13] == b':'
        && bytes[16] == b':'
        && text[..4].parse::<u32>().is_ok_and(|y| y >= 2020);
    assert!(shape_ok, "not an RFC 3339 time: {text:?}");
}

#[track_caller]
fn assert_tokens(tokens: &Value) {
    assert_keys(
        tokens,
        &[
            "accessToken",
            "tokenType",
            "expiresIn",
            "refreshToken",
            "user",
        ],
    );
    assert_eq!(tokens["tokenType"], "Bearer");
    let expires = tokens["expiresIn"]
        .as_str()
        .unwrap_or_else(|| panic!("expiresIn (int64) must be a JSON string: {tokens}"));
    assert!(expires.parse::<i64>().is_ok_and(|s| s > 0), "{tokens}");
    assert_eq!(
        tokens["accessToken"].as_str().unwrap().split('.').count(),
        3,
        "a JWT"
    );
    assert!(!tokens["refreshToken"].as_str().unwrap().is_empty());
    assert_user_shape(&tokens["user"]);
}

#[track_caller]
fn assert_user_shape(user: &Value) {
    assert_keys(
        user,
        &[
            "id",
            "email",
            "displayName",
            "role",
            "createTime",
            "updateTime",
        ],
    );
    assert!(user["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(
        matches!(user["role"].as_str(), Some("ROLE_USER" | "ROLE_ADMIN")),
        "enums by name: {user}"
    );
    assert_time(&user["createTime"]);
    assert_time(&user["updateTime"]);
}

#[track_caller]
fn assert_user(user: &Value, email: &str, name: &str, role: &str) {
    assert_user_shape(user);
    assert_eq!(user["email"], email);
    assert_eq!(user["displayName"], name);
    assert_eq!(user["role"], role);
}

#[track_caller]
fn assert_product_shape(product: &Value) {
    assert_keys(
        product,
        &[
            "id",
            "name",
            "description",
            "unitPriceCents",
            "currency",
            "stock",
            "createTime",
            "updateTime",
        ],
    );
    for field in ["unitPriceCents", "stock"] {
        assert!(
            product[field]
                .as_str()
                .is_some_and(|v| v.parse::<i64>().is_ok()),
            "{field} (int64) must be a JSON string: {product}"
        );
    }
    assert_time(&product["createTime"]);
    assert_time(&product["updateTime"]);
}

#[track_caller]
fn assert_order_shape(order: &Value) {
    assert_keys(
        order,
        &[
            "id",
            "userId",
            "status",
            "items",
            "totalCents",
            "currency",
            "idempotencyKey",
            "createTime",
            "updateTime",
        ],
    );
    assert!(
        order["totalCents"].is_string(),
        "int64 as a string: {order}"
    );
    for item in order["items"].as_array().expect("items is a list") {
        assert_keys(
            item,
            &["productId", "productName", "quantity", "unitPriceCents"],
        );
    }
    assert_time(&order["createTime"]);
    assert_time(&order["updateTime"]);
}
