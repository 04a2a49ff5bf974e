//! Shared helpers of the integration tests: finding the real ONNX Runtime,
//! running a spec, and reading its outputs back in canonical order.
#![allow(dead_code)]

pub mod broker;
pub mod moto;
pub mod training;

use std::path::{Path, PathBuf};
use tideflow::dataflow::{RunOptions, run};
use tideflow::run::Summary;
use tideflow::spec::SpecSource;

/// Fails (never skips) when the ONNX Runtime library is not installed,
/// naming the command that installs it.
pub fn require_onnxruntime() {
    let from_env = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from);
    let path = from_env.unwrap_or_else(tideflow::inference::setup_location);
    assert!(
        path.is_file(),
        "ONNX Runtime library not found at {}.\nInstall it with: scripts/setup-onnxruntime.sh (or run the whole suite with scripts/test.sh)",
        path.display()
    );
}

/// A generator workload with late and out-of-order records, source-keyed
/// and merchant-keyed features, expressions and the MLP: the input of the
/// parity harnesses (threads, batching policies, processes).
pub const PARITY_SPEC: &str = r#"
name = "parity"
[source]
type = "generator"
key = "user_id"
users = 300
merchants = 40
partitions = 4
count = 12000
spacing_ms = 200.0
disorder_fraction = 0.08
disorder_max = "8s"
[schema]
user_id = "string"
merchant_id = "string"
amount = "f64"
ts = "timestamp_ms"
[time]
field = "ts"
max_out_of_orderness = "5s"
[[feature]]
name = "amount_sum_1h"
agg = "sum"
field = "amount"
window = "1h"
[[feature]]
name = "tx_count_10m"
agg = "count"
window = "10m"
[[feature]]
name = "amount_std_1h"
agg = "std"
field = "amount"
window = "1h"
[[feature]]
name = "amount_min_life"
agg = "min"
field = "amount"
[[feature]]
name = "since_prev_ms"
agg = "since_prev"
[[feature]]
name = "merchant_count_10m"
key = "merchant_id"
agg = "count"
window = "10m"
[[feature]]
name = "merchant_amount_max_1h"
key = "merchant_id"
agg = "max"
field = "amount"
window = "1h"
[[feature]]
name = "merchant_users_1h"
key = "merchant_id"
agg = "distinct_count"
field = "user_id"
window = "1h"
[[feature]]
name = "log_amount"
expr = "log1p(amount)"
[[feature]]
name = "ratio"
expr = "amount / (amount_sum_1h / tx_count_10m + 1)"
[model]
path = "models/fraud_mlp.onnx"
inputs = ["log_amount", "ratio", "tx_count_10m", "amount_sum_1h", "amount_std_1h", "merchant_count_10m", "merchant_amount_max_1h", "merchant_users_1h"]
device = "cpu"
[model.outputs]
score = "probabilities[1]"
label = "label"
[batching]
micro = { max_rows = 64, max_delay = "2ms" }
bulk = { max_rows = 4096 }
[[sink]]
type = "jsonl"
path = "unset"
[dead_letters]
type = "jsonl"
path = "unset"
"#;

/// Writes a spec text to `dir/name` and returns its path.
pub fn write_spec(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The repository root: as cargo says when it runs the test (read at run
/// time, since a target directory shared between clones, as the scripts
/// set up, may hold a test binary built in another clone), else where the
/// test was built.
pub fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

/// Runs a spec given as text, with overrides, on `workers` workers.
pub fn run_text(text: &str, overrides: &[String], workers: usize) -> tideflow::Result<Summary> {
    let source = SpecSource {
        file: "test.toml".into(),
        text: text.to_owned(),
        overrides: overrides.to_vec(),
    };
    let spec = source.parse()?;
    let plan = tideflow::plan::Plan::from_spec(&spec, &source)?;
    run(plan, &RunOptions::with_workers(workers))
}

/// Overrides that send a spec's first sink to `out/rows` and its dead
/// letters to `out/dead`.
pub fn output_overrides(out: &Path) -> Vec<String> {
    vec![
        format!("sink[0].path=\"{}\"", out.join("rows").display()),
        format!("dead_letters.path=\"{}\"", out.join("dead").display()),
    ]
}

/// Runs `dataflows/fraud.toml` on its committed sample data with the named
/// model from `models/`, writing rows and dead letters under `out`.
pub fn run_fraud(model: &str, out: &Path, workers: usize) -> tideflow::Result<Summary> {
    run_fraud_with(model, out, workers, &[])
}

/// [`run_fraud`] with more overrides (`model.device=...`, say).
pub fn run_fraud_with(
    model: &str,
    out: &Path,
    workers: usize,
    extra: &[&str],
) -> tideflow::Result<Summary> {
    let root = root();
    let mut overrides = vec![
        format!(
            "source.path=\"{}\"",
            root.join("dataflows/data/tx").display()
        ),
        format!(
            "model.path=\"{}\"",
            root.join(format!("models/{model}.onnx")).display()
        ),
    ];
    overrides.extend(output_overrides(out));
    overrides.extend(extra.iter().map(|text| text.to_string()));
    let plan = tideflow::plan::load(&root.join("dataflows/fraud.toml"), &overrides)?;
    run(plan, &RunOptions::with_workers(workers))
}

/// Reads every JSONL file of a directory, one JSON value per line, sorted
/// by (`_partition`, `_offset`) as the README tells readers to.
pub fn read_rows(dir: &Path) -> Vec<serde_json::Value> {
    let mut rows = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
    {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        rows.extend(
            text.lines()
                .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()),
        );
    }
    rows.sort_by_key(|row| (row["_partition"].as_u64(), row["_offset"].as_u64()));
    rows
}

/// Every record batch of every Parquet file of a directory.
pub fn read_parquet_batches(dir: &Path) -> Vec<arrow_array::RecordBatch> {
    let mut batches = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
    {
        let file = std::fs::File::open(entry.unwrap().path()).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        batches.extend(reader.map(Result::unwrap));
    }
    batches
}

/// The same rows as canonical text, one line each, for exact comparison.
pub fn read_lines(dir: &Path) -> Vec<String> {
    read_rows(dir).iter().map(|row| row.to_string()).collect()
}

/// Serialises the tests of one test program that run dataflows whose
/// timing matters (live runs, injected faults): a loaded 2-core machine
/// does not give them timely production when several run at once.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds the test's turn until dropped.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The wall clock, epoch ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The number before `what` in the run summary.
pub fn summary_number(stderr: &str, what: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|line| line.contains(what))
        .unwrap_or_else(|| panic!("no '{what}' in {stderr}"));
    let before = &line[..line.find(what).unwrap()];
    before
        .split_whitespace()
        .last()
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no number before '{what}' in {line}"))
}

/// The committed checkpoints under `out/state` (those with a manifest),
/// oldest first: each one's number and directory; none before the first.
pub fn committed_checkpoints(out: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(out.join("state/checkpoints")) else {
        return Vec::new();
    };
    let mut committed: Vec<(u64, PathBuf)> = entries
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.join("MANIFEST").exists())
        .map(|path| {
            let id = path.file_name().unwrap().to_str().unwrap().parse().unwrap();
            (id, path)
        })
        .collect();
    committed.sort();
    committed
}

/// The python of the test clients' environment: `TIDEFLOW_TEST_PYTHON`,
/// else where `scripts/setup-test-clients.sh` installs it. Fails, naming
/// the command that installs it, when missing.
pub fn test_clients_python() -> PathBuf {
    let path = std::env::var_os("TIDEFLOW_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var("HOME").unwrap_or_default();
            Path::new(&home).join(".cache/tideflow/test-clients/bin/python")
        });
    assert!(
        path.is_file(),
        "the test clients' python (with confluent-kafka and moto) is not installed at {}.\nInstall it with: scripts/setup-test-clients.sh (or run the whole suite with scripts/test.sh)",
        path.display()
    );
    path
}

/// Writes a hosts file for a cluster of `processes` on free loopback
/// ports, next to `beside`, and returns its path.
pub fn hosts_file(beside: &Path, processes: usize) -> PathBuf {
    // Every port is taken before any is let go, so that they differ.
    let listeners: Vec<std::net::TcpListener> = (0..processes)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let hosts: String = listeners
        .iter()
        .map(|listener| format!("{}\n", listener.local_addr().unwrap()))
        .collect();
    drop(listeners);
    let path = beside.with_file_name("hosts");
    std::fs::write(&path, hosts).unwrap();
    path
}

/// The processes of a cluster a test started, each writing its standard
/// error to a log beside the hosts file; killed when dropped, so that a
/// test that fails part way leaves none running.
pub struct Members {
    children: Vec<std::process::Child>,
    logs: Vec<PathBuf>,
}

impl Members {
    /// Starts `command(process)` for each of `processes` processes, with
    /// the cluster arguments for the addresses in `hosts`.
    pub fn start(
        hosts: &Path,
        processes: usize,
        command: impl Fn(usize) -> std::process::Command,
    ) -> Self {
        let mut members = Members {
            children: Vec::new(),
            logs: Vec::new(),
        };
        for process in 0..processes {
            let log = hosts.with_file_name(format!("process-{process}.log"));
            let mut command = command(process);
            command
                .args(["--processes", &processes.to_string()])
                .args(["--process", &process.to_string()])
                .args(["--hosts", &hosts.display().to_string()])
                .stderr(std::fs::File::create(&log).unwrap());
            members.children.push(command.spawn().unwrap());
            members.logs.push(log);
        }
        members
    }

    /// Whether every process is still running.
    pub fn all_running(&mut self) -> bool {
        self.children
            .iter_mut()
            .all(|child| child.try_wait().unwrap().is_none())
    }

    /// Waits for every process and returns whether all succeeded.
    pub fn wait(&mut self) -> bool {
        // Every process is waited for, whichever failed.
        let successes: Vec<bool> = self
            .children
            .iter_mut()
            .map(|child| child.wait().unwrap().success())
            .collect();
        successes.into_iter().all(|success| success)
    }

    /// Kills every process with SIGKILL and waits for them.
    pub fn kill(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
    }

    /// What process `process` wrote to standard error.
    pub fn log(&self, process: usize) -> String {
        std::fs::read_to_string(&self.logs[process]).unwrap_or_default()
    }

    /// Every process's standard error, for a failure's message.
    pub fn logs(&self) -> String {
        (0..self.logs.len())
            .map(|process| format!("--- process {process}:\n{}", self.log(process)))
            .collect()
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `GET /status` of the admin API on the loopback `port`, if it answered.
pub fn admin_status(port: u16) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        stream,
        "GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (_, body) = answer.split_once("\r\n\r\n")?;
    serde_json::from_str(body).ok()
}

/// Waits until the run whose admin API is on `port` has written at least
/// `rows` rows (panics after a minute).
pub fn wait_for_rows(port: u16, rows: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while admin_status(port)
        .and_then(|status| status["rows_out"].as_u64())
        .unwrap_or(0)
        < rows
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the run at port {port} did not write {rows} rows within a minute"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Polls `done` until it holds; after `limit` fails the test, saying what
/// never happened.
pub fn wait_until(limit: std::time::Duration, never: &str, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{never}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Kills (SIGKILL) and reaps a run that must still be running: a run that
/// ended first was not interrupted, and a restore after it tests nothing.
pub fn kill_running(child: &mut std::process::Child) {
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run ended before it was killed"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
