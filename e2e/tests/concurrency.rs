//! Stock and idempotency under concurrency, restarts and a crash of weft-order.

#[macro_use]
mod common;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::*;
use futures::StreamExt as _;
use tonic::Code;

backends!(
    concurrent_orders_never_oversell,
    idempotency_keys_survive_concurrency_and_restarts,
    a_crash_of_weft_order_loses_or_duplicates_nothing,
);

async fn concurrent_orders_never_oversell(backend: Backend) {
    let mesh = TestMesh::start(backend).await;
    let p = product(&mesh, "Scarce", 100, "USD", 50).await;
    let buyers = [
        mesh.new_user().await,
        mesh.new_user().await,
        mesh.new_user().await,
    ];
    let client = mesh.order();

    let results: Vec<Result<Order, tonic::Status>> = futures::stream::iter(0..200)
        .map(|i| {
            let mut client = client.clone();
            let token = buyers[i % buyers.len()].access_token.clone();
            let id = p.id.clone();
            async move {
                client
                    .create_order(bearer(&token, order_request("", vec![line(&id, 1)])))
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .buffer_unordered(50)
        .collect()
        .await;

    let mut codes: HashMap<Code, usize> = HashMap::new();
    for result in &results {
        *codes
            .entry(result.as_ref().map_or_else(|s| s.code(), |_| Code::Ok))
            .or_default() += 1;
    }
    let unexpected: Vec<_> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .filter(|s| s.code() != Code::FailedPrecondition)
        .map(|s| format!("{:?}: {}", s.code(), s.message()))
        .collect();
    assert!(unexpected.is_empty(), "unexpected failures: {unexpected:?}");
    assert_eq!(
        codes.get(&Code::Ok),
        Some(&50),
        "exactly the stock succeeds: {codes:?}"
    );
    assert_eq!(
        codes.get(&Code::FailedPrecondition),
        Some(&150),
        "{codes:?}"
    );
    assert_eq!(stock(&mesh, &p.id).await, 0, "stock never goes below zero");

    // The orders that exist hold exactly the stock that was taken.
    let mut ordered = 0;
    let mut count = 0;
    for buyer in &buyers {
        for order in all_orders(&mesh, &buyer.access_token, 500).await {
            count += 1;
            ordered += order.items.iter().map(|i| i.quantity).sum::<i64>();
        }
    }
    assert_eq!((count, ordered), (50, 50));
    let ok_ids: HashSet<&str> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|o| o.id.as_str())
        .collect();
    assert_eq!(ok_ids.len(), 50, "every success is its own order");
    mesh.assert_no_panics();
    mesh.stop().await;
}

async fn idempotency_keys_survive_concurrency_and_restarts(backend: Backend) {
    let mesh = TestMesh::start(backend).await;
    let p = product(&mesh, "Once", 100, "USD", 100).await;
    let alice = mesh.new_user().await;
    let client = mesh.order();
    let request = |quantity: i64| order_request("checkout-7f3a", vec![line(&p.id, quantity)]);

    let results: Vec<Result<Order, tonic::Status>> = futures::stream::iter(0..20)
        .map(|_| {
            let mut client = client.clone();
            let req = bearer(&alice.access_token, request(2));
            async move { client.create_order(req).await.map(|r| r.into_inner()) }
        })
        .buffer_unordered(20)
        .collect()
        .await;
    let orders: Vec<Order> = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|s| panic!("a retry failed: {:?}: {}", s.code(), s.message())))
        .collect();
    let first = orders[0].clone();
    assert!(
        orders.iter().all(|o| o.id == first.id),
        "one order for one key"
    );
    assert_eq!(first.idempotency_key, "checkout-7f3a");
    assert_eq!(stock(&mesh, &p.id).await, 98, "stock taken once");
    assert_eq!(all_orders(&mesh, &alice.access_token, 0).await.len(), 1);

    // After restarting weft-order (and weft-user), the key still names the same order.
    mesh.restart("order").await;
    let again = ok(mesh
        .order()
        .create_order(bearer(&alice.access_token, request(2)))
        .await);
    assert_eq!(again.id, first.id);
    assert_eq!(again.items, first.items);
    mesh.restart("user").await;
    let again = ok(mesh
        .order()
        .create_order(bearer(&alice.access_token, request(2)))
        .await);
    assert_eq!(again.id, first.id);
    assert_eq!(stock(&mesh, &p.id).await, 98);

    // The same key for another request: ALREADY_EXISTS, nothing taken.
    err(
        mesh.order()
            .create_order(bearer(&alice.access_token, request(3)))
            .await,
        Code::AlreadyExists,
        &[],
    );
    assert_eq!(stock(&mesh, &p.id).await, 98);

    // Keys belong to their user: another user's same key is another order.
    let bob = mesh.new_user().await;
    let bobs = ok(mesh
        .order()
        .create_order(bearer(&bob.access_token, request(2)))
        .await);
    assert_ne!(bobs.id, first.id);
    assert_eq!(bobs.user_id, user_of(&bob).id);
    assert_eq!(stock(&mesh, &p.id).await, 96);
    assert_eq!(all_orders(&mesh, &alice.access_token, 0).await.len(), 1);
    mesh.assert_no_panics();
    mesh.stop().await;
}

async fn a_crash_of_weft_order_loses_or_duplicates_nothing(backend: Backend) {
    const INITIAL: i64 = 100_000;
    const CALLS: usize = 150;
    let mesh = TestMesh::start(backend).await;
    let p = product(&mesh, "Sturdy", 100, "USD", INITIAL).await;
    let alice = mesh.new_user().await;
    let quantity = |i: usize| (i % 3) as i64 + 1;
    let key = |i: usize| format!("crash-{i:03}");

    // A stream of orders with distinct keys, a few at a time; weft-order is SIGKILLed midway.
    let answered_ok = Arc::new(AtomicUsize::new(0));
    let stream = {
        let client = mesh.order();
        let token = alice.access_token.clone();
        let product_id = p.id.clone();
        let answered_ok = answered_ok.clone();
        tokio::spawn(async move {
            futures::stream::iter(0..CALLS)
                .map(|i| {
                    let mut client = client.clone();
                    let req = bearer(
                        &token,
                        order_request(&key(i), vec![line(&product_id, quantity(i))]),
                    );
                    let answered_ok = answered_ok.clone();
                    async move {
                        let result = client.create_order(req).await.map(|r| r.into_inner());
                        if result.is_ok() {
                            answered_ok.fetch_add(1, Ordering::SeqCst);
                        }
                        (i, result)
                    }
                })
                .buffered(4)
                .collect::<Vec<_>>()
                .await
        })
    };
    let started = Instant::now();
    while answered_ok.load(Ordering::SeqCst) < 25 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "orders did not go through before the kill"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    mesh.kill("order").await;
    let results = stream.await.expect("the stream task");
    let failed: Vec<usize> = results
        .iter()
        .filter(|(_, r)| r.is_err())
        .map(|(i, _)| *i)
        .collect();
    assert!(
        !failed.is_empty(),
        "the kill happened after the stream ended"
    );
    mesh.restart("order").await;

    // Every order answered OK exists, unchanged.
    let mut orders = mesh.order();
    for (i, result) in &results {
        if let Ok(order) = result {
            let stored = ok(orders
                .get_order(bearer(
                    &alice.access_token,
                    GetOrderRequest {
                        id: order.id.clone(),
                    },
                ))
                .await);
            assert_eq!(&stored, order, "order {i} answered OK must exist");
        }
    }

    // Stock taken equals the quantities of the orders that exist: no order without its stock,
    // no stock without an order.
    let check = |existing: &[Order], stock_now: i64| {
        let ordered: i64 = existing
            .iter()
            .flat_map(|o| o.items.iter())
            .map(|i| i.quantity)
            .sum();
        assert_eq!(
            INITIAL - stock_now,
            ordered,
            "stock taken == quantities ordered"
        );
        let keys: HashSet<&str> = existing
            .iter()
            .map(|o| o.idempotency_key.as_str())
            .collect();
        assert_eq!(keys.len(), existing.len(), "one order per key");
        for order in existing {
            let i: usize = order
                .idempotency_key
                .strip_prefix("crash-")
                .and_then(|n| n.parse().ok())
                .expect("an order of this test");
            assert_eq!(order.items.len(), 1);
            assert_eq!(order.items[0].quantity, quantity(i), "order {i} is whole");
        }
    };
    let existing = all_orders(&mesh, &alice.access_token, 7).await;
    println!(
        "killed weft-order with {} of {CALLS} calls failed; {} orders exist after the restart",
        failed.len(),
        existing.len()
    );
    check(&existing, stock(&mesh, &p.id).await);
    assert!(existing.len() >= CALLS - failed.len());

    // Retrying every failed call with its key completes the stream exactly once.
    for i in &failed {
        ok(orders
            .create_order(bearer(
                &alice.access_token,
                order_request(&key(*i), vec![line(&p.id, quantity(*i))]),
            ))
            .await);
    }
    let existing = all_orders(&mesh, &alice.access_token, 50).await;
    assert_eq!(existing.len(), CALLS, "one order per key after the retries");
    check(&existing, stock(&mesh, &p.id).await);
    mesh.assert_no_panics();
    mesh.stop().await;
}
