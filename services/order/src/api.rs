//! The tonic `OrderService`: validates input, checks ownership, calls the store, maps to proto.
//!
//! Access per method (public, admin, signed-in) is enforced by the mesh before these handlers
//! run; they only check that an order belongs to the caller (or that the caller is an admin).

use std::sync::Arc;

use tonic::{Code, Request, Response, Status};
use weft_mesh::{
    auth::Principal,
    client::MeshChannel,
    clock::timestamp,
    page::PageRequest,
    unary::UnaryRoutes,
    validate::{self, FieldError},
};
use weft_proto::{
    order::{self as pb, order_service_server::OrderService},
    user::{GetUserRequest, user_service_client::UserServiceClient},
};

use crate::{
    domain::{self, Error, Order, OrderStatus, Product},
    store::Store,
};

/// The `OrderService` implementation.
#[derive(Clone)]
pub struct OrderApi {
    store: Store,
    users: UserServiceClient<MeshChannel>,
}

impl OrderApi {
    /// An API over `store` that checks users with `users` (weft-user).
    pub fn new(store: Store, users: UserServiceClient<MeshChannel>) -> Self {
        Self { store, users }
    }

    /// Asks weft-user whether the caller's profile exists. The mesh client forwards the
    /// caller's own token, so weft-user's owner check lets them read their profile.
    async fn ensure_user_exists(&self, user_id: &str) -> Result<(), Error> {
        let mut users = self.users.clone();
        let request = GetUserRequest {
            id: user_id.to_owned(),
        };
        match users.get_user(request).await {
            Ok(_) => Ok(()),
            Err(status) => Err(match status.code() {
                Code::NotFound => Error::UserMissing(user_id.to_owned()),
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                    Error::UserServiceUnavailable(status.message().to_owned())
                }
                Code::Unauthenticated => Error::Unauthenticated(status.message().to_owned()),
                code => Error::Internal(format!(
                    "user service answered GetUser with {code:?}: {}",
                    status.message()
                )),
            }),
        }
    }

    /// The order with `id` if the caller may see it; NOT_FOUND alike when it does not exist
    /// and when it is someone else's, so ids of others' orders reveal nothing.
    async fn visible_order(&self, principal: &Principal, id: &str) -> Result<Order, Error> {
        match self.store.order(id).await? {
            Some(order) if principal.may_access(&order.user_id) => Ok(order),
            _ => Err(Error::OrderNotFound(id.to_owned())),
        }
    }
}

/// Every method of `weft.order.v1.OrderService`, served without tonic's codec (see
/// `weft_mesh::unary`; a test checks that none is missing).
pub fn unary_routes(api: &Arc<OrderApi>, max_message_bytes: usize) -> UnaryRoutes {
    UnaryRoutes::new(max_message_bytes)
        .route(
            api,
            "/weft.order.v1.OrderService/ListProducts",
            |api: &OrderApi, r| OrderService::list_products(api, r),
        )
        .route(
            api,
            "/weft.order.v1.OrderService/GetProduct",
            |api: &OrderApi, r| OrderService::get_product(api, r),
        )
        .route(
            api,
            "/weft.order.v1.OrderService/CreateProduct",
            |api: &OrderApi, r| OrderService::create_product(api, r),
        )
        .route(
            api,
            "/weft.order.v1.OrderService/RestockProduct",
            |api: &OrderApi, r| OrderService::restock_product(api, r),
        )
        .route(
            api,
            "/weft.order.v1.OrderService/CreateOrder",
            |api: &OrderApi, r| OrderService::create_order(api, r),
        )
        .route(
            api,
            "/weft.order.v1.OrderService/GetOrder",
            |api: &OrderApi, r| OrderService::get_order(api, r),
        )
        .route(
            api,
            "/weft.order.v1.OrderService/ListOrders",
            |api: &OrderApi, r| OrderService::list_orders(api, r),
        )
        .route(
            api,
            "/weft.order.v1.OrderService/CancelOrder",
            |api: &OrderApi, r| OrderService::cancel_order(api, r),
        )
}

#[tonic::async_trait]
impl OrderService for OrderApi {
    async fn list_products(
        &self,
        request: Request<pb::ListProductsRequest>,
    ) -> Result<Response<pb::ListProductsResponse>, Status> {
        let request = request.into_inner();
        let page = PageRequest::parse(request.page_size, &request.page_token)?;
        let (products, next_page_token) = self.store.list_products(&page).await?;
        Ok(Response::new(pb::ListProductsResponse {
            products: products.into_iter().map(product_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn get_product(
        &self,
        request: Request<pb::GetProductRequest>,
    ) -> Result<Response<pb::Product>, Status> {
        let id = validate::id("id", &request.get_ref().id)?;
        match self.store.product(id).await? {
            Some(product) => Ok(Response::new(product_to_pb(product))),
            None => Err(Error::ProductNotFound(id.to_owned()).into()),
        }
    }

    async fn create_product(
        &self,
        request: Request<pb::CreateProductRequest>,
    ) -> Result<Response<pb::Product>, Status> {
        let product = request
            .get_ref()
            .product
            .as_ref()
            .ok_or_else(|| FieldError::new("product", "is required"))?;
        let new = domain::new_product(
            &product.name,
            &product.description,
            product.unit_price_cents,
            &product.currency,
            product.stock,
        )?;
        let created = self.store.create_product(&new).await?;
        tracing::info!(product_id = %created.id, "product created");
        Ok(Response::new(product_to_pb(created)))
    }

    async fn restock_product(
        &self,
        request: Request<pb::RestockProductRequest>,
    ) -> Result<Response<pb::Product>, Status> {
        let request = request.get_ref();
        let id = validate::id("id", &request.id)?;
        let quantity = domain::restock_quantity(request.quantity)?;
        let product = self.store.restock(id, quantity).await?;
        Ok(Response::new(product_to_pb(product)))
    }

    async fn create_order(
        &self,
        request: Request<pb::CreateOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let user_id = Principal::of(&request)?.subject.clone();
        let body = request.get_ref();
        let order_request = domain::order_request(
            &body.idempotency_key,
            body.items
                .iter()
                .map(|l| (l.product_id.as_str(), l.quantity)),
        )?;
        self.ensure_user_exists(&user_id).await?;
        let order = self.store.create_order(&user_id, &order_request).await?;
        Ok(Response::new(order_to_pb(order)))
    }

    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let principal = Principal::of(&request)?;
        let id = validate::id("id", &request.get_ref().id)?;
        let order = self.visible_order(principal, id).await?;
        Ok(Response::new(order_to_pb(order)))
    }

    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let principal = Principal::of(&request)?;
        let body = request.get_ref();
        let page = PageRequest::parse(body.page_size, &body.page_token)?;
        let (orders, next_page_token) = self.store.list_orders(&principal.subject, &page).await?;
        Ok(Response::new(pb::ListOrdersResponse {
            orders: orders.into_iter().map(order_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn cancel_order(
        &self,
        request: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let principal = Principal::of(&request)?;
        let id = validate::id("id", &request.get_ref().id)?;
        let order = self.visible_order(principal, id).await?;
        let order = match order.status {
            OrderStatus::Cancelled => order,
            OrderStatus::Confirmed => self.store.cancel_order(order).await?,
        };
        Ok(Response::new(order_to_pb(order)))
    }
}

// === mapping to the proto ===

fn product_to_pb(product: Product) -> pb::Product {
    pb::Product {
        id: product.id,
        name: product.name,
        description: product.description,
        unit_price_cents: product.unit_price_cents,
        currency: product.currency,
        stock: product.stock,
        create_time: Some(timestamp(product.create_time)),
        update_time: Some(timestamp(product.update_time)),
    }
}

fn order_to_pb(order: Order) -> pb::Order {
    let status = match order.status {
        OrderStatus::Confirmed => pb::OrderStatus::Confirmed,
        OrderStatus::Cancelled => pb::OrderStatus::Cancelled,
    };
    pb::Order {
        id: order.id,
        user_id: order.user_id,
        status: status as i32,
        items: order
            .items
            .into_iter()
            .map(|item| pb::OrderItem {
                product_id: item.product_id,
                product_name: item.product_name,
                quantity: item.quantity,
                unit_price_cents: item.unit_price_cents,
            })
            .collect(),
        total_cents: order.total_cents,
        currency: order.currency,
        idempotency_key: order.idempotency_key.unwrap_or_default(),
        create_time: Some(timestamp(order.create_time)),
        update_time: Some(timestamp(order.update_time)),
    }
}

#[cfg(test)]
mod tests {
    //! The handlers, driven directly with a principal in the request (as the mesh's auth layer
    //! leaves it), against a temporary store and a fake weft-user on a loopback port.

    use std::sync::{Arc, Mutex};

    use tonic::transport::Server;
    use weft_mesh::{auth::Role, config::UpstreamConfig, propagate::CallContext};
    use weft_proto::user::{
        self as user_pb,
        user_service_server::{UserService, UserServiceServer},
    };

    use super::*;
    use weft_testkit::Backend;

    use crate::store::testing::{TempStore, temp_store};

    /// A weft-user that knows a fixed set of ids and records the tokens it was called with.
    #[derive(Clone, Default)]
    struct FakeUsers {
        known: Vec<String>,
        seen_auth: Arc<Mutex<Vec<String>>>,
    }

    #[tonic::async_trait]
    impl UserService for FakeUsers {
        async fn create_user(
            &self,
            _: Request<user_pb::CreateUserRequest>,
        ) -> Result<Response<user_pb::User>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn get_user(
            &self,
            request: Request<user_pb::GetUserRequest>,
        ) -> Result<Response<user_pb::User>, Status> {
            let auth = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            self.seen_auth.lock().unwrap().push(auth);
            let id = request.into_inner().id;
            if self.known.contains(&id) {
                Ok(Response::new(user_pb::User {
                    id,
                    ..Default::default()
                }))
            } else {
                Err(Status::not_found(format!("user {id} not found")))
            }
        }
        async fn get_me(
            &self,
            _: Request<user_pb::GetMeRequest>,
        ) -> Result<Response<user_pb::User>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn update_user(
            &self,
            _: Request<user_pb::UpdateUserRequest>,
        ) -> Result<Response<user_pb::User>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn list_users(
            &self,
            _: Request<user_pb::ListUsersRequest>,
        ) -> Result<Response<user_pb::ListUsersResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
    }

    struct Harness {
        api: OrderApi,
        users: FakeUsers,
        _store: TempStore,
    }

    fn users_channel(endpoint: String) -> UserServiceClient<MeshChannel> {
        let mut config = weft_mesh::MeshConfig::default();
        let upstream = UpstreamConfig {
            connect_timeout_ms: 500,
            timeout_ms: 2000,
            ..UpstreamConfig::with_endpoint(endpoint)
        };
        config.upstreams.insert("user".into(), upstream);
        // The fake weft-user below is an in-process plain-text server: an explicit opt-out.
        config.mtls.mode = weft_mesh::config::MtlsMode::Off;
        UserServiceClient::new(weft_mesh::client::channel(&config, "user").unwrap())
    }

    async fn harness(known: &[&str]) -> Harness {
        let users = FakeUsers {
            known: known.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Server::builder()
            .add_service(UserServiceServer::new(users.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        tokio::spawn(server);
        let store = temp_store(&Backend::Sqlite).await;
        Harness {
            api: OrderApi::new(store.store.clone(), users_channel(format!("http://{addr}"))),
            users,
            _store: store,
        }
    }

    fn as_user<T>(subject: &str, role: Role, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.extensions_mut().insert(Principal {
            subject: subject.to_owned(),
            role,
        });
        request
    }

    async fn new_product(api: &OrderApi, stock: i64) -> pb::Product {
        let product = pb::Product {
            name: "Tea".into(),
            unit_price_cents: 300,
            stock,
            ..Default::default()
        };
        let request = as_user(
            "admin",
            Role::Admin,
            pb::CreateProductRequest {
                product: Some(product),
            },
        );
        api.create_product(request).await.unwrap().into_inner()
    }

    fn order_of(product_id: &str, quantity: i64, key: &str) -> pb::CreateOrderRequest {
        pb::CreateOrderRequest {
            idempotency_key: key.into(),
            items: vec![pb::OrderLine {
                product_id: product_id.into(),
                quantity,
            }],
        }
    }

    #[tokio::test]
    async fn products_read_back_with_defaults_and_unknown_ids_are_not_found() {
        let h = harness(&[]).await;
        let created = new_product(&h.api, 0).await;
        assert_eq!((created.currency.as_str(), created.stock), ("USD", 0));
        let got = h
            .api
            .get_product(Request::new(pb::GetProductRequest {
                id: created.id.clone(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got, created);

        let err = h
            .api
            .get_product(Request::new(pb::GetProductRequest { id: "nope".into() }))
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), err.message()),
            (Code::NotFound, "product nope not found")
        );
        let err = h
            .api
            .get_product(Request::new(pb::GetProductRequest { id: String::new() }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);

        let missing = as_user(
            "admin",
            Role::Admin,
            pb::CreateProductRequest { product: None },
        );
        let err = h.api.create_product(missing).await.unwrap_err();
        assert_eq!(
            (err.code(), err.message()),
            (Code::InvalidArgument, "product: is required")
        );
    }

    #[tokio::test]
    async fn an_order_checks_the_user_with_the_callers_token() {
        let h = harness(&["u1"]).await;
        let product = new_product(&h.api, 5).await;

        // The mesh's server layer would scope the inbound call's context like this.
        let mut inbound = tonic::codegen::http::HeaderMap::new();
        inbound.insert("authorization", "Bearer user-token".parse().unwrap());
        let context = CallContext::from_headers(&inbound);
        let request = as_user("u1", Role::User, order_of(&product.id, 2, ""));
        let order = context
            .scope(h.api.create_order(request))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(order.status, pb::OrderStatus::Confirmed as i32);
        assert_eq!(order.total_cents, 600);
        assert_eq!(
            h.users.seen_auth.lock().unwrap().as_slice(),
            ["Bearer user-token"]
        );

        let ghost = as_user("ghost", Role::User, order_of(&product.id, 1, ""));
        let err = h.api.create_order(ghost).await.unwrap_err();
        assert_eq!(
            (err.code(), err.message()),
            (Code::FailedPrecondition, "user ghost does not exist")
        );
    }

    #[tokio::test]
    async fn an_unreachable_user_service_is_unavailable() {
        let store = temp_store(&Backend::Sqlite).await;
        // Nothing listens on port 9 of loopback.
        let api = OrderApi::new(
            store.store.clone(),
            users_channel("http://127.0.0.1:9".into()),
        );
        let product = new_product(&api, 5).await;
        let request = as_user("u1", Role::User, order_of(&product.id, 1, ""));
        let err = api.create_order(request).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
    }

    #[tokio::test]
    async fn oversized_orders_are_refused_before_the_user_is_checked() {
        let h = harness(&["u1"]).await;
        let items = vec![
            pb::OrderLine {
                product_id: "p".into(),
                quantity: 1
            };
            10_000
        ];
        let request = as_user(
            "u1",
            Role::User,
            pb::CreateOrderRequest {
                idempotency_key: String::new(),
                items,
            },
        );
        let err = h.api.create_order(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().starts_with("items: "), "{}", err.message());
        assert!(h.users.seen_auth.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn others_orders_are_not_found_but_admins_see_and_cancel_them() {
        let h = harness(&["u1", "u2"]).await;
        let product = new_product(&h.api, 5).await;
        let request = as_user("u1", Role::User, order_of(&product.id, 3, "k"));
        let order = h.api.create_order(request).await.unwrap().into_inner();

        let get = |who: &str, role| {
            as_user(
                who,
                role,
                pb::GetOrderRequest {
                    id: order.id.clone(),
                },
            )
        };
        let err = h.api.get_order(get("u2", Role::User)).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let err_missing = h
            .api
            .get_order(as_user(
                "u2",
                Role::User,
                pb::GetOrderRequest { id: "nope".into() },
            ))
            .await
            .unwrap_err();
        assert_eq!(err_missing.code(), Code::NotFound);
        assert_eq!(
            err.message().replace(&order.id, "X"),
            err_missing.message().replace("nope", "X")
        );
        let seen = h
            .api
            .get_order(get("boss", Role::Admin))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(seen, order);

        let mine = h
            .api
            .list_orders(as_user("u2", Role::User, pb::ListOrdersRequest::default()))
            .await
            .unwrap()
            .into_inner();
        assert!(mine.orders.is_empty());

        let cancel = |who: &str, role| {
            as_user(
                who,
                role,
                pb::CancelOrderRequest {
                    id: order.id.clone(),
                },
            )
        };
        let err = h
            .api
            .cancel_order(cancel("u2", Role::User))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let cancelled = h
            .api
            .cancel_order(cancel("boss", Role::Admin))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(cancelled.status, pb::OrderStatus::Cancelled as i32);
        let again = h
            .api
            .cancel_order(cancel("u1", Role::User))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again, cancelled);
        let stock = h
            .api
            .get_product(Request::new(pb::GetProductRequest { id: product.id }))
            .await
            .unwrap()
            .into_inner()
            .stock;
        assert_eq!(stock, 5);
    }
}
