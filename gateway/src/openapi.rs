//! The OpenAPI 3.1 document of every route, generated at start from the same descriptors.

use serde_json::{Value, json};

use crate::table::RouteTable;

/// The OpenAPI document of `table`.
pub fn document(table: &RouteTable) -> Value {
    let mut paths = serde_json::Map::new();
    for route in table.router.routes() {
        let endpoint = route.value();
        let path = paths
            .entry(route.template().as_str().to_owned())
            .or_insert_with(|| json!({}));
        path[route.method().as_str().to_ascii_lowercase()] = json!({
            "operationId": endpoint.full_method,
            "responses": {"200": {"description": "OK"}},
        });
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Weft", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
    })
}
