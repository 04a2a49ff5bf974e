//! Stopping a live run: the first Ctrl-C (SIGINT) stops the sources, the
//! records already read are processed and written, and the run ends with
//! its summary, counts reconciled. Nothing read is lost. The same holds for
//! a cluster started by `tideflow launch`, which forwards SIGTERM to every
//! process.

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

/// Starts `command` on the live spec (rows to `out`), sends `signal` after
/// a while, and checks that it drains and summarises: the summary's counts
/// reconcile and every row it counts is in the sink.
fn stop_and_check(mut command: Command, signal: &str, out: &std::path::Path) -> String {
    let child = command.stderr(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let signalled = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(signalled.success(), "kill {signal} failed");
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("stopping"), "{stderr}");
    let summary = stderr
        .lines()
        .find_map(|line| {
            line.split_once(": ")
                .filter(|(_, counts)| counts.contains("records in ="))
        })
        .map(|(_, counts)| counts)
        .unwrap_or_else(|| panic!("no summary: {stderr}"));
    let numbers: Vec<u64> = summary
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    let (records_in, rows_out, dead, late) = (numbers[0], numbers[1], numbers[2], numbers[3]);
    assert!(records_in > 0, "{summary}");
    assert_eq!(records_in, rows_out + dead + late, "{summary}");
    assert_eq!(
        common::read_rows(out).len() as u64,
        rows_out,
        "every counted row is in the sink"
    );
    stderr
}

/// `tideflow SUBCOMMAND live.toml --quiet --set sink[0].path=OUT`, with
/// the spec and `OUT` in `dir`; returns the command and `OUT`.
fn tideflow(subcommand: &str, dir: &std::path::Path) -> (Command, std::path::PathBuf) {
    let spec = common::write_spec(dir, "live.toml", SPEC);
    let out = dir.join("rows");
    let mut command = Command::new(env!("CARGO_BIN_EXE_tideflow"));
    command
        .arg(subcommand)
        .arg(spec)
        .args(["--quiet", "--set"])
        .arg(format!("sink[0].path=\"{}\"", out.display()));
    (command, out)
}

#[test]
fn ctrl_c_drains_and_summarises_a_live_run() {
    let dir = tempfile::tempdir().unwrap();
    let (mut command, out) = tideflow("run", dir.path());
    command.args(["--workers", "2"]);
    stop_and_check(command, "-INT", &out);
}

#[test]
fn sigterm_to_the_launcher_drains_every_process_of_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let (mut command, out) = tideflow("launch", dir.path());
    command.args(["--processes", "2", "--workers", "1"]);
    let log = stop_and_check(command, "-TERM", &out);
    assert!(log.contains("cluster total of 2 processes"), "{log}");
    assert!(log.contains("[p1] "), "{log}");
}
