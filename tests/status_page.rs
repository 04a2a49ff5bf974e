//! The admin API's status page in a real headless browser (Debian's
//! chromium): a live Kafka run on the test broker reads every event and
//! waits for more; the page, loaded then, must show the run's figures as
//! `/status` gives them (rows out, rows by model version, one lag bar per
//! partition, a throughput chart of several points), and a screenshot of
//! it is kept.

mod common;

use common::broker::Broker;
use serde_json::Value as Json;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tideflow_connectors::generator::GeneratorConfig;
use tideflow_connectors::kafka::{ClientOptions, GenerateOptions, produce_generated};

const EVENTS: u64 = 2000;
const PARTITIONS: u32 = 4;

/// The browser: `TIDEFLOW_CHROMIUM`, else `chromium` on the path. Fails,
/// naming the command that installs it, when missing.
fn chromium() -> PathBuf {
    let path = std::env::var_os("TIDEFLOW_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.is_file(),
        "the status page test needs Debian's chromium at {}.\nInstall it with: scripts/setup-chromium.sh (or run the whole suite with scripts/test.sh)",
        path.display()
    );
    path
}

fn status(port: u16) -> Option<Json> {
    common::admin_status(port)
}

/// Runs headless chromium on the page with `arguments` (`--dump-dom`,
/// `--screenshot=...`), letting its timers run four seconds of virtual
/// time (four polls of `/status`).
fn browse(port: u16, arguments: &[&str]) -> String {
    let output = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=4000",
        ])
        .args(["--window-size=1280,1000"])
        .args(arguments)
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("running chromium");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The value of attribute `name` of every element that has `marker`.
fn attributes<'dom>(dom: &'dom str, marker: &str, name: &str) -> Vec<&'dom str> {
    dom.match_indices(marker)
        .filter_map(|(at, _)| {
            let element = &dom[dom[..at].rfind('<')?..];
            let element = &element[..element.find('>')?];
            let start = element.find(&format!("{name}=\""))? + name.len() + 2;
            let end = element[start..].find('"')? + start;
            Some(&element[start..end])
        })
        .collect()
}

#[test]
fn the_status_page_shows_the_runs_figures_in_a_browser() {
    let _turn = common::one_at_a_time();
    common::require_onnxruntime();
    chromium();
    let broker = Broker::start();
    let generator = GeneratorConfig {
        users: 200,
        merchants: 20,
        partitions: PARTITIONS,
        count: Some(EVENTS),
        spacing_ms: 20.0,
        ..GeneratorConfig::default()
    };
    produce_generated(
        &GenerateOptions {
            brokers: broker.brokers.clone(),
            topic: "transactions".into(),
            options: ClientOptions::default(),
            generator,
            first: 0,
            wall_clock: false,
        },
        &|| false,
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let root = common::root();
    let spec = std::fs::read_to_string(root.join("dataflows/fraud_kafka.toml"))
        .unwrap()
        .replace("127.0.0.1:9092", &broker.brokers)
        .replace("from = \"committed\"", "from = \"earliest\"")
        .replace("idle_timeout = \"5s\"", "idle_timeout = \"200ms\"")
        .replace(
            "models/fraud_mlp.onnx",
            &root.join("models/fraud_mlp.onnx").display().to_string(),
        )
        .replace(
            "type = \"kafka\"\ntopic = \"fraud-scores\"",
            &format!(
                "type = \"jsonl\"\npath = \"{}\"",
                out.path().join("rows").display()
            ),
        )
        .replace(
            "type = \"kafka\"\ntopic = \"fraud-dead-letters\"",
            &format!(
                "type = \"jsonl\"\npath = \"{}\"",
                out.path().join("dead").display()
            ),
        )
        .replace(
            "out/fraud_kafka/scores/",
            &out.path().join("copy").display().to_string(),
        );
    let spec = common::write_spec(out.path(), "spec.toml", &spec);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut run = Command::new(env!("CARGO_BIN_EXE_tideflow"))
        .args([
            "run",
            &spec.display().to_string(),
            "--workers",
            "2",
            "--quiet",
        ])
        .args(["--admin", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Every event read and every row out that can be (the newest events
    // of the merchant features wait for a later event to move the
    // watermark past them); the run waits for more.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut previous: Option<Json> = None;
    let settled = loop {
        let now = status(port);
        let all_read = now.as_ref().is_some_and(|status| {
            status["records_in"] == EVENTS
                && status["partitions"].as_array().is_some_and(|partitions| {
                    partitions.len() == PARTITIONS as usize
                        && partitions.iter().all(|p| p["lag"] == 0)
                })
        });
        if all_read
            && previous.as_ref().map(|p| &p["rows_out"]) == now.as_ref().map(|n| &n["rows_out"])
        {
            break now.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the run did not read every event: {now:?}"
        );
        assert!(run.try_wait().unwrap().is_none(), "the live run ended");
        previous = now;
        std::thread::sleep(Duration::from_millis(500));
    };
    let rows_out = settled["rows_out"].as_u64().unwrap();
    assert!(rows_out > EVENTS * 9 / 10, "{settled}");

    let dom = browse(port, &["--dump-dom"]);
    assert!(
        dom.contains(&format!("id=\"rows-out\">{rows_out}<")),
        "{dom}"
    );
    assert!(
        dom.contains(&format!("id=\"records-in\">{EVENTS}<")),
        "{dom}"
    );
    let versions = attributes(&dom, "data-version=", "data-version");
    let version_rows = attributes(&dom, "data-version=", "data-value");
    let model = settled["models"]["rows_by_version"][0].clone();
    assert_eq!(versions, [model["version"].as_str().unwrap()], "{dom}");
    assert_eq!(version_rows, [rows_out.to_string()], "{dom}");
    let lags = attributes(&dom, "data-partition=", "data-value");
    assert_eq!(lags, ["0"; PARTITIONS as usize], "{dom}");
    let points: usize = attributes(&dom, "id=\"throughput\"", "data-points")[0]
        .parse()
        .unwrap();
    assert!(
        points >= 2,
        "the throughput chart has {points} points: {dom}"
    );
    // What the page showed is what /status says.
    let now = status(port).unwrap();
    assert_eq!(now["rows_out"], settled["rows_out"]);
    assert_eq!(
        now["models"]["rows_by_version"],
        settled["models"]["rows_by_version"]
    );

    let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status_page.png");
    let _ = std::fs::remove_file(&screenshot);
    browse(port, &[&format!("--screenshot={}", screenshot.display())]);
    let bytes = std::fs::read(&screenshot).expect("chromium wrote the screenshot");
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
        "{} bytes",
        bytes.len()
    );
    eprintln!("status page screenshot: {}", screenshot.display());
    run.kill().unwrap();
    run.wait().unwrap();
}
