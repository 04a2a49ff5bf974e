//! Metrics of a run in the Prometheus text format, served over HTTP on
//! `--metrics ADDRESS` (loopback unless the address says otherwise).
//!
//! The registry is made by whoever starts the run and handed to it, so the
//! endpoint can be read while the run goes on and after it has ended (a
//! test compares the final scrape with the summary). Counters are the run's
//! own [`Stats`]; histograms have fixed buckets and are updated with
//! relaxed atomics, so recording costs a few adds on the hot path.

use crate::run::Stats;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What is known of one source partition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartitionStatus {
    /// Offsets (records) done since the start position.
    pub done: u64,
    /// Offsets to do in all, where the run is bounded.
    pub total: Option<u64>,
    /// Records on the broker not yet read (Kafka).
    pub lag: Option<u64>,
    /// The partition's watermark, epoch ms.
    pub watermark: Option<i64>,
}

/// An observation in millionths, as the sum keeps it.
fn micros(value: f64) -> u64 {
    // Through a signed integer, which converts in fewer instructions; the
    // same for any age short of 292,000 years.
    (value.max(0.0) * 1e6) as i64 as u64
}

/// A histogram with fixed upper bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: Vec<f64>,
    /// One count per bound, then the overflow (`+Inf`).
    counts: Vec<AtomicU64>,
    /// The sum of observations, in millionths.
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: Vec<f64>) -> Self {
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Histogram {
            bounds,
            counts,
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        self.counts[self.bucket(value)].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros(value), Ordering::Relaxed);
    }

    /// Records many observations (a batch's rows): counted locally first,
    /// so the shared counters, which every worker writes, are touched once
    /// per bucket rather than twice per value.
    pub fn observe_all(&self, values: impl IntoIterator<Item = f64>) {
        let mut counts = vec![0_u64; self.counts.len()];
        let mut sum_micros = 0_u64;
        // A batch's values are close together (its rows' ages): the last
        // value's bucket is tried first, which spares most searches.
        let mut last = self.bounds.len();
        for value in values {
            if !self.holds(last, value) {
                last = self.bucket(value);
            }
            counts[last] += 1;
            sum_micros += micros(value);
        }
        for (shared, count) in self.counts.iter().zip(counts) {
            if count > 0 {
                shared.fetch_add(count, Ordering::Relaxed);
            }
        }
        self.sum_micros.fetch_add(sum_micros, Ordering::Relaxed);
    }

    /// Whether `value` belongs in bucket `bucket` (the overflow bucket is
    /// the one past the last bound).
    fn holds(&self, bucket: usize, value: f64) -> bool {
        let above_previous = bucket == 0 || value > self.bounds[bucket - 1];
        let within = self.bounds.get(bucket).is_none_or(|bound| value <= *bound);
        above_previous && within
    }

    fn bucket(&self, value: f64) -> usize {
        self.bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len())
    }

    /// How many observations were recorded.
    pub fn count(&self) -> u64 {
        self.counts
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .sum()
    }

    /// The upper bound of the bucket that holds quantile `q` (0 to 1) of
    /// the observations (infinity for those past the largest bound); `None`
    /// before any observation.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).ceil().max(1.0) as u64;
        let mut cumulative = 0;
        for (index, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            if cumulative >= rank {
                return Some(self.bounds.get(index).copied().unwrap_or(f64::INFINITY));
            }
        }
        Some(f64::INFINITY)
    }

    /// The largest bound.
    pub fn largest_bound(&self) -> f64 {
        self.bounds.last().copied().unwrap_or(f64::INFINITY)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let total = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {total}");
    }
}

/// Seconds from 100 µs to about a minute.
fn latency_bounds() -> Vec<f64> {
    [
        0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        10.0, 30.0, 60.0,
    ]
    .to_vec()
}

/// The metrics of one process's run.
#[derive(Debug)]
pub struct Metrics {
    /// The run's counters.
    pub stats: Arc<Stats>,
    /// Per source partition, by source partition index.
    pub partitions: Mutex<BTreeMap<u32, PartitionStatus>>,
    /// Rows written, per sink description.
    pub sink_rows: Mutex<BTreeMap<String, u64>>,
    /// Rows per scored batch.
    pub batch_rows: Histogram,
    /// Seconds one batch takes to score.
    pub inference_seconds: Histogram,
    /// Seconds from a row's event time to its write by the sinks.
    pub event_to_output_seconds: Histogram,
    /// When source offsets were last committed.
    pub last_commit: Mutex<Option<Instant>>,
    /// The source, for labels.
    pub source: Mutex<String>,
    /// The newest committed checkpoint.
    pub checkpoint: Mutex<Option<CheckpointStatus>>,
    /// Per (stage key, worker): keys held and checkpoint bytes at the
    /// newest cut.
    pub stage_state: Mutex<BTreeMap<(String, usize), (u64, u64)>>,
    /// The drift of the rows against a reference, when measured.
    pub drift: Mutex<Option<Arc<crate::models::drift::Drift>>>,
}

/// What the newest committed checkpoint took.
#[derive(Clone, Copy, Debug)]
pub struct CheckpointStatus {
    /// Its id.
    pub id: u64,
    /// When it committed.
    pub at: Instant,
    /// From its announcement to its commit.
    pub duration: Duration,
    /// Its parts' bytes.
    pub bytes: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            stats: Arc::default(),
            partitions: Mutex::default(),
            sink_rows: Mutex::default(),
            batch_rows: Histogram::new((0..=16).map(|power| f64::from(1u32 << power)).collect()),
            inference_seconds: Histogram::new(latency_bounds()),
            event_to_output_seconds: Histogram::new(latency_bounds()),
            last_commit: Mutex::default(),
            source: Mutex::default(),
            checkpoint: Mutex::default(),
            stage_state: Mutex::default(),
            drift: Mutex::default(),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Metrics {
    /// Records `rows` written to `sink`.
    pub fn sink_wrote(&self, sink: &str, rows: u64) {
        *lock(&self.sink_rows).entry(sink.to_owned()).or_default() += rows;
    }

    /// Records a committed checkpoint.
    pub fn checkpoint_committed(&self, id: u64, duration: Duration, bytes: u64) {
        *lock(&self.checkpoint) = Some(CheckpointStatus {
            id,
            at: Instant::now(),
            duration,
            bytes,
        });
    }

    /// Records a stage's state at a cut on one worker.
    pub fn stage_state(&self, stage: &str, worker: usize, keys: u64, bytes: u64) {
        lock(&self.stage_state).insert((stage.to_owned(), worker), (keys, bytes));
    }

    /// Records a successful commit of source offsets.
    pub fn committed(&self) {
        *lock(&self.last_commit) = Some(Instant::now());
    }

    /// Records what a partition's reader says of itself.
    pub fn partition(&self, index: u32, status: PartitionStatus) {
        lock(&self.partitions).insert(index, status);
    }

    /// (done, total) over all partitions; the total only where every
    /// partition has one.
    pub fn progress(&self) -> (u64, Option<u64>) {
        lock(&self.partitions)
            .values()
            .fold((0, Some(0)), |(done, total), status| {
                (
                    done + status.done,
                    total.zip(status.total).map(|(a, b)| a + b),
                )
            })
    }

    /// The drift of each measured column, as a gauge.
    fn render_drift(&self, out: &mut String) {
        let Some(drift) = lock(&self.drift).clone() else {
            return;
        };
        let psi = drift.psi();
        if psi.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "# HELP tideflow_drift_psi Population stability index of the column's values against the drift reference.\n# TYPE tideflow_drift_psi gauge"
        );
        for (column, value) in psi {
            let _ = writeln!(
                out,
                "tideflow_drift_psi{{column=\"{}\"}} {value}",
                escape(&column)
            );
        }
    }

    /// The metrics as Prometheus text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_drift(&mut out);
        let counts = self.stats.snapshot();
        let source = escape(&lock(&self.source));
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{source=\"{source}\"}} {value}"
            );
        };
        counter(
            &mut out,
            "tideflow_records_in_total",
            "Records read from the source.",
            counts.records_in,
        );
        counter(
            &mut out,
            "tideflow_records_replayed_total",
            "Records replayed to rebuild window state (not in records_in).",
            counts.replayed,
        );
        counter(
            &mut out,
            "tideflow_dead_letters_total",
            "Records sent to dead letters, late ones excluded.",
            counts.dead,
        );
        counter(
            &mut out,
            "tideflow_late_total",
            "Records behind the watermark, sent to dead letters as late.",
            counts.late,
        );
        counter(
            &mut out,
            "tideflow_rows_out_total",
            "Rows written (each to every sink).",
            counts.rows_out,
        );
        let _ = writeln!(
            out,
            "# HELP tideflow_sink_rows_total Rows written, per sink.\n# TYPE tideflow_sink_rows_total counter"
        );
        for (sink, rows) in lock(&self.sink_rows).iter() {
            let _ = writeln!(
                out,
                "tideflow_sink_rows_total{{sink=\"{}\"}} {rows}",
                escape(sink)
            );
        }
        let partitions = lock(&self.partitions).clone();
        let _ = writeln!(
            out,
            "# HELP tideflow_partition_lag Records on the broker not yet read, per source partition.\n# TYPE tideflow_partition_lag gauge"
        );
        for (index, status) in &partitions {
            if let Some(lag) = status.lag {
                let _ = writeln!(out, "tideflow_partition_lag{{partition=\"{index}\"}} {lag}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP tideflow_partition_watermark_ms Event-time watermark per source partition (epoch ms).\n# TYPE tideflow_partition_watermark_ms gauge"
        );
        for (index, status) in &partitions {
            if let Some(watermark) = status.watermark {
                let _ = writeln!(
                    out,
                    "tideflow_partition_watermark_ms{{partition=\"{index}\"}} {watermark}"
                );
            }
        }
        self.batch_rows
            .render(&mut out, "tideflow_batch_rows", "Rows per scored batch.");
        self.inference_seconds.render(
            &mut out,
            "tideflow_inference_seconds",
            "Time to score one batch.",
        );
        self.event_to_output_seconds.render(
            &mut out,
            "tideflow_event_to_output_seconds",
            "From a row's event time to its write by the sinks (end-to-end latency where event time is when the event happened).",
        );
        self.render_state(&mut out);
        if let Some(at) = *lock(&self.last_commit) {
            let _ = writeln!(
                out,
                "# HELP tideflow_commit_age_seconds Seconds since source offsets were last committed.\n# TYPE tideflow_commit_age_seconds gauge\ntideflow_commit_age_seconds {}",
                at.elapsed().as_secs_f64()
            );
        }
        out
    }
}

impl Metrics {
    /// Checkpoint and state gauges.
    fn render_state(&self, out: &mut String) {
        if let Some(status) = *lock(&self.checkpoint) {
            let gauges = [
                (
                    "tideflow_checkpoint_id",
                    "The newest committed checkpoint.",
                    status.id as f64,
                ),
                (
                    "tideflow_checkpoint_duration_seconds",
                    "From announcing the newest committed checkpoint to committing it.",
                    status.duration.as_secs_f64(),
                ),
                (
                    "tideflow_checkpoint_bytes",
                    "Bytes of the newest committed checkpoint's parts.",
                    status.bytes as f64,
                ),
                (
                    "tideflow_checkpoint_age_seconds",
                    "Seconds since the newest checkpoint committed.",
                    status.at.elapsed().as_secs_f64(),
                ),
            ];
            for (name, help, value) in gauges {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
                );
            }
        }
        let mut per_stage: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for ((stage, _), (keys, bytes)) in lock(&self.stage_state).iter() {
            let total = per_stage.entry(stage.clone()).or_default();
            total.0 += keys;
            total.1 += bytes;
        }
        if per_stage.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "# HELP tideflow_state_keys Keys a feature stage held at the newest cut, over all workers.\n# TYPE tideflow_state_keys gauge"
        );
        for (stage, (keys, _)) in &per_stage {
            let _ = writeln!(
                out,
                "tideflow_state_keys{{stage=\"{}\"}} {keys}",
                escape(stage)
            );
        }
        let _ = writeln!(
            out,
            "# HELP tideflow_state_bytes Checkpoint bytes of a feature stage at the newest cut, over all workers.\n# TYPE tideflow_state_bytes gauge"
        );
        for (stage, (_, bytes)) in &per_stage {
            let _ = writeln!(
                out,
                "tideflow_state_bytes{{stage=\"{}\"}} {bytes}",
                escape(stage)
            );
        }
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Parses `--metrics`: `HOST:PORT`, or a bare port on 127.0.0.1.
pub fn parse_address(text: &str) -> Result<SocketAddr> {
    let with_host = if text.parse::<u16>().is_ok() {
        format!("127.0.0.1:{text}")
    } else {
        text.to_owned()
    };
    with_host.parse().map_err(|_| {
        Error::Metrics(format!(
            "--metrics {text}: write HOST:PORT (127.0.0.1:9464) or a port"
        ))
    })
}

/// Serves `metrics` at `address` until dropped.
#[derive(Debug)]
pub struct MetricsServer {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `address` and serves every request with the metrics.
    pub fn start(address: SocketAddr, metrics: Arc<Metrics>) -> Result<Self> {
        let listener = TcpListener::bind(address).map_err(|error| {
            Error::Metrics(format!("cannot serve metrics on {address}: {error}"))
        })?;
        let address = listener
            .local_addr()
            .map_err(|error| Error::Metrics(error.to_string()))?;
        listener
            .set_nonblocking(true)
            .map_err(|error| Error::Metrics(error.to_string()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => answer(stream, &metrics),
                    // Unparked when the server is dropped.
                    Err(_) => std::thread::park_timeout(Duration::from_millis(20)),
                }
            }
        });
        Ok(MetricsServer {
            address,
            stop,
            thread: Some(thread),
        })
    }

    /// Where the metrics are served.
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// Answers one HTTP request with the metrics, whatever the path.
fn answer(mut stream: std::net::TcpStream, metrics: &Metrics) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    // The request itself does not matter; read its head so the client is
    // not reset while still sending.
    let mut head = [0u8; 4096];
    let _ = stream.read(&mut head);
    let body = metrics.render();
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_count_into_cumulative_buckets() {
        let histogram = Histogram::new(vec![1.0, 10.0]);
        for value in [0.5, 1.0, 5.0, 50.0] {
            histogram.observe(value);
        }
        let mut out = String::new();
        histogram.render(&mut out, "h", "test");
        assert!(out.contains("h_bucket{le=\"1\"} 2\n"), "{out}");
        assert!(out.contains("h_bucket{le=\"10\"} 3\n"), "{out}");
        assert!(out.contains("h_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("h_sum 56.5\n"), "{out}");
        assert!(out.contains("h_count 4\n"), "{out}");
    }

    #[test]
    fn observing_many_at_once_counts_as_observing_each() {
        // Runs of one bucket and jumps between buckets, both ways.
        let values = [0.5, 1.0, 5.0, 50.0, 70.0, 0.25, 10.0, 10.5, 1.0];
        let (one_by_one, all_at_once) = (
            Histogram::new(vec![1.0, 10.0]),
            Histogram::new(vec![1.0, 10.0]),
        );
        for value in values {
            one_by_one.observe(value);
        }
        all_at_once.observe_all(values);
        let (mut expected, mut out) = (String::new(), String::new());
        one_by_one.render(&mut expected, "h", "test");
        all_at_once.render(&mut out, "h", "test");
        assert!(out.contains("h_count 9\n"), "{out}");
        assert_eq!(expected, out);
    }

    #[test]
    fn a_bare_port_binds_loopback() {
        assert_eq!(
            parse_address("9464").unwrap(),
            "127.0.0.1:9464".parse().unwrap()
        );
        assert_eq!(
            parse_address("0.0.0.0:9000").unwrap(),
            "0.0.0.0:9000".parse().unwrap()
        );
        assert!(parse_address("nowhere").is_err());
    }
}
