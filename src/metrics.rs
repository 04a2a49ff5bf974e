//! Metrics of a run in the OpenMetrics text format (which Prometheus
//! reads), encoded by the `prometheus-client` crate and served over HTTP
//! on `--metrics ADDRESS` (loopback unless the address says otherwise) and
//! at the admin API's `/metrics`.
//!
//! The registry is made by whoever starts the run and handed to it, so the
//! endpoint can be read while the run goes on and after it has ended (a
//! test compares the final scrape with the summary). Counters are the run's
//! own [`Stats`]; histograms have fixed buckets and are updated with
//! relaxed atomics, so recording costs a few adds on the hot path (the
//! crate's own histogram takes a lock per observation, and a batch's rows
//! are observed together here); a scrape reads a snapshot of them all and
//! hands it to the crate's encoder.

use crate::run::Stats;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
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

    /// `(upper bound, count)` of each bucket, the last `+Inf`, counts
    /// not cumulative; and the sum of the observations.
    fn buckets(&self) -> (Vec<(f64, u64)>, f64) {
        let buckets = self
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&self.counts)
            .map(|(bound, count)| (bound, count.load(Ordering::Relaxed)))
            .collect();
        (
            buckets,
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        )
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
    /// The run's model versions, for their rows and shadows.
    pub models: Mutex<Option<Arc<crate::models::ModelVersions>>>,
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
            models: Mutex::default(),
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

    /// The metrics in the OpenMetrics text format (which Prometheus
    /// reads), encoded by the `prometheus-client` crate from a snapshot.
    pub fn render(&self) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(self.snapshot()));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    /// Everything a scrape shows, read now.
    fn snapshot(&self) -> Snapshot {
        let mut per_stage: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for ((stage, _), (keys, bytes)) in lock(&self.stage_state).iter() {
            let total = per_stage.entry(stage.clone()).or_default();
            total.0 += keys;
            total.1 += bytes;
        }
        Snapshot {
            counts: self.stats.snapshot(),
            source: lock(&self.source).clone(),
            sink_rows: lock(&self.sink_rows).clone(),
            partitions: lock(&self.partitions).clone(),
            histograms: [
                (
                    "tideflow_batch_rows",
                    "Rows per scored batch.",
                    self.batch_rows.buckets(),
                ),
                (
                    "tideflow_inference_seconds",
                    "Time to score one batch.",
                    self.inference_seconds.buckets(),
                ),
                (
                    "tideflow_event_to_output_seconds",
                    "From a row's event time to its write by the sinks (end-to-end latency where event time is when the event happened).",
                    self.event_to_output_seconds.buckets(),
                ),
            ],
            checkpoint: *lock(&self.checkpoint),
            per_stage,
            commit_age: lock(&self.last_commit).map(|at| at.elapsed().as_secs_f64()),
            drift: lock(&self.drift)
                .as_ref()
                .map_or_else(Vec::new, |drift| drift.psi()),
            models: lock(&self.models).as_deref().map(ModelFigures::of),
        }
    }
}

/// A histogram's name, help, buckets (`(upper bound, count)`) and sum.
type HistogramFigures = (&'static str, &'static str, (Vec<(f64, u64)>, f64));

/// A label set of one label.
type OneLabel = [(&'static str, String); 1];

/// A challenger's label, stats, and each float output column with its
/// mean absolute difference from the champion's.
type ShadowFigures = (String, crate::models::ShadowStats, Vec<(String, f64)>);

/// A scrape's figures, owned, for the encoder.
#[derive(Debug)]
struct Snapshot {
    counts: crate::run::Counts,
    source: String,
    sink_rows: BTreeMap<String, u64>,
    partitions: BTreeMap<u32, PartitionStatus>,
    histograms: [HistogramFigures; 3],
    checkpoint: Option<CheckpointStatus>,
    per_stage: BTreeMap<String, (u64, u64)>,
    commit_age: Option<f64>,
    drift: Vec<(String, f64)>,
    models: Option<ModelFigures>,
}

/// The rows each model version scored, and each challenger against the
/// champion.
#[derive(Debug)]
struct ModelFigures {
    rows_by_version: Vec<(String, u64)>,
    /// Per challenger: its label, the stats, and the float output columns
    /// with their mean absolute difference.
    shadows: Vec<ShadowFigures>,
}

impl ModelFigures {
    fn of(models: &crate::models::ModelVersions) -> ModelFigures {
        let plan = models.plan();
        let shadows = models
            .shadow_stats()
            .into_iter()
            .map(|(label, stats)| {
                let rows = stats.rows.max(1) as f64;
                let differences = plan
                    .outputs
                    .iter()
                    .zip(models.output_types())
                    .zip(&stats.abs_difference_sums)
                    .filter(|((_, ty), _)| **ty == crate::schema::ColumnType::F64)
                    .map(|((output, _), sum)| (output.column.clone(), sum / rows))
                    .collect();
                (label, stats, differences)
            })
            .collect();
        ModelFigures {
            rows_by_version: models.rows_by_version(),
            shadows,
        }
    }

    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::DescriptorEncoder,
    ) -> std::fmt::Result {
        use prometheus_client::metrics::MetricType;
        let versions: Vec<([(&str, String); 1], u64)> = self
            .rows_by_version
            .iter()
            .map(|(version, rows)| ([("version", version.clone())], *rows))
            .collect();
        family(
            encoder,
            ("tideflow_model_rows", "Rows each model version scored."),
            MetricType::Counter,
            versions
                .iter()
                .map(|(labels, rows)| (&labels[..], (*rows).into())),
        )?;
        if self.shadows.is_empty() {
            return Ok(());
        }
        let challengers: Vec<([(&str, String); 1], &crate::models::ShadowStats)> = self
            .shadows
            .iter()
            .map(|(label, stats, _)| ([("challenger", label.clone())], stats))
            .collect();
        family(
            encoder,
            (
                "tideflow_shadow_rows",
                "Rows a challenger scored beside the champion.",
            ),
            MetricType::Counter,
            challengers
                .iter()
                .map(|(labels, stats)| (&labels[..], stats.rows.into())),
        )?;
        family(
            encoder,
            (
                "tideflow_shadow_agreeing_rows",
                "Of those, rows on whose every output that is not a float the challenger agrees with the champion.",
            ),
            MetricType::Counter,
            challengers
                .iter()
                .map(|(labels, stats)| (&labels[..], stats.agreeing.into())),
        )?;
        let differences: Vec<([(&str, String); 2], f64)> = self
            .shadows
            .iter()
            .flat_map(|(label, _, differences)| {
                differences.iter().map(move |(column, mean)| {
                    (
                        [("challenger", label.clone()), ("column", column.clone())],
                        *mean,
                    )
                })
            })
            .collect();
        family(
            encoder,
            (
                "tideflow_shadow_abs_difference_mean",
                "Mean absolute difference of a float output between the challenger and the champion.",
            ),
            MetricType::Gauge,
            differences
                .iter()
                .map(|(labels, mean)| (&labels[..], (*mean).into())),
        )
    }
}

/// One labelled sample of a family.
type Labelled<'a> = (&'a [(&'a str, String)], Figure);

/// A sample's value: integers are written as integers.
#[derive(Clone, Copy, Debug)]
enum Figure {
    Integer(i64),
    Float(f64),
}

impl From<u64> for Figure {
    fn from(value: u64) -> Self {
        Figure::Integer(i64::try_from(value).unwrap_or(i64::MAX))
    }
}

impl From<i64> for Figure {
    fn from(value: i64) -> Self {
        Figure::Integer(value)
    }
}

impl From<f64> for Figure {
    fn from(value: f64) -> Self {
        Figure::Float(value)
    }
}

impl prometheus_client::collector::Collector for Snapshot {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> std::fmt::Result {
        use prometheus_client::metrics::MetricType;
        let counts = &self.counts;
        let source = [("source", self.source.clone())];
        // Counter names lose their `_total`, which the encoder adds.
        for (name, help, value) in [
            (
                "tideflow_records_in",
                "Records read from the source.",
                counts.records_in,
            ),
            (
                "tideflow_records_replayed",
                "Records replayed to rebuild window state (not in records_in).",
                counts.replayed,
            ),
            (
                "tideflow_dead_letters",
                "Records sent to dead letters, late ones excluded.",
                counts.dead,
            ),
            (
                "tideflow_late",
                "Records behind the watermark, sent to dead letters as late.",
                counts.late,
            ),
            (
                "tideflow_rows_out",
                "Rows written (each to every sink).",
                counts.rows_out,
            ),
        ] {
            family(
                &mut encoder,
                (name, help),
                MetricType::Counter,
                [(&source[..], value.into())],
            )?;
        }
        let sinks: Vec<[(&str, String); 1]> = self
            .sink_rows
            .keys()
            .map(|sink| [("sink", sink.clone())])
            .collect();
        family(
            &mut encoder,
            ("tideflow_sink_rows", "Rows written, per sink."),
            MetricType::Counter,
            sinks
                .iter()
                .zip(self.sink_rows.values())
                .map(|(labels, rows)| (&labels[..], (*rows).into())),
        )?;
        let partitions: Vec<([(&str, String); 1], &PartitionStatus)> = self
            .partitions
            .iter()
            .map(|(index, status)| ([("partition", index.to_string())], status))
            .collect();
        family(
            &mut encoder,
            (
                "tideflow_partition_lag",
                "Records on the broker not yet read, per source partition.",
            ),
            MetricType::Gauge,
            partitions
                .iter()
                .filter_map(|(labels, status)| Some((&labels[..], status.lag?.into()))),
        )?;
        family(
            &mut encoder,
            (
                "tideflow_partition_watermark_ms",
                "Event-time watermark per source partition (epoch ms).",
            ),
            MetricType::Gauge,
            partitions
                .iter()
                .filter_map(|(labels, status)| Some((&labels[..], status.watermark?.into()))),
        )?;
        for (name, help, (buckets, sum)) in &self.histograms {
            let count = buckets.iter().map(|(_, count)| count).sum();
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                *sum, count, buckets, None,
            )?;
        }
        let none: &[(&str, String)] = &[];
        if let Some(status) = self.checkpoint {
            for (name, help, value) in [
                (
                    "tideflow_checkpoint_id",
                    "The newest committed checkpoint.",
                    status.id.into(),
                ),
                (
                    "tideflow_checkpoint_duration_seconds",
                    "From announcing the newest committed checkpoint to committing it.",
                    status.duration.as_secs_f64().into(),
                ),
                (
                    "tideflow_checkpoint_bytes",
                    "Bytes of the newest committed checkpoint's parts.",
                    status.bytes.into(),
                ),
                (
                    "tideflow_checkpoint_age_seconds",
                    "Seconds since the newest checkpoint committed.",
                    status.at.elapsed().as_secs_f64().into(),
                ),
            ] {
                family(
                    &mut encoder,
                    (name, help),
                    MetricType::Gauge,
                    [(none, value)],
                )?;
            }
        }
        let stages: Vec<(OneLabel, (u64, u64))> = self
            .per_stage
            .iter()
            .map(|(stage, figures)| ([("stage", stage.clone())], *figures))
            .collect();
        if !stages.is_empty() {
            family(
                &mut encoder,
                (
                    "tideflow_state_keys",
                    "Keys a feature stage held at the newest cut, over all workers.",
                ),
                MetricType::Gauge,
                stages
                    .iter()
                    .map(|(labels, (keys, _))| (&labels[..], (*keys).into())),
            )?;
            family(
                &mut encoder,
                (
                    "tideflow_state_bytes",
                    "Checkpoint bytes of a feature stage at the newest cut, over all workers.",
                ),
                MetricType::Gauge,
                stages
                    .iter()
                    .map(|(labels, (_, bytes))| (&labels[..], (*bytes).into())),
            )?;
        }
        if let Some(age) = self.commit_age {
            family(
                &mut encoder,
                (
                    "tideflow_commit_age_seconds",
                    "Seconds since source offsets were last committed.",
                ),
                MetricType::Gauge,
                [(none, age.into())],
            )?;
        }
        if let Some(models) = &self.models {
            models.encode(&mut encoder)?;
        }
        let columns: Vec<([(&str, String); 1], f64)> = self
            .drift
            .iter()
            .map(|(column, psi)| ([("column", column.clone())], *psi))
            .collect();
        if !columns.is_empty() {
            family(
                &mut encoder,
                (
                    "tideflow_drift_psi",
                    "Population stability index of the column's values against the drift reference.",
                ),
                MetricType::Gauge,
                columns
                    .iter()
                    .map(|(labels, psi)| (&labels[..], (*psi).into())),
            )?;
        }
        Ok(())
    }
}

/// Encodes a family of samples of one metric type: counters (as floats,
/// which the format allows) or gauges.
fn family<'a>(
    encoder: &mut prometheus_client::encoding::DescriptorEncoder,
    (name, help): (&str, &str),
    metric_type: prometheus_client::metrics::MetricType,
    samples: impl IntoIterator<Item = Labelled<'a>>,
) -> std::fmt::Result {
    use prometheus_client::encoding::NoLabelSet;
    use prometheus_client::metrics::MetricType;
    let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in samples {
        let mut metric = family.encode_family(&labels)?;
        match (&metric_type, value) {
            (MetricType::Counter, Figure::Integer(value)) => {
                let value = u64::try_from(value).unwrap_or(0);
                metric.encode_counter::<NoLabelSet, u64, f64>(&value, None)?
            }
            (MetricType::Counter, Figure::Float(value)) => {
                metric.encode_counter::<NoLabelSet, f64, f64>(&value, None)?
            }
            (_, Figure::Integer(value)) => metric.encode_gauge(&value)?,
            (_, Figure::Float(value)) => metric.encode_gauge(&value)?,
        }
    }
    Ok(())
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

/// The metrics as an HTTP answer: the OpenMetrics text with its content
/// type.
pub fn exposition(metrics: &Metrics) -> impl axum::response::IntoResponse + use<> {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
}

/// Serves `metrics` at `address` (`GET /metrics`) until dropped.
#[derive(Debug)]
pub struct MetricsServer(crate::admin::HttpServer);

impl MetricsServer {
    /// Binds `address` and serves the metrics.
    pub fn start(address: SocketAddr, metrics: Arc<Metrics>) -> Result<Self> {
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move { exposition(&metrics) }
            }),
        );
        crate::admin::HttpServer::start(address, app, "--metrics")
            .map(MetricsServer)
            .map_err(|error| Error::Metrics(error.to_string()))
    }

    /// Where the metrics are served.
    pub fn address(&self) -> SocketAddr {
        self.0.address()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_count_into_buckets_and_encode_cumulatively() {
        let metrics = Metrics::default();
        for value in [0.5, 1.0, 5.0, 50.0] {
            metrics.inference_seconds.observe(value);
        }
        let (buckets, sum) = metrics.inference_seconds.buckets();
        assert_eq!(sum, 56.5);
        let counted: Vec<u64> = buckets.iter().map(|(_, count)| *count).collect();
        assert_eq!(counted.iter().sum::<u64>(), 4);
        assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, 0));
        let out = metrics.render();
        let name = "tideflow_inference_seconds";
        assert!(
            out.contains(&format!("{name}_bucket{{le=\"0.5\"}} 1\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("{name}_bucket{{le=\"1.0\"}} 2\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("{name}_bucket{{le=\"5.0\"}} 3\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("{name}_bucket{{le=\"+Inf\"}} 4\n")),
            "{out}"
        );
        assert!(out.contains(&format!("{name}_sum 56.5\n")), "{out}");
        assert!(out.contains(&format!("{name}_count 4\n")), "{out}");
        assert!(out.ends_with("# EOF\n"), "{out}");
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
        assert_eq!(all_at_once.count(), 9);
        assert_eq!(one_by_one.buckets(), all_at_once.buckets());
    }

    #[test]
    fn a_quantile_is_the_bound_of_its_bucket() {
        let histogram = Histogram::new(vec![1.0, 10.0]);
        assert_eq!(histogram.quantile(0.5), None);
        for value in [0.5, 0.6, 5.0, 50.0] {
            histogram.observe(value);
        }
        assert_eq!(histogram.quantile(0.5), Some(1.0));
        assert_eq!(histogram.quantile(0.75), Some(10.0));
        assert_eq!(histogram.quantile(0.99), Some(f64::INFINITY));
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
