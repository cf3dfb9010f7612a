//! `weft-gateway`: the mesh's REST front door.
//!
//! The gateway turns REST+JSON into gRPC calls with no per-route code: its routes are built at
//! start from the `google.api.http` rules of `weft_proto::FILE_DESCRIPTOR_SET` (and of any
//! further descriptor sets named in mesh-config), requests are transcoded with the canonical
//! proto3 JSON mapping, and answers and errors come back as JSON.
//!
//! Modules, lowest first; each imports only modules above it in this list.
//!
//! - [`route`]: path templates and the route matcher;
//! - [`message_json`]: a decoded message -> its JSON (the reference writer);
//! - [`wire_json`]: the JSON answer written straight from the reply's bytes;
//! - [`endpoint`]: one REST binding of a gRPC method, as the route table made it;
//! - [`request_message`]: path variables, query parameters and JSON body -> the request message;
//! - [`table`]: the route table built from descriptors, and the upstreams it routes to;
//! - [`upstream`]: unary gRPC calls with dynamic messages;
//! - [`metrics`]: the Prometheus series of requests and upstream calls;
//! - [`openapi`]: the OpenAPI document of every route;
//! - [`response`], [`error`]: the answer type, and the JSON error shape with the gRPC -> HTTP
//!   status mapping;
//! - [`request_id`]: the id every request carries;
//! - [`cors`]: CORS headers and preflight answers;
//! - [`admission`]: the cap on requests in flight, and the rate limits' answers;
//! - [`own_routes`]: `/healthz`, `/readyz`, `/metrics`, `/openapi.json` and `/docs`;
//! - [`call`]: the API call path, from authentication to the JSON answer;
//! - [`tls`]: TLS for the listener;
//! - [`connection`]: a client connection's deadlines (request head, idle);
//! - [`serve`]: the accept loop with its cap on connections, and the per-request pipeline
//!   ([`Gateway`]).

pub mod admission;
pub mod call;
pub mod connection;
pub mod cors;
pub mod endpoint;
pub mod error;
pub mod field_rules;
pub mod message_json;
pub mod metrics;
pub mod openapi;
pub mod own_routes;
pub mod request_id;
pub mod request_message;
pub mod response;
pub mod route;
pub mod serve;
pub mod table;
#[cfg(test)]
mod test_gateway;
#[cfg(test)]
mod test_messages;
pub mod tls;
pub mod upstream;
pub mod wire_json;

pub use serve::{Gateway, run, serve};

/// What the gateway's unit tests share: Weft's contract and a config that routes it.
#[cfg(test)]
pub(crate) mod test_support {
    use weft_mesh::{
        MeshConfig,
        config::UpstreamConfig,
        contract::{self, Contract},
    };

    use crate::table::RouteTable;

    /// Weft's three services as upstreams, all at `endpoint`.
    pub fn weft_config(endpoint: &str) -> MeshConfig {
        let mut config = MeshConfig::default();
        for (name, service) in [
            ("auth", "weft.auth.v1.AuthService"),
            ("user", "weft.user.v1.UserService"),
            ("order", "weft.order.v1.OrderService"),
        ] {
            let mut upstream = UpstreamConfig::with_endpoint(endpoint.to_owned());
            upstream.grpc_services = vec![service.to_owned()];
            config.upstreams.insert(name.to_owned(), upstream);
        }
        config
    }

    /// Installs Weft's contract as the process's (for the code that reads
    /// [`contract::current`]); the same for every test of the process.
    pub fn install_weft_contract() -> &'static Contract {
        let config = weft_config("http://127.0.0.1:1");
        contract::install(
            Contract::load(&[weft_proto::FILE_DESCRIPTOR_SET], &config)
                .expect("Weft's contract loads"),
        );
        contract::current()
    }

    /// The route table of Weft's own services.
    pub fn weft_table() -> RouteTable {
        let contract = install_weft_contract();
        RouteTable::build_with(&weft_config("http://127.0.0.1:1"), contract)
            .expect("Weft's own rules are valid")
    }
}
