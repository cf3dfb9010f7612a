//! What the receiver, the web server and `weft up` share: the [`Store`] behind a short-held
//! lock, and a broadcast of every request summary that changed, for the page's live list and
//! for `weft up`'s 5xx lines.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast;

use crate::{
    model::{RequestList, RequestSummary, SpanView, StoreStats, TraceView},
    store::{Limits, Query, Store},
};

/// Summaries a slow subscriber may lag behind before it misses some.
const EVENT_BACKLOG: usize = 1024;

/// The shared state of one viewer; cheap to clone.
#[derive(Debug, Clone)]
pub struct Hub {
    store: Arc<Mutex<Store>>,
    events: broadcast::Sender<RequestSummary>,
    jaeger_url: Option<Arc<str>>,
}

// === impl Hub ===

impl Hub {
    /// A hub over an empty store with `limits`; traces link to `jaeger_url` when given.
    pub fn new(limits: Limits, jaeger_url: Option<String>) -> Self {
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        Self {
            store: Arc::new(Mutex::new(Store::new(limits))),
            events,
            jaeger_url: jaeger_url.map(|u| Arc::from(u.trim_end_matches('/'))),
        }
    }

    /// The store, locked. Never held across an await: every caller here is synchronous.
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The store's bounds.
    pub fn limits(&self) -> Limits {
        *self.store().limits()
    }

    /// Keeps `spans` and announces the requests they changed.
    pub fn ingest(&self, spans: Vec<SpanView>) {
        if spans.is_empty() {
            return;
        }
        let changed = self.store().ingest(spans);
        for summary in changed {
            // No subscriber is fine: nobody is watching.
            let _ = self.events.send(summary);
        }
    }

    /// Every request summary that changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<RequestSummary> {
        self.events.subscribe()
    }

    /// The requests matching `query`, newest first.
    pub fn requests(&self, query: &Query) -> RequestList {
        self.store().requests(query)
    }

    /// The trace with trace id or request id `id`, with its Jaeger link when configured.
    pub fn trace(&self, id: &str) -> Option<TraceView> {
        let mut trace = self.store().trace(id)?;
        trace.jaeger_url = self
            .jaeger_url
            .as_ref()
            .map(|base| format!("{base}/trace/{}", trace.summary.trace_id));
        Some(trace)
    }

    /// What the store holds and dropped.
    pub fn stats(&self) -> StoreStats {
        self.store().stats()
    }
}
