//! The limits on the gateway's client connections: how long a client may take to send a
//! request head (`gateway.header_read_timeout_ms`) and how long a connection may stay open with
//! no request under way (`gateway.idle_timeout_ms`). The cap on open connections
//! (`gateway.max_connections`) is the accept loop's ([`crate::serve`]).
//!
//! Each connection has an [`Activity`], fed by its socket ([`Watched`]: bytes read) and its
//! requests ([`Activity::request`]: a request's handler running), and watched by
//! [`Activity::expired`], which the connection's task races against the connection:
//!
//! - Head deadline: a request head must be complete `header_read_timeout` after the
//!   connection opened (its first request, whatever the protocol), or after the first byte of
//!   the next head on an HTTP/1.1 connection that has served one. Past it the connection is
//!   dropped: a client that dribbles its head (slowloris) or sends nothing holds a connection
//!   for that long at most.
//! - Idle deadline: with no request being handled, `idle_timeout` after the last one ended the
//!   connection is closed gracefully (HTTP/2: GOAWAY), and dropped if it has not closed a
//!   second later (a client that does not read its answer).
//! - While a request is handled, neither applies: its body has `gateway.body_read_timeout_ms`
//!   ([`crate::call`]) and its upstream call the route's timeout.
//!
//! Why not hyper's own `header_read_timeout`: it runs whenever hyper waits for a head, so on an
//! HTTP/1.1 keep-alive connection it is also the idle timeout (a keep-alive client would be cut
//! off after 10 s, not 60), it does not start before hyper's auto-detection has seen a first
//! byte (a silent connection would never be timed out), and it does nothing for HTTP/2.

use std::{
    io,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Instant,
};

/// How long a connection may take over a request head, and stay idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time to send a whole request head (see the module's documentation).
    pub header_read_timeout: Duration,
    /// Time a connection may stay open with no request under way.
    pub idle_timeout: Duration,
}

/// Why a connection's time ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// A request head was not complete within the header read timeout.
    Head,
    /// No request came within the idle timeout.
    Idle,
}

/// What one connection is doing, as its deadlines need to know.
#[derive(Debug)]
pub struct Activity {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Requests whose handler is running.
    in_flight: usize,
    /// When the head the connection waits for began (the connection's opening for the first).
    head_since: Option<Instant>,
    /// When the last request ended (the connection's opening before the first).
    idle_since: Instant,
    /// HTTP/2: bytes between requests are frames (PING, WINDOW_UPDATE), not a head.
    http2: bool,
}

impl Activity {
    /// A connection just accepted: it waits for its first request head.
    pub fn new() -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Self {
            state: Mutex::new(State {
                in_flight: 0,
                head_since: Some(now),
                idle_since: now,
                http2: false,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes arrived: on an HTTP/1.1 connection with no request under way, a head has begun.
    /// The watcher is not woken: it looks at least every header timeout (see
    /// [`Activity::expired`]).
    fn read(&self) {
        let mut state = self.lock();
        if state.in_flight == 0 && state.head_since.is_none() && !state.http2 {
            state.head_since = Some(Instant::now());
        }
    }

    /// A request's head is in and its handler starts; it is under way until the returned
    /// guard is dropped.
    ///
    /// Neither this nor the guard's end wakes [`Activity::expired`]: both only move the
    /// deadline later, which the watcher finds when its timer fires (a wake and a new timer per
    /// request were 3k instructions of the gateway's hot path).
    pub fn request(self: &Arc<Self>, version: http::Version) -> RequestGuard {
        let mut state = self.lock();
        state.in_flight += 1;
        state.head_since = None;
        state.http2 |= version == http::Version::HTTP_2;
        drop(state);
        RequestGuard(self.clone())
    }

    /// When the connection's time runs out as things stand, and why; None while a request is
    /// under way.
    fn deadline(&self, limits: &Limits) -> Option<(Instant, Expiry)> {
        let state = self.lock();
        if state.in_flight > 0 {
            return None;
        }
        let idle = (state.idle_since + limits.idle_timeout, Expiry::Idle);
        Some(match state.head_since {
            Some(since) if since + limits.header_read_timeout <= idle.0 => {
                (since + limits.header_read_timeout, Expiry::Head)
            }
            _ => idle,
        })
    }

    /// Resolves when the connection's time has run out under `limits`.
    ///
    /// It sleeps until the deadline as it stands, and looks again when its timer fires (the
    /// deadline may have moved later meanwhile: a request came, or ended). Nothing wakes it
    /// sooner: a head beginning, the one change that brings the deadline nearer, is found by
    /// looking at least every header timeout while no head is under way, and a head that began
    /// at `t` is then timed out at exactly `t` + the header timeout (the watcher looked by
    /// then). A wake per HTTP/1.1 request, with a new timer each, was 3k instructions of the
    /// gateway's hot path; an idle connection's watcher now wakes every header timeout (10 s by
    /// default) instead.
    pub async fn expired(&self, limits: Limits) -> Expiry {
        let look_again = limits.header_read_timeout.min(limits.idle_timeout);
        loop {
            let now = Instant::now();
            let at = match self.deadline(&limits) {
                Some((at, why)) if at <= now => return why,
                // A head is under way: its own deadline is exact.
                Some((at, Expiry::Head)) => at,
                Some((at, _)) => at.min(now + look_again),
                None => now + look_again,
            };
            tokio::time::sleep_until(at).await;
        }
    }
}

/// A request under way on its connection (see [`Activity::request`]).
#[derive(Debug)]
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.in_flight -= 1;
        if state.in_flight == 0 {
            state.idle_since = Instant::now();
        }
    }
}

/// A client connection's socket, telling its [`Activity`] when bytes arrive.
#[derive(Debug)]
pub struct Watched<S> {
    io: S,
    activity: Arc<Activity>,
}

impl<S> Watched<S> {
    /// `io`, reporting reads to `activity`.
    pub fn new(io: S, activity: Arc<Activity>) -> Self {
        Self { io, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
    };

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_nothing_expires_at_the_header_timeout() {
        let activity = Activity::new();
        let started = Instant::now();
        assert_eq!(activity.expired(LIMITS).await, Expiry::Head);
        assert_eq!(started.elapsed(), LIMITS.header_read_timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn a_keep_alive_connection_waits_the_idle_timeout_then_a_started_head_the_header_timeout()
    {
        let activity = Activity::new();
        drop(activity.request(http::Version::HTTP_11));
        let idle = Instant::now();
        tokio::time::sleep(Duration::from_secs(30)).await;
        // The next head's first byte: from now it has the header timeout, not the idle one.
        activity.read();
        assert_eq!(activity.expired(LIMITS).await, Expiry::Head);
        assert_eq!(idle.elapsed(), Duration::from_secs(40));

        let activity = Activity::new();
        drop(activity.request(http::Version::HTTP_11));
        let idle = Instant::now();
        assert_eq!(activity.expired(LIMITS).await, Expiry::Idle);
        assert_eq!(idle.elapsed(), LIMITS.idle_timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn no_deadline_while_a_request_is_handled_and_http2_frames_are_no_head() {
        let activity = Activity::new();
        let request = activity.request(http::Version::HTTP_2);
        let waiting = tokio::time::timeout(Duration::from_secs(600), activity.expired(LIMITS));
        assert!(waiting.await.is_err(), "no deadline while handled");
        drop(request);
        let idle = Instant::now();
        activity.read();
        assert_eq!(activity.expired(LIMITS).await, Expiry::Idle);
        assert_eq!(idle.elapsed(), LIMITS.idle_timeout);
    }

    /// A watcher started with the connection, left running across requests as the server
    /// runs it: `(why, when)` it resolved.
    fn watch(activity: &Arc<Activity>) -> tokio::task::JoinHandle<(Expiry, Instant)> {
        let activity = activity.clone();
        tokio::spawn(async move { (activity.expired(LIMITS).await, Instant::now()) })
    }

    #[tokio::test(start_paused = true)]
    async fn a_running_watcher_follows_requests_it_is_not_woken_by() {
        // A long request, then idleness: closed an idle timeout after the request ended.
        let activity = Activity::new();
        let watcher = watch(&activity);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let request = activity.request(http::Version::HTTP_11);
        tokio::time::sleep(Duration::from_secs(100)).await;
        drop(request);
        let ended = Instant::now();
        let (why, at) = watcher.await.unwrap();
        assert_eq!((why, at - ended), (Expiry::Idle, LIMITS.idle_timeout));

        // A head begun 20 s into idleness brings the deadline nearer: the watcher, looking
        // every header timeout, finds it in time.
        let activity = Activity::new();
        let watcher = watch(&activity);
        drop(activity.request(http::Version::HTTP_11));
        let ended = Instant::now();
        tokio::time::sleep(Duration::from_secs(20)).await;
        activity.read();
        let (why, at) = watcher.await.unwrap();
        assert_eq!((why, at - ended), (Expiry::Head, Duration::from_secs(30)));

        // Between two looks: still timed out a header timeout after the head began, exactly.
        let activity = Activity::new();
        let watcher = watch(&activity);
        drop(activity.request(http::Version::HTTP_11));
        let ended = Instant::now();
        tokio::time::sleep(Duration::from_millis(25_300)).await;
        activity.read();
        let (why, at) = watcher.await.unwrap();
        assert_eq!(
            (why, at - ended),
            (Expiry::Head, Duration::from_millis(35_300))
        );
    }
}
