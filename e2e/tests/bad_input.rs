//! Hostile input over gRPC: every service answers INVALID_ARGUMENT naming the field, refuses
//! oversized messages without dropping the connection, keeps control characters away from the
//! database (PostgreSQL cannot hold a NUL), and never panics.

#[macro_use]
mod common;

use common::*;
use prost_types::FieldMask;
use tonic::Code;

backends!(
    bad_input_names_the_field,
    oversized_messages_are_refused,
    control_characters_never_reach_the_database
);

async fn bad_input_names_the_field(backend: Backend) {
    let mesh = TestMesh::start(backend).await;
    let alice = mesh.new_user().await;
    let admin = mesh.admin().await;
    let alice_id = user_of(&alice).id;
    let token = alice.access_token.as_str();
    let p = product(&mesh, "Target", 100, "USD", 1_000_000).await;
    let (mut auth, mut users, mut orders) = (mesh.auth(), mesh.user(), mesh.order());
    let huge = "x".repeat(10_000);

    // Empty ids.
    invalid(
        users
            .get_user(bearer(token, GetUserRequest { id: String::new() }))
            .await,
        "id",
    );
    invalid(
        orders
            .get_order(bearer(token, GetOrderRequest { id: String::new() }))
            .await,
        "id",
    );
    invalid(
        orders
            .cancel_order(bearer(token, CancelOrderRequest { id: String::new() }))
            .await,
        "id",
    );
    invalid(
        orders
            .get_product(GetProductRequest { id: String::new() })
            .await,
        "id",
    );
    invalid(
        orders
            .restock_product(bearer(
                &admin.access_token,
                RestockProductRequest {
                    id: String::new(),
                    quantity: 1,
                },
            ))
            .await,
        "id",
    );
    invalid(
        users
            .update_user(bearer(
                token,
                UpdateUserRequest {
                    user: Some(User {
                        display_name: "Nobody".into(),
                        ..Default::default()
                    }),
                    update_mask: Some(FieldMask {
                        paths: vec!["display_name".into()],
                    }),
                },
            ))
            .await,
        "id",
    );
    invalid(
        users
            .update_user(bearer(
                token,
                UpdateUserRequest {
                    user: None,
                    update_mask: None,
                },
            ))
            .await,
        "user",
    );

    // An id names nothing whatever its shape: NOT_FOUND, never a crash.
    for id in [
        huge.as_str(),
        "../../etc/passwd",
        "' OR 1=1 --",
        "\u{1F980}",
        "%00",
    ] {
        err(
            users
                .get_user(bearer(token, GetUserRequest { id: id.into() }))
                .await,
            Code::NotFound,
            &[],
        );
        err(
            orders
                .get_order(bearer(token, GetOrderRequest { id: id.into() }))
                .await,
            Code::NotFound,
            &[],
        );
        err(
            orders
                .get_product(GetProductRequest { id: id.into() })
                .await,
            Code::NotFound,
            &[],
        );
        err(
            orders
                .cancel_order(bearer(token, CancelOrderRequest { id: id.into() }))
                .await,
            Code::NotFound,
            &[],
        );
        err(
            orders
                .create_order(bearer(token, order_request("", vec![line(id, 1)])))
                .await,
            Code::NotFound,
            &[],
        );
    }

    // Order lines.
    let create = |key: &str, items: Vec<OrderLine>| bearer(token, order_request(key, items));
    invalid(orders.create_order(create("", vec![])).await, "items");
    for quantity in [0, -1, -1000, i64::MIN, 1001, i64::MAX] {
        invalid(
            orders
                .create_order(create("", vec![line(&p.id, quantity)]))
                .await,
            "quantity",
        );
    }
    invalid(
        orders.create_order(create("", vec![line("", 1)])).await,
        "product_id",
    );
    invalid(
        orders
            .create_order(create("", vec![line(&p.id, 1), line(&p.id, 0)]))
            .await,
        "quantity",
    );
    invalid(
        orders
            .create_order(create("", vec![line(&p.id, 1); 101]))
            .await,
        "items",
    );
    invalid(
        orders
            .create_order(create("", vec![line(&p.id, 1); 10_000]))
            .await,
        "items",
    );
    invalid(
        orders
            .create_order(create(&"k".repeat(200), vec![line(&p.id, 1)]))
            .await,
        "idempotency_key",
    );
    invalid(
        orders
            .create_order(create(&"k".repeat(129), vec![line(&p.id, 1)]))
            .await,
        "idempotency_key",
    );
    // 128 characters is the longest key allowed.
    ok(orders
        .create_order(create(&"k".repeat(128), vec![line(&p.id, 1)]))
        .await);
    assert_eq!(
        stock(&mesh, &p.id).await,
        999_999,
        "only the valid order took stock"
    );

    // Emails, passwords and names.
    let register = |email: &str, password: &str, name: &str| RegisterRequest {
        email: email.into(),
        password: password.into(),
        display_name: name.into(),
    };
    for email in [
        "",
        "   ",
        "no-at-sign",
        "two@@example.com",
        "sp ace@example.com",
        &format!("{huge}@example.com"),
    ] {
        invalid(
            auth.register(register(email, "password-123", "Ada")).await,
            "email",
        );
    }
    invalid(
        auth.register(register("huge-name@example.com", "password-123", &huge))
            .await,
        "display_name",
    );
    invalid(
        auth.register(register("ctrl@example.com", "password-123", "a\u{0}b"))
            .await,
        "display_name",
    );
    invalid(
        auth.register(register(
            "huge-pass@example.com",
            &"p".repeat(100_000),
            "Ada",
        ))
        .await,
        "password",
    );
    invalid(
        users
            .update_user(bearer(
                token,
                UpdateUserRequest {
                    user: Some(User {
                        id: alice_id.clone(),
                        display_name: huge.clone(),
                        ..Default::default()
                    }),
                    update_mask: Some(FieldMask {
                        paths: vec!["display_name".into()],
                    }),
                },
            ))
            .await,
        "display_name",
    );
    let product = |name: &str, description: &str| {
        bearer(
            &admin.access_token,
            CreateProductRequest {
                product: Some(Product {
                    name: name.into(),
                    description: description.into(),
                    unit_price_cents: 1,
                    stock: 1,
                    ..Default::default()
                }),
            },
        )
    };
    invalid(orders.create_product(product(&huge, "")).await, "name");
    invalid(
        orders.create_product(product("Fine", &huge)).await,
        "description",
    );

    // Quantities of restocks.
    for quantity in [0, -1, i64::MIN] {
        invalid(
            orders
                .restock_product(bearer(
                    &admin.access_token,
                    RestockProductRequest {
                        id: p.id.clone(),
                        quantity,
                    },
                ))
                .await,
            "quantity",
        );
    }

    // Malformed page tokens and sizes.
    for page_token in ["garbage!!", "bm9wZQ", &huge] {
        invalid(
            users
                .list_users(bearer(
                    &admin.access_token,
                    ListUsersRequest {
                        page_size: 2,
                        page_token: page_token.into(),
                    },
                ))
                .await,
            "page_token",
        );
        invalid(
            orders
                .list_products(ListProductsRequest {
                    page_size: 2,
                    page_token: page_token.into(),
                })
                .await,
            "page_token",
        );
        invalid(
            orders
                .list_orders(bearer(
                    token,
                    ListOrdersRequest {
                        page_size: 2,
                        page_token: page_token.into(),
                    },
                ))
                .await,
            "page_token",
        );
    }
    invalid(
        orders
            .list_products(ListProductsRequest {
                page_size: -1,
                page_token: String::new(),
            })
            .await,
        "page_size",
    );
    invalid(
        orders
            .list_orders(bearer(
                token,
                ListOrdersRequest {
                    page_size: i32::MIN,
                    page_token: String::new(),
                },
            ))
            .await,
        "page_size",
    );

    // Everything still works, and nobody panicked.
    ok(users.get_me(bearer(token, GetMeRequest {})).await);
    ok(orders.list_products(ListProductsRequest::default()).await);
    mesh.assert_no_panics();
    mesh.stop().await;
}

async fn oversized_messages_are_refused(backend: Backend) {
    let mesh = TestMesh::start(backend).await;
    let alice = mesh.new_user().await;
    let five_mib = "x".repeat(5 * 1024 * 1024);
    let too_big = |status: tonic::Status| {
        assert!(
            matches!(status.code(), Code::ResourceExhausted | Code::OutOfRange),
            "a message over 4 MiB: {:?}: {}",
            status.code(),
            status.message()
        );
    };

    // Each service refuses it, and the same connection serves the next call.
    let mut orders = mesh.order();
    too_big(
        orders
            .get_product(GetProductRequest {
                id: five_mib.clone(),
            })
            .await
            .expect_err("5 MiB GetProduct"),
    );
    ok(orders.list_products(ListProductsRequest::default()).await);

    let mut auth = mesh.auth();
    too_big(
        auth.login(LoginRequest {
            email: "a@example.com".into(),
            password: five_mib.clone(),
        })
        .await
        .expect_err("5 MiB Login"),
    );
    ok(auth.get_jwks(GetJwksRequest {}).await);

    let mut users = mesh.user();
    too_big(
        users
            .get_user(bearer(
                &alice.access_token,
                GetUserRequest {
                    id: five_mib.clone(),
                },
            ))
            .await
            .expect_err("5 MiB GetUser"),
    );
    ok(users
        .get_me(bearer(&alice.access_token, GetMeRequest {}))
        .await);

    // Just under the limit is decoded, and answered for what it says: an id that names
    // nothing is NOT_FOUND whatever its size (the answer must not grow with the input).
    let under = "x".repeat(4 * 1024 * 1024 - 1024);
    err(
        users
            .get_user(bearer(
                &alice.access_token,
                GetUserRequest { id: under.clone() },
            ))
            .await,
        Code::NotFound,
        &[],
    );
    for id in ["y".repeat(100_000), under] {
        err(
            orders
                .get_product(GetProductRequest { id: id.clone() })
                .await,
            Code::NotFound,
            &[],
        );
        err(
            orders
                .get_order(bearer(
                    &alice.access_token,
                    GetOrderRequest { id: id.clone() },
                ))
                .await,
            Code::NotFound,
            &[],
        );
    }
    ok(orders.list_products(ListProductsRequest::default()).await);
    mesh.assert_no_panics();
    mesh.stop().await;
}

async fn control_characters_never_reach_the_database(backend: Backend) {
    let mesh = TestMesh::start(backend).await;
    let alice = mesh.new_user().await;
    let admin = mesh.admin().await;
    let token = alice.access_token.as_str();
    let (mut auth, mut users, mut orders) = (mesh.auth(), mesh.user(), mesh.order());
    let p = product(&mesh, "Plain", 100, "USD", 10).await;
    for id in ["a\0b", "\0", "tab\tid", "\u{85}"] {
        // An id that cannot exist is NOT_FOUND, as any unknown id.
        let request = GetProductRequest { id: id.into() };
        err(orders.get_product(request).await, Code::NotFound, &[]);
        let restock = RestockProductRequest {
            id: id.into(),
            quantity: 1,
        };
        err(
            orders
                .restock_product(bearer(&admin.access_token, restock))
                .await,
            Code::NotFound,
            &[],
        );
        let order = order_request("", vec![line(id, 1)]);
        err(
            orders.create_order(bearer(token, order)).await,
            Code::NotFound,
            &[],
        );
        let get = GetOrderRequest { id: id.into() };
        err(
            orders.get_order(bearer(token, get)).await,
            Code::NotFound,
            &[],
        );
        let cancel = CancelOrderRequest { id: id.into() };
        err(
            orders.cancel_order(bearer(token, cancel)).await,
            Code::NotFound,
            &[],
        );
        let get = GetUserRequest { id: id.into() };
        err(
            users.get_user(bearer(&admin.access_token, get)).await,
            Code::NotFound,
            &[],
        );
        // A key is stored: refused, naming the field.
        let keyed = order_request(&format!("key{id}"), vec![line(&p.id, 1)]);
        invalid(
            orders.create_order(bearer(token, keyed)).await,
            "idempotency_key",
        );
        // No registered email has one: the usual refusal of bad credentials.
        let login = LoginRequest {
            email: format!("alice{id}@example.com"),
            password: "password-123".into(),
        };
        err(auth.login(login).await, Code::Unauthenticated, &[]);
    }
    assert_eq!(stock(&mesh, &p.id).await, 10, "nothing was taken");
    mesh.assert_no_panics();
}
