//! Counters and latency histograms of a live engine, rendered in the
//! Prometheus text format (version 0.0.4) by [`Metrics::render`].
//!
//! Counters are atomics, read without locking; the histograms hold their
//! counts behind a mutex each, taken once per token (far below the cost of
//! the token itself).

use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (seconds) of the time-to-first-token buckets.
const TTFT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Upper bounds (seconds) of the inter-token latency buckets.
const TOKEN_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A cumulative histogram with fixed buckets.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    inner: Mutex<HistogramCounts>,
}

#[derive(Debug, Default, Clone)]
struct HistogramCounts {
    /// Per bucket (not cumulative); the last is `+Inf`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            inner: Mutex::new(HistogramCounts {
                counts: vec![0; bounds.len() + 1],
                ..Default::default()
            }),
        }
    }

    fn observe(&self, seconds: f64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(self.bounds.len());
        let mut h = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        h.counts[i] += 1;
        h.sum += seconds;
        h.count += 1;
    }

    fn snapshot(&self) -> HistogramCounts {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let h = self.snapshot();
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&h.counts) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum {}", h.sum);
        let _ = writeln!(out, "{name}_count {}", h.count);
    }
}

/// How a request left the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Generation ended normally (stop id, stop string, length, context).
    Completed,
    /// The client went away (or shutdown cancelled it) before the end.
    Cancelled,
    /// Refused at the door: the queue was full.
    QueueFull,
    /// Refused at the door: the request was invalid.
    Invalid,
    /// The device failed while running it.
    Failed,
}

impl Outcome {
    const ALL: [Outcome; 5] = [
        Outcome::Completed,
        Outcome::Cancelled,
        Outcome::QueueFull,
        Outcome::Invalid,
        Outcome::Failed,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Cancelled => "cancelled",
            Outcome::QueueFull => "queue_full",
            Outcome::Invalid => "invalid",
            Outcome::Failed => "failed",
        }
    }
}

/// Per-device counters.
#[derive(Debug, Default)]
struct DeviceCounters {
    running: AtomicU64,
    /// Requests it completed.
    requests: AtomicU64,
    rounds: AtomicU64,
    /// Sum over rounds of the sequences in the round (occupancy = this /
    /// (rounds x slots)).
    sequences_in_rounds: AtomicU64,
}

/// Sequences per round over slots, since start.
fn occupancy(c: &DeviceCounters, slots: usize) -> f64 {
    let rounds = c.rounds.load(Ordering::Relaxed);
    let seqs = c.sequences_in_rounds.load(Ordering::Relaxed);
    if rounds > 0 && slots > 0 {
        seqs as f64 / (rounds as f64 * slots as f64)
    } else {
        0.0
    }
}

/// What a live engine counts. Shared by the engine's workers and whoever
/// serves `/metrics`.
#[derive(Debug)]
pub struct Metrics {
    outcomes: [AtomicU64; 5],
    prompt_tokens: AtomicU64,
    cached_prompt_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    queue_depth: AtomicU64,
    ttft: Histogram,
    inter_token: Histogram,
    devices: Vec<(String, usize, DeviceCounters)>,
}

impl Metrics {
    /// Metrics for devices named `names` with `slots[g]` sequences each.
    pub fn new(devices: &[(String, usize)]) -> Self {
        Metrics {
            outcomes: Default::default(),
            prompt_tokens: AtomicU64::new(0),
            cached_prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            queue_depth: AtomicU64::new(0),
            ttft: Histogram::new(TTFT_BUCKETS),
            inter_token: Histogram::new(TOKEN_BUCKETS),
            devices: devices
                .iter()
                .map(|(n, s)| (n.clone(), *s, DeviceCounters::default()))
                .collect(),
        }
    }

    /// Count a request that left with `o` (the engine counts its own;
    /// a server counts the requests it refuses before they reach it).
    pub fn outcome(&self, o: Outcome) {
        self.outcomes[o as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn prompt_tokens(&self, n: usize) {
        self.prompt_tokens.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub(crate) fn cached_prompt_tokens(&self, n: usize) {
        self.cached_prompt_tokens
            .fetch_add(n as u64, Ordering::Relaxed);
    }
    pub(crate) fn generated_token(&self) {
        self.generated_tokens.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn set_queue_depth(&self, n: usize) {
        self.queue_depth.store(n as u64, Ordering::Relaxed);
    }
    pub(crate) fn ttft(&self, seconds: f64) {
        self.ttft.observe(seconds);
    }
    pub(crate) fn inter_token(&self, seconds: f64) {
        self.inter_token.observe(seconds);
    }
    pub(crate) fn round(&self, device: usize, sequences: usize) {
        if let Some((_, _, c)) = self.devices.get(device) {
            c.rounds.fetch_add(1, Ordering::Relaxed);
            c.sequences_in_rounds
                .fetch_add(sequences as u64, Ordering::Relaxed);
        }
    }
    pub(crate) fn device_request(&self, device: usize) {
        if let Some((_, _, c)) = self.devices.get(device) {
            c.requests.fetch_add(1, Ordering::Relaxed);
        }
    }
    pub(crate) fn set_running(&self, device: usize, n: usize) {
        if let Some((_, _, c)) = self.devices.get(device) {
            c.running.store(n as u64, Ordering::Relaxed);
        }
    }

    /// Requests that left with `outcome` so far.
    pub fn outcomes(&self, outcome: Outcome) -> u64 {
        self.outcomes[outcome as usize].load(Ordering::Relaxed)
    }

    /// Tokens generated and sent to clients so far.
    pub fn generated_tokens(&self) -> u64 {
        self.generated_tokens.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition of everything counted.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP hetero_requests_total Requests by how they left the server."
        );
        let _ = writeln!(out, "# TYPE hetero_requests_total counter");
        for o in Outcome::ALL {
            let _ = writeln!(
                out,
                "hetero_requests_total{{outcome=\"{}\"}} {}",
                o.label(),
                self.outcomes(o)
            );
        }
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {v}");
        };
        counter(
            &mut out,
            "hetero_prompt_tokens_total",
            "Prompt tokens of admitted requests.",
            self.prompt_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "hetero_prompt_tokens_cached_total",
            "Prompt tokens taken from cached prefixes instead of prefilled.",
            self.cached_prompt_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "hetero_generated_tokens_total",
            "Tokens generated and returned to clients.",
            self.generated_tokens(),
        );
        let _ = writeln!(
            out,
            "# HELP hetero_queue_depth Requests waiting for a slot.\n# TYPE hetero_queue_depth gauge\nhetero_queue_depth {}",
            self.queue_depth.load(Ordering::Relaxed)
        );
        self.ttft.render(
            &mut out,
            "hetero_time_to_first_token_seconds",
            "From arrival to the first generated token.",
        );
        self.inter_token.render(
            &mut out,
            "hetero_inter_token_latency_seconds",
            "Between consecutive tokens of one request.",
        );
        type Value = fn(&DeviceCounters, usize) -> f64;
        let per_device: [(&str, &str, &str, Value); 5] = [
            (
                "hetero_device_running",
                "gauge",
                "Sequences running on a device.",
                |c, _| c.running.load(Ordering::Relaxed) as f64,
            ),
            (
                "hetero_device_slots",
                "gauge",
                "Sequences a device may run at once.",
                |_, slots| slots as f64,
            ),
            (
                "hetero_device_batch_occupancy",
                "gauge",
                "Mean sequences per round over slots, since start.",
                occupancy,
            ),
            (
                "hetero_device_requests_total",
                "counter",
                "Requests a device completed.",
                |c, _| c.requests.load(Ordering::Relaxed) as f64,
            ),
            (
                "hetero_device_rounds_total",
                "counter",
                "Batched forward passes run (this process's devices).",
                |c, _| c.rounds.load(Ordering::Relaxed) as f64,
            ),
        ];
        for (name, kind, help, value) in per_device {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (device, slots, c) in &self.devices {
                let _ = writeln!(out, "{name}{{device=\"{device}\"}} {}", value(c, *slots));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_counts_add_up() {
        let m = Metrics::new(&[("host:0".into(), 4)]);
        for s in [0.005, 0.02, 0.02, 3.0, 100.0] {
            m.ttft(s);
        }
        m.outcome(Outcome::Completed);
        m.outcome(Outcome::QueueFull);
        m.generated_token();
        m.round(0, 2);
        m.round(0, 4);
        let text = m.render();
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_string()
        };
        assert_eq!(
            line("hetero_time_to_first_token_seconds_bucket{le=\"0.01\"}"),
            "1"
        );
        assert_eq!(
            line("hetero_time_to_first_token_seconds_bucket{le=\"0.025\"}"),
            "3"
        );
        assert_eq!(
            line("hetero_time_to_first_token_seconds_bucket{le=\"5\"}"),
            "4"
        );
        assert_eq!(
            line("hetero_time_to_first_token_seconds_bucket{le=\"60\"}"),
            "4"
        );
        assert_eq!(
            line("hetero_time_to_first_token_seconds_bucket{le=\"+Inf\"}"),
            "5"
        );
        assert_eq!(line("hetero_time_to_first_token_seconds_count"), "5");
        assert_eq!(line("hetero_requests_total{outcome=\"completed\"}"), "1");
        assert_eq!(line("hetero_requests_total{outcome=\"queue_full\"}"), "1");
        assert_eq!(line("hetero_generated_tokens_total"), "1");
        assert_eq!(
            line("hetero_device_batch_occupancy{device=\"host:0\"}"),
            "0.75"
        );
    }
}
