//! Black-box tests of Weft: the real `weft-auth`, `weft-user` and `weft-order` binaries, started
//! together on ephemeral loopback ports by `weft_testkit::TestMesh` and called over gRPC with
//! the generated clients. The tests live in `tests/`, one file per area; each test runs once on
//! SQLite and once on PostgreSQL (`<test>::sqlite`, `<test>::postgres`).
//!
//! The `gateway_*` tests start `weft-gateway` in front of the three services
//! (`MeshOptions::gateway`) and call it over HTTP/1.1, h2c and TLS with the small hyper client
//! of `tests/common/rest.rs`. This library holds the test-only `acme.echo.v1` API (`proto/`,
//! compiled by `build.rs`) and its server, [`Echo`]: `gateway_foreign` serves it in-process
//! behind the gateway, and `weft-echo` (`src/bin/weft-echo.rs`) serves it as a fourth service
//! of the mesh, which `fourth_service` adds by configuration alone. `/openapi.json` is checked
//! with `scripts/validate-openapi.sh` when `CI=true` or `WEFT_VALIDATE_OPENAPI=1`.
//!
//! ```text
//! cargo build --workspace --bins
//! WEFT_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres cargo nextest run -p weft-e2e
//! ```
//!
//! Without `WEFT_TEST_POSTGRES_URL` the PostgreSQL runs are skipped with a note, except under
//! `CI=true`, where they fail. A failing test keeps its mesh directory (config, databases, one
//! log per service) and prints the tail of each log.

use std::time::Duration;

use tonic::{Request, Response, Status};
use weft_mesh::auth::Principal;

/// The generated code of the test API.
pub mod echo {
    #![allow(missing_docs)]
    tonic::include_proto!("acme.echo.v1");
}

use echo::{
    EchoMessage, File, GetFileRequest, GetShelfRequest, Shelf, SleepRequest, UpdateNoteRequest,
    echo_service_server::EchoService,
};

/// The encoded `FileDescriptorSet` of the test API, imports included (`weft.api.v1`'s options
/// and `google.api`'s HTTP rules among them).
pub const ECHO_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/echo_descriptor.bin"));

/// Metadata the echo server reports back.
const SEEN_METADATA: [&str; 5] = [
    "x-request-id",
    "authorization",
    "traceparent",
    "grpc-timeout",
    "baggage",
];

/// The echo server: answers with what it received.
pub struct Echo;

#[tonic::async_trait]
impl EchoService for Echo {
    async fn get_shelf(
        &self,
        request: Request<GetShelfRequest>,
    ) -> Result<Response<Shelf>, Status> {
        Ok(Response::new(shelf(request)))
    }

    async fn list_tags(
        &self,
        request: Request<GetShelfRequest>,
    ) -> Result<Response<Shelf>, Status> {
        Ok(Response::new(shelf(request)))
    }

    async fn echo(&self, request: Request<EchoMessage>) -> Result<Response<EchoMessage>, Status> {
        Ok(Response::new(request.into_inner()))
    }

    async fn get_file(&self, request: Request<GetFileRequest>) -> Result<Response<File>, Status> {
        Ok(Response::new(File {
            path: request.into_inner().path,
        }))
    }

    async fn update_note(
        &self,
        request: Request<UpdateNoteRequest>,
    ) -> Result<Response<UpdateNoteRequest>, Status> {
        Ok(Response::new(request.into_inner()))
    }

    async fn sleep(&self, request: Request<SleepRequest>) -> Result<Response<()>, Status> {
        let millis = request.into_inner().millis.clamp(0, 60_000) as u64;
        tokio::time::sleep(Duration::from_millis(millis)).await;
        Ok(Response::new(()))
    }

    async fn fail(&self, request: Request<echo::FailRequest>) -> Result<Response<()>, Status> {
        let echo::FailRequest { code, message } = request.into_inner();
        match code {
            0 => Ok(Response::new(())),
            code => Err(Status::new(tonic::Code::from(code), message)),
        }
    }

    async fn internal(&self, _request: Request<()>) -> Result<Response<()>, Status> {
        Ok(Response::new(()))
    }

    async fn who_am_i(&self, request: Request<()>) -> Result<Response<echo::Caller>, Status> {
        caller(&request)
    }

    async fn admin_ping(&self, request: Request<()>) -> Result<Response<echo::Caller>, Status> {
        caller(&request)
    }
}

/// The caller the mesh's server stack verified (it puts the [`Principal`] in the extensions).
fn caller(request: &Request<()>) -> Result<Response<echo::Caller>, Status> {
    let principal = Principal::of(request)?;
    Ok(Response::new(echo::Caller {
        subject: principal.subject.clone(),
        role: principal.role.as_str().to_string(),
    }))
}

fn shelf(request: Request<GetShelfRequest>) -> Shelf {
    let metadata = SEEN_METADATA
        .iter()
        .filter_map(|name| {
            let value = request.metadata().get(*name)?.to_str().ok()?;
            Some((name.to_string(), value.to_string()))
        })
        .collect();
    let request = request.into_inner();
    Shelf {
        name: request.name,
        tags: request.tags,
        mood: request.mood,
        limit: request.limit,
        filter: request.filter,
        since: request.since,
        metadata,
    }
}
