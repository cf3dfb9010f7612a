//! How the process traces, decided once at start by `telemetry::init`, and the trace and span
//! ids it makes when it exports nothing ("lite" tracing).
//!
//! A leaf under both the propagation layer (which reads the mode on every call) and telemetry
//! (which sets it), so that neither imports the other back.

use std::sync::atomic::{AtomicU64, Ordering};

/// The `tracing` target of every span the mesh makes. It is always enabled (whatever the log
/// filter), so a quiet log level never breaks a trace.
pub const SPAN_TARGET: &str = "weft_span";

/// An internal span named `name` (an expensive step such as hashing or signing), a child of the
/// current span; none outside a span (start-up work and background chores make no traces).
pub fn span(name: &'static str) -> tracing::Span {
    if !spans_on() || tracing::Span::current().is_none() {
        return tracing::Span::none();
    }
    tracing::info_span!(target: SPAN_TARGET, "internal", otel.name = name)
}

// === modes ===

/// How the process traces, set once by `telemetry::init`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// No spans layer (no `telemetry::init`, or `OTEL_SDK_DISABLED`): trace headers pass through.
    Off,
    /// No exporter: no spans; each call's context carries its trace and span ids.
    Lite,
    /// Spans become OpenTelemetry spans and are exported.
    Otel,
}

/// Sets how the process traces (once, at start).
pub(crate) fn set_mode(mode: Mode) {
    let value = match mode {
        Mode::Off => MODE_OFF,
        Mode::Lite => MODE_LITE,
        Mode::Otel => MODE_OTEL,
    };
    MODE.store(value, Ordering::Relaxed);
}

const MODE_OFF: u8 = 0;
const MODE_LITE: u8 = 1;
const MODE_OTEL: u8 = 2;
static MODE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(MODE_OFF);

/// Whether the process makes spans (it exports them). Without an exporter the mesh makes none:
/// trace ids for logs and callees come from the call's context, at almost no cost.
pub fn spans_on() -> bool {
    mode() == Mode::Otel
}

pub(crate) fn mode() -> Mode {
    match MODE.load(Ordering::Relaxed) {
        MODE_LITE => Mode::Lite,
        MODE_OTEL => Mode::Otel,
        _ => Mode::Off,
    }
}

// === lite tracing: ids without spans ===

/// Trace ids for a call in [`Mode::Lite`]: the caller's trace (trace id, its span id, sampled)
/// continued, or a new one sampled per the configured ratio; and a span id for this process's
/// part.
pub(crate) fn lite_ids(parent: Option<(u128, u64, bool)>) -> (u128, u64, bool) {
    let (trace_id, sampled) = match parent {
        Some((trace_id, _, sampled)) => (trace_id, sampled),
        None => {
            let trace_id = new_trace_id();
            (trace_id, lite_sampled(trace_id))
        }
    };
    (trace_id, new_span_id(), sampled)
}

/// The ratio of new traces marked sampled in [`Mode::Lite`] (f64 bits), so a process without
/// an exporter still makes the decision its callees follow.
static LITE_RATIO: AtomicU64 = AtomicU64::new(0x3ff0_0000_0000_0000); // 1.0

/// Sets the ratio of new traces marked sampled in [`Mode::Lite`] (clamped to 0.0..=1.0).
pub(crate) fn set_lite_ratio(ratio: f64) {
    LITE_RATIO.store(ratio.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
}

/// The SDK's `TraceIdRatioBased` decision: the trace id's low 63 bits against the ratio.
pub(crate) fn lite_sampled(trace_id: u128) -> bool {
    let ratio = f64::from_bits(LITE_RATIO.load(Ordering::Relaxed));
    if ratio >= 1.0 {
        return true;
    }
    let bound = (ratio * (1u64 << 63) as f64) as u64;
    ((trace_id as u64) >> 1) < bound
}

thread_local! {
    /// splitmix64 state, seeded once per thread from the OS.
    static IDS: std::cell::Cell<u64> = std::cell::Cell::new(uuid::Uuid::new_v4().as_u128() as u64);
}

fn next_id() -> u64 {
    IDS.with(|state| {
        let mut z = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

fn new_span_id() -> u64 {
    loop {
        let id = next_id();
        if id != 0 {
            return id;
        }
    }
}

pub(crate) fn new_trace_id() -> u128 {
    (u128::from(next_id()) << 64) | u128::from(new_span_id())
}
