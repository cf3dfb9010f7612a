//! The route table, built at start from the `google.api.http` rules of descriptor sets.
//!
//! Every annotated method of every service becomes one [`Endpoint`] per binding (the rule and
//! its `additional_bindings`). Everything that can be checked once is checked here, so that a
//! bad rule stops the gateway at start with the method named, never a request at run time:
//! templates parse, path variables and `body`/`response_body` name real fields, and no two
//! rules match the same requests.

use std::sync::Arc;

use prost_reflect::{
    DescriptorPool, DynamicMessage, Kind, MessageDescriptor, MethodDescriptor, ReflectMessage,
    Value,
};
use weft_mesh::{
    config::{GatewayConfig, MeshConfig, process_name},
    contract::{Access, Contract, grpc_path},
};

use crate::{
    endpoint::{BodyRule, Endpoint},
    request_message::{is_scalar_like, path_string_fields},
    route::{Method, PathTemplate, RouteError, Router},
    wire_json::ReplyWriter,
};

/// A problem with the API definitions, found at start.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// A descriptor set could not be read or decoded.
    #[error("descriptor set {file}: {reason}")]
    Descriptor {
        /// The file (or `weft-proto` for the built-in set).
        file: String,
        /// What went wrong.
        reason: String,
    },
    /// A rule is wrong.
    #[error("{method}: {reason}")]
    Rule {
        /// The full method name.
        method: String,
        /// What is wrong with its rule.
        reason: String,
    },
    /// Two rules collide, or a template does not parse.
    #[error(transparent)]
    Route(#[from] RouteError),
}

/// An upstream the table routes to.
#[derive(Debug, Clone)]
pub struct UpstreamSpec {
    /// Name for logs, metrics and errors (`weft-order`).
    pub name: String,
    /// Its key in mesh-config (`order` of `[upstreams.order]`), whose policies apply.
    pub key: String,
}

/// The routes and the upstreams they go to.
pub struct RouteTable {
    /// Matches requests to endpoints.
    pub router: Router<Arc<Endpoint>>,
    /// The upstreams, indexed by [`Endpoint::upstream`].
    pub upstreams: Vec<UpstreamSpec>,
    /// Every descriptor pool the routes come from (Weft's first), for the OpenAPI document.
    pub pools: Vec<DescriptorPool>,
}

impl RouteTable {
    /// Builds the table from the process's contract: the annotated methods of every gRPC
    /// service that an `[upstreams.<name>]` serves, routed to that upstream.
    pub fn build(config: &MeshConfig) -> Result<Self, TableError> {
        Self::build_with(config, weft_mesh::contract::current())
    }

    /// Builds the table for `config` from `contract`.
    pub fn build_with(config: &MeshConfig, contract: &Contract) -> Result<Self, TableError> {
        let mut table = RouteTable {
            router: Router::new(),
            upstreams: Vec::new(),
            pools: Vec::new(),
        };
        let pool = contract.pool();
        // Routes (and the OpenAPI document's tags) follow the order mesh-config declares the
        // upstreams in, then the order of their services.
        for (name, upstream_config) in &config.upstreams {
            let described = contract.services_of(name);
            for service in &upstream_config.grpc_services {
                if !described.contains(service) {
                    tracing::warn!(
                        upstream = %name,
                        service = %service,
                        "no descriptor describes this gRPC service, so it gets no routes: \
                         check the name, or give the upstream a descriptor_set"
                    );
                }
            }
            let upstream = table.add_upstream(UpstreamSpec {
                name: process_name(name),
                key: name.clone(),
            });
            for service_name in contract.services_of(name) {
                let service = pool.get_service_by_name(service_name).ok_or_else(|| {
                    TableError::Descriptor {
                        file: format!("upstreams.{name}"),
                        reason: format!("service {service_name} is missing"),
                    }
                })?;
                for method in service.methods() {
                    table.add_method(&method, upstream, &config.gateway, contract)?;
                }
            }
        }
        table.pools.push(pool.clone());
        Ok(table)
    }

    fn add_upstream(&mut self, spec: UpstreamSpec) -> usize {
        self.upstreams.push(spec);
        self.upstreams.len() - 1
    }

    fn add_method(
        &mut self,
        method: &MethodDescriptor,
        upstream: usize,
        gateway: &GatewayConfig,
        contract: &Contract,
    ) -> Result<(), TableError> {
        let pool = method.parent_pool();
        let Some(http_ext) = pool.get_extension_by_name("google.api.http") else {
            return Ok(());
        };
        let options = method.options();
        if !options.has_extension(&http_ext) {
            // No annotation: internal to the mesh, never exposed.
            return Ok(());
        }
        let Value::Message(rule) = options.get_extension(&http_ext).into_owned() else {
            return Ok(());
        };
        let full_method = method.full_name().to_string();
        let rule_error = |reason: String| TableError::Rule {
            method: full_method.clone(),
            reason,
        };
        if method.is_client_streaming() || method.is_server_streaming() {
            return Err(rule_error(
                "streaming methods cannot have HTTP rules".into(),
            ));
        }
        let path = grpc_path(method);
        let access = contract.access(&path).unwrap_or(Access::Authenticated);
        let timeout = gateway.route_timeout(&path[1..]);
        let grpc_path = path
            .parse::<http::uri::PathAndQuery>()
            .map_err(|e| rule_error(e.to_string()))?;

        let mut bindings = vec![rule.clone()];
        if let Some(Value::List(extra)) = field(&rule, "additional_bindings") {
            for binding in extra {
                if let Value::Message(binding) = binding {
                    bindings.push(binding);
                }
            }
        }
        for binding in bindings {
            let (http_method, template) = pattern(&binding)
                .ok_or_else(|| rule_error("the rule has no pattern (get, post, ...)".into()))?;
            let body =
                match string_field(&binding, "body").as_str() {
                    "" => BodyRule::None,
                    "*" => BodyRule::Whole,
                    name => BodyRule::Field(method.input().get_field_by_name(name).ok_or_else(
                        || rule_error(format!("body `{name}` is not a field of the request")),
                    )?),
                };
            let response_body = match string_field(&binding, "response_body").as_str() {
                "" => None,
                name => Some(method.output().get_field_by_name(name).ok_or_else(|| {
                    rule_error(format!(
                        "response_body `{name}` is not a field of the response"
                    ))
                })?),
            };
            let reply = Arc::new(ReplyWriter::new(method.output(), response_body.clone()));
            let slot = self.router.len();
            let endpoint = |parsed: &PathTemplate| {
                Arc::new(Endpoint {
                    full_method: full_method.clone(),
                    grpc_path: grpc_path.clone(),
                    method: method.clone(),
                    template: template.clone(),
                    http_method: http_method.clone(),
                    path_strings: path_string_fields(&method.input(), &body, parsed),
                    body,
                    response_body,
                    access,
                    upstream,
                    timeout,
                    slot,
                    reply,
                })
            };
            self.router.insert_with(
                http_method.clone(),
                &template,
                full_method.clone(),
                endpoint,
            )?;
            let route = self.router.routes().last().expect("just inserted");
            for variable in route.template().variables() {
                check_path_field(&method.input(), variable.field_path())
                    .map_err(|reason| rule_error(format!("{template}: {reason}")))?;
            }
        }
        Ok(())
    }
}

fn field(message: &DynamicMessage, name: &str) -> Option<Value> {
    let field = message.descriptor().get_field_by_name(name)?;
    message
        .has_field(&field)
        .then(|| message.get_field(&field).into_owned())
}

fn string_field(message: &DynamicMessage, name: &str) -> String {
    match field(message, name) {
        Some(Value::String(s)) => s,
        _ => String::new(),
    }
}

/// The HTTP method and path template of a rule.
fn pattern(rule: &DynamicMessage) -> Option<(Method, String)> {
    for (name, method) in [
        ("get", Method::Get),
        ("put", Method::Put),
        ("post", Method::Post),
        ("delete", Method::Delete),
        ("patch", Method::Patch),
    ] {
        if let Some(Value::String(path)) = field(rule, name) {
            return Some((method, path));
        }
    }
    match field(rule, "custom") {
        Some(Value::Message(custom)) => Some((
            Method::new(&string_field(&custom, "kind")),
            string_field(&custom, "path"),
        )),
        _ => None,
    }
}

/// Checks that a path variable names a chain of singular message fields ending in a scalar.
fn check_path_field(message: &MessageDescriptor, path: &[String]) -> Result<(), String> {
    let mut current = message.clone();
    for (i, name) in path.iter().enumerate() {
        let field = current
            .get_field_by_name(name)
            .ok_or_else(|| format!("`{}` is not a field", path[..=i].join(".")))?;
        if field.is_list() || field.is_map() {
            return Err(format!(
                "`{}` is repeated; path variables must be singular",
                path.join(".")
            ));
        }
        let last = i + 1 == path.len();
        match field.kind() {
            Kind::Message(inner) if !last => current = inner,
            Kind::Message(inner) if !is_scalar_like(&inner) => {
                return Err(format!(
                    "`{}` is a message; bind one of its fields",
                    path.join(".")
                ));
            }
            _ if !last => {
                return Err(format!("`{}` is not a message", path[..=i].join(".")));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Match;

    fn table() -> RouteTable {
        crate::test_support::weft_table()
    }

    #[test]
    fn every_annotated_weft_method_is_routed_and_internal_ones_are_not() {
        let table = table();
        let labels: Vec<&str> = table.router.routes().map(|r| r.label()).collect();
        assert!(labels.contains(&"weft.order.v1.OrderService.GetProduct"));
        assert!(labels.contains(&"weft.order.v1.OrderService.CancelOrder"));
        assert!(
            !labels.contains(&"weft.user.v1.UserService.CreateUser"),
            "internal"
        );
        assert_eq!(table.router.len(), 17);
    }

    #[test]
    fn routes_carry_access_body_and_upstream() {
        let table = table();
        let Ok(Match::Found {
            value, bindings, ..
        }) = table.router.match_path("PATCH", "/v1/users/u1")
        else {
            panic!("PATCH /v1/users/u1 must match");
        };
        assert_eq!(value.full_method, "weft.user.v1.UserService.UpdateUser");
        assert!(matches!(&value.body, BodyRule::Field(f) if f.name() == "user"));
        assert_eq!(value.access, Access::Authenticated);
        assert_eq!(table.upstreams[value.upstream].name, "weft-user");
        assert_eq!(bindings[0].0, ["user".to_string(), "id".to_string()]);

        let Ok(Match::Found { value, .. }) = table.router.match_path("GET", "/v1/products/p1")
        else {
            panic!("GET /v1/products/p1 must match");
        };
        assert_eq!(value.access, Access::Public);
        assert_eq!(
            value.grpc_path.as_str(),
            "/weft.order.v1.OrderService/GetProduct"
        );
    }

    #[test]
    fn the_cancel_verb_routes_to_cancel_order() {
        let table = table();
        let Ok(Match::Found { value, .. }) =
            table.router.match_path("POST", "/v1/orders/o1:cancel")
        else {
            panic!("POST /v1/orders/o1:cancel must match");
        };
        assert_eq!(value.full_method, "weft.order.v1.OrderService.CancelOrder");
    }
}
