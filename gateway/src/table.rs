//! The route table, built at start from the `google.api.http` rules of descriptor sets.
//!
//! Every annotated method of every service becomes one [`Endpoint`] per binding (the rule and
//! its `additional_bindings`). Everything that can be checked once is checked here, so that a
//! bad rule stops the gateway at start with the method named, never a request at run time:
//! templates parse, path variables and `body`/`response_body` name real fields, and no two
//! rules match the same requests.

use std::{sync::Arc, time::Duration};

use prost_reflect::{
    DescriptorPool, DynamicMessage, Kind, MessageDescriptor, MethodDescriptor, ReflectMessage,
    Value,
};
use weft_mesh::config::{DefaultAccess, GatewayConfig, MeshConfig, ServiceName};
use weft_proto::Access;

use crate::{
    endpoint::{BodyRule, Endpoint},
    request_message::is_scalar_like,
    route::{Method, RouteError, Router},
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
    /// Name for logs, metrics and errors (`weft-order`, or the descriptor set's file).
    pub name: String,
    /// `http://host:port`.
    pub endpoint: String,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// The Weft service it is, whose `[upstreams.<name>]` policies apply; `None` for an API of
    /// `gateway.descriptor_sets`, called with the default policies.
    pub service: Option<ServiceName>,
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

/// Weft's own services and the upstream that serves each.
const WEFT_SERVICES: [(&str, ServiceName); 3] = [
    ("weft.auth.v1.AuthService", ServiceName::Auth),
    ("weft.user.v1.UserService", ServiceName::User),
    ("weft.order.v1.OrderService", ServiceName::Order),
];

impl RouteTable {
    /// Builds the table for Weft's services plus the configured extra descriptor sets.
    pub fn build(config: &MeshConfig) -> Result<Self, TableError> {
        let mut table = RouteTable {
            router: Router::new(),
            upstreams: Vec::new(),
            pools: Vec::new(),
        };
        let weft = DescriptorPool::decode(weft_proto::FILE_DESCRIPTOR_SET).map_err(|e| {
            TableError::Descriptor {
                file: "weft-proto".into(),
                reason: e.to_string(),
            }
        })?;
        for (service_name, name) in WEFT_SERVICES {
            let upstream_config = config.upstream(name);
            let upstream = table.add_upstream(UpstreamSpec {
                name: name.as_str().into(),
                endpoint: upstream_config.endpoint.clone(),
                connect_timeout: upstream_config.connect_timeout(),
                service: Some(name),
            });
            let service =
                weft.get_service_by_name(service_name)
                    .ok_or_else(|| TableError::Descriptor {
                        file: "weft-proto".into(),
                        reason: format!("service {service_name} is missing"),
                    })?;
            for method in service.methods() {
                table.add_method(&method, upstream, &config.gateway, Access::Authenticated)?;
            }
        }
        table.pools.push(weft);

        for set in &config.gateway.descriptor_sets {
            let file = set.file.display().to_string();
            let bytes = std::fs::read(&set.file).map_err(|e| TableError::Descriptor {
                file: file.clone(),
                reason: format!("cannot read: {e}"),
            })?;
            let pool =
                DescriptorPool::decode(bytes.as_slice()).map_err(|e| TableError::Descriptor {
                    file: file.clone(),
                    reason: format!("not a FileDescriptorSet: {e}"),
                })?;
            let upstream = table.add_upstream(UpstreamSpec {
                name: file.clone(),
                endpoint: set.endpoint.clone(),
                connect_timeout: Duration::from_secs(1),
                service: None,
            });
            let default_access = match set.default_access {
                DefaultAccess::Public => Access::Public,
                DefaultAccess::Authenticated => Access::Authenticated,
            };
            let before = table.router.len();
            for service in pool.services() {
                for method in service.methods() {
                    table.add_method(&method, upstream, &config.gateway, default_access)?;
                }
            }
            tracing::info!(
                file,
                routes = table.router.len() - before,
                "descriptor set loaded"
            );
            table.pools.push(pool);
        }
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
        default_access: Access,
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
        let access = declared_access(method).unwrap_or(default_access);
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
        let grpc_path = format!("/{}/{}", method.parent_service().full_name(), method.name())
            .parse::<http::uri::PathAndQuery>()
            .map_err(|e| rule_error(e.to_string()))?;
        let timeout = gateway.route_timeout(&full_method);

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
            let endpoint = Endpoint {
                full_method: full_method.clone(),
                grpc_path: grpc_path.clone(),
                method: method.clone(),
                template: template.clone(),
                http_method: http_method.clone(),
                body,
                response_body,
                access,
                upstream,
                timeout,
                slot: self.router.len(),
                reply,
            };
            self.router.insert(
                http_method,
                &template,
                full_method.clone(),
                Arc::new(endpoint),
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

/// The `weft.api.v1.access` option of a method, if its pool defines it and the method sets it.
fn declared_access(method: &MethodDescriptor) -> Option<Access> {
    let ext = method
        .parent_pool()
        .get_extension_by_name("weft.api.v1.access")?;
    let options = method.options();
    if !options.has_extension(&ext) {
        return None;
    }
    match options.get_extension(&ext).as_ref() {
        Value::EnumNumber(n) => match Access::try_from(*n).ok()? {
            Access::Unspecified => None,
            access => Some(access),
        },
        _ => None,
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
        RouteTable::build(&MeshConfig::default()).expect("Weft's own rules are valid")
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
