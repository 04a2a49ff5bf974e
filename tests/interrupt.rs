//! Stopping a live run: the first Ctrl-C (SIGINT) stops the sources, the
//! records already read are processed and written, and the run ends with
//! its summary, counts reconciled. Nothing read is lost.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

const SPEC: &str = r#"
name = "live"
[source]
type = "generator"
key = "user_id"
count = "unlimited"
rate = 3000.0
[schema]
user_id = "string"
amount = "f64"
ts = "timestamp_ms"
[time]
field = "ts"
[[feature]]
name = "amount_sum_1m"
agg = "sum"
field = "amount"
window = "1m"
[batching]
policy = "micro"
[[sink]]
type = "jsonl"
path = "unset"
"#;

#[test]
fn ctrl_c_drains_and_summarises_a_live_run() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("live.toml");
    std::fs::write(&spec, SPEC).unwrap();
    let out = dir.path().join("rows");
    let child = Command::new(env!("CARGO_BIN_EXE_tideflow"))
        .args([
            "run",
            spec.to_str().unwrap(),
            "--workers",
            "2",
            "--quiet",
            "--set",
        ])
        .arg(format!("sink[0].path=\"{}\"", out.display()))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let signalled = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(signalled.success(), "kill -INT failed");
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("stopping"), "{stderr}");
    let summary = stderr
        .lines()
        .find(|line| line.contains("records in ="))
        .unwrap_or_else(|| panic!("no summary: {stderr}"));
    let numbers: Vec<u64> = summary
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    let (records_in, rows_out, dead, late) = (numbers[0], numbers[1], numbers[2], numbers[3]);
    assert!(records_in > 0, "{summary}");
    assert_eq!(records_in, rows_out + dead + late, "{summary}");
    assert_eq!(
        common::read_rows(&out).len() as u64,
        rows_out,
        "every counted row is in the sink"
    );
}
