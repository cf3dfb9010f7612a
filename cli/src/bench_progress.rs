//! `weft bench`'s live progress: shared [`Counters`] that the workers bump, and a task that
//! shows them on standard error, as one line updated in place on a terminal (indicatif) or as
//! a plain line each second otherwise.

use std::{
    io::IsTerminal,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::{task::JoinHandle, time::Instant};

/// Requests and errors finished so far in the current phase.
#[derive(Debug, Default)]
pub struct Counters {
    requests: AtomicU64,
    errors: AtomicU64,
}

// === impl Counters ===

impl Counters {
    pub fn add(&self, error: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn read(&self) -> (u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}

/// The progress display of one phase (`label`: "warm-up", "weft", "baseline").
pub struct Progress {
    task: JoinHandle<()>,
    bar: Option<ProgressBar>,
}

// === impl Progress ===

impl Progress {
    /// Starts showing `counters`; `quiet` shows nothing.
    pub fn start(label: &str, counters: Arc<Counters>, quiet: bool) -> Self {
        let tty = !quiet && std::io::stderr().is_terminal();
        let bar = tty.then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed}] {msg}") {
                bar.set_style(style);
            }
            bar
        });
        let label = label.to_owned();
        let shown = bar.clone();
        let task = tokio::spawn(async move {
            if quiet {
                return;
            }
            let start = Instant::now();
            let tick = if tty {
                Duration::from_millis(250)
            } else {
                Duration::from_secs(1)
            };
            let mut interval = tokio::time::interval_at(start + tick, tick);
            let mut last = (0u64, start);
            loop {
                interval.tick().await;
                let now = Instant::now();
                let (requests, errors) = counters.read();
                let window = now.duration_since(last.1).as_secs_f64();
                let rate = if window > 0.0 {
                    (requests - last.0) as f64 / window
                } else {
                    0.0
                };
                last = (requests, now);
                let line =
                    format!("{label}: {requests} requests, {rate:.0} req/s, {errors} errors");
                match &shown {
                    Some(bar) => {
                        bar.set_message(line);
                        bar.tick();
                    }
                    None => eprintln!(
                        "[weft bench] {:>6.1}s {line}",
                        now.duration_since(start).as_secs_f64()
                    ),
                }
            }
        });
        Self { task, bar }
    }

    /// Stops the display and clears the line.
    pub fn finish(self) {
        self.task.abort();
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
