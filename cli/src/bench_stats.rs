//! `weft bench`'s figures: what one request came to ([`Outcome`]), each worker's
//! [`Recorder`] (an HDR histogram of latencies and error counts), and the merged
//! [`Summary`] with its text and JSON renderings.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use hdrhistogram::Histogram;

/// Highest latency the histogram tracks, in microseconds (larger values are clamped).
const MAX_MICROS: u64 = 3_600_000_000;

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx/3xx answer, or gRPC status OK.
    Ok,
    /// An HTTP answer with status >= 400.
    Http(u16),
    /// A gRPC answer with a status other than OK.
    Grpc(i32),
    /// No answer: connection refused, reset, protocol error.
    Transport(String),
    /// No answer within `--timeout`.
    Timeout,
}

// === impl Outcome ===

impl Outcome {
    /// Whether an answer came (its latency counts).
    pub fn answered(&self) -> bool {
        matches!(self, Self::Ok | Self::Http(_) | Self::Grpc(_))
    }

    /// The error's name in the summary; `None` for [`Outcome::Ok`].
    pub fn error_key(&self) -> Option<String> {
        match self {
            Self::Ok => None,
            Self::Http(status) => Some(format!("HTTP {status}")),
            Self::Grpc(code) => Some(format!("gRPC {}", grpc_code_name(*code))),
            Self::Transport(what) => Some(format!("transport: {what}")),
            Self::Timeout => Some("timeout".to_owned()),
        }
    }
}

/// The name of a gRPC status code.
pub fn grpc_code_name(code: i32) -> String {
    let name = match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        other => return format!("code {other}"),
    };
    name.to_owned()
}

/// One worker's figures.
#[derive(Debug, Clone)]
pub struct Recorder {
    latency: Histogram<u64>,
    requests: u64,
    errors: BTreeMap<String, u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

// === impl Recorder ===

impl Recorder {
    /// An empty recorder (latencies in microseconds, 3 significant digits).
    pub fn new() -> Self {
        let latency = Histogram::new_with_bounds(1, MAX_MICROS, 3)
            .expect("1..MAX_MICROS at 3 significant digits are valid bounds");
        Self {
            latency,
            requests: 0,
            errors: BTreeMap::new(),
        }
    }

    /// Counts one finished request.
    pub fn record(&mut self, outcome: &Outcome, latency: Duration) {
        self.requests += 1;
        if outcome.answered() {
            let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            self.latency.saturating_record(micros.max(1));
        }
        if let Some(key) = outcome.error_key() {
            *self.errors.entry(key).or_default() += 1;
        }
    }

    /// Adds another worker's figures to these.
    pub fn merge(&mut self, other: &Recorder) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latency.add(&other.latency);
        self.requests += other.requests;
        for (key, n) in &other.errors {
            *self.errors.entry(key.clone()).or_default() += n;
        }
    }

    /// Finished requests so far.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// The summary of a run that measured for `elapsed`.
    pub fn summary(&self, elapsed: Duration, interrupted: bool) -> Summary {
        let h = &self.latency;
        let ms = |micros: u64| micros as f64 / 1000.0;
        let q = |quantile: f64| {
            if h.is_empty() {
                0.0
            } else {
                ms(h.value_at_quantile(quantile))
            }
        };
        let errors: u64 = self.errors.values().sum();
        let secs = elapsed.as_secs_f64();
        Summary {
            requests: self.requests,
            errors,
            errors_by_kind: self.errors.clone(),
            elapsed_secs: secs,
            rps: if secs > 0.0 {
                self.requests as f64 / secs
            } else {
                0.0
            },
            p50_ms: q(0.5),
            p90_ms: q(0.9),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: if h.is_empty() { 0.0 } else { ms(h.max()) },
            mean_ms: if h.is_empty() { 0.0 } else { h.mean() / 1000.0 },
            interrupted,
            client_cpu: None,
        }
    }
}

/// The figures of one measured run.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub requests: u64,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    pub elapsed_secs: f64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    /// Stopped early by Ctrl-C.
    pub interrupted: bool,
    /// `weft bench`'s own CPU time over the run, where the system tells it (Linux).
    pub client_cpu: Option<Duration>,
}

// === impl Summary ===

impl Summary {
    /// The summary as readable lines, each indented by two spaces.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "  requests  {} in {:.2} s{}",
            self.requests,
            self.elapsed_secs,
            if self.interrupted {
                " (interrupted: partial figures)"
            } else {
                ""
            }
        );
        let _ = writeln!(out, "  req/s     {:.1}", self.rps);
        let _ = writeln!(
            out,
            "  latency   p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            fmt_ms(self.p50_ms),
            fmt_ms(self.p90_ms),
            fmt_ms(self.p99_ms),
            fmt_ms(self.p999_ms),
            fmt_ms(self.max_ms)
        );
        if let (Some(per_request), Some(share)) = (self.client_cpu_us(), self.client_core_share()) {
            let _ = writeln!(
                out,
                "  client    {per_request:.1} us CPU per request, {:.0} % of one core (weft bench's own)",
                share * 100.0
            );
        }
        if self.errors == 0 {
            let _ = writeln!(out, "  errors    none");
        } else {
            let _ = writeln!(out, "  errors    {}", self.errors);
            for (key, n) in &self.errors_by_kind {
                let _ = writeln!(out, "    {key}: {n}");
            }
        }
        out
    }

    /// The summary as a JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "requests": self.requests,
            "errors": self.errors,
            "errors_by_kind": self.errors_by_kind,
            "elapsed_s": self.elapsed_secs,
            "rps": self.rps,
            "latency_ms": {
                "p50": self.p50_ms,
                "p90": self.p90_ms,
                "p99": self.p99_ms,
                "p99_9": self.p999_ms,
                "max": self.max_ms,
                "mean": self.mean_ms,
            },
            "interrupted": self.interrupted,
            "client_cpu_us_per_request": self.client_cpu_us(),
            "client_core_share": self.client_core_share(),
        })
    }

    /// Microseconds of `weft bench`'s CPU per request.
    pub fn client_cpu_us(&self) -> Option<f64> {
        let cpu = self.client_cpu?;
        (self.requests > 0).then(|| cpu.as_secs_f64() * 1e6 / self.requests as f64)
    }

    /// `weft bench`'s CPU time over the run's length: 1.0 is one core kept busy. A load
    /// generator near a core of its own (or near what the machine has left beside the server)
    /// is what limits the run: the server could have answered more.
    pub fn client_core_share(&self) -> Option<f64> {
        let cpu = self.client_cpu?;
        (self.elapsed_secs > 0.0).then(|| cpu.as_secs_f64() / self.elapsed_secs)
    }
}

/// The CPU time this process has used so far, summed over its threads (Linux:
/// `/proc/self/task/*/schedstat`, in nanoseconds; `None` elsewhere). Threads that have ended
/// are not counted: `weft bench`'s runtime keeps its workers for the whole run.
///
/// Not `/proc/self/stat`, which the mesh's `process_cpu_seconds_total` reads (see
/// `weft_observe::metrics`): that counts ended threads too, as a Prometheus counter must, but
/// in 10 ms ticks, too coarse for the CPU per request of a short run.
pub fn process_cpu_time() -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let Ok(task) = task else { continue };
        // A thread that ended meanwhile has no file any more: skip it.
        let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

/// The target's figures as a share of the baseline's.
#[derive(Debug, Clone, PartialEq)]
pub struct Ratio {
    /// Target req/s as a percentage of the baseline's.
    pub rps_percent: f64,
    /// Target p99 divided by the baseline's.
    pub p99_factor: f64,
}

/// Compares a target run to a baseline run.
pub fn ratio(target: &Summary, baseline: &Summary) -> Ratio {
    let div = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    Ratio {
        rps_percent: 100.0 * div(target.rps, baseline.rps),
        p99_factor: div(target.p99_ms, baseline.p99_ms),
    }
}

/// Milliseconds with a precision that suits their size.
pub fn fmt_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.3} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_errors() {
        let mut a = Recorder::new();
        let mut b = Recorder::new();
        for i in 1..=100u64 {
            a.record(&Outcome::Ok, Duration::from_millis(i));
        }
        b.record(&Outcome::Http(503), Duration::from_millis(1));
        b.record(&Outcome::Grpc(14), Duration::from_millis(1));
        b.record(&Outcome::Timeout, Duration::from_secs(30));
        a.merge(&b);
        let s = a.summary(Duration::from_secs(2), false);
        assert_eq!(s.requests, 103);
        assert_eq!(s.errors, 3);
        assert_eq!(s.errors_by_kind["HTTP 503"], 1);
        assert_eq!(s.errors_by_kind["gRPC UNAVAILABLE"], 1);
        assert_eq!(s.errors_by_kind["timeout"], 1);
        // The timeout's 30 s is no latency: no answer came.
        assert!(s.max_ms < 101.0, "{s:?}");
        assert!((s.p50_ms - 49.0).abs() < 1.0, "{s:?}");
        assert!((s.rps - 51.5).abs() < 1e-9);
        assert!(s.render().contains("HTTP 503: 1"));
        assert_eq!(s.to_json()["errors_by_kind"]["timeout"], 1);
    }

    #[test]
    fn client_cpu_is_per_request_and_per_second_of_run() {
        let mut recorder = Recorder::new();
        for _ in 0..1000 {
            recorder.record(&Outcome::Ok, Duration::from_millis(1));
        }
        let mut s = recorder.summary(Duration::from_secs(2), false);
        assert_eq!(s.client_cpu_us(), None);
        assert!(!s.render().contains("client"));
        s.client_cpu = Some(Duration::from_millis(500));
        assert_eq!(s.client_cpu_us(), Some(500.0));
        assert_eq!(s.client_core_share(), Some(0.25));
        assert!(
            s.render()
                .contains("client    500.0 us CPU per request, 25 % of one core"),
            "{}",
            s.render()
        );
        assert_eq!(s.to_json()["client_cpu_us_per_request"], 500.0);
    }

    #[test]
    fn this_process_has_used_cpu() {
        let Some(before) = process_cpu_time() else {
            return; // not Linux
        };
        // The kernel brings a running thread's count up to date at its next tick or switch:
        // spin until it shows, for at most 2 s of work.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        let mut after = before;
        while after <= before && started.elapsed() < Duration::from_secs(2) {
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            after = process_cpu_time().expect("read once, read again");
        }
        assert!(after > before, "{before:?} -> {after:?} ({x})");
    }

    #[test]
    fn empty_run() {
        let s = Recorder::new().summary(Duration::ZERO, true);
        assert_eq!(s.requests, 0);
        assert_eq!(s.p99_ms, 0.0);
        assert!(s.render().contains("interrupted"));
    }
}
