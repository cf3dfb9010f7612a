//! The server side of a unary call without tonic's streaming codec: the request's one message
//! is decoded from the collected body, the service's method is called, and its answer is sent
//! as one data frame and a `grpc-status: 0` trailer.
//!
//! tonic serves a unary call through the machinery of a stream: a `Streaming` decoder with an
//! 8 KiB buffer of its own, then an `EncodeBody` around a one-item stream with another, polled
//! frame by frame. For the mesh's small unary calls that was about a tenth of weft-order's
//! instructions per `GetProduct` (see `bench/README.md`, session 7). A service lists its
//! methods in [`UnaryRoutes`]; [`crate::server::serve`] sends the calls to those paths here,
//! and anything else (health, reflection) to tonic's router as before.
//!
//! The wire behaviour is tonic's, error for error: the same statuses for a missing, compressed
//! or oversized message, for an answer over the encoding limit, and a trailers-only response
//! for a status. Methods keep their tonic signature, so a service's API code is the same
//! whichever path serves it.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::Frame;
use tonic::{Status, body::Body};

use weft_core::grpc::{BodyError, FrameError, GRPC_STATUS, first_message, frame, read_body};

/// A boxed answer of a routed method.
type Reply = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Status>> + Send>>;

/// A routed method: the request's head and its message's bytes in, the whole answer out.
type Handler = Arc<dyn Fn(http::request::Parts, Bytes) -> Reply + Send + Sync>;

/// The unary methods a service serves without tonic's codec, by path.
#[derive(Clone, Default)]
pub struct UnaryRoutes {
    /// Looked up on every call: foldhash, not SipHash (the keys are the service's own paths and
    /// the table never grows after start, so a caller's path cannot flood it).
    routes: HashMap<&'static str, Handler, foldhash::fast::FixedState>,
    /// The largest message decoded or encoded (`server.max_message_bytes`).
    max_message_bytes: usize,
}

impl std::fmt::Debug for UnaryRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnaryRoutes")
            .field("paths", &self.paths())
            .field("max_message_bytes", &self.max_message_bytes)
            .finish()
    }
}

// === impl UnaryRoutes ===

impl UnaryRoutes {
    /// No routes yet; messages in both directions limited to `max_message_bytes`.
    pub fn new(max_message_bytes: usize) -> Self {
        Self {
            routes: HashMap::default(),
            max_message_bytes,
        }
    }

    /// Serves `path` (`/package.Service/Method`) with `method` of `api`: a method of the
    /// tonic-generated service trait, e.g. `<OrderApi as OrderService>::get_product`.
    pub fn route<A, Req, Resp, F>(mut self, api: &Arc<A>, path: &'static str, method: F) -> Self
    where
        A: Send + Sync + 'static,
        Req: prost::Message + Default + 'static,
        Resp: prost::Message + 'static,
        F: for<'a> Fn(
                &'a A,
                tonic::Request<Req>,
            ) -> Pin<
                Box<dyn Future<Output = Result<tonic::Response<Resp>, Status>> + Send + 'a>,
            > + Send
            + Sync
            + 'static,
    {
        let api = api.clone();
        let method = Arc::new(method);
        let max = self.max_message_bytes;
        let handler: Handler = Arc::new(move |parts, bytes| {
            let (api, method) = (api.clone(), method.clone());
            Box::pin(async move {
                // tonic's decoder reports a malformed message the same way.
                let message = Req::decode(bytes).map_err(|e| Status::internal(e.to_string()))?;
                let request = tonic::Request::from_http(http::Request::from_parts(parts, message));
                let response = method(&api, request).await?;
                reply(response, max)
            })
        });
        self.routes.insert(path, handler);
        self
    }

    /// The paths routed here.
    pub fn paths(&self) -> Vec<&'static str> {
        let mut paths: Vec<_> = self.routes.keys().copied().collect();
        paths.sort_unstable();
        paths
    }

    /// The methods of the gRPC service `service` (`package.Service`) in the contract that are
    /// not routed here, and the routes that are not methods of it: both empty when a service
    /// routes all its methods and only them.
    pub fn compare_with_contract(&self, service: &str) -> (Vec<String>, Vec<&'static str>) {
        let contract = crate::contract::current();
        let methods: Vec<String> = contract
            .pool()
            .get_service_by_name(service)
            .map(|s| {
                s.methods()
                    .filter(|m| !m.is_client_streaming() && !m.is_server_streaming())
                    .map(|m| format!("/{service}/{}", m.name()))
                    .collect()
            })
            .unwrap_or_default();
        let unrouted = methods
            .iter()
            .filter(|path| !self.serves(path))
            .cloned()
            .collect();
        let unknown = self
            .paths()
            .into_iter()
            .filter(|path| !methods.iter().any(|m| m == path))
            .collect();
        (unrouted, unknown)
    }

    /// Whether a call to `path` is served here.
    pub fn serves(&self, path: &str) -> bool {
        self.routes.contains_key(path)
    }

    /// The route of calls to `path`, if they are served here.
    pub fn get(&self, path: &str) -> Option<UnaryRoute> {
        self.routes.get(path).map(|handler| UnaryRoute {
            handler: handler.clone(),
            max_message_bytes: self.max_message_bytes,
        })
    }
}

/// One routed method, ready to serve a call.
pub struct UnaryRoute {
    handler: Handler,
    max_message_bytes: usize,
}

impl UnaryRoute {
    /// Serves `request`: the method's answer, or its status as a trailers-only response.
    pub async fn serve(self, request: http::Request<Body>) -> http::Response<Body> {
        let (parts, body) = request.into_parts();
        let answer = match read_message(&parts.headers, body, self.max_message_bytes).await {
            Ok(bytes) => (self.handler)(parts, bytes).await,
            Err(status) => Err(status),
        };
        answer.unwrap_or_else(Status::into_http)
    }
}

/// The request's one message, as tonic's unary server reads it.
async fn read_message(headers: &HeaderMap, body: Body, max: usize) -> Result<Bytes, Status> {
    if let Some(encoding) = headers.get("grpc-encoding")
        && encoding != "identity"
    {
        return Err(Status::unimplemented(format!(
            "Content is compressed with `{}` which isn't supported",
            String::from_utf8_lossy(encoding.as_bytes())
        )));
    }
    // The limit on the body is the message's plus its 5-byte frame header.
    let (data, _) = read_body(body, max.saturating_add(5))
        .await
        .map_err(|error| match error {
            BodyError::TooLarge => too_large("decoded", None, max),
            BodyError::Failed(status) => status,
        })?;
    first_message(&data, max).map_err(|error| match error {
        FrameError::Empty => Status::internal("Missing request message."),
        FrameError::TooLarge(len) => too_large("decoded", Some(len), max),
        FrameError::CutShort => Status::internal("protocol error: a request frame cut short"),
        error => Status::internal(format!("protocol error: {error}, while sending request")),
    })
}

/// tonic's status for a message over the limit.
fn too_large(what: &str, len: Option<usize>, limit: usize) -> Status {
    let found = len.map_or_else(|| "more".to_owned(), |len| len.to_string());
    Status::out_of_range(format!(
        "Error, {what} message length too large: found {found} bytes, the limit is: {limit} bytes"
    ))
}

/// The HTTP answer of a successful call: its metadata as headers, its message as one frame,
/// `grpc-status: 0` as the trailer.
fn reply<M: prost::Message>(
    response: tonic::Response<M>,
    max: usize,
) -> Result<http::Response<Body>, Status> {
    let (metadata, message, extensions) = response.into_parts();
    let len = message.encoded_len();
    if len > max {
        return Err(too_large("encoded", Some(len), max));
    }
    let mut answer = http::Response::new(Body::new(OneMessage {
        frame: Some(frame(&message)),
        trailers: true,
    }));
    *answer.headers_mut() = metadata.into_headers();
    answer.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    *answer.extensions_mut() = extensions;
    Ok(answer)
}

/// A body of one data frame, then the `grpc-status: 0` trailer.
struct OneMessage {
    frame: Option<Bytes>,
    trailers: bool,
}

impl http_body::Body for OneMessage {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(frame) = self.frame.take() {
            return Poll::Ready(Some(Ok(Frame::data(frame))));
        }
        if std::mem::take(&mut self.trailers) {
            let mut trailers = HeaderMap::with_capacity(1);
            trailers.insert(GRPC_STATUS, HeaderValue::from_static("0"));
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.frame.is_none() && !self.trailers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use prost_types::Duration as Message;

    /// A stand-in API: answers its request's message with `seconds + 1`, or refuses negatives.
    struct Api;

    impl Api {
        fn next(
            &self,
            request: tonic::Request<Message>,
        ) -> Pin<Box<dyn Future<Output = Result<tonic::Response<Message>, Status>> + Send + '_>>
        {
            Box::pin(async move {
                let message = request.into_inner();
                if message.seconds < 0 {
                    return Err(Status::invalid_argument("negative"));
                }
                let mut response = tonic::Response::new(Message {
                    seconds: message.seconds + 1,
                    nanos: 0,
                });
                response
                    .metadata_mut()
                    .insert("x-answer", "yes".parse().unwrap());
                Ok(response)
            })
        }
    }

    const PATH: &str = "/test.Api/Next";

    fn routes(max: usize) -> UnaryRoutes {
        UnaryRoutes::new(max).route(&Arc::new(Api), PATH, Api::next)
    }

    fn request(path: &str, body: Bytes) -> http::Request<Body> {
        http::Request::post(path)
            .body(Body::new(http_body_util::Full::new(body)))
            .unwrap()
    }

    async fn answer(routes: &UnaryRoutes, body: Bytes) -> http::Response<Body> {
        let route = routes.get(PATH).expect("the path is routed");
        route.serve(request(PATH, body)).await
    }

    /// The status of a trailers-only answer, or of the trailers.
    async fn status_of(response: http::Response<Body>) -> (Option<Message>, tonic::Code, String) {
        if let Some(status) = Status::from_header_map(response.headers()) {
            return (None, status.code(), status.message().to_owned());
        }
        let collected = response.into_body().collect().await.unwrap();
        let status = Status::from_header_map(collected.trailers().unwrap()).unwrap();
        let bytes = collected.to_bytes();
        let message = first_message(&bytes, usize::MAX).unwrap();
        (
            Some(prost::Message::decode(message).unwrap()),
            status.code(),
            status.message().to_owned(),
        )
    }

    #[tokio::test]
    async fn a_routed_call_answers_one_frame_its_metadata_and_status_0() {
        let routes = routes(1024);
        let response = answer(
            &routes,
            frame(&Message {
                seconds: 41,
                nanos: 0,
            }),
        )
        .await;
        assert_eq!(response.headers()["content-type"], "application/grpc");
        assert_eq!(response.headers()["x-answer"], "yes");
        let (message, code, _) = status_of(response).await;
        assert_eq!(code, tonic::Code::Ok);
        assert_eq!(message.unwrap().seconds, 42);
    }

    #[tokio::test]
    async fn statuses_are_trailers_only_as_tonic_sends_them() {
        let routes = routes(12);
        let refused = answer(
            &routes,
            frame(&Message {
                seconds: -1,
                nanos: 0,
            }),
        )
        .await;
        assert_eq!(
            status_of(refused).await,
            (None, tonic::Code::InvalidArgument, "negative".into())
        );
        let missing = answer(&routes, Bytes::new()).await;
        assert_eq!(
            status_of(missing).await,
            (
                None,
                tonic::Code::Internal,
                "Missing request message.".into()
            )
        );
        let compressed = answer(&routes, Bytes::from_static(&[1, 0, 0, 0, 0])).await;
        assert_eq!(status_of(compressed).await.1, tonic::Code::Internal);
        let cut = answer(&routes, Bytes::from_static(&[0, 0, 0, 0, 9, 1])).await;
        assert_eq!(status_of(cut).await.1, tonic::Code::Internal);
        let garbage = answer(&routes, Bytes::from_static(&[0, 0, 0, 0, 1, 0xff])).await;
        assert_eq!(status_of(garbage).await.1, tonic::Code::Internal);
        // 16 bytes of message against a limit of 12, whether the body or the prefix says so.
        let big = frame(&Message {
            seconds: i64::MAX,
            nanos: i32::MAX,
        });
        let (_, code, message) = status_of(answer(&routes, big).await).await;
        assert_eq!(code, tonic::Code::OutOfRange, "{message}");
        let lying = Bytes::from_static(&[0, 0, 0, 1, 0]);
        let (_, code, message) = status_of(answer(&routes, lying).await).await;
        assert_eq!(code, tonic::Code::OutOfRange, "{message}");
        assert!(message.contains("found 256 bytes"), "{message}");
    }

    #[tokio::test]
    async fn an_answer_over_the_limit_is_out_of_range() {
        let routes = routes(1);
        // No bytes in, 2 out.
        let response = answer(&routes, frame(&Message::default())).await;
        let (_, code, message) = status_of(response).await;
        assert_eq!(code, tonic::Code::OutOfRange, "{message}");
        assert!(message.contains("encoded message"), "{message}");
    }

    #[test]
    fn routes_are_compared_with_the_contract() {
        let weft = crate::contract::Contract::load(
            &[weft_proto::FILE_DESCRIPTOR_SET],
            &Default::default(),
        );
        crate::contract::install(weft.expect("Weft's contract loads"));
        let api = Arc::new(Api);
        let routes = UnaryRoutes::new(64)
            .route(&api, "/weft.user.v1.UserService/GetMe", Api::next)
            .route(&api, "/weft.user.v1.UserService/Nope", Api::next);
        let (unrouted, unknown) = routes.compare_with_contract("weft.user.v1.UserService");
        assert!(unrouted.contains(&"/weft.user.v1.UserService/GetUser".to_owned()));
        assert!(!unrouted.contains(&"/weft.user.v1.UserService/GetMe".to_owned()));
        assert_eq!(unknown, vec!["/weft.user.v1.UserService/Nope"]);
    }

    #[tokio::test]
    async fn a_compressed_body_and_other_paths_are_not_taken() {
        let routes = routes(1024);
        assert!(routes.get("/test.Api/Other").is_none());
        assert_eq!(routes.paths(), vec![PATH]);
        let mut gzip = request(PATH, frame(&Message::default()));
        gzip.headers_mut()
            .insert("grpc-encoding", HeaderValue::from_static("gzip"));
        let answer = routes.get(PATH).unwrap().serve(gzip).await;
        assert_eq!(status_of(answer).await.1, tonic::Code::Unimplemented);
    }
}
