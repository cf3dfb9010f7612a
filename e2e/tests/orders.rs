//! OrderService over real gRPC: the catalogue (admin writes, public reads), CreateOrder's
//! rules, reading, listing and cancelling orders, and the user check against weft-user.

#[macro_use]
mod common;

use common::*;
use tonic::Code;

backends!(
    products_are_managed_by_admins,
    create_order_takes_stock_whole_or_not_at_all,
    orders_are_read_listed_and_cancelled_by_their_owner,
    a_missing_user_cannot_order,
);

async fn products_are_managed_by_admins(backend: Backend) {
    let mesh = TestMesh::start(backend).await;
    let admin = mesh.admin().await;
    let alice = mesh.new_user().await;
    let mut orders = mesh.order();
    let create = |token: &str, product: Product| {
        bearer(
            token,
            CreateProductRequest {
                product: Some(product),
            },
        )
    };
    let widget = Product {
        name: "Widget".into(),
        description: "A widget".into(),
        unit_price_cents: 250,
        stock: 10,
        ..Default::default()
    };

    let created = ok(orders
        .create_product(create(&admin.access_token, widget.clone()))
        .await);
    assert!(!created.id.is_empty());
    assert_eq!(created.name, "Widget");
    assert_eq!(created.description, "A widget");
    assert_eq!(created.unit_price_cents, 250);
    assert_eq!(created.currency, "USD", "the default currency");
    assert_eq!(created.stock, 10);
    assert!(created.create_time.is_some() && created.update_time.is_some());
    let euro = ok(orders
        .create_product(create(
            &admin.access_token,
            Product {
                name: "Euro Widget".into(),
                currency: "EUR".into(),
                stock: 0,
                ..widget.clone()
            },
        ))
        .await);
    assert_eq!((euro.currency.as_str(), euro.stock), ("EUR", 0));

    // Admins only.
    err(
        orders
            .create_product(create(&alice.access_token, widget.clone()))
            .await,
        Code::PermissionDenied,
        &[],
    );
    err(
        orders
            .create_product(CreateProductRequest {
                product: Some(widget.clone()),
            })
            .await,
        Code::Unauthenticated,
        &[],
    );

    // Validation names the field.
    let bad = |f: &dyn Fn(&mut Product)| {
        let mut product = widget.clone();
        f(&mut product);
        create(&admin.access_token, product)
    };
    invalid(
        orders
            .create_product(bad(&|p| p.name = String::new()))
            .await,
        "name",
    );
    invalid(
        orders
            .create_product(bad(&|p| p.name = "n".repeat(201)))
            .await,
        "name",
    );
    invalid(
        orders
            .create_product(bad(&|p| p.description = "d".repeat(2001)))
            .await,
        "description",
    );
    invalid(
        orders
            .create_product(bad(&|p| p.unit_price_cents = -1))
            .await,
        "unit_price_cents",
    );
    invalid(orders.create_product(bad(&|p| p.stock = -1)).await, "stock");
    invalid(
        orders
            .create_product(bad(&|p| p.currency = "DOLLARS".into()))
            .await,
        "currency",
    );
    invalid(
        orders
            .create_product(bearer(
                &admin.access_token,
                CreateProductRequest { product: None },
            ))
            .await,
        "product",
    );

    // Public reads.
    let got = ok(orders
        .get_product(GetProductRequest {
            id: created.id.clone(),
        })
        .await);
    assert_eq!(got, created);
    err(
        orders
            .get_product(GetProductRequest { id: "nope".into() })
            .await,
        Code::NotFound,
        &[],
    );
    err(
        orders
            .get_product(GetProductRequest {
                id: uuid::Uuid::new_v4().simple().to_string(),
            })
            .await,
        Code::NotFound,
        &[],
    );
    invalid(
        orders
            .get_product(GetProductRequest { id: String::new() })
            .await,
        "id",
    );

    // Restock: admins only, quantity > 0, unknown ids NOT_FOUND.
    let restock = |token: &str, id: &str, quantity: i64| {
        bearer(
            token,
            RestockProductRequest {
                id: id.into(),
                quantity,
            },
        )
    };
    let restocked = ok(orders
        .restock_product(restock(&admin.access_token, &created.id, 5))
        .await);
    assert_eq!(restocked.stock, 15);
    assert_eq!(stock(&mesh, &created.id).await, 15);
    err(
        orders
            .restock_product(restock(&alice.access_token, &created.id, 5))
            .await,
        Code::PermissionDenied,
        &[],
    );
    err(
        orders
            .restock_product(RestockProductRequest {
                id: created.id.clone(),
                quantity: 5,
            })
            .await,
        Code::Unauthenticated,
        &[],
    );
    err(
        orders
            .restock_product(restock(&admin.access_token, "nope", 5))
            .await,
        Code::NotFound,
        &[],
    );
    for quantity in [0, -5] {
        invalid(
            orders
                .restock_product(restock(&admin.access_token, &created.id, quantity))
                .await,
            "quantity",
        );
    }
    assert_eq!(stock(&mesh, &created.id).await, 15);

    // ListProducts: oldest first, page by page, each product once.
    let mut mine = vec![created.id.clone(), euro.id.clone()];
    for i in 0..3 {
        mine.push(
            product(&mesh, &format!("Gadget {i}"), 100 + i, "USD", 3)
                .await
                .id,
        );
    }
    let mut listed = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = ok(orders
            .list_products(ListProductsRequest {
                page_size: 2,
                page_token: page_token.clone(),
            })
            .await);
        pages += 1;
        assert!(page.products.len() <= 2);
        if !page.next_page_token.is_empty() {
            assert_eq!(page.products.len(), 2, "only the last page may be short");
        }
        listed.extend(page.products.into_iter().map(|p| p.id));
        if page.next_page_token.is_empty() {
            break;
        }
        assert!(pages < 100, "pagination does not end");
        page_token = page.next_page_token;
    }
    let mut unique = listed.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), listed.len(), "no product twice");
    let positions: Vec<usize> = mine
        .iter()
        .map(|id| {
            listed
                .iter()
                .position(|l| l == id)
                .expect("every product listed")
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "oldest first: {positions:?}"
    );
    invalid(
        orders
            .list_products(ListProductsRequest {
                page_size: 2,
                page_token: "garbage!!".into(),
            })
            .await,
        "page_token",
    );
    mesh.assert_no_panics();
    mesh.stop().await;
}

async fn create_order_takes_stock_whole_or_not_at_all(backend: Backend) {
    let mesh = TestMesh::start(backend).await;
    let alice = mesh.new_user().await;
    let a = product(&mesh, "Apple", 250, "USD", 10).await;
    let b = product(&mesh, "Banana", 1000, "USD", 5).await;
    let e = product(&mesh, "Euro Cherry", 500, "EUR", 5).await;
    let mut orders = mesh.order();
    let place =
        |key: &str, items: Vec<OrderLine>| bearer(&alice.access_token, order_request(key, items));

    let order = ok(orders
        .create_order(place("", vec![line(&a.id, 2), line(&b.id, 3)]))
        .await);
    assert!(!order.id.is_empty());
    assert_eq!(order.user_id, user_of(&alice).id);
    assert_eq!(order.status, OrderStatus::Confirmed as i32);
    assert_eq!(order.total_cents, 2 * 250 + 3 * 1000);
    assert_eq!(order.currency, "USD");
    assert_eq!(order.idempotency_key, "");
    assert!(order.create_time.is_some() && order.update_time.is_some());
    assert_eq!(order.items.len(), 2);
    let item_a = order
        .items
        .iter()
        .find(|i| i.product_id == a.id)
        .expect("line of A");
    assert_eq!(
        (
            item_a.product_name.as_str(),
            item_a.quantity,
            item_a.unit_price_cents
        ),
        ("Apple", 2, 250)
    );
    let item_b = order
        .items
        .iter()
        .find(|i| i.product_id == b.id)
        .expect("line of B");
    assert_eq!(
        (
            item_b.product_name.as_str(),
            item_b.quantity,
            item_b.unit_price_cents
        ),
        ("Banana", 3, 1000)
    );
    assert_eq!(stock(&mesh, &a.id).await, 8);
    assert_eq!(stock(&mesh, &b.id).await, 2);

    // Short stock on one line: FAILED_PRECONDITION naming that product, and nothing is taken.
    let short = err(
        orders
            .create_order(place("", vec![line(&a.id, 1), line(&b.id, 3)]))
            .await,
        Code::FailedPrecondition,
        &[],
    );
    assert!(
        short.message().contains(&b.id) || short.message().contains("Banana"),
        "the message names the product: {:?}",
        short.message()
    );
    assert!(
        !short.message().contains(&a.id) && !short.message().contains("Apple"),
        "only the short product is named: {:?}",
        short.message()
    );
    assert_eq!(stock(&mesh, &a.id).await, 8, "the order is all or nothing");
    assert_eq!(stock(&mesh, &b.id).await, 2);

    // Unknown product: NOT_FOUND, nothing taken.
    err(
        orders
            .create_order(place("", vec![line(&a.id, 1), line("nope", 1)]))
            .await,
        Code::NotFound,
        &[],
    );
    assert_eq!(stock(&mesh, &a.id).await, 8);

    // Mixed currencies: INVALID_ARGUMENT, nothing taken.
    err(
        orders
            .create_order(place("", vec![line(&a.id, 1), line(&e.id, 1)]))
            .await,
        Code::InvalidArgument,
        &[],
    );
    assert_eq!(stock(&mesh, &a.id).await, 8);
    assert_eq!(stock(&mesh, &e.id).await, 5);

    // Exactly the stock left is fine; one more is not.
    let last = ok(orders.create_order(place("", vec![line(&b.id, 2)])).await);
    assert_eq!(last.total_cents, 2000);
    assert_eq!(stock(&mesh, &b.id).await, 0);
    err(
        orders.create_order(place("", vec![line(&b.id, 1)])).await,
        Code::FailedPrecondition,
        &[],
    );
    assert_eq!(stock(&mesh, &b.id).await, 0);

    // Failed attempts left no orders behind.
    let placed = all_orders(&mesh, &alice.access_token, 50).await;
    assert_eq!(placed.len(), 2);
    mesh.assert_no_panics();
    mesh.stop().await;
}

async fn orders_are_read_listed_and_cancelled_by_their_owner(backend: Backend) {
    let mesh = TestMesh::start(backend).await;
    let alice = mesh.new_user().await;
    let bob = mesh.new_user().await;
    let admin = mesh.admin().await;
    let p = product(&mesh, "Plum", 100, "USD", 100).await;
    let mut orders = mesh.order();

    let mut placed = Vec::new();
    for quantity in 1..=5 {
        placed.push(ok(orders
            .create_order(bearer(
                &alice.access_token,
                order_request("", vec![line(&p.id, quantity)]),
            ))
            .await));
    }
    let bobs = ok(orders
        .create_order(bearer(
            &bob.access_token,
            order_request("", vec![line(&p.id, 1)]),
        ))
        .await);
    assert_eq!(stock(&mesh, &p.id).await, 100 - 15 - 1);

    // GetOrder: the owner and admins; others get NOT_FOUND.
    let get = |token: &str, id: &str| bearer(token, GetOrderRequest { id: id.into() });
    assert_eq!(
        ok(orders
            .get_order(get(&alice.access_token, &placed[0].id))
            .await),
        placed[0]
    );
    assert_eq!(
        ok(orders
            .get_order(get(&admin.access_token, &placed[0].id))
            .await),
        placed[0]
    );
    err(
        orders
            .get_order(get(&bob.access_token, &placed[0].id))
            .await,
        Code::NotFound,
        &[],
    );
    err(
        orders.get_order(get(&alice.access_token, &bobs.id)).await,
        Code::NotFound,
        &[],
    );
    err(
        orders.get_order(get(&alice.access_token, "nope")).await,
        Code::NotFound,
        &[],
    );
    invalid(orders.get_order(get(&alice.access_token, "")).await, "id");

    // ListOrders: the caller's own, newest first, page by page.
    let mut sizes = Vec::new();
    let mut listed = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = ok(orders
            .list_orders(bearer(
                &alice.access_token,
                ListOrdersRequest {
                    page_size: 2,
                    page_token: page_token.clone(),
                },
            ))
            .await);
        sizes.push(page.orders.len());
        listed.extend(page.orders);
        if page.next_page_token.is_empty() {
            break;
        }
        assert!(sizes.len() < 10, "pagination does not end");
        page_token = page.next_page_token;
    }
    assert_eq!(sizes, [2, 2, 1]);
    let newest_first: Vec<Order> = placed.iter().rev().cloned().collect();
    assert_eq!(listed, newest_first);
    let bob_list = all_orders(&mesh, &bob.access_token, 0).await;
    assert_eq!(bob_list, std::slice::from_ref(&bobs));
    // An admin lists their own orders (none), not everyone's.
    assert!(all_orders(&mesh, &admin.access_token, 0).await.is_empty());
    invalid(
        orders
            .list_orders(bearer(
                &alice.access_token,
                ListOrdersRequest {
                    page_size: 2,
                    page_token: "garbage!!".into(),
                },
            ))
            .await,
        "page_token",
    );

    // CancelOrder puts the stock back; a second cancel changes nothing.
    let cancel = |token: &str, id: &str| bearer(token, CancelOrderRequest { id: id.into() });
    let third = &placed[2];
    err(
        orders
            .cancel_order(cancel(&bob.access_token, &third.id))
            .await,
        Code::NotFound,
        &[],
    );
    assert_eq!(stock(&mesh, &p.id).await, 84);
    let cancelled = ok(orders
        .cancel_order(cancel(&alice.access_token, &third.id))
        .await);
    assert_eq!(cancelled.status, OrderStatus::Cancelled as i32);
    assert_eq!(cancelled.id, third.id);
    assert_eq!(cancelled.items, third.items);
    assert_eq!(cancelled.total_cents, third.total_cents);
    assert_eq!(stock(&mesh, &p.id).await, 84 + 3);
    let again = ok(orders
        .cancel_order(cancel(&alice.access_token, &third.id))
        .await);
    assert_eq!(
        again, cancelled,
        "cancelling a cancelled order returns it unchanged"
    );
    assert_eq!(stock(&mesh, &p.id).await, 87);
    assert_eq!(
        ok(orders.get_order(get(&alice.access_token, &third.id)).await),
        cancelled
    );

    // Admins may cancel anyone's order.
    let by_admin = ok(orders
        .cancel_order(cancel(&admin.access_token, &placed[0].id))
        .await);
    assert_eq!(by_admin.status, OrderStatus::Cancelled as i32);
    assert_eq!(stock(&mesh, &p.id).await, 88);
    err(
        orders
            .cancel_order(cancel(&alice.access_token, "nope"))
            .await,
        Code::NotFound,
        &[],
    );
    invalid(
        orders.cancel_order(cancel(&alice.access_token, "")).await,
        "id",
    );

    // Cancelled orders stay listed, with their status.
    let listed = all_orders(&mesh, &alice.access_token, 0).await;
    assert_eq!(listed.len(), 5);
    let statuses: Vec<i32> = listed.iter().map(|o| o.status).collect();
    let (c, x) = (OrderStatus::Confirmed as i32, OrderStatus::Cancelled as i32);
    assert_eq!(statuses, [c, c, x, c, x]);
    mesh.assert_no_panics();
    mesh.stop().await;
}

async fn a_missing_user_cannot_order(backend: Backend) {
    let mesh = TestMesh::start(backend).await;
    let p = product(&mesh, "Quince", 100, "USD", 10).await;
    // A validly signed token whose subject has no profile in weft-user.
    let ghost = uuid::Uuid::new_v4().simple().to_string();
    let token = mesh.sign_token(&mesh.claims(&ghost, "user"));
    ok(mesh
        .order()
        .list_orders(bearer(&token, ListOrdersRequest::default()))
        .await);
    err(
        mesh.order()
            .create_order(bearer(
                &token,
                order_request("ghost-key", vec![line(&p.id, 1)]),
            ))
            .await,
        Code::FailedPrecondition,
        &[],
    );
    assert_eq!(
        stock(&mesh, &p.id).await,
        10,
        "no stock taken for a missing user"
    );
    assert!(all_orders(&mesh, &token, 0).await.is_empty());

    // A real user orders fine from the same product.
    let alice = mesh.new_user().await;
    ok(mesh
        .order()
        .create_order(bearer(
            &alice.access_token,
            order_request("", vec![line(&p.id, 1)]),
        ))
        .await);
    assert_eq!(stock(&mesh, &p.id).await, 9);
    mesh.assert_no_panics();
    mesh.stop().await;
}
