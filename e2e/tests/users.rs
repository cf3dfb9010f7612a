//! UserService over real gRPC: reading profiles (owner checks that do not leak existence),
//! updates with field masks, and the admin-only paginated list.

#[macro_use]
mod common;

use common::*;
use prost_types::FieldMask;
use tonic::Code;

backends!(
    profiles_are_private,
    update_user_follows_the_mask,
    list_users_is_paginated_for_admins,
);

async fn profiles_are_private(backend: Backend) {
    let mesh = TestMesh::start(backend).await;
    let alice = mesh.new_user().await;
    let bob = mesh.new_user().await;
    let admin = mesh.admin().await;
    let (alice_user, bob_user) = (user_of(&alice), user_of(&bob));
    let mut users = mesh.user();
    let get = |token: &str, id: &str| bearer(token, GetUserRequest { id: id.into() });

    assert_eq!(
        ok(users
            .get_user(get(&alice.access_token, &alice_user.id))
            .await),
        alice_user
    );
    assert_eq!(
        ok(users
            .get_me(bearer(&alice.access_token, GetMeRequest {}))
            .await),
        alice_user
    );
    assert_eq!(
        ok(users
            .get_me(bearer(&bob.access_token, GetMeRequest {}))
            .await),
        bob_user
    );
    assert_eq!(
        ok(users
            .get_user(get(&admin.access_token, &alice_user.id))
            .await),
        alice_user
    );

    // Another's profile and a profile that does not exist look the same.
    let other = err(
        users.get_user(get(&alice.access_token, &bob_user.id)).await,
        Code::NotFound,
        &[],
    );
    let missing_id = uuid::Uuid::new_v4().simple().to_string();
    let missing = err(
        users.get_user(get(&alice.access_token, &missing_id)).await,
        Code::NotFound,
        &[],
    );
    assert_eq!(
        other.message().replace(&bob_user.id, "<id>"),
        missing.message().replace(&missing_id, "<id>"),
        "NOT_FOUND for another's profile must not differ from a missing one"
    );
    err(
        users.get_user(get(&alice.access_token, "nope")).await,
        Code::NotFound,
        &[],
    );
    err(
        users.get_user(get(&admin.access_token, "nope")).await,
        Code::NotFound,
        &[],
    );
    invalid(users.get_user(get(&alice.access_token, "")).await, "id");
    mesh.assert_no_panics();
    mesh.stop().await;
}

async fn update_user_follows_the_mask(backend: Backend) {
    let mesh = TestMesh::start(backend).await;
    let alice = mesh.new_user().await;
    let bob = mesh.new_user().await;
    let admin = mesh.admin().await;
    let alice_user = user_of(&alice);
    let mut users = mesh.user();
    let update = |token: &str, user: User, paths: &[&str]| {
        bearer(
            token,
            UpdateUserRequest {
                user: Some(user),
                update_mask: Some(FieldMask {
                    paths: paths.iter().map(|p| p.to_string()).collect(),
                }),
            },
        )
    };
    let patch = |id: &str, name: &str, role: Role| User {
        id: id.into(),
        display_name: name.into(),
        role: role as i32,
        ..Default::default()
    };

    // The owner changes the display name; only the masked field changes.
    let updated = ok(users
        .update_user(update(
            &alice.access_token,
            patch(&alice_user.id, "Alice Renamed", Role::Admin),
            &["display_name"],
        ))
        .await);
    assert_eq!(updated.display_name, "Alice Renamed");
    assert_eq!(updated.role, Role::User as i32, "role was not in the mask");
    assert_eq!(updated.email, alice_user.email);
    assert_eq!(updated.create_time, alice_user.create_time);
    let (before, after) = (
        alice_user.update_time.expect("update_time"),
        updated.update_time.expect("update_time"),
    );
    assert!((after.seconds, after.nanos) >= (before.seconds, before.nanos));
    assert_eq!(
        ok(users
            .get_me(bearer(&alice.access_token, GetMeRequest {}))
            .await)
        .display_name,
        "Alice Renamed"
    );

    // A user may not change roles, their own included, not even together with a name.
    err(
        users
            .update_user(update(
                &alice.access_token,
                patch(&alice_user.id, "", Role::Admin),
                &["role"],
            ))
            .await,
        Code::PermissionDenied,
        &[],
    );
    err(
        users
            .update_user(update(
                &alice.access_token,
                patch(&alice_user.id, "Sneaky", Role::Admin),
                &["display_name", "role"],
            ))
            .await,
        Code::PermissionDenied,
        &[],
    );
    let me = ok(users
        .get_me(bearer(&alice.access_token, GetMeRequest {}))
        .await);
    assert_eq!(
        (me.display_name.as_str(), me.role),
        ("Alice Renamed", Role::User as i32)
    );

    // Another's profile: NOT_FOUND, unchanged.
    let bob_user = user_of(&bob);
    err(
        users
            .update_user(update(
                &alice.access_token,
                patch(&bob_user.id, "Hijacked", Role::User),
                &["display_name"],
            ))
            .await,
        Code::NotFound,
        &[],
    );
    assert_eq!(
        ok(users
            .get_me(bearer(&bob.access_token, GetMeRequest {}))
            .await)
        .display_name,
        bob_user.display_name
    );

    // Unknown mask paths and invalid values name the field.
    invalid(
        users
            .update_user(update(
                &alice.access_token,
                patch(&alice_user.id, "X", Role::User),
                &["nickname"],
            ))
            .await,
        "nickname",
    );
    invalid(
        users
            .update_user(update(
                &alice.access_token,
                patch(&alice_user.id, "", Role::User),
                &["display_name"],
            ))
            .await,
        "display_name",
    );

    // Empty mask: every field the caller may write (a user: the display name).
    let updated = ok(users
        .update_user(bearer(
            &alice.access_token,
            UpdateUserRequest {
                user: Some(User {
                    id: alice_user.id.clone(),
                    display_name: "Alice Again".into(),
                    ..Default::default()
                }),
                update_mask: None,
            },
        ))
        .await);
    assert_eq!(updated.display_name, "Alice Again");
    assert_eq!(updated.role, Role::User as i32);

    // An admin may change both, on anyone.
    let updated = ok(users
        .update_user(update(
            &admin.access_token,
            patch(&bob_user.id, "Bob By Admin", Role::User),
            &["display_name"],
        ))
        .await);
    assert_eq!(updated.display_name, "Bob By Admin");
    let updated = ok(users
        .update_user(update(
            &admin.access_token,
            patch(&alice_user.id, "", Role::Admin),
            &["role"],
        ))
        .await);
    assert_eq!(updated.role, Role::Admin as i32);
    assert_eq!(updated.display_name, "Alice Again");
    assert_eq!(
        ok(users
            .get_user(bearer(
                &admin.access_token,
                GetUserRequest {
                    id: alice_user.id.clone()
                }
            ))
            .await)
        .role,
        Role::Admin as i32
    );
    invalid(
        users
            .update_user(update(
                &admin.access_token,
                patch(&bob_user.id, "", Role::Unspecified),
                &["role"],
            ))
            .await,
        "role",
    );
    err(
        users
            .update_user(update(
                &admin.access_token,
                patch("nope", "Nobody", Role::User),
                &["display_name"],
            ))
            .await,
        Code::NotFound,
        &[],
    );
    mesh.assert_no_panics();
    mesh.stop().await;
}

async fn list_users_is_paginated_for_admins(backend: Backend) {
    let mesh = TestMesh::start(backend).await;
    let admin = mesh.admin().await;
    let mut created = vec![user_of(&admin)];
    for _ in 0..4 {
        created.push(user_of(&mesh.new_user().await));
    }
    let mut users = mesh.user();
    let list = |token: &str, page_size: i32, page_token: &str| {
        bearer(
            token,
            ListUsersRequest {
                page_size,
                page_token: page_token.into(),
            },
        )
    };

    // page_size 2 over 5 users: 2, 2, 1, oldest first, each exactly once.
    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = ok(users
            .list_users(list(&admin.access_token, 2, &page_token))
            .await);
        sizes.push(page.users.len());
        seen.extend(page.users);
        if page.next_page_token.is_empty() {
            break;
        }
        assert!(sizes.len() < 10, "pagination does not end");
        page_token = page.next_page_token;
    }
    assert_eq!(sizes, [2, 2, 1]);
    let ids: Vec<&str> = seen.iter().map(|u| u.id.as_str()).collect();
    let expected: Vec<&str> = created.iter().map(|u| u.id.as_str()).collect();
    assert_eq!(ids, expected, "every user once, oldest first");

    // The default page holds them all, and a token can be replayed (stable ordering).
    let all = ok(users.list_users(list(&admin.access_token, 0, "")).await);
    assert_eq!(all.users.len(), 5);
    assert!(all.next_page_token.is_empty());
    let first = ok(users.list_users(list(&admin.access_token, 2, "")).await);
    let second = ok(users
        .list_users(list(&admin.access_token, 2, &first.next_page_token))
        .await);
    let replay = ok(users
        .list_users(list(&admin.access_token, 2, &first.next_page_token))
        .await);
    assert_eq!(second, replay);
    // Oversized pages are served at the maximum, not refused.
    assert_eq!(
        ok(users
            .list_users(list(&admin.access_token, 100_000, ""))
            .await)
        .users
        .len(),
        5
    );

    // Admins only.
    let alice = mesh.new_user().await;
    err(
        users.list_users(list(&alice.access_token, 2, "")).await,
        Code::PermissionDenied,
        &[],
    );
    err(
        users.list_users(ListUsersRequest::default()).await,
        Code::Unauthenticated,
        &[],
    );
    for bad in ["garbage!!", "bm9wZQ", "%%%", &"A".repeat(600)] {
        invalid(
            users.list_users(list(&admin.access_token, 2, bad)).await,
            "page_token",
        );
    }
    invalid(
        users.list_users(list(&admin.access_token, -1, "")).await,
        "page_size",
    );
    mesh.assert_no_panics();
    mesh.stop().await;
}
