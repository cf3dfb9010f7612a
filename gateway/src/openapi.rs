//! The OpenAPI 3.1 document of every route, generated at start from the same descriptors.
//!
//! Nothing here is specific to Weft: every route of the [`RouteTable`] (Weft's services and any
//! extra descriptor set) becomes one operation, and every message and enum it reaches becomes a
//! component schema named by its full proto name. The schemas describe what the transcoder
//! really reads and writes (the canonical proto3 JSON mapping): lowerCamelCase property names,
//! 64-bit integers as strings, enums by name, bytes as base64, well-known types in their JSON
//! form. Proto comments (the descriptor sets carry `source_code_info`) become summaries and
//! descriptions.
//!
//! Parameters follow the transcoder too: one path parameter per template variable, named by
//! its field path as written in the template (`user.id`); query parameters for the request
//! fields that neither the path nor the body sets, with dotted lowerCamelCase names for nested
//! fields (only when the rule's body is not `*`, as in `google/api/http.proto`).

use std::collections::{BTreeMap, HashMap, HashSet};

use prost_reflect::{
    DynamicMessage, EnumDescriptor, FieldDescriptor, FileDescriptor, Kind, MessageDescriptor,
};
use serde_json::{Map, Value, json};
use weft_mesh::contract::Access;

use crate::{
    endpoint::{BodyRule, Endpoint},
    field_rules,
    request_message::is_scalar_like,
    route::{PathTemplate, Segment},
    table::RouteTable,
};

/// Component name of the error body. The `-` keeps it apart from every proto full name.
const ERROR_SCHEMA: &str = "weft-gateway.Error";
const SCHEMA_REF: &str = "#/components/schemas/";
/// Nested messages deeper than this give no further query parameters.
const MAX_QUERY_DEPTH: usize = 8;
/// The HTTP methods an OpenAPI path item has a field for.
const OPENAPI_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The OpenAPI document of `table`.
pub fn document(table: &RouteTable) -> Value {
    let mut generator = Generator::default();
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut operation_ids = HashSet::new();
    let mut tags: Vec<Value> = Vec::new();
    let mut tag_names = HashSet::new();
    let mut linkable = Vec::new();

    for route in table.router.routes() {
        let endpoint: &Endpoint = route.value();
        let service = endpoint.method.parent_service();
        if tag_names.insert(service.full_name().to_owned()) {
            let mut tag = json!({"name": service.full_name()});
            if let Some(text) = generator
                .comments
                .of(&service.parent_file(), service.path())
            {
                tag["description"] = Value::String(text);
            }
            tags.push(tag);
        }
        let operation_id = unique(&mut operation_ids, &endpoint.full_method);
        let (mut path, mut parameters) = generator.path(route.template(), &endpoint.method.input());
        // OpenAPI: templated paths that differ only in their parameters' names are one path
        // (`/v1/users/{id}` and `/v1/users/{user.id}`); the later route takes the earlier names.
        if let Some(same) = paths
            .keys()
            .find(|known| **known != path && path_shape(known) == path_shape(&path))
            .cloned()
        {
            let renames: Vec<(String, String)> = path_names(&path)
                .into_iter()
                .zip(path_names(&same))
                .collect();
            for parameter in &mut parameters {
                let name = parameter["name"].as_str().unwrap_or_default();
                if let Some((ours, known)) = renames.iter().find(|(ours, _)| ours == name) {
                    let note = format!("Binds the request field `{ours}`.");
                    parameter["description"] = Value::String(
                        match parameter["description"].as_str().unwrap_or_default() {
                            "" => note,
                            text => format!("{text}\n\n{note}"),
                        },
                    );
                    parameter["name"] = Value::String(known.clone());
                }
            }
            path = same;
        }
        let operation = generator.operation(endpoint, route.template(), operation_id, parameters);

        let item = paths.entry(path.clone()).or_default();
        let method = route.method().as_str().to_ascii_lowercase();
        let key = if OPENAPI_METHODS.contains(&method.as_str()) && !item.contains_key(&method) {
            method
        } else {
            // A custom HTTP method, or two templates OpenAPI writes alike (`/v1/{name}` and
            // `/v1/{name=shelves/*}`): kept as an extension so the operation is not lost.
            tracing::warn!(
                method = %route.method(),
                path,
                operation = endpoint.full_method,
                "route has no standard OpenAPI operation slot; documented as an x- extension"
            );
            let base = format!("x-{method}");
            let mut key = base.clone();
            let mut n = 1;
            while item.contains_key(&key) {
                n += 1;
                key = format!("{base}-{n}");
            }
            key
        };
        linkable.push(Linkable::of(
            endpoint,
            route.template(),
            &path,
            &key,
            &operation,
        ));
        item.insert(key, operation);
    }
    add_links(&mut paths, &linkable);

    let mut info = json!({
        "title": "Weft API",
        "version": env!("CARGO_PKG_VERSION"),
        "description": INFO_DESCRIPTION,
    });
    let license = env!("CARGO_PKG_LICENSE");
    if !license.is_empty() {
        info["license"] = json!({"name": license, "identifier": license});
    }
    let mut schemas = generator.finish();
    schemas.insert(ERROR_SCHEMA.to_owned(), error_schema());

    json!({
        "openapi": "3.1.0",
        "info": info,
        "tags": tags,
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": error_responses(),
            "headers": headers(),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "An access token (`accessToken` of `Register`, `Login` or \
                        `Refresh`), sent as `Authorization: Bearer <token>`.",
                },
            },
        },
    })
}

const INFO_DESCRIPTION: &str = "\
The REST+JSON front door of the Weft mesh. Every operation is a gRPC method, transcoded from its \
`google.api.http` rule with no per-route code.

- Bodies and responses use the canonical proto3 JSON mapping: lowerCamelCase field names \
(requests also accept the original snake_case names), 64-bit integers as strings (requests also \
accept numbers), enums by name, bytes as base64, timestamps as RFC 3339 strings.
- Responses carry every field, defaults included.
- Unknown fields and unknown query parameters are refused with 400.
- Field rules (required fields, lengths, ranges, patterns) are the services' own, declared \
next to each field in the proto (`weft.api.v1.field`). In requests, `null` stands for a field's \
default value, so only fields whose default is allowed take it.
- Errors have one JSON shape, `{code, message, details, requestId}`, where `code` is the gRPC \
status code. Every response carries `X-Request-Id`.
- Operations not marked public need `Authorization: Bearer <access token>`.";

/// What links between operations are made of: an operation's answer, and the one path
/// parameter by which another operation takes an answer of that type.
struct Linkable {
    path: String,
    key: String,
    operation_id: String,
    /// The message the operation answers with, when the whole of it is the response body.
    output: Option<MessageDescriptor>,
    /// The operation's only path parameter, if it binds a field `id` of the request or of a
    /// request field of the output's type (`{id}`, `{user.id}`).
    id_parameter: Option<String>,
}

impl Linkable {
    fn of(
        endpoint: &Endpoint,
        template: &PathTemplate,
        path: &str,
        key: &str,
        operation: &Value,
    ) -> Self {
        let output = endpoint.method.output();
        let id_parameter = match template.variables() {
            [variable] => {
                let input = endpoint.method.input();
                let binds_id = match variable.field_path() {
                    [id] => id == "id",
                    [parent, id] => {
                        id == "id"
                            && matches!(
                                input.get_field_by_name(parent).map(|f| f.kind()),
                                Some(Kind::Message(m)) if m == output
                            )
                    }
                    _ => false,
                };
                let parameters = operation["parameters"].as_array();
                let in_path = parameters.into_iter().flatten().find(|p| p["in"] == "path");
                in_path
                    .filter(|_| binds_id)
                    .and_then(|p| p["name"].as_str())
                    .map(str::to_owned)
            }
            _ => None,
        };
        Self {
            path: path.to_owned(),
            key: key.to_owned(),
            operation_id: operation["operationId"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            output: endpoint.response_body.is_none().then_some(output),
            id_parameter,
        }
    }
}

/// OpenAPI links: from each operation answering with a message that has a string `id` to the
/// operations that take such a message's id in their path and answer with the same type (from
/// CreateOrder to GetOrder and CancelOrder). Clients and the stateful fuzz follow them.
fn add_links(paths: &mut BTreeMap<String, Map<String, Value>>, operations: &[Linkable]) {
    for from in operations {
        let Some(output) = &from.output else { continue };
        let has_id = output
            .get_field_by_name("id")
            .is_some_and(|f| f.kind() == Kind::String && !f.is_list());
        if !has_id {
            continue;
        }
        let mut links = Map::new();
        for to in operations {
            let same_type = to.output.as_ref() == Some(output);
            if let (true, Some(parameter)) = (same_type, &to.id_parameter) {
                if to.operation_id == from.operation_id {
                    continue;
                }
                let name = to.operation_id.rsplit('.').next().unwrap_or_default();
                links.insert(
                    name.to_owned(),
                    json!({
                        "operationId": to.operation_id,
                        "parameters": {parameter: "$response.body#/id"},
                        "description": format!("The `{}` answered.", output.name()),
                    }),
                );
            }
        }
        if links.is_empty() {
            continue;
        }
        if let Some(ok) = paths
            .get_mut(&from.path)
            .and_then(|item| item.get_mut(&from.key))
            .and_then(|operation| operation["responses"].get_mut("200"))
        {
            ok["links"] = Value::Object(links);
        }
    }
}

/// `base`, or `base_2`, `base_3`, ... if taken (additional bindings share a method name).
fn unique(taken: &mut HashSet<String>, base: &str) -> String {
    let mut id = base.to_owned();
    let mut n = 1;
    while !taken.insert(id.clone()) {
        n += 1;
        id = format!("{base}_{n}");
    }
    id
}

/// A message or enum that has a component schema.
#[derive(Clone)]
enum Named {
    Message(MessageDescriptor),
    Enum(EnumDescriptor),
}

impl Named {
    /// The same type: the same descriptor, or one from another pool defined identically.
    fn same(&self, other: &Named) -> bool {
        match (self, other) {
            (Named::Message(a), Named::Message(b)) => {
                a == b || a.descriptor_proto() == b.descriptor_proto()
            }
            (Named::Enum(a), Named::Enum(b)) => {
                a == b || a.enum_descriptor_proto() == b.enum_descriptor_proto()
            }
            _ => false,
        }
    }
}

/// Builds operations and collects the component schemas they reference.
#[derive(Default)]
struct Generator {
    comments: Comments,
    schemas: BTreeMap<String, Value>,
    /// Component names given so far, per full proto name (pools may define a name twice).
    names: HashMap<String, Vec<(Named, String)>>,
    taken: HashSet<String>,
    /// Messages named but not yet described.
    pending: Vec<(MessageDescriptor, String)>,
}

impl Generator {
    /// Every component schema; describes the messages still pending first.
    fn finish(mut self) -> BTreeMap<String, Value> {
        while let Some((message, name)) = self.pending.pop() {
            let schema = self.message_schema(&message);
            self.schemas.insert(name, schema);
        }
        self.schemas
    }

    /// The OpenAPI path of a template and its path parameters.
    fn path(&mut self, template: &PathTemplate, input: &MessageDescriptor) -> (String, Vec<Value>) {
        let segments = template.segments();
        let mut path = String::new();
        let mut parameters = Vec::new();
        let mut wildcards = 0;
        let mut i = 0;
        while i < segments.len() {
            path.push('/');
            if let Some(variable) = template
                .variables()
                .iter()
                .find(|v| v.segments().start == i)
            {
                let name = variable.field_path().join(".");
                path.push_str(&format!("{{{name}}}"));
                let pattern = segments.get(variable.segments()).unwrap_or_default();
                parameters.push(self.path_parameter(input, variable.field_path(), pattern));
                i = variable.segments().end.max(i + 1);
                continue;
            }
            match &segments[i] {
                Segment::Literal(literal) => path.push_str(&encode_path(literal)),
                wildcard => {
                    wildcards += 1;
                    let name = format!("_wildcard{wildcards}");
                    path.push_str(&format!("{{{name}}}"));
                    let what = if matches!(wildcard, Segment::Multi) {
                        "Any path (`**`: zero or more segments, may contain `/`)"
                    } else {
                        "Any one path segment (`*`)"
                    };
                    parameters.push(json!({
                        "name": name,
                        "in": "path",
                        "required": true,
                        "description": format!("{what}; not bound to a request field."),
                        "schema": {"type": "string"},
                    }));
                }
            }
            i += 1;
        }
        if path.is_empty() {
            path.push('/');
        }
        if let Some(verb) = template.verb() {
            path.push(':');
            path.push_str(&encode_path(verb));
        }
        (path, parameters)
    }

    fn path_parameter(
        &mut self,
        input: &MessageDescriptor,
        field_path: &[String],
        pattern: &[Segment],
    ) -> Value {
        let field = resolve(input, field_path);
        let mut schema = match &field {
            Some(field) => self.kind_schema(&field.kind()),
            None => json!({"type": "string"}),
        };
        if let Some((field, rules)) = field.as_ref().and_then(|f| Some((f, field_rules::of(f)?))) {
            field_rules::apply(&mut schema, field, &rules);
        }
        let mut description = field
            .as_ref()
            .and_then(|f| self.field_description(f))
            .unwrap_or_default();
        if pattern != [Segment::Single] {
            let shape: Vec<&str> = pattern
                .iter()
                .map(|s| match s {
                    Segment::Literal(literal) => literal.as_str(),
                    Segment::Single => "*",
                    Segment::Multi => "**",
                })
                .collect();
            if !description.is_empty() {
                description.push_str("\n\n");
            }
            description.push_str(&format!(
                "Matches `{}`; the value may contain `/`.",
                shape.join("/")
            ));
            if schema.get("type") == Some(&json!("string")) {
                schema["pattern"] = Value::String(pattern_regex(pattern));
            }
        }
        let mut parameter = json!({
            "name": field_path.join("."),
            "in": "path",
            "required": true,
            "schema": schema,
        });
        if !description.is_empty() {
            parameter["description"] = Value::String(description);
        }
        parameter
    }

    fn operation(
        &mut self,
        endpoint: &Endpoint,
        template: &PathTemplate,
        operation_id: String,
        mut parameters: Vec<Value>,
    ) -> Value {
        let method = &endpoint.method;
        let comment = self.comments.of(&method.parent_file(), method.path());
        let summary = comment
            .as_deref()
            .map(summary)
            .unwrap_or_else(|| method.name().to_owned());
        let mut description = comment.filter(|c| *c != summary).unwrap_or_default();
        let (access, note) = match endpoint.access {
            Access::Public => ("public", None),
            Access::Admin => ("admin", Some("Needs an access token with role `admin`.")),
            Access::Service => (
                "service",
                Some("Needs a service token (role `service`); meant for the mesh's own services."),
            ),
            _ => ("authenticated", None),
        };
        if let Some(note) = note {
            if !description.is_empty() {
                description.push_str("\n\n");
            }
            description.push_str(note);
        }

        let mut operation = Map::new();
        operation.insert("operationId".into(), Value::String(operation_id));
        operation.insert("summary".into(), Value::String(summary));
        if !description.is_empty() {
            operation.insert("description".into(), Value::String(description));
        }
        operation.insert("tags".into(), json!([method.parent_service().full_name()]));
        parameters.extend(self.query_parameters(endpoint, template));
        if !parameters.is_empty() {
            operation.insert("parameters".into(), Value::Array(parameters));
        }
        if let Some(body) = self.request_body(endpoint, template) {
            operation.insert("requestBody".into(), body);
        }
        operation.insert("responses".into(), self.responses(endpoint));
        if endpoint.access != Access::Public {
            operation.insert("security".into(), json!([{"bearerAuth": []}]));
        }
        if deprecated(&method.options()) {
            operation.insert("deprecated".into(), Value::Bool(true));
        }
        operation.insert(
            "x-grpc-method".into(),
            Value::String(endpoint.grpc_path.as_str().to_owned()),
        );
        operation.insert("x-access".into(), Value::String(access.into()));
        Value::Object(operation)
    }

    /// The request fields set by neither the path nor the body, as query parameters.
    fn query_parameters(&mut self, endpoint: &Endpoint, template: &PathTemplate) -> Vec<Value> {
        let body_field = match &endpoint.body {
            BodyRule::Whole => return Vec::new(),
            BodyRule::Field(field) => Some(field.name().to_owned()),
            BodyRule::None => None,
        };
        let bound: Vec<Vec<String>> = template
            .variables()
            .iter()
            .map(|v| v.field_path().to_vec())
            .collect();
        let input = endpoint.method.input();
        let body_message = match &endpoint.body {
            BodyRule::Field(field) if !field.is_list() => match field.kind() {
                Kind::Message(message) => Some(message),
                _ => None,
            },
            _ => None,
        };
        let mut walk = QueryWalk {
            bound,
            body_field,
            body_message,
            proto_path: Vec::new(),
            json_path: Vec::new(),
            chain: vec![input.full_name().to_owned()],
            parameters: Vec::new(),
        };
        self.collect_query(&input, &mut walk);
        walk.parameters
    }

    fn collect_query(&mut self, message: &MessageDescriptor, walk: &mut QueryWalk) {
        for field in message.fields() {
            if walk.proto_path.is_empty() && walk.body_field.as_deref() == Some(field.name()) {
                continue;
            }
            walk.proto_path.push(field.name().to_owned());
            walk.json_path.push(field.json_name().to_owned());
            // Maps cannot be set from the query, and a bound field comes from the path.
            if !field.is_map() && !walk.bound.contains(&walk.proto_path) {
                match field.kind() {
                    Kind::Message(inner) if !is_scalar_like(&inner) => {
                        // The transcoder cannot traverse repeated fields; well-known types
                        // (Struct, Any, Empty, ...) have no meaningful dotted fields.
                        if !field.is_list()
                            && !inner.full_name().starts_with("google.protobuf.")
                            && !walk.chain.iter().any(|name| name == inner.full_name())
                            && walk.chain.len() < MAX_QUERY_DEPTH
                        {
                            walk.chain.push(inner.full_name().to_owned());
                            self.collect_query(&inner, walk);
                            walk.chain.pop();
                        }
                    }
                    _ => {
                        let mut schema = self.value_schema(&field);
                        let rules = field_rules::of(&field);
                        if let Some(rules) = &rules {
                            field_rules::apply(&mut schema, &field, rules);
                        }
                        let mut parameter = json!({
                            "name": walk.json_path.join("."),
                            "in": "query",
                            "schema": schema,
                        });
                        if rules.is_some_and(|rules| field_rules::refuse_default(&rules)) {
                            parameter["required"] = Value::Bool(true);
                        }
                        if let Some(pattern) = walk.update_mask_pattern(&field) {
                            parameter["schema"]["pattern"] = pattern.into();
                        }
                        if let Some(text) = self.field_description(&field) {
                            parameter["description"] = Value::String(text);
                        }
                        if deprecated(&field.options()) {
                            parameter["deprecated"] = Value::Bool(true);
                        }
                        walk.parameters.push(parameter);
                    }
                }
            }
            walk.proto_path.pop();
            walk.json_path.pop();
        }
    }

    fn request_body(&mut self, endpoint: &Endpoint, template: &PathTemplate) -> Option<Value> {
        let (schema, description) = match &endpoint.body {
            BodyRule::None => return None,
            BodyRule::Whole => {
                let input = endpoint.method.input();
                let from_path: Vec<String> = template
                    .variables()
                    .iter()
                    .map(|v| format!("`{}`", v.field_path().join(".")))
                    .collect();
                let description = if from_path.is_empty() {
                    format!("The request, a `{}`.", input.full_name())
                } else {
                    format!(
                        "The request, a `{}`; {} come(s) from the path and override(s) the body.",
                        input.full_name(),
                        from_path.join(", ")
                    )
                };
                let schema = if from_path.is_empty() {
                    self.message_ref(&input)
                } else {
                    // The path sets those fields, so the body need not: the message's schema
                    // without them among the required ones.
                    let mut schema = self.message_schema(&input);
                    if let Some(Value::Array(required)) = schema.get_mut("required") {
                        let bound: Vec<Value> = template
                            .variables()
                            .iter()
                            .filter_map(|v| match v.field_path() {
                                [top] => input.get_field_by_name(top),
                                _ => None,
                            })
                            .map(|field| Value::String(field.json_name().to_owned()))
                            .collect();
                        required.retain(|name| !bound.contains(name));
                    }
                    for field in template
                        .variables()
                        .iter()
                        .filter_map(|v| match v.field_path() {
                            [top] => input.get_field_by_name(top),
                            _ => None,
                        })
                    {
                        // Whatever the body says, the path's value wins: only the type matters.
                        let mut property = nullable(self.value_schema(&field));
                        property["description"] =
                            "Taken from the path; a value here is ignored.".into();
                        schema["properties"][field.json_name()] = property;
                    }
                    schema
                };
                (schema, description)
            }
            BodyRule::Field(field) => {
                let description = self.field_description(field).unwrap_or_else(|| {
                    format!("The `{}` field of the request.", field.json_name())
                });
                (self.value_schema(field), description)
            }
        };
        // The gateway reads an empty body as the empty message (every field at its default),
        // as grpc-gateway does: the body is required only when a field it must carry has no
        // acceptable default.
        let required = match &endpoint.body {
            BodyRule::None => false,
            BodyRule::Field(field) => {
                field_rules::of(field).is_some_and(|rules| field_rules::refuse_default(&rules))
                    || matches!(field.kind(), Kind::Message(m) if !field.is_list() && has_required_field(&m))
            }
            BodyRule::Whole => match schema.get("required") {
                Some(Value::Array(required)) => !required.is_empty(),
                _ => schema.get("$ref").is_some() && has_required_field(&endpoint.method.input()),
            },
        };
        Some(json!({
            "description": format!("{description} An empty body is an empty message."),
            "required": required,
            "content": {"application/json": {"schema": schema}},
        }))
    }

    fn responses(&mut self, endpoint: &Endpoint) -> Value {
        let output = endpoint.method.output();
        let (schema, description) = match &endpoint.response_body {
            None => (
                self.message_ref(&output),
                format!("OK: a `{}`.", output.full_name()),
            ),
            Some(field) => (
                self.value_schema(field),
                format!(
                    "OK: the `{}` field of a `{}`.",
                    field.json_name(),
                    output.full_name()
                ),
            ),
        };
        let mut responses = Map::new();
        responses.insert(
            "200".into(),
            json!({
                "description": description,
                "headers": {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}},
                "content": {"application/json": {"schema": schema}},
            }),
        );
        let public = endpoint.access == Access::Public;
        let has_body = !matches!(endpoint.body, BodyRule::None);
        let writes = matches!(endpoint.http_method.as_str(), "POST" | "PUT" | "PATCH");
        for (status, name, applies) in [
            ("400", "BadRequest", true),
            ("401", "Unauthorized", !public),
            ("403", "Forbidden", !public),
            ("404", "NotFound", true),
            ("409", "Conflict", writes),
            ("413", "PayloadTooLarge", has_body),
            ("415", "UnsupportedMediaType", has_body),
            ("429", "TooManyRequests", true),
            ("default", "Error", true),
        ] {
            if applies {
                responses.insert(
                    status.into(),
                    json!({"$ref": format!("#/components/responses/{name}")}),
                );
            }
        }
        Value::Object(responses)
    }

    /// The schema of a field's value, without its description.
    fn value_schema(&mut self, field: &FieldDescriptor) -> Value {
        if field.is_map() {
            let value = match field.kind() {
                Kind::Message(entry) => self.kind_schema(&entry.map_entry_value_field().kind()),
                _ => json!({}),
            };
            return json!({"type": "object", "additionalProperties": value});
        }
        let item = self.kind_schema(&field.kind());
        if field.is_list() {
            json!({"type": "array", "items": item})
        } else {
            item
        }
    }

    /// The schema of a field as a property: its value schema plus comment and flags.
    fn field_schema(&mut self, field: &FieldDescriptor) -> Value {
        let mut schema = self.value_schema(field);
        let rules = field_rules::of(field);
        if let Some(rules) = &rules {
            field_rules::apply(&mut schema, field, rules);
        }
        if !rules.as_ref().is_some_and(field_rules::refuse_default) {
            schema = nullable(schema);
        }
        if let Some(text) = self.field_description(field) {
            schema["description"] = Value::String(text);
        }
        if deprecated(&field.options()) {
            schema["deprecated"] = Value::Bool(true);
        }
        schema
    }

    /// A field's comment, plus a note when it belongs to a oneof.
    fn field_description(&mut self, field: &FieldDescriptor) -> Option<String> {
        let mut text = self
            .comments
            .of(&field.parent_file(), field.path())
            .unwrap_or_default();
        if let Some(oneof) = field.containing_oneof().filter(|o| !o.is_synthetic()) {
            let members: Vec<String> = oneof
                .fields()
                .map(|f| format!("`{}`", f.json_name()))
                .collect();
            if !text.is_empty() {
                text.push_str("\n\n");
            }
            text.push_str(&format!(
                "At most one of {} is set (oneof `{}`).",
                members.join(", "),
                oneof.name()
            ));
        }
        (!text.is_empty()).then_some(text)
    }

    fn kind_schema(&mut self, kind: &Kind) -> Value {
        match kind {
            Kind::Double => json!({"type": "number", "format": "double"}),
            Kind::Float => json!({"type": "number", "format": "float"}),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                json!({"type": "integer", "format": "int32"})
            }
            Kind::Uint32 | Kind::Fixed32 => {
                json!({"type": "integer", "format": "uint32", "minimum": 0, "maximum": u32::MAX})
            }
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                json!({"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"})
            }
            Kind::Uint64 | Kind::Fixed64 => {
                json!({"type": "string", "format": "uint64", "pattern": "^[0-9]+$"})
            }
            Kind::Bool => json!({"type": "boolean"}),
            Kind::String => json!({"type": "string"}),
            Kind::Bytes => json!({"type": "string", "contentEncoding": "base64"}),
            Kind::Enum(enumeration) if enumeration.full_name() == "google.protobuf.NullValue" => {
                json!({"type": "null"})
            }
            Kind::Enum(enumeration) => {
                let name = self.name(Named::Enum(enumeration.clone()), enumeration.full_name());
                json!({"$ref": format!("{SCHEMA_REF}{name}")})
            }
            Kind::Message(message) => self.message_ref(message),
        }
    }

    /// A `$ref` to a message's schema, or the inline schema of a well-known type.
    fn message_ref(&mut self, message: &MessageDescriptor) -> Value {
        if let Some(schema) = well_known(message.full_name()) {
            return schema;
        }
        let name = self.name(Named::Message(message.clone()), message.full_name());
        json!({"$ref": format!("{SCHEMA_REF}{name}")})
    }

    /// The component name of a type, describing it (enums) or queueing it (messages) if new.
    fn name(&mut self, named: Named, full_name: &str) -> String {
        let known = self
            .names
            .get(full_name)
            .and_then(|known| known.iter().find(|(other, _)| other.same(&named)));
        if let Some((_, name)) = known {
            return name.clone();
        }
        // A different type of the same name (another descriptor set): `name-2`, `name-3`, ...
        let mut name = full_name.to_owned();
        let mut n = 1;
        while self.taken.contains(&name) || name == ERROR_SCHEMA {
            n += 1;
            name = format!("{full_name}-{n}");
        }
        self.taken.insert(name.clone());
        self.names
            .entry(full_name.to_owned())
            .or_default()
            .push((named.clone(), name.clone()));
        match named {
            Named::Message(message) => self.pending.push((message, name.clone())),
            Named::Enum(enumeration) => {
                let schema = self.enum_schema(&enumeration);
                self.schemas.insert(name.clone(), schema);
            }
        }
        name
    }

    fn message_schema(&mut self, message: &MessageDescriptor) -> Value {
        let mut properties = Map::new();
        let mut required = Vec::new();
        for field in message.fields() {
            let schema = self.field_schema(&field);
            properties.insert(field.json_name().to_owned(), schema);
            if field_rules::of(&field).is_some_and(|rules| field_rules::refuse_default(&rules)) {
                required.push(Value::String(field.json_name().to_owned()));
            }
        }
        // The transcoder refuses unknown fields. (It also takes each field by its proto name,
        // `display_name` for `displayName`, as proto3 JSON parsers must.)
        let mut schema = json!({
            "type": "object",
            "properties": properties,
            "additionalProperties": false,
        });
        if !required.is_empty() {
            schema["required"] = Value::Array(required);
        }
        if let Some(text) = self.comments.of(&message.parent_file(), message.path()) {
            schema["description"] = Value::String(text);
        }
        if deprecated(&message.options()) {
            schema["deprecated"] = Value::Bool(true);
        }
        schema
    }

    fn enum_schema(&mut self, enumeration: &EnumDescriptor) -> Value {
        let mut names = Vec::new();
        let mut lines = Vec::new();
        for value in enumeration.values() {
            if let Some(text) = self.comments.of(&value.parent_file(), value.path()) {
                lines.push(format!("- `{}`: {}", value.name(), text.replace('\n', " ")));
            }
            names.push(Value::String(value.name().to_owned()));
        }
        let mut description = self
            .comments
            .of(&enumeration.parent_file(), enumeration.path())
            .unwrap_or_default();
        if !lines.is_empty() {
            if !description.is_empty() {
                description.push_str("\n\n");
            }
            description.push_str(&lines.join("\n"));
        }
        // proto3 JSON parsers take an enum's number as well as its name.
        let numbers = enumeration.values().map(|value| json!(value.number()));
        names.extend(numbers);
        let mut schema = json!({"type": ["string", "integer"], "enum": names});
        if !description.is_empty() {
            schema["description"] = Value::String(description);
        }
        if deprecated(&enumeration.options()) {
            schema["deprecated"] = Value::Bool(true);
        }
        schema
    }
}

/// State of the walk over a request message for query parameters.
struct QueryWalk {
    /// Field paths (proto names) bound by the path template.
    bound: Vec<Vec<String>>,
    /// The top-level field that is the body, if any.
    body_field: Option<String>,
    /// The body field's message type, what an update mask names the fields of (AIP-134).
    body_message: Option<MessageDescriptor>,
    proto_path: Vec<String>,
    json_path: Vec<String>,
    /// Message types on the way down, against recursion.
    chain: Vec<String>,
    parameters: Vec<Value>,
}

impl QueryWalk {
    /// The pattern of a top-level update mask: comma-separated names (JSON or proto) of the
    /// body message's fields that a request may set (not `output_only`), as AIP-134 has it.
    fn update_mask_pattern(&self, field: &FieldDescriptor) -> Option<String> {
        let Kind::Message(mask) = field.kind() else {
            return None;
        };
        if mask.full_name() != "google.protobuf.FieldMask" || self.proto_path.len() != 1 {
            return None;
        }
        let mut names = Vec::new();
        for field in self.body_message.as_ref()?.fields() {
            if field_rules::of(&field).is_some_and(|rules| rules.output_only) {
                continue;
            }
            names.push(field.json_name().to_owned());
            if field.name() != field.json_name() {
                names.push(field.name().to_owned());
            }
        }
        let path = format!("(?:{})", names.join("|"));
        Some(format!("^(?:{path}(?:,{path})*)?$"))
    }
}

/// `path` with its parameters' names left out: two paths of the same shape are one OpenAPI path.
fn path_shape(path: &str) -> String {
    let mut shape = String::with_capacity(path.len());
    let mut in_name = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_name = true;
                shape.push('{');
            }
            '}' => {
                in_name = false;
                shape.push('}');
            }
            c if !in_name => shape.push(c),
            _ => {}
        }
    }
    shape
}

/// The names of `path`'s parameters, in order.
fn path_names(path: &str) -> Vec<String> {
    path.split('{')
        .skip(1)
        .filter_map(|rest| rest.split_once('}').map(|(name, _)| name.to_owned()))
        .collect()
}

/// The inline JSON schema of a well-known type with a special JSON form.
fn well_known(full_name: &str) -> Option<Value> {
    Some(match full_name {
        "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
        "google.protobuf.Duration" => json!({
            "type": "string",
            "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$",
            "examples": ["1.5s"],
        }),
        // Comma-separated lowerCamelCase field paths.
        "google.protobuf.FieldMask" => json!({"type": "string"}),
        "google.protobuf.Empty" => json!({"type": "object"}),
        "google.protobuf.Struct" => json!({"type": "object", "additionalProperties": true}),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.ListValue" => json!({"type": "array", "items": {}}),
        "google.protobuf.Any" => json!({
            "type": "object",
            "properties": {"@type": {"type": "string"}},
            "required": ["@type"],
            "additionalProperties": true,
        }),
        "google.protobuf.DoubleValue" => json!({"type": ["number", "null"], "format": "double"}),
        "google.protobuf.FloatValue" => json!({"type": ["number", "null"], "format": "float"}),
        "google.protobuf.Int64Value" => json!({"type": ["string", "null"], "format": "int64"}),
        "google.protobuf.UInt64Value" => json!({"type": ["string", "null"], "format": "uint64"}),
        "google.protobuf.Int32Value" => json!({"type": ["integer", "null"], "format": "int32"}),
        "google.protobuf.UInt32Value" => json!({
            "type": ["integer", "null"],
            "format": "uint32",
            "minimum": 0,
            "maximum": u32::MAX,
        }),
        "google.protobuf.BoolValue" => json!({"type": ["boolean", "null"]}),
        "google.protobuf.StringValue" => json!({"type": ["string", "null"]}),
        "google.protobuf.BytesValue" => {
            json!({"type": ["string", "null"], "contentEncoding": "base64"})
        }
        _ => return None,
    })
}

/// Whether a message has a field that a request must carry (its default is refused).
fn has_required_field(message: &MessageDescriptor) -> bool {
    message.fields().any(|field| {
        field_rules::of(&field).is_some_and(|rules| field_rules::refuse_default(&rules))
    })
}

/// `schema` also admitting JSON `null`, which proto3 JSON reads as the field's default value.
fn nullable(mut schema: Value) -> Value {
    if schema.get("$ref").is_some() {
        return json!({"anyOf": [schema, {"type": "null"}]});
    }
    match schema.get_mut("type") {
        Some(Value::Array(types)) => {
            if !types.contains(&json!("null")) {
                types.push(json!("null"));
            }
            schema
        }
        Some(kind @ Value::String(_)) => {
            *kind = json!([kind.take(), "null"]);
            schema
        }
        // No type: any value already.
        _ => schema,
    }
}

/// The field at a path of proto names, if every step exists.
fn resolve(message: &MessageDescriptor, path: &[String]) -> Option<FieldDescriptor> {
    let (last, parents) = path.split_last()?;
    let mut current = message.clone();
    for name in parents {
        match current.get_field_by_name(name)?.kind() {
            Kind::Message(inner) => current = inner,
            _ => return None,
        }
    }
    current.get_field_by_name(last)
}

/// Whether a descriptor's options say `deprecated = true`.
fn deprecated(options: &DynamicMessage) -> bool {
    options
        .get_field_by_name("deprecated")
        .is_some_and(|value| value.as_bool() == Some(true))
}

/// The first sentence of a comment's first paragraph, on one line.
fn summary(comment: &str) -> String {
    let paragraph = comment.split("\n\n").next().unwrap_or(comment);
    let line = paragraph.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.find(". ") {
        Some(end) => line[..=end].to_owned(),
        None => line,
    }
}

/// Percent-encodes what may not appear literally in a path segment (RFC 3986 `pchar`).
fn encode_path(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// An ECMA-262 regex for the value of a variable with a sub-pattern (`shelves/*`).
fn pattern_regex(pattern: &[Segment]) -> String {
    let mut regex = String::from("^");
    for (i, segment) in pattern.iter().enumerate() {
        let separator = if i == 0 { "" } else { "/" };
        match segment {
            Segment::Literal(literal) => {
                regex.push_str(separator);
                for c in literal.chars() {
                    if "^$\\.*+?()[]{}|/".contains(c) {
                        regex.push('\\');
                    }
                    regex.push(c);
                }
            }
            Segment::Single => {
                regex.push_str(separator);
                regex.push_str("[^/]+");
            }
            Segment::Multi if i == 0 => regex.push_str("([^/]+(/[^/]+)*)?"),
            Segment::Multi => regex.push_str("(/[^/]+)*"),
        }
    }
    regex.push('$');
    regex
}

/// Proto comments by file and source path, read once per file.
#[derive(Default)]
struct Comments {
    files: Vec<(FileDescriptor, HashMap<Vec<i32>, String>)>,
}

impl Comments {
    /// The (leading, else trailing) comment of the element at `path` in `file`.
    fn of(&mut self, file: &FileDescriptor, path: &[i32]) -> Option<String> {
        let index = match self.files.iter().position(|(known, _)| known == file) {
            Some(index) => index,
            None => {
                self.files.push((file.clone(), index_comments(file)));
                self.files.len() - 1
            }
        };
        self.files[index].1.get(path).cloned()
    }
}

fn index_comments(file: &FileDescriptor) -> HashMap<Vec<i32>, String> {
    let mut comments = HashMap::new();
    let Some(info) = &file.file_descriptor_proto().source_code_info else {
        return comments;
    };
    for location in &info.location {
        let text = clean_comment(location.leading_comments())
            .or_else(|| clean_comment(location.trailing_comments()));
        if let Some(text) = text {
            comments.entry(location.path.clone()).or_insert(text);
        }
    }
    comments
}

/// A comment without the common indentation (`// text` leaves ` text`) and outer blank lines.
fn clean_comment(raw: &str) -> Option<String> {
    let lines: Vec<&str> = raw.lines().map(str::trim_end).collect();
    let indent = lines
        .iter()
        .filter(|line| !line.is_empty())
        .map(|line| line.len() - line.trim_start().len())
        .min()
        .unwrap_or(0);
    let text = lines
        .iter()
        .map(|line| line.get(indent..).unwrap_or_else(|| line.trim_start()))
        .collect::<Vec<_>>()
        .join("\n");
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// The body of every error answer (see `error.rs`).
fn error_schema() -> Value {
    json!({
        "type": "object",
        "description": "The body of every error answer, from the gateway or from a service.",
        "required": ["code", "message", "details", "requestId"],
        "properties": {
            "code": {
                "type": "integer",
                "format": "int32",
                "description": "The gRPC status code (3 INVALID_ARGUMENT, 5 NOT_FOUND, \
                    7 PERMISSION_DENIED, 16 UNAUTHENTICATED, ...).",
            },
            "message": {"type": "string", "description": "What went wrong, safe to show."},
            "details": {
                "type": "array",
                "description": "`google.rpc.Status` details, each a `google.protobuf.Any` in \
                    JSON form.",
                "items": {
                    "type": "object",
                    "properties": {"@type": {"type": "string"}},
                    "additionalProperties": true,
                },
            },
            "requestId": {
                "type": "string",
                "description": "The request's id, as in the `X-Request-Id` header.",
            },
        },
    })
}

/// The error responses operations refer to, one per status.
fn error_responses() -> Value {
    let request_id = json!({"$ref": "#/components/headers/X-Request-Id"});
    let mut responses = Map::new();
    for (name, description, extra_header) in [
        (
            "BadRequest",
            "Invalid request: malformed JSON, an unknown or mistyped field, a bad path or query \
             value (INVALID_ARGUMENT), or a request the service refuses in its current state \
             (FAILED_PRECONDITION, OUT_OF_RANGE).",
            None,
        ),
        (
            "Unauthorized",
            "The bearer token is missing, expired or invalid (UNAUTHENTICATED).",
            Some("WWW-Authenticate"),
        ),
        (
            "Forbidden",
            "The token's role may not do this (PERMISSION_DENIED).",
            None,
        ),
        (
            "NotFound",
            "The resource does not exist or is not the caller's (NOT_FOUND).",
            None,
        ),
        (
            "Conflict",
            "The resource already exists or changed concurrently (ALREADY_EXISTS, ABORTED).",
            None,
        ),
        (
            "PayloadTooLarge",
            "The body is larger than the gateway's limit (1 MiB by default).",
            None,
        ),
        (
            "UnsupportedMediaType",
            "The body is not JSON (`Content-Type` must be `application/json`).",
            None,
        ),
        (
            "TooManyRequests",
            "Rate limited or out of resources (RESOURCE_EXHAUSTED); retry after `Retry-After` \
             seconds.",
            Some("Retry-After"),
        ),
        (
            "Error",
            "Any other error, with the HTTP status of its gRPC code: 499 CANCELLED, 500 \
             INTERNAL/UNKNOWN/DATA_LOSS, 501 UNIMPLEMENTED, 503 UNAVAILABLE (with \
             `Retry-After`), 504 DEADLINE_EXCEEDED.",
            Some("Retry-After"),
        ),
    ] {
        let mut headers = json!({"X-Request-Id": request_id});
        if let Some(header) = extra_header {
            headers[header] = json!({"$ref": format!("#/components/headers/{header}")});
        }
        responses.insert(
            name.into(),
            json!({
                "description": description,
                "headers": headers,
                "content": {
                    "application/json": {"schema": {"$ref": format!("{SCHEMA_REF}{ERROR_SCHEMA}")}},
                },
            }),
        );
    }
    Value::Object(responses)
}

fn headers() -> Value {
    json!({
        "X-Request-Id": {
            "description": "The request's id: the client's `X-Request-Id` if acceptable \
                (1..128 of `[A-Za-z0-9._:-]`), else a new one.",
            "schema": {"type": "string"},
        },
        "Retry-After": {
            "description": "Seconds to wait before retrying.",
            "schema": {"type": "integer"},
        },
        "WWW-Authenticate": {
            "description": "`Bearer`, with `error=\"invalid_token\"` when a token was refused.",
            "schema": {"type": "string"},
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weft_document() -> Value {
        let table = crate::test_support::weft_table();
        document(&table)
    }

    fn operation<'a>(doc: &'a Value, method: &str, path: &str) -> &'a Value {
        let operation = &doc["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is missing");
        operation
    }

    /// Follows a `#/components/...` reference.
    fn resolve_ref<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
        match value.get("$ref").and_then(Value::as_str) {
            Some(reference) => {
                let pointer = reference.trim_start_matches('#');
                doc.pointer(pointer)
                    .unwrap_or_else(|| panic!("dangling reference {reference}"))
            }
            None => value,
        }
    }

    fn parameter<'a>(operation: &'a Value, location: &str, name: &str) -> &'a Value {
        operation["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["in"] == location && p["name"] == name)
            .unwrap_or_else(|| panic!("no {location} parameter {name}"))
    }

    fn parameter_names(operation: &Value, location: &str) -> Vec<String> {
        operation["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == location)
            .filter_map(|p| p["name"].as_str().map(str::to_owned))
            .collect()
    }

    #[test]
    fn every_routed_method_appears_with_its_method_and_path() {
        let table = crate::test_support::weft_table();
        let doc = document(&table);
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["title"], "Weft API");
        let mut ids = HashSet::new();
        let paths = doc["paths"].as_object().unwrap();
        for route in table.router.routes() {
            // Weft's templates are OpenAPI paths, up to their parameters' names.
            let method = route.method().as_str().to_ascii_lowercase();
            let template = route.template().as_str();
            let path = paths
                .keys()
                .find(|path| path_shape(path) == path_shape(template))
                .unwrap_or_else(|| panic!("no path for {template}"));
            let operation = operation(&doc, &method, path);
            assert_eq!(operation["operationId"], route.value().full_method);
            assert!(ids.insert(operation["operationId"].to_string()));
            let service = route.value().method.parent_service();
            assert_eq!(operation["tags"], json!([service.full_name()]));
        }
        let operations: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|item| item.as_object().unwrap().len())
            .sum();
        assert_eq!(operations, table.router.len());
        assert_eq!(ids.len(), 17);
        let tags: Vec<&str> = doc["tags"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t["name"].as_str())
            .collect();
        assert_eq!(
            tags,
            [
                "weft.auth.v1.AuthService",
                "weft.user.v1.UserService",
                "weft.order.v1.OrderService"
            ]
        );
    }

    #[test]
    fn paths_that_differ_only_in_parameter_names_are_one_path() {
        let doc = weft_document();
        let paths = doc["paths"].as_object().unwrap();
        let shapes: Vec<String> = paths.keys().map(|p| path_shape(p)).collect();
        let unique: HashSet<&String> = shapes.iter().collect();
        assert_eq!(unique.len(), shapes.len(), "one path per shape: {shapes:?}");
        assert!(!paths.contains_key("/v1/users/{user.id}"));
        let update = operation(&doc, "patch", "/v1/users/{id}");
        assert_eq!(update["operationId"], "weft.user.v1.UserService.UpdateUser");
        let parameter = &update["parameters"][0];
        assert_eq!(
            (&parameter["name"], &parameter["in"]),
            (&json!("id"), &json!("path"))
        );
        assert!(
            parameter["description"]
                .as_str()
                .unwrap()
                .contains("Binds the request field `user.id`."),
            "{parameter}"
        );
        assert_eq!(path_names("/v1/{a}/x/{b.c}:do"), ["a", "b.c"]);
        assert_eq!(path_shape("/v1/{a}/x/{b.c}:do"), "/v1/{}/x/{}:do");
    }

    #[test]
    fn public_routes_have_no_security_and_others_need_a_bearer_token() {
        let doc = weft_document();
        let scheme = &doc["components"]["securitySchemes"]["bearerAuth"];
        assert_eq!(scheme["type"], "http");
        assert_eq!(scheme["scheme"], "bearer");
        assert_eq!(scheme["bearerFormat"], "JWT");
        assert!(doc.get("security").is_none(), "no document-wide security");

        for (method, path) in [
            ("get", "/v1/products"),
            ("get", "/v1/products/{id}"),
            ("post", "/v1/auth/login"),
        ] {
            let operation = operation(&doc, method, path);
            assert!(operation.get("security").is_none(), "{method} {path}");
            assert_eq!(operation["x-access"], "public");
        }
        for (method, path, access) in [
            ("get", "/v1/orders", "authenticated"),
            ("patch", "/v1/users/{id}", "authenticated"),
            ("get", "/v1/users", "admin"),
            ("post", "/v1/products", "admin"),
        ] {
            let operation = operation(&doc, method, path);
            assert_eq!(
                operation["security"],
                json!([{"bearerAuth": []}]),
                "{method} {path}"
            );
            assert_eq!(operation["x-access"], access);
        }
        let list_users = operation(&doc, "get", "/v1/users");
        assert!(
            list_users["description"]
                .as_str()
                .unwrap()
                .contains("role `admin`")
        );
    }

    #[test]
    fn update_user_binds_the_path_the_body_field_and_the_mask_from_the_query() {
        let doc = weft_document();
        // One OpenAPI path with GetUser's `/v1/users/{id}`: the parameter takes its name.
        let operation = operation(&doc, "patch", "/v1/users/{id}");
        assert_eq!(
            operation["operationId"],
            "weft.user.v1.UserService.UpdateUser"
        );
        let id = parameter(operation, "path", "id");
        assert_eq!(id["required"], true);
        assert_eq!(id["schema"]["type"], "string");
        assert_eq!(
            id["description"],
            "Opaque id chosen by the server.\n\nBinds the request field `user.id`."
        );
        assert_eq!(parameter_names(operation, "path"), ["id"]);
        // `user` is the body, so none of its fields is a query parameter.
        assert_eq!(parameter_names(operation, "query"), ["updateMask"]);
        let mask = parameter(operation, "query", "updateMask");
        assert_eq!(mask["schema"]["type"], "string");
        assert!(
            mask["description"]
                .as_str()
                .unwrap()
                .starts_with("Fields to change")
        );

        // The gateway takes an empty body as the empty message: the document must not say
        // otherwise (a fuzzer sending none would find the API more lenient than documented).
        let body = &operation["requestBody"];
        assert_eq!(body["required"], false);
        assert_eq!(
            body["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/weft.user.v1.User"
        );
        assert_eq!(
            operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/weft.user.v1.User"
        );
    }

    #[test]
    fn list_products_takes_page_size_and_token_from_the_query() {
        let doc = weft_document();
        let list = operation(&doc, "get", "/v1/products");
        assert_eq!(parameter_names(list, "query"), ["pageSize", "pageToken"]);
        let size = parameter(list, "query", "pageSize");
        assert_eq!(
            size["schema"],
            json!({"type": "integer", "format": "int32", "minimum": 0})
        );
        assert_eq!(size["description"], "Page size, 1..500; 0 means 50.");
        assert_eq!(
            parameter(list, "query", "pageToken")["schema"],
            json!({"type": "string", "pattern": "^(?:[A-Za-z0-9_-]{32})?$"})
        );
        assert!(list.get("requestBody").is_none());

        // A path-bound field is not also a query parameter; body "*" has no query parameters.
        let get = operation(&doc, "get", "/v1/products/{id}");
        assert_eq!(parameter_names(get, "query"), Vec::<String>::new());
        let restock = operation(&doc, "post", "/v1/products/{id}:restock");
        assert_eq!(parameter_names(restock, "path"), ["id"]);
        assert_eq!(parameter_names(restock, "query"), Vec::<String>::new());
        // The path sets `id`: the body need not, and what it says is ignored.
        let body = &restock["requestBody"]["content"]["application/json"]["schema"];
        assert_eq!(body["required"], json!(["quantity"]));
        assert_eq!(body["properties"]["id"]["type"], json!(["string", "null"]));
        assert_eq!(restock["requestBody"]["required"], true);
    }

    #[test]
    fn schemas_follow_the_proto3_json_mapping() {
        let doc = weft_document();
        let schemas = &doc["components"]["schemas"];
        let product = &schemas["weft.order.v1.Product"];
        assert_eq!(product["type"], "object");
        for field in ["unitPriceCents", "stock"] {
            // A string, or a number as parsers take too; `null` means 0, which is allowed.
            let types = json!(["string", "integer", "null"]);
            assert_eq!(product["properties"][field]["type"], types, "{field}");
            assert_eq!(product["properties"][field]["format"], "int64", "{field}");
        }
        let total = &schemas["weft.order.v1.Order"]["properties"]["totalCents"];
        assert_eq!(total["type"], json!(["string", "null"]));
        assert_eq!(total["pattern"], "^-?[0-9]+$");
        let created = &product["properties"]["createTime"];
        assert_eq!(created["type"], json!(["string", "null"]));
        assert_eq!(product["properties"]["createTime"]["format"], "date-time");
        assert!(
            product["properties"].get("unit_price_cents").is_none(),
            "lowerCamelCase names only"
        );

        let order = &schemas["weft.order.v1.Order"];
        assert_eq!(
            order["properties"]["items"]["type"],
            json!(["array", "null"])
        );
        assert_eq!(
            order["properties"]["items"]["items"]["$ref"],
            "#/components/schemas/weft.order.v1.OrderItem"
        );
        let status = &order["properties"]["status"]["anyOf"];
        assert_eq!(status[1], json!({"type": "null"}));
        let status = resolve_ref(&doc, &status[0]);
        assert_eq!(status["type"], json!(["string", "integer"]));
        assert_eq!(
            status["enum"],
            json!([
                "ORDER_STATUS_UNSPECIFIED",
                "ORDER_STATUS_CONFIRMED",
                "ORDER_STATUS_CANCELLED",
                0,
                1,
                2
            ])
        );
        // Every message reached is a component, and every reference resolves.
        for name in [
            "weft.order.v1.ListProductsResponse",
            "weft.order.v1.CreateOrderRequest",
            "weft.order.v1.OrderLine",
            "weft.auth.v1.AuthTokens",
            "weft.user.v1.Role",
        ] {
            assert!(schemas[name].is_object(), "{name}");
        }
        check_refs(&doc, &doc);
        // Empty is an object, inline.
        let logout = operation(&doc, "post", "/v1/auth/logout");
        assert_eq!(
            logout["responses"]["200"]["content"]["application/json"]["schema"],
            json!({"type": "object"})
        );
    }

    #[test]
    fn field_rules_from_the_contract_are_published() {
        let doc = weft_document();
        let schemas = &doc["components"]["schemas"];
        // Unknown fields are refused, so every message says so.
        for (name, schema) in schemas.as_object().unwrap() {
            if schema["type"] == "object" && name != ERROR_SCHEMA {
                assert_eq!(schema["additionalProperties"], false, "{name}");
            }
        }
        let product = &schemas["weft.order.v1.Product"];
        assert_eq!(product["required"], json!(["name"]));
        let name = &product["properties"]["name"];
        assert_eq!(name["type"], "string", "a required field is never null");
        assert_eq!(
            (&name["minLength"], &name["maxLength"]),
            (&json!(1), &json!(200))
        );
        assert!(name["pattern"].as_str().unwrap().contains(r"\x00-\x1f"));
        assert_eq!(product["properties"]["id"]["readOnly"], true);
        assert_eq!(
            product["properties"]["currency"]["pattern"],
            "^(?:[A-Z]{3})?$"
        );
        assert_eq!(product["properties"]["stock"]["minimum"], 0);
        // CreateProduct's body is the product, which has a required field: the body is too.
        let create = operation(&doc, "post", "/v1/products");
        assert_eq!(create["requestBody"]["required"], true);

        let line = &schemas["weft.order.v1.OrderLine"];
        assert_eq!(line["required"], json!(["productId", "quantity"]));
        let quantity = &line["properties"]["quantity"];
        assert_eq!(quantity["type"], json!(["string", "integer"]));
        assert_eq!(
            (&quantity["minimum"], &quantity["maximum"]),
            (&json!(1), &json!(1000))
        );
        assert_eq!(
            quantity["pattern"],
            r"^(?:\+?0*(?:[1-9]|[1-9][0-9]|[1-9][0-9]{2}|1000))$"
        );
        let order = &schemas["weft.order.v1.CreateOrderRequest"]["properties"];
        assert_eq!(
            (&order["items"]["minItems"], &order["items"]["maxItems"]),
            (&json!(1), &json!(100))
        );
        assert_eq!(order["idempotencyKey"]["maxLength"], 128);
        assert_eq!(
            order["idempotencyKey"]["pattern"],
            r"^[^\x00-\x1f\x7f-\x9f]*$"
        );

        let register = &schemas["weft.auth.v1.RegisterRequest"];
        assert_eq!(
            register["required"],
            json!(["email", "password", "displayName"])
        );
        assert_eq!(register["properties"]["email"]["format"], "email");
        assert_eq!(register["properties"]["password"]["minLength"], 8);
        // Login refuses bad credentials with 401, not their shape: no rules there.
        assert!(
            schemas["weft.auth.v1.LoginRequest"]
                .get("required")
                .is_none()
        );

        // An update mask names the body message's writable fields, in either spelling.
        let update = operation(&doc, "patch", "/v1/users/{id}");
        assert_eq!(update["requestBody"]["required"], false);
        let mask = parameter(update, "query", "updateMask");
        let fields = "(?:displayName|display_name|role)";
        assert_eq!(
            mask["schema"]["pattern"],
            format!("^(?:{fields}(?:,{fields})*)?$")
        );
    }

    #[test]
    fn answers_link_to_the_operations_that_take_their_id() {
        let doc = weft_document();
        let links = |method: &str, path: &str| {
            let links = &operation(&doc, method, path)["responses"]["200"]["links"];
            let mut names: Vec<String> = links
                .as_object()
                .map(|l| l.keys().cloned().collect())
                .unwrap_or_default();
            names.sort();
            names
        };
        assert_eq!(links("post", "/v1/orders"), ["CancelOrder", "GetOrder"]);
        assert_eq!(
            links("post", "/v1/products"),
            ["GetProduct", "RestockProduct"]
        );
        assert_eq!(links("get", "/v1/me"), ["GetUser", "UpdateUser"]);
        // No link to itself; lists and tokens have no `id` of their own.
        assert_eq!(links("get", "/v1/orders/{id}"), ["CancelOrder"]);
        assert!(links("get", "/v1/orders").is_empty());
        assert!(links("post", "/v1/auth/register").is_empty());
        let update =
            &operation(&doc, "post", "/v1/orders")["responses"]["200"]["links"]["CancelOrder"];
        assert_eq!(
            update["operationId"],
            "weft.order.v1.OrderService.CancelOrder"
        );
        assert_eq!(update["parameters"], json!({"id": "$response.body#/id"}));
        let to_update =
            &operation(&doc, "get", "/v1/me")["responses"]["200"]["links"]["UpdateUser"];
        // PATCH /v1/users/{user.id} shares its path with GET /v1/users/{id}: the name is `id`.
        assert_eq!(to_update["parameters"], json!({"id": "$response.body#/id"}));
    }

    fn check_refs(doc: &Value, value: &Value) {
        match value {
            Value::Object(map) => {
                if map.contains_key("$ref") {
                    resolve_ref(doc, value);
                }
                map.values().for_each(|v| check_refs(doc, v));
            }
            Value::Array(items) => items.iter().for_each(|v| check_refs(doc, v)),
            _ => {}
        }
    }

    #[test]
    fn proto_comments_become_summaries_and_descriptions() {
        let doc = weft_document();
        let get_product = operation(&doc, "get", "/v1/products/{id}");
        assert_eq!(get_product["summary"], "Returns one product.");
        assert!(get_product.get("description").is_none(), "same as summary");
        let cancel = operation(&doc, "post", "/v1/orders/{id}:cancel");
        assert_eq!(
            cancel["summary"],
            "Cancels an order and puts its stock back."
        );
        assert_eq!(
            cancel["description"],
            "Cancels an order and puts its stock back. Cancelling a cancelled order changes \
             nothing."
        );
        let schemas = &doc["components"]["schemas"];
        let product = &schemas["weft.order.v1.Product"];
        assert_eq!(product["description"], "Something that can be ordered.");
        assert_eq!(
            product["properties"]["unitPriceCents"]["description"],
            "Price of one unit in cents, >= 0."
        );
        let role = &schemas["weft.user.v1.Role"]["description"];
        assert!(role.as_str().unwrap().starts_with("What a user may do."));
        assert!(
            role.as_str()
                .unwrap()
                .contains("- `ROLE_ADMIN`: May read and change every profile")
        );
        let tag = &doc["tags"][2];
        assert_eq!(tag["name"], "weft.order.v1.OrderService");
        assert_eq!(
            tag["description"],
            "The shop: a catalogue with stock, and orders that take from it."
        );
    }

    fn statuses(operation: &Value) -> Vec<&str> {
        operation["responses"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect()
    }

    #[test]
    fn error_responses_follow_the_route() {
        let doc = weft_document();
        let expect = |method: &str, path: &str, codes: &[&str]| {
            let operation = operation(&doc, method, path);
            let mut got = statuses(operation);
            got.sort_unstable();
            let mut want = codes.to_vec();
            want.sort_unstable();
            assert_eq!(got, want, "{method} {path}");
            for code in codes.iter().filter(|c| **c != "200") {
                let response = resolve_ref(&doc, &operation["responses"][code]);
                let schema = &response["content"]["application/json"]["schema"];
                assert_eq!(
                    schema["$ref"], "#/components/schemas/weft-gateway.Error",
                    "{method} {path} {code}"
                );
                assert!(response["description"].is_string());
            }
        };
        // Public, no body.
        expect(
            "get",
            "/v1/products",
            &["200", "400", "404", "429", "default"],
        );
        // Public, body.
        expect(
            "post",
            "/v1/auth/login",
            &["200", "400", "404", "409", "413", "415", "429", "default"],
        );
        // Authenticated, no body.
        expect(
            "get",
            "/v1/orders/{id}",
            &["200", "400", "401", "403", "404", "429", "default"],
        );
        // Authenticated, body.
        expect(
            "post",
            "/v1/orders",
            &[
                "200", "400", "401", "403", "404", "409", "413", "415", "429", "default",
            ],
        );
        expect(
            "patch",
            "/v1/users/{id}",
            &[
                "200", "400", "401", "403", "404", "409", "413", "415", "429", "default",
            ],
        );

        let error = &doc["components"]["schemas"]["weft-gateway.Error"];
        assert_eq!(
            error["required"],
            json!(["code", "message", "details", "requestId"])
        );
        assert_eq!(error["properties"]["code"]["type"], "integer");
        assert_eq!(error["properties"]["code"]["format"], "int32");
        assert_eq!(error["properties"]["message"]["type"], "string");
        assert_eq!(error["properties"]["details"]["type"], "array");
        assert_eq!(error["properties"]["requestId"]["type"], "string");
        let unauthorized = &doc["components"]["responses"]["Unauthorized"];
        assert!(unauthorized["headers"]["WWW-Authenticate"].is_object());
    }

    // ---- a descriptor set that is not Weft's ----

    /// A `FileDescriptorSet` with a service that uses what Weft's protos do not: sub-patterns,
    /// anonymous wildcards, additional bindings, a custom method, maps, wrappers, recursion.
    fn foreign_descriptor_set() -> Vec<u8> {
        use prost_reflect::{DescriptorPool, prost::Message as _};

        let weft = DescriptorPool::decode(weft_proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let well_known = DescriptorPool::global();
        let dependencies = weft
            .files()
            .filter(|f| f.name().starts_with("google/"))
            .chain(well_known.files());
        for file in dependencies {
            if seen.insert(file.name().to_owned()) {
                let mut bytes = Vec::new();
                file.encode(&mut bytes).unwrap();
                prost_reflect::prost::encoding::bytes::encode(1, &bytes, &mut out);
            }
        }
        let string = |name: &str, number: u32| {
            json!({
                "name": name, "number": number, "label": "LABEL_OPTIONAL", "type": "TYPE_STRING"
            })
        };
        let message = |name: &str, number: u32, type_name: &str, label: &str| {
            json!({
                "name": name, "number": number, "label": label,
                "type": "TYPE_MESSAGE", "typeName": type_name
            })
        };
        let file = json!({
            "name": "acme/shelf/v1/shelf.proto",
            "package": "acme.shelf.v1",
            "syntax": "proto3",
            "dependency": [
                "google/api/annotations.proto",
                "google/protobuf/wrappers.proto",
                "google/protobuf/duration.proto",
                "google/protobuf/empty.proto"
            ],
            "messageType": [
                {
                    "name": "Book",
                    "field": [
                        string("name", 1),
                        {"name": "page_count", "number": 2, "label": "LABEL_OPTIONAL", "type": "TYPE_UINT64"},
                        message("rating", 3, ".google.protobuf.DoubleValue", "LABEL_OPTIONAL"),
                        message("related", 4, ".acme.shelf.v1.Book", "LABEL_REPEATED"),
                        message("labels", 5, ".acme.shelf.v1.Book.LabelsEntry", "LABEL_REPEATED"),
                        {"name": "cover", "number": 6, "label": "LABEL_OPTIONAL", "type": "TYPE_BYTES"},
                        message("read_time", 7, ".google.protobuf.Duration", "LABEL_OPTIONAL"),
                        {"name": "genre", "number": 8, "label": "LABEL_OPTIONAL", "type": "TYPE_ENUM", "typeName": ".acme.shelf.v1.Genre"},
                        {"name": "isbn", "number": 9, "label": "LABEL_OPTIONAL", "type": "TYPE_STRING", "oneofIndex": 0},
                        {"name": "issn", "number": 10, "label": "LABEL_OPTIONAL", "type": "TYPE_STRING", "oneofIndex": 0}
                    ],
                    "oneofDecl": [{"name": "code"}],
                    "nestedType": [{
                        "name": "LabelsEntry",
                        "field": [
                            string("key", 1),
                            {"name": "value", "number": 2, "label": "LABEL_OPTIONAL", "type": "TYPE_INT64"}
                        ],
                        "options": {"mapEntry": true}
                    }]
                },
                {
                    "name": "GetBookRequest",
                    "field": [
                        string("name", 1),
                        {"name": "genres", "number": 2, "label": "LABEL_REPEATED", "type": "TYPE_ENUM", "typeName": ".acme.shelf.v1.Genre"},
                        message("filter", 3, ".acme.shelf.v1.Filter", "LABEL_OPTIONAL")
                    ]
                },
                {
                    "name": "Filter",
                    "field": [
                        {"name": "min_rating", "number": 1, "label": "LABEL_OPTIONAL", "type": "TYPE_DOUBLE"},
                        message("parent", 2, ".acme.shelf.v1.Filter", "LABEL_OPTIONAL")
                    ]
                }
            ],
            "enumType": [{
                "name": "Genre",
                "value": [
                    {"name": "GENRE_UNSPECIFIED", "number": 0},
                    {"name": "GENRE_FICTION", "number": 1}
                ]
            }],
            "service": [{
                "name": "ShelfService",
                "method": [
                    {
                        "name": "GetBook",
                        "inputType": ".acme.shelf.v1.GetBookRequest",
                        "outputType": ".acme.shelf.v1.Book",
                        "options": {"[google.api.http]": {
                            "get": "/v1/{name=shelves/*/books/*}",
                            "additionalBindings": [{"get": "/v1/books/*/{name}"}]
                        }}
                    },
                    {
                        "name": "SyncBook",
                        "inputType": ".acme.shelf.v1.Book",
                        "outputType": ".google.protobuf.Empty",
                        "options": {"[google.api.http]": {
                            "custom": {"kind": "SYNC", "path": "/v1/sync"},
                            "body": "*"
                        }}
                    }
                ]
            }],
            "sourceCodeInfo": {"location": [
                {"path": [4, 0], "span": [1, 0, 1], "leadingComments": " A book on a shelf.\n"},
                {"path": [4, 0, 2, 1], "span": [2, 0, 1], "trailingComments": " Pages, counted.\n"},
                {"path": [6, 0, 2, 0], "span": [3, 0, 1], "leadingComments": " Gets a book. Any book.\n\n Really.\n"}
            ]}
        });
        let descriptor = weft
            .get_message_by_name("google.protobuf.FileDescriptorProto")
            .unwrap();
        let file = DynamicMessage::deserialize(descriptor, file).unwrap();
        prost_reflect::prost::encoding::bytes::encode(1, &file.encode_to_vec(), &mut out);
        out
    }

    fn temp_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!(
            "weft-gateway-openapi-{}-{name}",
            std::process::id()
        ));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn foreign_document() -> Value {
        use weft_mesh::config::{DefaultAccess, UpstreamConfig};
        let file = temp_file("shelf.binpb", &foreign_descriptor_set());
        let mut config = crate::test_support::weft_config("http://127.0.0.1:1");
        let mut shelf = UpstreamConfig::with_endpoint("http://127.0.0.1:1".into());
        shelf.descriptor_set = Some(file.clone());
        shelf.default_access = DefaultAccess::Public;
        config.upstreams.insert("shelf".into(), shelf);
        let contract =
            weft_mesh::contract::Contract::load(&[weft_proto::FILE_DESCRIPTOR_SET], &config)
                .expect("the foreign descriptor set is readable");
        let table = RouteTable::build_with(&config, &contract);
        let _ = std::fs::remove_file(&file);
        document(&table.expect("the foreign descriptor set is valid"))
    }

    #[test]
    fn any_descriptor_set_is_documented() {
        let doc = foreign_document();
        // Sub-pattern variable: one `{name}` parameter with the pattern's shape.
        let get = operation(&doc, "get", "/v1/{name}");
        assert_eq!(get["operationId"], "acme.shelf.v1.ShelfService.GetBook");
        assert_eq!(get["summary"], "Gets a book.");
        assert_eq!(get["description"], "Gets a book. Any book.\n\nReally.");
        assert_eq!(get["tags"], json!(["acme.shelf.v1.ShelfService"]));
        assert!(get.get("security").is_none(), "default_access = public");
        let name = parameter(get, "path", "name");
        assert_eq!(name["schema"]["pattern"], "^shelves/[^/]+/books/[^/]+$");
        // Query: repeated enum as an array, nested fields dotted, recursion cut.
        assert_eq!(
            parameter_names(get, "query"),
            ["genres", "filter.minRating"]
        );
        let genres = parameter(get, "query", "genres");
        assert_eq!(genres["schema"]["type"], "array");
        let genre = resolve_ref(&doc, &genres["schema"]["items"]);
        assert_eq!(
            genre["enum"],
            json!(["GENRE_UNSPECIFIED", "GENRE_FICTION", 0, 1])
        );

        // The additional binding, with an anonymous wildcard and a unique operationId.
        let extra = operation(&doc, "get", "/v1/books/{_wildcard1}/{name}");
        assert_eq!(extra["operationId"], "acme.shelf.v1.ShelfService.GetBook_2");
        assert_eq!(parameter_names(extra, "path"), ["_wildcard1", "name"]);

        // A custom HTTP method has no OpenAPI slot: kept as an extension.
        let sync = &doc["paths"]["/v1/sync"]["x-sync"];
        assert_eq!(sync["operationId"], "acme.shelf.v1.ShelfService.SyncBook");
        assert!(sync["requestBody"].is_object());

        let book = &doc["components"]["schemas"]["acme.shelf.v1.Book"];
        assert_eq!(book["description"], "A book on a shelf.");
        let properties = &book["properties"];
        // Without field rules, `null` (the default) is taken too.
        assert_eq!(properties["pageCount"]["type"], json!(["string", "null"]));
        assert_eq!(properties["pageCount"]["format"], "uint64");
        assert_eq!(properties["pageCount"]["description"], "Pages, counted.");
        assert_eq!(properties["rating"]["type"], json!(["number", "null"]));
        assert_eq!(
            properties["related"]["items"]["$ref"],
            "#/components/schemas/acme.shelf.v1.Book"
        );
        assert_eq!(properties["labels"]["type"], json!(["object", "null"]));
        assert_eq!(
            properties["labels"]["additionalProperties"]["format"],
            "int64"
        );
        assert_eq!(properties["cover"]["contentEncoding"], "base64");
        assert_eq!(properties["readTime"]["type"], json!(["string", "null"]));
        assert!(
            properties["isbn"]["description"]
                .as_str()
                .unwrap()
                .contains("At most one of `isbn`, `issn`")
        );
        assert!(
            doc["components"]["schemas"]
                .get("acme.shelf.v1.Book.LabelsEntry")
                .is_none(),
            "map entries are not components"
        );
        check_refs(&doc, &doc);
        // Weft's routes are still there.
        operation(&doc, "get", "/v1/products/{id}");
    }

    #[test]
    fn helpers_handle_corner_cases() {
        assert_eq!(summary("One. Two."), "One.");
        assert_eq!(summary("Wrapped\nline. More"), "Wrapped line.");
        assert_eq!(summary("No period"), "No period");
        assert_eq!(clean_comment("  a\n    b\n\n").as_deref(), Some("a\n  b"));
        assert_eq!(clean_comment(" \n \n"), None);
        assert_eq!(encode_path("a b/é"), "a%20b%2F%C3%A9");
        assert_eq!(
            pattern_regex(&[Segment::Literal("a.b".into()), Segment::Multi]),
            "^a\\.b(/[^/]+)*$"
        );
        assert_eq!(pattern_regex(&[Segment::Multi]), "^([^/]+(/[^/]+)*)?$");
        let mut taken = HashSet::new();
        assert_eq!(unique(&mut taken, "a.B"), "a.B");
        assert_eq!(unique(&mut taken, "a.B"), "a.B_2");
        assert_eq!(unique(&mut taken, "a.B"), "a.B_3");
    }

    /// Runs scripts/validate-openapi.sh (openapi-spec-validator from PyPI) on the documents.
    /// Opt-in outside CI: it needs python3 and network access on first use.
    #[test]
    fn the_document_is_valid_openapi_3_1() {
        let wanted = std::env::var("WEFT_VALIDATE_OPENAPI").is_ok_and(|v| v == "1")
            || std::env::var("CI").is_ok_and(|v| v == "true");
        if !wanted {
            eprintln!(
                "skipped: set WEFT_VALIDATE_OPENAPI=1 (or CI=true) to validate /openapi.json \
                 with scripts/validate-openapi.sh"
            );
            return;
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the crate is in the workspace");
        let script = root.join("scripts/validate-openapi.sh");
        for (name, doc) in [
            ("weft.json", weft_document()),
            ("foreign.json", foreign_document()),
        ] {
            let file = temp_file(name, doc.to_string().as_bytes());
            let output = std::process::Command::new("bash")
                .arg(&script)
                .arg(&file)
                .current_dir(root)
                .output();
            let _ = std::fs::remove_file(&file);
            let output = output.unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
            assert!(
                output.status.success(),
                "{name} is not valid OpenAPI 3.1:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            eprint!("{}", String::from_utf8_lossy(&output.stdout));
        }
    }
}
