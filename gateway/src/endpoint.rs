//! One REST binding of a gRPC method, as the route table made it at start: what a request on
//! it needs to be transcoded, authorised, forwarded and answered.
//!
//! These types sit below the table that builds them and the modules that use them
//! (`request_message`, `metrics`, `openapi`, the call path), so that none of those has to
//! import the table builder to name an endpoint.

use std::{sync::Arc, time::Duration};

use prost_reflect::{FieldDescriptor, MethodDescriptor};
use weft_mesh::contract::Access;

use crate::{route::Method, wire_json::ReplyWriter};

/// Where a request's body goes in the request message.
#[derive(Debug, Clone)]
pub enum BodyRule {
    /// No body (`body` unset): fields come from the path and the query.
    None,
    /// `body: "*"`: the body is the whole request message.
    Whole,
    /// `body: "<field>"`: the body is that field.
    Field(FieldDescriptor),
}

/// One REST binding of a gRPC method.
#[derive(Debug)]
pub struct Endpoint {
    /// `package.Service.Method`.
    pub full_method: String,
    /// `/package.Service/Method`, the gRPC request path.
    pub grpc_path: http::uri::PathAndQuery,
    /// The method's descriptor.
    pub method: MethodDescriptor,
    /// The path template, e.g. `/v1/products/{id}` (the `http.route` of metrics and spans).
    pub template: String,
    /// The HTTP method.
    pub http_method: Method,
    /// Where the body goes.
    pub body: BodyRule,
    /// The string fields the path's variables bind, in the template's order, when they alone
    /// make the request message (see `request_message::path_string_fields`).
    pub path_strings: Option<Vec<FieldDescriptor>>,
    /// The response field sent as the body, if not the whole response.
    pub response_body: Option<FieldDescriptor>,
    /// Who may call it.
    pub access: Access,
    /// Index of the upstream that serves it.
    pub upstream: usize,
    /// Deadline of the upstream call.
    pub timeout: Duration,
    /// Position in the route table (indexes per-route state such as metrics).
    pub slot: usize,
    /// Writes the JSON answer from the upstream's reply.
    pub reply: Arc<ReplyWriter>,
}
