//! The mTLS listener of a gRPC server: accepts TCP connections, completes each one's handshake
//! on its own task (bounded by `mtls.handshake_timeout_ms`, so a slow or silent client never
//! holds up the accept loop; at most `MAX_HANDSHAKES` at once), and hands tonic the connections
//! whose client proved a mesh identity, with that [`PeerIdentity`] in every request's
//! extensions.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use metrics::Recorder as _;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpListener,
    sync::{Semaphore, mpsc},
};
use tonic::transport::server::Connected;
use weft_tls::{MeshTls, PeerIdentity, ServerStream};

/// Handshakes completed but not yet taken by the server.
const BACKLOG: usize = 64;
/// Handshakes under way at once. Beyond it the accept loop waits for one to end, leaving new
/// connections in the kernel's backlog: a flood of connections that never finish their
/// handshake holds at most this many tasks, each for at most the handshake timeout.
const MAX_HANDSHAKES: usize = 1024;

/// One accepted mTLS connection.
pub struct TlsConnection {
    stream: ServerStream,
    peer: PeerIdentity,
}

impl TlsConnection {
    /// The mesh identity the client's certificate proved.
    pub fn peer(&self) -> &PeerIdentity {
        &self.peer
    }
}

impl Connected for TlsConnection {
    type ConnectInfo = PeerIdentity;
    fn connect_info(&self) -> PeerIdentity {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The connections of `listener` whose mTLS handshake succeeded, as tonic's incoming stream.
/// The accept loop stops when the stream is dropped (the server stopped accepting).
pub fn incoming(
    listener: TcpListener,
    tls: MeshTls,
) -> impl futures::Stream<Item = io::Result<TlsConnection>> + Send + 'static {
    let (tx, rx) = mpsc::channel::<io::Result<TlsConnection>>(BACKLOG);
    let failures = crate::metrics::registry().recorder().register_counter(
        &metrics::Key::from_static_name("weft_mesh_tls_handshake_failures_total"),
        &metrics::Metadata::new(module_path!(), metrics::Level::INFO, None),
    );
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(slot) = handshakes.clone().acquire_owned().await else {
                return;
            };
            let (tcp, remote) = tokio::select! {
                accepted = accept(&listener) => accepted,
                () = tx.closed() => return,
            };
            let (tls, tx, failures) = (tls.clone(), tx.clone(), failures.clone());
            tokio::spawn(async move {
                let _slot = slot;
                match tls.accept(tcp).await {
                    Ok((stream, peer)) => {
                        let _ = tx.send(Ok(TlsConnection { stream, peer })).await;
                    }
                    Err(err) => {
                        failures.increment(1);
                        tracing::debug!(%remote, error = %err, "mTLS handshake refused");
                    }
                }
            });
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        let next = rx.recv().await?;
        Some((next, rx))
    })
}

/// The connections of `listener` in plain text (mTLS off), as [`accept`] takes them.
pub fn plain(listener: TcpListener) -> impl futures::Stream<Item = tokio::net::TcpStream> + Send {
    futures::stream::unfold(listener, |listener| async move {
        let (tcp, _) = accept(&listener).await;
        Some((tcp, listener))
    })
}

/// The next connection of `listener`, with TCP_NODELAY (small unary answers must not wait for
/// Nagle's algorithm); a failed accept (out of file descriptors, say) is logged and retried
/// after a pause, never the end.
async fn accept(listener: &TcpListener) -> (tokio::net::TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((tcp, remote)) => {
                let _ = tcp.set_nodelay(true);
                return (tcp, remote);
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
