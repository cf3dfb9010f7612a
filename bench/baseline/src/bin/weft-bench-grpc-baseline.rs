//! `weft-bench-grpc-baseline`: the gRPC benchmark's yardstick, a bare `h2` server that answers
//! every unary call, whatever its method, with one fixed message from memory.
//!
//! It does what a gRPC service does on the wire (HTTP/2 over cleartext TCP with TCP_NODELAY, a
//! current_thread runtime, one length-prefixed message, `grpc-status: 0` in the trailers) and
//! nothing else: no routing, no decoding, no mesh layers, no database. `weft bench --baseline`
//! starts it next to a gRPC target and hands it the target's own answer.
//!
//! Usage: `weft-bench-grpc-baseline [ADDR] [MESSAGE_FILE]` (default `127.0.0.1:8091`, and a
//! built-in message shaped like a `weft.order.v1.Product`). MESSAGE_FILE holds the encoded
//! protobuf message (unframed). It prints `... listening on ADDR` on standard error.

use std::{net::SocketAddr, process::ExitCode};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Response};
use tokio::net::{TcpListener, TcpStream};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = match args.next().as_deref().unwrap_or("127.0.0.1:8091").parse() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("weft-bench-grpc-baseline: bad address: {e}");
            return ExitCode::from(2);
        }
    };
    let message = match args.next() {
        Some(file) => match std::fs::read(&file) {
            Ok(bytes) => bytes,
            Err(e) => {
                eprintln!("weft-bench-grpc-baseline: cannot read {file}: {e}");
                return ExitCode::from(2);
            }
        },
        None => product(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("weft-bench-grpc-baseline: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(addr, frame(&message))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-bench-grpc-baseline: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A `weft.order.v1.Product`-shaped message: fields 1-5 as strings and varints, encoded by
/// hand (this crate knows no protos).
fn product() -> Vec<u8> {
    let mut out = Vec::new();
    let mut string = |field: u8, value: &str| {
        out.push(field << 3 | 2);
        out.push(value.len() as u8);
        out.extend_from_slice(value.as_bytes());
    };
    string(1, "4f1c2b7e9a8d4e0f8b6a5c3d2e1f0a9b");
    string(2, "Benchmark widget");
    string(3, "A product created by bench/run.sh");
    // Field 4 (unit_price_cents) = 1999 as a varint.
    out.extend_from_slice(&[4 << 3, 0xcf, 0x0f]);
    out
}

/// A gRPC length-prefixed message (not compressed).
fn frame(message: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0);
    framed.put_u32(message.len() as u32);
    framed.put_slice(message);
    framed.freeze()
}

async fn serve(addr: SocketAddr, answer: Bytes) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    eprintln!(
        "weft-bench-grpc-baseline listening on {}",
        listener.local_addr()?
    );
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("weft-bench-grpc-baseline: accept failed: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, answer.clone()));
    }
}

async fn connection(stream: TcpStream, answer: Bytes) {
    let Ok(mut connection) = h2::server::handshake(stream).await else {
        return;
    };
    while let Some(Ok((request, respond))) = connection.accept().await {
        tokio::spawn(call(request, respond, answer.clone()));
    }
}

async fn call(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    answer: Bytes,
) {
    // Read the request to its end, as a server must before it answers.
    let mut body = request.into_body();
    while let Some(chunk) = body.data().await {
        match chunk {
            Ok(chunk) => {
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            Err(_) => return,
        }
    }
    let mut response = Response::new(());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    let Ok(mut send) = respond.send_response(response, false) else {
        return;
    };
    if send.send_data(answer, false).is_err() {
        return;
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let _ = send.send_trailers(trailers);
}
