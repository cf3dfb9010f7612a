//! `weft bench`'s load driver: runs workers (REST or gRPC) for one phase (warm-up or measure)
//! and collects their figures.
//!
//! Closed loop: each worker sends its next request as soon as the last one is answered.
//! Open loop (`--rate`): request `k` is due at `start + k / rate`; a worker claims the next
//! request number, waits for its due time, sends it, and measures its latency **from the due
//! time**, so a request that had to wait for a busy connection (the server stalled) counts that
//! wait: no coordinated omission. A phase ends at its deadline, after `--requests`, or when
//! stopped (Ctrl-C); requests in flight then are dropped and not counted, except at the end of
//! the warm-up, which lets them finish (see [`Phase::finish_in_flight`]).

use std::{
    future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{sync::watch, time::Instant};

use crate::{
    bench_grpc::GrpcWorker,
    bench_http::HttpWorker,
    bench_progress::Counters,
    bench_stats::{Outcome, Recorder},
};

/// One worker: a REST connection or a gRPC stream slot.
pub enum Worker {
    Http(HttpWorker),
    Grpc(GrpcWorker),
}

// === impl Worker ===

impl Worker {
    async fn call(&mut self, seq: u64) -> Outcome {
        match self {
            Self::Http(w) => w.call(seq).await,
            Self::Grpc(w) => w.call().await,
        }
    }
}

/// The limits of one phase.
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    /// Ends then; `None`: when `requests` are done.
    pub duration: Option<Duration>,
    /// Requests to send in this phase.
    pub requests: Option<u64>,
    /// Open loop at this rate.
    pub rate: Option<f64>,
    /// Per-request limit.
    pub timeout: Duration,
    /// At the deadline, lets the requests in flight finish instead of dropping them. The
    /// warm-up does: its connections carry the measured phase, and dropping a gRPC call resets
    /// its stream, so the measured phase would start with the server handling a burst of
    /// cancelled streams, which an h2 server may take for a reset flood and answer with
    /// GOAWAY (ENHANCE_YOUR_CALM), failing the measured calls on that connection.
    pub finish_in_flight: bool,
}

/// What a phase came to.
pub struct PhaseResult {
    /// The workers, for the next phase (their connections stay open).
    pub workers: Vec<Worker>,
    /// All workers' figures merged.
    pub recorder: Recorder,
    /// From the phase's start to its last request's end (or the deadline).
    pub elapsed: Duration,
}

struct Shared {
    next: AtomicU64,
    start: Instant,
    deadline: Option<Instant>,
    phase: Phase,
    counters: Arc<Counters>,
}

/// Runs `workers` for one phase; `stop` turning true ends it early.
pub async fn run_phase(
    workers: Vec<Worker>,
    phase: Phase,
    counters: Arc<Counters>,
    stop: watch::Receiver<bool>,
) -> PhaseResult {
    let start = Instant::now();
    let shared = Arc::new(Shared {
        next: AtomicU64::new(0),
        start,
        deadline: phase.duration.map(|d| start + d),
        phase,
        counters,
    });
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|worker| tokio::spawn(work(worker, shared.clone(), stop.clone())))
        .collect();
    let mut workers = Vec::with_capacity(tasks.len());
    let mut recorder = Recorder::new();
    let mut last_end = start;
    for task in tasks {
        // A worker task never panics; one that did would only lose its figures.
        if let Ok((worker, figures, end)) = task.await {
            workers.push(worker);
            recorder.merge(&figures);
            last_end = last_end.max(end);
        }
    }
    let stopped = *stop.borrow();
    let all_done = phase.requests.is_some_and(|n| recorder.requests() >= n);
    let end = match shared.deadline {
        _ if stopped => Instant::now(),
        // A run cut by its deadline lasted exactly that long.
        Some(deadline) if !all_done => deadline,
        _ => last_end,
    };
    PhaseResult {
        workers,
        recorder,
        elapsed: end.duration_since(start),
    }
}

/// One worker's loop; returns the worker, its figures and when its last request ended.
async fn work(
    mut worker: Worker,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> (Worker, Recorder, Instant) {
    let mut recorder = Recorder::new();
    let mut last_end = shared.start;
    let deadline = async {
        match shared.deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let stopped = stop.wait_for(|stopped| *stopped);
    tokio::pin!(stopped);
    loop {
        let seq = shared.next.fetch_add(1, Ordering::Relaxed);
        if shared.phase.requests.is_some_and(|n| seq >= n) {
            break;
        }
        let due = match shared.phase.rate {
            Some(rate) => {
                let due = shared.start + Duration::from_secs_f64(seq as f64 / rate);
                if shared.deadline.is_some_and(|deadline| due >= deadline) {
                    break;
                }
                Some(due)
            }
            None => {
                if shared
                    .deadline
                    .is_some_and(|deadline| Instant::now() >= deadline)
                {
                    break;
                }
                None
            }
        };
        let timeout = shared.phase.timeout;
        let call = async {
            if let Some(due) = due {
                tokio::time::sleep_until(due).await;
            }
            let sent = Instant::now();
            let outcome = match tokio::time::timeout(timeout, worker.call(seq)).await {
                Ok(outcome) => outcome,
                Err(_) => Outcome::Timeout,
            };
            (outcome, due.unwrap_or(sent))
        };
        tokio::select! {
            biased;
            _ = &mut stopped => break,
            _ = &mut deadline, if !shared.phase.finish_in_flight => break,
            (outcome, from) = call => {
                let end = Instant::now();
                recorder.record(&outcome, end.duration_since(from));
                shared.counters.add(!matches!(outcome, Outcome::Ok));
                last_end = end;
            }
        }
    }
    (worker, recorder, last_end)
}
