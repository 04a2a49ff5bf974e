//! What an operator sees of a run: the Prometheus endpoint, scraped over
//! HTTP while a run goes on (the numbers move) and after it (they agree
//! with the run summary), and the progress lines of a bounded run that is
//! not on a terminal.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;
use tideflow::dataflow::{RunOptions, run};
use tideflow::metrics::{Metrics, MetricsServer};

/// The parity workload, slowed to a rate so that it runs for a few seconds.
fn paced_overrides(out: &std::path::Path, count: u64, rate: f64) -> Vec<String> {
    let mut overrides = vec![
        format!(
            "model.path=\"{}\"",
            common::root().join("models/fraud_mlp.onnx").display()
        ),
        format!("source.count={count}"),
        format!("source.rate={rate}"),
    ];
    overrides.extend(common::output_overrides(out));
    overrides
}

/// One HTTP GET of the metrics endpoint.
fn scrape(address: std::net::SocketAddr) -> String {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(
        response.contains("application/openmetrics-text; version=1.0.0"),
        "{response}"
    );
    response
}

/// The value of the first sample of `name` (with any labels).
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[test]
fn the_metrics_endpoint_moves_during_a_run_and_agrees_with_its_summary() {
    common::require_onnxruntime();
    let dir = tempfile::tempdir().unwrap();
    let source = tideflow::spec::SpecSource {
        file: "parity.toml".into(),
        text: common::PARITY_SPEC.into(),
        overrides: paced_overrides(dir.path(), 9_000, 3_000.0),
    };
    let plan = tideflow::plan::Plan::from_spec(&source.parse().unwrap(), &source).unwrap();
    let metrics = Arc::new(Metrics::default());
    let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), metrics.clone()).unwrap();
    assert!(server.address().ip().is_loopback());
    let options = RunOptions {
        metrics: Some(metrics),
        ..RunOptions::with_workers(2)
    };
    let running = std::thread::spawn(move || run(plan, &options));

    // While it runs, records_in grows between scrapes.
    let mut seen = Vec::new();
    while !running.is_finished() {
        let text = scrape(server.address());
        seen.push(sample(&text, "tideflow_records_in_total").unwrap());
        std::thread::sleep(Duration::from_millis(400));
    }
    let summary = running.join().unwrap().unwrap();
    let moving = seen.windows(2).filter(|pair| pair[1] > pair[0]).count();
    assert!(
        moving >= 2,
        "records_in did not grow during the run: {seen:?}"
    );

    // After it, every count is the summary's.
    let text = scrape(server.address());
    let counts = summary.counts;
    for (name, expected) in [
        ("tideflow_records_in_total", counts.records_in),
        ("tideflow_rows_out_total", counts.rows_out),
        ("tideflow_dead_letters_total", counts.dead),
        ("tideflow_late_total", counts.late),
        ("tideflow_sink_rows_total", counts.rows_out),
        ("tideflow_batch_rows_count", counts.batches),
        ("tideflow_inference_seconds_count", counts.batches),
        ("tideflow_event_to_output_seconds_count", counts.rows_out),
    ] {
        assert_eq!(
            sample(&text, name),
            Some(expected as f64),
            "{name} in:\n{text}"
        );
    }
    assert_eq!(
        sample(&text, "tideflow_batch_rows_sum"),
        Some(counts.rows_out as f64)
    );
    for partition in 0..4 {
        let watermark = format!("tideflow_partition_watermark_ms{{partition=\"{partition}\"}}");
        assert!(text.contains(&watermark), "no {watermark} in:\n{text}");
    }
}

#[test]
fn a_bounded_run_off_a_terminal_logs_progress_lines() {
    common::require_onnxruntime();
    let dir = tempfile::tempdir().unwrap();
    let spec = common::write_spec(dir.path(), "parity.toml", common::PARITY_SPEC);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tideflow"));
    command.arg("run").arg(&spec);
    for value in paced_overrides(dir.path(), 18_000, 2_500.0) {
        command.args(["--set", &value]);
    }
    let output = command.output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    let progress: Vec<&str> = log
        .lines()
        .filter(|line| line.starts_with("progress: "))
        .collect();
    assert!(!progress.is_empty(), "no progress lines in:\n{log}");
    for line in &progress {
        assert!(
            line.contains("/18000 offsets ETA") && line.contains("records/s"),
            "{line}"
        );
    }
}
