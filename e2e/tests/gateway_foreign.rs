//! weft-gateway in front of a gRPC API that is not Weft's, as Envoy's transcoder fronts any
//! service: the `acme.echo.v1` API of e2e/proto, compiled by e2e/build.rs into a tonic server
//! (run in-process here) and a descriptor set file named in mesh-config as an upstream's
//! `descriptor_set` (`[upstreams.acme]`). The echo server answers with what it received, so the tests
//! see the transcoding itself: path templates with sub-patterns and `**`, `additional_bindings`,
//! `body: "<field>"`, `response_body`, query parameters (repeated, nested, enums, well-known
//! types), every JSON kind, header forwarding, the whole gRPC -> HTTP status table, and a
//! per-method deadline from `[gateway] route_timeouts` (504).

#[macro_use]
mod common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::{
    rest::{Findings, Gateway, grpc},
    *,
};
use serde_json::json;

use weft_e2e::{ECHO_DESCRIPTOR_SET, Echo, echo::echo_service_server::EchoServiceServer};

/// Starts the echo server on a free loopback port.
async fn start_echo_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("cannot bind a loopback port");
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EchoServiceServer::new(Echo))
            .serve_with_incoming(incoming),
    );
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_grpc_api_is_fronted_from_its_descriptor_set() {
    let echo = start_echo_server().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let descriptor = dir.path().join("echo.binpb");
    std::fs::write(&descriptor, ECHO_DESCRIPTOR_SET).expect("cannot write the descriptor set");
    // An upstream the processes were not built with: its descriptor set file says what it
    // serves, and its methods that declare no access are public.
    let toml = format!(
        "[upstreams.acme]\nendpoint = \"http://{echo}\"\ndescriptor_set = {:?}\n\
         default_access = \"public\"\n\n\
         [gateway.route_timeouts]\n\"acme.echo.v1.EchoService/Sleep\" = 200\n",
        descriptor.display().to_string()
    );
    let mesh = gateway_mesh(Backend::Sqlite, &toml).await;
    let gw = Gateway::of(&mesh);
    let mut findings = Findings::default();

    // --- a path variable with a sub-pattern, query parameters of every kind ---
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let reply = gw
        .get(
            "/acme/v1/shelves/s1?tags=a&tags=b%20c&mood=MOOD_GRUMPY&limit=9007199254740993\
             &filter.minPages=3&filter.only_new=true&since=2024-01-02T03:04:05Z",
        )
        .header("x-request-id", "foreign-1")
        .header("traceparent", trace)
        .bearer("opaque-token")
        .send()
        .await;
    let shelf = reply.ok();
    assert_eq!(shelf["name"], "shelves/s1");
    assert_eq!(shelf["tags"], json!(["a", "b c"]), "repeated by repetition");
    assert_eq!(shelf["mood"], "MOOD_GRUMPY");
    assert_eq!(
        shelf["limit"], "9007199254740993",
        "int64 beyond 2^53, exact"
    );
    assert_eq!(shelf["filter"], json!({"minPages": 3, "onlyNew": true}));
    assert_eq!(shelf["since"], "2024-01-02T03:04:05Z");
    let metadata = &shelf["metadata"];
    assert_eq!(metadata["x-request-id"], "foreign-1", "{metadata}");
    assert_eq!(reply.request_id(), "foreign-1");
    assert_eq!(
        metadata["authorization"], "Bearer opaque-token",
        "the token is forwarded"
    );
    assert!(
        metadata["traceparent"]
            .as_str()
            .is_some_and(|t| t.contains("4bf92f3577b34da6a3ce929d0e0e4736")),
        "the incoming trace is continued: {metadata}"
    );
    let timeout = metadata["grpc-timeout"].as_str().unwrap_or_default();
    let millis = grpc_timeout_millis(timeout);
    assert!(
        millis.is_some_and(|ms| (4_000.0..=5_000.0).contains(&ms)),
        "grpc-timeout from the default route timeout (5 s): {timeout:?}"
    );

    // Enums by number, defaults emitted for what was not sent.
    let shelf = gw.get("/acme/v1/shelves/s2?mood=1").send().await.ok();
    assert_eq!(shelf["mood"], "MOOD_HAPPY");
    assert_eq!(shelf["tags"], json!([]));
    assert_eq!(shelf["limit"], "0");
    findings.check(
        "unset message fields are emitted (as null, like EmitUnpopulated)",
        || {
            for key in ["filter", "since"] {
                assert!(
                    shelf.as_object().unwrap().contains_key(key),
                    "{key} is missing: {shelf}"
                );
            }
        },
    );
    // A generated request id reaches the upstream too.
    let reply = gw.get("/acme/v1/shelves/s3").send().await;
    let shelf = reply.ok();
    assert_eq!(shelf["metadata"]["x-request-id"], reply.request_id());
    // The sub-pattern `shelves/*` is one segment: more or other segments are not this route.
    gw.get("/acme/v1/shelves")
        .send()
        .await
        .error(404, grpc::NOT_FOUND, &[]);
    gw.get("/acme/v1/boxes/b1")
        .send()
        .await
        .error(404, grpc::NOT_FOUND, &[]);
    gw.get("/acme/v1/shelves/s1?colour=red").send().await.error(
        400,
        grpc::INVALID_ARGUMENT,
        &["colour"],
    );
    gw.get("/acme/v1/shelves/s1?limit=lots").send().await.error(
        400,
        grpc::INVALID_ARGUMENT,
        &["limit"],
    );
    gw.get("/acme/v1/shelves/s1?mood=MOOD_SLEEPY")
        .send()
        .await
        .error(400, grpc::INVALID_ARGUMENT, &["mood"]);

    // --- additional_bindings: a custom verb with `body: "*"` ---
    let shelf = gw
        .post("/acme/v1/shelves/s1:fetch")
        .json(&json!({"tags": ["x"], "mood": "MOOD_HAPPY", "filter": {"min_pages": 2}}))
        .send()
        .await
        .ok();
    assert_eq!(
        shelf["name"], "shelves/s1",
        "the path wins over nothing in the body"
    );
    assert_eq!(shelf["tags"], json!(["x"]));
    assert_eq!(shelf["filter"]["minPages"], 2);

    // --- response_body: the answer is one field of the response ---
    let tags = gw
        .get("/acme/v1/shelves/s1/tags?tags=a&tags=b")
        .send()
        .await
        .ok();
    assert_eq!(tags, json!(["a", "b"]));
    let tags = gw.get("/acme/v1/shelves/s1/tags").send().await.ok();
    assert_eq!(tags, json!([]), "an empty repeated response_body is []");

    // --- `**`: any number of segments ---
    let file = gw.get("/acme/v1/files/a/b/c.txt").send().await.ok();
    assert_eq!(file, json!({"path": "a/b/c.txt"}));
    let file = gw.get("/acme/v1/files/dir%20x/f.txt").send().await.ok();
    assert_eq!(file["path"], "dir x/f.txt", "percent-decoded");

    // --- body: "<field>", the rest from the path and query ---
    let note = gw
        .put("/acme/v1/notes/n1?updateMask=text")
        .json(&json!({"text": "hello"}))
        .send()
        .await
        .ok();
    assert_eq!(
        note,
        json!({"note": {"id": "n1", "text": "hello"}, "updateMask": "text"})
    );

    // --- every JSON kind through `body: "*"` and back ---
    let sent = json!({
        "text": "héllo ✓ \"quoted\"",
        "big": "-9223372036854775808",
        "unsigned_big": "18446744073709551615",
        "ratio": 0.5,
        "flag": true,
        "blob": "aGVsbG8=",
        "mood": "MOOD_HAPPY",
        "numbers": ["1", 2],
        "filter": {"min_pages": 4},
        "counts": {"a": "1", "b": 2},
        "at": "2024-05-06T07:08:09.500Z",
        "mask": "a.b,cD",
        "wait": "1.500s",
        "maybe": 7,
        "filters": [{"onlyNew": true}, {}]
    });
    let echoed = gw.post("/acme/v1/echo").json(&sent).send().await.ok();
    assert_eq!(echoed["text"], "héllo ✓ \"quoted\"");
    assert_eq!(echoed["big"], "-9223372036854775808");
    assert_eq!(echoed["unsignedBig"], "18446744073709551615");
    assert_eq!(echoed["ratio"], 0.5);
    assert_eq!(echoed["flag"], true);
    assert_eq!(echoed["blob"], "aGVsbG8=");
    assert_eq!(echoed["mood"], "MOOD_HAPPY");
    assert_eq!(echoed["numbers"], json!(["1", "2"]));
    assert_eq!(echoed["filter"], json!({"minPages": 4, "onlyNew": false}));
    assert_eq!(echoed["counts"], json!({"a": "1", "b": "2"}));
    assert_eq!(echoed["mask"], "a.b,cD");
    assert_eq!(echoed["maybe"], 7);
    assert_eq!(
        echoed["filters"],
        json!([{"minPages": 0, "onlyNew": true}, {"minPages": 0, "onlyNew": false}])
    );
    assert!(
        echoed["at"]
            .as_str()
            .is_some_and(|t| t.starts_with("2024-05-06T07:08:09.5") && t.ends_with('Z')),
        "{}",
        echoed["at"]
    );
    assert!(
        echoed["wait"]
            .as_str()
            .is_some_and(|d| d.starts_with("1.5") && d.ends_with('s')),
        "{}",
        echoed["wait"]
    );
    // An empty body: every field present with its default.
    let defaults = gw.post("/acme/v1/echo").json(&json!({})).send().await.ok();
    for (key, value) in [
        ("text", json!("")),
        ("big", json!("0")),
        ("unsignedBig", json!("0")),
        ("flag", json!(false)),
        ("blob", json!("")),
        ("mood", json!("MOOD_UNSPECIFIED")),
        ("numbers", json!([])),
        ("counts", json!({})),
        ("filters", json!([])),
    ] {
        assert_eq!(defaults[key], value, "{key} in {defaults}");
    }
    assert_eq!(defaults["ratio"], 0.0);
    findings.check("unset message fields of an echo are emitted", || {
        let missing: Vec<&str> = ["filter", "at", "mask", "wait", "maybe"]
            .into_iter()
            .filter(|key| !defaults.as_object().unwrap().contains_key(*key))
            .collect();
        assert!(missing.is_empty(), "{missing:?} are missing: {defaults}");
    });
    gw.post("/acme/v1/echo")
        .json(&json!({"big": "1.5"}))
        .send()
        .await
        .error(400, grpc::INVALID_ARGUMENT, &[]);
    gw.post("/acme/v1/echo")
        .json(&json!({"mask": 5}))
        .send()
        .await
        .error(400, grpc::INVALID_ARGUMENT, &[]);

    // --- every gRPC status as grpc-gateway maps it ---
    let table: [(i32, u16); 17] = [
        (0, 200),
        (1, 499),
        (2, 500),
        (3, 400),
        (4, 504),
        (5, 404),
        (6, 409),
        (7, 403),
        (8, 429),
        (9, 400),
        (10, 409),
        (11, 400),
        (12, 501),
        (13, 500),
        (14, 503),
        (15, 500),
        (16, 401),
    ];
    for (code, status) in table {
        let reply = gw
            .post(&format!("/acme/v1/fail/{code}"))
            .json(&json!({"message": format!("boom {code}")}))
            .send()
            .await;
        if code == 0 {
            assert_eq!(reply.ok(), json!({}));
            continue;
        }
        findings.check(&format!("gRPC code {code} -> HTTP {status}"), || {
            let body = reply.error(status, i64::from(code), &[]);
            assert_eq!(
                body["message"],
                format!("boom {code}"),
                "the upstream's message"
            );
        });
    }

    // --- a method without an HTTP rule is not exposed ---
    gw.post("/acme.echo.v1.EchoService/Internal")
        .json(&json!({}))
        .send()
        .await
        .error(404, grpc::NOT_FOUND, &[]);

    // --- a per-method deadline: 504 at 200 ms, not after the upstream's 2 s ---
    let started = Instant::now();
    let slow = gw.get("/acme/v1/sleep/2000").send().await;
    let elapsed = started.elapsed();
    findings.check("a route timeout is 504 DEADLINE_EXCEEDED", || {
        slow.error(504, grpc::DEADLINE_EXCEEDED, &[]);
    });
    assert!(
        elapsed < Duration::from_millis(1500),
        "504 after {elapsed:?}: the route timeout is 200 ms"
    );
    assert!(
        elapsed >= Duration::from_millis(150),
        "504 after only {elapsed:?}: the route timeout is 200 ms"
    );
    assert_eq!(gw.get("/acme/v1/sleep/10").send().await.ok(), json!({}));

    // --- the document lists the foreign routes; Weft's own still work alongside ---
    let openapi = gw.get("/openapi.json").send().await.ok();
    let mut methods: Vec<String> = openapi["paths"]
        .as_object()
        .expect("paths")
        .values()
        .flat_map(|item| item.as_object().expect("a path item").values())
        .filter_map(|op| op["x-grpc-method"].as_str().map(str::to_owned))
        .filter(|m| m.starts_with("/acme."))
        .collect();
    methods.sort();
    methods.dedup();
    assert_eq!(
        methods,
        [
            "/acme.echo.v1.EchoService/AdminPing",
            "/acme.echo.v1.EchoService/Echo",
            "/acme.echo.v1.EchoService/Fail",
            "/acme.echo.v1.EchoService/GetFile",
            "/acme.echo.v1.EchoService/GetShelf",
            "/acme.echo.v1.EchoService/ListTags",
            "/acme.echo.v1.EchoService/Sleep",
            "/acme.echo.v1.EchoService/UpdateNote",
            "/acme.echo.v1.EchoService/WhoAmI",
        ]
    );
    assert!(
        openapi["components"]["schemas"]["acme.echo.v1.EchoMessage"].is_object(),
        "foreign messages are documented"
    );
    gw.get("/v1/products").send().await.ok();
    let ready = gw.get("/readyz").send().await.ok();
    assert_eq!(ready["status"], "ready", "{ready}");

    findings.assert_none();
    mesh.assert_no_panics();
    mesh.stop().await;
}

/// A `grpc-timeout` header value (`<digits><unit>`) in milliseconds.
fn grpc_timeout_millis(value: &str) -> Option<f64> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: f64 = digits.parse().ok()?;
    let per_unit = match unit {
        "H" => 3_600_000.0,
        "M" => 60_000.0,
        "S" => 1_000.0,
        "m" => 1.0,
        "u" => 0.001,
        "n" => 0.000_001,
        _ => return None,
    };
    Some(amount * per_unit)
}
