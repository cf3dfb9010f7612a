//! The gRPC face of the service: checks who asks, validates, calls the store, maps the result.
//!
//! Access per method (service-only CreateUser, admin-only ListUsers, a token for the rest) is
//! enforced by the mesh before these handlers run; they only decide whose profile a caller
//! may see or change.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use weft_mesh::{
    auth::{Principal, Role as CallerRole},
    page::{Cursor, PageRequest},
    unary::UnaryRoutes,
    validate::{self, FieldError},
};
use weft_proto::user::{
    CreateUserRequest, GetMeRequest, GetUserRequest, ListUsersRequest, ListUsersResponse,
    UpdateUserRequest, User, user_service_server::UserService,
};

use crate::{
    domain::{self, UserError},
    store::{Created, Store},
};

/// The UserService implementation.
#[derive(Debug, Clone)]
pub struct Api {
    store: Store,
}

impl Api {
    /// An API over `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

/// An id the caller named: empty is INVALID_ARGUMENT; any id that cannot exist, whatever its
/// shape, is NOT_FOUND like one that does not (the contract's rule for ids).
fn requested_id<'a>(field: &str, id: &'a str) -> Result<&'a str, UserError> {
    if id.is_empty() {
        return Err(FieldError::new(field, "must not be empty").into());
    }
    if !validate::can_exist(id) {
        return Err(UserError::NotFound);
    }
    Ok(id)
}

/// Every method of `weft.user.v1.UserService`, served without tonic's codec (see
/// `weft_mesh::unary`; a test checks that none is missing).
pub fn unary_routes(api: &Arc<Api>, max_message_bytes: usize) -> UnaryRoutes {
    UnaryRoutes::new(max_message_bytes)
        .route(
            api,
            "/weft.user.v1.UserService/CreateUser",
            |api: &Api, r| UserService::create_user(api, r),
        )
        .route(api, "/weft.user.v1.UserService/GetUser", |api: &Api, r| {
            UserService::get_user(api, r)
        })
        .route(api, "/weft.user.v1.UserService/GetMe", |api: &Api, r| {
            UserService::get_me(api, r)
        })
        .route(
            api,
            "/weft.user.v1.UserService/UpdateUser",
            |api: &Api, r| UserService::update_user(api, r),
        )
        .route(
            api,
            "/weft.user.v1.UserService/ListUsers",
            |api: &Api, r| UserService::list_users(api, r),
        )
}

#[tonic::async_trait]
impl UserService for Api {
    async fn create_user(
        &self,
        request: Request<CreateUserRequest>,
    ) -> Result<Response<User>, Status> {
        let new = domain::new_user(request.get_ref()).map_err(UserError::from)?;
        let created = self.store.create(&new).await?;
        match &created {
            Created::New(user) => tracing::info!(user_id = %user.id, "user created"),
            Created::Existing(user) => {
                tracing::info!(user_id = %user.id, "user creation repeated; returning the first")
            }
        }
        Ok(Response::new(created.into_record().into()))
    }

    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        let principal = Principal::of(&request)?;
        let id = requested_id("id", &request.get_ref().id)?;
        // weft-auth reads profiles at login with its service token.
        if !(principal.may_access(id) || principal.role == CallerRole::Service) {
            return Err(UserError::NotFound.into());
        }
        let user = self.store.get(id).await?.ok_or(UserError::NotFound)?;
        Ok(Response::new(user.into()))
    }

    async fn get_me(&self, request: Request<GetMeRequest>) -> Result<Response<User>, Status> {
        let principal = Principal::of(&request)?;
        let user = self
            .store
            .get(&principal.subject)
            .await?
            .ok_or(UserError::NotFound)?;
        Ok(Response::new(user.into()))
    }

    async fn update_user(
        &self,
        request: Request<UpdateUserRequest>,
    ) -> Result<Response<User>, Status> {
        let principal = Principal::of(&request)?.clone();
        let UpdateUserRequest { user, update_mask } = request.into_inner();
        let user = user.ok_or_else(|| UserError::from(FieldError::new("user", "is required")))?;
        let id = requested_id("user.id", &user.id)?;
        // Who may touch the profile comes before what the request asks (AIP-211), so that
        // others' ids answer NOT_FOUND whatever else is wrong with the request.
        if !principal.may_access(id) {
            return Err(UserError::NotFound.into());
        }
        let changes = domain::changes(&user, update_mask.as_ref(), principal.is_admin())?;
        let updated = self
            .store
            .update(id, &changes)
            .await?
            .ok_or(UserError::NotFound)?;
        if let Some(role) = changes.role {
            tracing::info!(user_id = %updated.id, by = %principal.subject, role = role.as_str_name(), "role set");
        }
        Ok(Response::new(updated.into()))
    }

    async fn list_users(
        &self,
        request: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        let req = request.get_ref();
        let page = PageRequest::parse(req.page_size, &req.page_token)?;
        let rows = self
            .store
            .list(page.after.as_ref(), page.fetch_limit())
            .await?;
        let (rows, next_page_token) = page.finish(rows, |r| Cursor {
            time: r.create_time,
            id: r.id.clone(),
        });
        Ok(Response::new(ListUsersResponse {
            users: rows.into_iter().map(User::from).collect(),
            next_page_token,
        }))
    }
}

#[cfg(test)]
mod tests {
    use prost_types::FieldMask;
    use tonic::Code;
    use weft_proto::user::Role;

    use super::*;
    use weft_testkit::{Backend, TestDatabase};

    use crate::store::tests::temp_store;

    async fn api() -> (Api, TestDatabase) {
        let (store, dir) = temp_store(&Backend::Sqlite).await;
        (Api::new(store), dir)
    }

    fn as_caller<T>(message: T, subject: &str, role: CallerRole) -> Request<T> {
        let mut request = Request::new(message);
        request.extensions_mut().insert(Principal {
            subject: subject.into(),
            role,
        });
        request
    }

    fn service<T>(message: T) -> Request<T> {
        as_caller(message, "service:weft-auth", CallerRole::Service)
    }

    async fn create(api: &Api, email: &str, role: Role) -> User {
        let req = CreateUserRequest {
            email: email.into(),
            display_name: "Ada".into(),
            role: role as i32,
            creation_key: format!("key-{email}"),
        };
        api.create_user(service(req)).await.unwrap().into_inner()
    }

    fn get(id: &str, subject: &str, role: CallerRole) -> Request<GetUserRequest> {
        as_caller(GetUserRequest { id: id.into() }, subject, role)
    }

    fn update(
        user: User,
        paths: &[&str],
        subject: &str,
        role: CallerRole,
    ) -> Request<UpdateUserRequest> {
        let update_mask = (!paths.is_empty()).then(|| FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        });
        as_caller(
            UpdateUserRequest {
                user: Some(user),
                update_mask,
            },
            subject,
            role,
        )
    }

    #[tokio::test]
    async fn create_is_idempotent_and_refuses_taken_emails() {
        let (api, _dir) = api().await;
        let req = CreateUserRequest {
            email: " Ada@Example.com".into(),
            display_name: "Ada".into(),
            role: Role::User as i32,
            creation_key: "k1".into(),
        };
        let first = api
            .create_user(service(req.clone()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(first.email, "ada@example.com");
        assert_eq!(first.create_time, first.update_time);
        let again = api
            .create_user(service(req.clone()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again, first);
        let other_key = CreateUserRequest {
            creation_key: "k2".into(),
            ..req
        };
        let err = api.create_user(service(other_key)).await.unwrap_err();
        assert_eq!(
            (err.code(), err.message()),
            (Code::AlreadyExists, "email already registered")
        );
    }

    #[tokio::test]
    async fn profiles_are_visible_to_owner_admin_and_services_only() {
        let (api, _dir) = api().await;
        let ada = create(&api, "ada@x.io", Role::User).await;
        let bob = create(&api, "bob@x.io", Role::User).await;
        let own = api
            .get_user(get(&ada.id, &ada.id, CallerRole::User))
            .await
            .unwrap();
        assert_eq!(own.into_inner(), ada);
        assert!(
            api.get_user(get(&ada.id, "root", CallerRole::Admin))
                .await
                .is_ok()
        );
        assert!(
            api.get_user(get(&ada.id, "service:weft-auth", CallerRole::Service))
                .await
                .is_ok()
        );

        let other = api
            .get_user(get(&ada.id, &bob.id, CallerRole::User))
            .await
            .unwrap_err();
        let missing = api
            .get_user(get("nope", &bob.id, CallerRole::User))
            .await
            .unwrap_err();
        assert_eq!(
            (other.code(), other.message()),
            (missing.code(), missing.message())
        );
        assert_eq!(other.code(), Code::NotFound);
        let long = "x".repeat(500);
        let err = api
            .get_user(get(&long, "root", CallerRole::Admin))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let err = api
            .get_user(get("", "root", CallerRole::Admin))
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), err.message()),
            (Code::InvalidArgument, "id: must not be empty")
        );

        let me = api
            .get_me(as_caller(GetMeRequest {}, &bob.id, CallerRole::User))
            .await
            .unwrap();
        assert_eq!(me.into_inner(), bob);
        let err = api.get_me(service(GetMeRequest {})).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let err = api.get_me(Request::new(GetMeRequest {})).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }

    #[tokio::test]
    async fn updates_follow_owner_and_role_rules() {
        let (api, _dir) = api().await;
        let ada = create(&api, "ada@x.io", Role::User).await;
        let bob = create(&api, "bob@x.io", Role::User).await;
        let patch = |name: &str, role: Role| User {
            id: ada.id.clone(),
            display_name: name.into(),
            role: role as i32,
            ..User::default()
        };

        let renamed = api
            .update_user(update(
                patch(" Grace ", Role::Unspecified),
                &[],
                &ada.id,
                CallerRole::User,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (renamed.display_name.as_str(), renamed.role),
            ("Grace", Role::User as i32)
        );
        assert_eq!(renamed.create_time, ada.create_time);

        let err = api
            .update_user(update(
                patch("X", Role::Unspecified),
                &[],
                &bob.id,
                CallerRole::User,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let err = api
            .update_user(update(
                patch("X", Role::Admin),
                &["role"],
                &ada.id,
                CallerRole::User,
            ))
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), err.message()),
            (
                Code::PermissionDenied,
                "only administrators may change roles"
            )
        );
        let err = api
            .update_user(update(
                patch("X", Role::Admin),
                &[],
                &ada.id,
                CallerRole::User,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        let err = api
            .update_user(update(
                patch("X", Role::User),
                &["email"],
                &ada.id,
                CallerRole::User,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("\"email\""), "{}", err.message());

        let promoted = api
            .update_user(update(
                patch("ignored", Role::Admin),
                &["role"],
                "root",
                CallerRole::Admin,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (promoted.display_name.as_str(), promoted.role),
            ("Grace", Role::Admin as i32)
        );

        let err = api
            .update_user(as_caller(
                UpdateUserRequest::default(),
                &ada.id,
                CallerRole::User,
            ))
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), err.message()),
            (Code::InvalidArgument, "user: is required")
        );
        let no_id = User {
            id: String::new(),
            ..patch("X", Role::Unspecified)
        };
        let err = api
            .update_user(update(no_id, &[], "root", CallerRole::Admin))
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), err.message()),
            (Code::InvalidArgument, "user.id: must not be empty")
        );
        let ghost = User {
            id: "nope".into(),
            ..patch("X", Role::Unspecified)
        };
        let err = api
            .update_user(update(ghost, &[], "root", CallerRole::Admin))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }

    #[tokio::test]
    async fn listing_pages_through_everyone() {
        let (api, _dir) = api().await;
        let mut created = Vec::new();
        for n in 0..5 {
            created.push(create(&api, &format!("u{n}@x.io"), Role::User).await);
        }
        let mut seen = Vec::new();
        let mut page_token = String::new();
        loop {
            let req = ListUsersRequest {
                page_size: 2,
                page_token: page_token.clone(),
            };
            let page = api
                .list_users(as_caller(req, "root", CallerRole::Admin))
                .await
                .unwrap();
            let page = page.into_inner();
            assert!(page.users.len() <= 2);
            seen.extend(page.users);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        let key = |u: &User| {
            let t = u.create_time.unwrap_or_default();
            (t.seconds, t.nanos, u.id.clone())
        };
        created.sort_by_key(key);
        assert_eq!(seen, created);
        let bad = ListUsersRequest {
            page_size: 2,
            page_token: "garbage!".into(),
        };
        let err = api
            .list_users(as_caller(bad, "root", CallerRole::Admin))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }
}
