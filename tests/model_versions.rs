//! Model versions switched at a recorded stream position: a live run
//! promoted from version 1 to 2 half way through its admin API, then the
//! same history replayed as a backfill (identical rows, `_model` switching
//! at the recorded event time, each version's rows those of a run pinned
//! to it), and a live run killed after its promotion and restored (the
//! rows of one uninterrupted backfill, even when the registry's record
//! lost the promotion: the checkpoint keeps the schedule). Bad versions
//! are refused and the
//! running one goes on; the API takes the token when one is set and binds
//! loopback only unless told.

mod common;

use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const EVENTS: u64 = 8000;
const RATE: u64 = 4000;

/// A registry `fraud/` in `dir`: version 1 the MLP, 2 the boosted trees,
/// 3 a model of another shape, 4 one that scores NaN, 5 not a model.
fn registry(dir: &Path) -> PathBuf {
    let registry = dir.join("fraud");
    let root = common::root();
    let versions: [(u64, &[u8]); 5] = [
        (
            1,
            &std::fs::read(root.join("models/fraud_mlp.onnx")).unwrap(),
        ),
        (
            2,
            &std::fs::read(root.join("models/fraud_gbt.onnx")).unwrap(),
        ),
        (
            3,
            &std::fs::read(root.join("models/table_lookup.onnx")).unwrap(),
        ),
        (
            4,
            &std::fs::read(root.join("models/nan_scores.onnx")).unwrap(),
        ),
        (5, b"not an ONNX model"),
    ];
    for (version, bytes) in versions {
        let version_dir = registry.join(version.to_string());
        std::fs::create_dir_all(&version_dir).unwrap();
        std::fs::write(version_dir.join("model.onnx"), bytes).unwrap();
    }
    // The run's base version is 1: recorded before the first run (without
    // a record, the newest version would be the base).
    std::fs::write(
        registry.join("promotions.jsonl"),
        "{\"version\":1,\"from_ms\":null,\"requested_at_ms\":0}\n",
    )
    .unwrap();
    registry
}

/// The generator spec of `dataflows/fraud_generator.toml` over `registry`
/// writing to `out`: paced at `RATE` events/s when `live`, with
/// checkpoints when `state`. Its merchant features are keyed by user
/// here, so that every row is computed in offset order and scored at once,
/// ahead of the watermark: a promotion must then take effect after the
/// rows scored, not merely at the watermark.
fn spec(registry: &Path, out: &Path, live: bool, state: bool) -> PathBuf {
    let root = common::root();
    let mut text = std::fs::read_to_string(root.join("dataflows/fraud_generator.toml"))
        .unwrap()
        .replace("key = \"merchant_id\"\n", "")
        .replace("models/fraud_mlp.onnx", &registry.display().to_string())
        .replace(
            "count = 200000",
            &format!(
                "count = {EVENTS}{}",
                // A checkpointed run is paced at half the rate, so that the
                // kill after its checkpoints lands well before its end.
                if live {
                    format!("\nrate = {}", if state { RATE / 2 } else { RATE })
                } else {
                    String::new()
                }
            ),
        )
        .replace("out/demo/scores/", &out.join("rows").display().to_string())
        .replace("out/demo/dead/", &out.join("dead").display().to_string());
    if state {
        text.push_str(&format!(
            "\n[state]\ndir = \"{}\"\ninterval = \"150ms\"\n",
            out.join("state").display()
        ));
    }
    std::fs::create_dir_all(out).unwrap();
    let path = out.join("spec.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn tideflow() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tideflow"));
    command.env_remove("TIDEFLOW_ADMIN_TOKEN");
    command
}

/// A free loopback port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `tideflow run` of `spec` on 2 workers with the admin API at
/// `port`, and `token` as the admin token.
fn start_live(spec: &Path, port: u16, token: Option<&str>) -> Child {
    let mut command = tideflow();
    command
        .args([
            "run",
            &spec.display().to_string(),
            "--workers",
            "2",
            "--quiet",
        ])
        .args(["--admin", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(token) = token {
        command.env("TIDEFLOW_ADMIN_TOKEN", token);
    }
    command.spawn().unwrap()
}

/// `tideflow models promote SPEC VERSION --admin PORT`: its output, or
/// its error, once the API answers (the run may still be starting).
fn promote(spec: &Path, version: u64, port: u16, token: Option<&str>) -> Result<Json, String> {
    promote_at(spec, version, &port.to_string(), token)
}

/// `tideflow models promote SPEC VERSION --admin ADMIN` (one address, or
/// a cluster's, separated by commas), once the API answers.
fn promote_at(spec: &Path, version: u64, admin: &str, token: Option<&str>) -> Result<Json, String> {
    let started = Instant::now();
    loop {
        let mut command = tideflow();
        command.args(["models", "promote", &spec.display().to_string()]);
        command.args([version.to_string(), "--admin".into(), admin.to_owned()]);
        if let Some(token) = token {
            command.env("TIDEFLOW_ADMIN_TOKEN", token);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if output.status.success() {
            return Ok(serde_json::from_slice(&output.stdout).unwrap());
        }
        let starting = stderr.contains("connecting to the admin API");
        if !starting || started.elapsed() > Duration::from_secs(30) {
            return Err(stderr);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_success(child: Child) {
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs a spec to the end on 2 workers (no admin API).
fn run_to_end(spec: &Path, overrides: &[&str]) {
    run_on(spec, 2, overrides);
}

/// Runs a spec to the end on `workers` workers; its standard error.
fn run_on(spec: &Path, workers: usize, overrides: &[&str]) -> String {
    let mut command = tideflow();
    command.args(["run", &spec.display().to_string(), "--quiet", "--workers"]);
    command.arg(workers.to_string());
    for set in overrides {
        command.args(["--set", set]);
    }
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    stderr
}

/// Replays the history as a backfill over `registry` (reading its
/// promotions record) and checks it writes exactly the rows in `out`.
fn assert_backfill_writes(registry: &Path, dir: &Path, out: &Path, whose: &str) {
    let backfill_out = dir.join("backfill");
    run_to_end(&spec(registry, &backfill_out, false, false), &[]);
    assert!(
        common::read_lines(&backfill_out.join("rows")) == common::read_lines(&out.join("rows")),
        "the backfill's rows differ from {whose}"
    );
}

fn rows(out: &Path) -> Vec<Json> {
    common::read_rows(&out.join("rows"))
}

fn version_of(row: &Json) -> &str {
    let model = row["_model"].as_str().unwrap();
    model.split('@').next().unwrap()
}

/// Every row of `rows` scored by v1 before `from_ms` and by v2 from it,
/// some rows by each.
fn check_switch(rows: &[Json], from_ms: i64) {
    let mut by_version = [0, 0];
    for row in rows {
        let before = row["ts"].as_i64().unwrap() < from_ms;
        let expected = if before { "fraud:v1" } else { "fraud:v2" };
        assert_eq!(version_of(row), expected, "{row} (switch at {from_ms})");
        by_version[usize::from(!before)] += 1;
    }
    assert!(
        by_version[0] > 0 && by_version[1] > 0,
        "the promotion came at the start or the end: {by_version:?} rows by v1, v2"
    );
}

#[test]
fn a_live_run_promoted_half_way_is_reproduced_by_a_backfill() {
    common::require_onnxruntime();
    let dir = tempfile::tempdir().unwrap();
    let registry = registry(dir.path());
    let live_out = dir.path().join("live");
    let live_spec = spec(&registry, &live_out, true, false);
    let port = free_port();
    let live = start_live(&live_spec, port, None);
    // Bad versions are refused, and the running one goes on.
    for (version, reason) in [
        (3, "has shape Float32[?, 1], but the spec feeds 8 columns"),
        (4, "scores NaN on a probe batch; refused"),
        (5, "model"),
        (9, "has no version 9"),
    ] {
        let error = promote(&live_spec, version, port, None).unwrap_err();
        assert!(error.contains(reason), "version {version}: {error}");
    }
    // Some way through the events (paced at RATE a second).
    common::wait_for_rows(port, EVENTS / 4);
    let promotion = promote(&live_spec, 2, port, None).unwrap();
    let from_ms = promotion["from_ms"].as_i64().unwrap();
    assert_eq!(promotion["version"], 2);
    wait_success(live);
    let live_rows = rows(&live_out);
    assert_eq!(live_rows.len() as u64, EVENTS);
    check_switch(&live_rows, from_ms);

    // The same history as a backfill reads the record: the same rows.
    assert_backfill_writes(&registry, dir.path(), &live_out, "the live run's");

    // Each version's rows are those of a run pinned to it.
    for version in [1, 2] {
        let pinned_out = dir.path().join(format!("pinned{version}"));
        let pinned_spec = spec(&registry, &pinned_out, false, false);
        run_to_end(&pinned_spec, &[&format!("model.version={version}")]);
        let pinned = rows(&pinned_out);
        for (row, pinned) in live_rows.iter().zip(&pinned) {
            assert_eq!(
                (&row["_partition"], &row["_offset"]),
                (&pinned["_partition"], &pinned["_offset"])
            );
            if version_of(row) == format!("fraud:v{version}") {
                assert_eq!(
                    row, pinned,
                    "scored by v{version}, unlike the run pinned to it"
                );
            }
        }
    }
    // `tideflow models list` shows the record.
    let output = tideflow()
        .args(["models", "list", &live_spec.display().to_string()])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&output.stdout);
    assert!(
        listed.contains(&format!("v2 from event time {from_ms} ms"))
            && listed.contains("v1 from the start"),
        "{listed}"
    );
}

#[test]
fn a_promoted_run_killed_and_restored_writes_the_rows_of_a_backfill() {
    common::require_onnxruntime();
    let dir = tempfile::tempdir().unwrap();
    let registry = registry(dir.path());
    let live_out = dir.path().join("live");
    let live_spec = spec(&registry, &live_out, true, true);
    let port = free_port();
    let mut live = start_live(&live_spec, port, Some("secret"));
    // Changes need the token when one is set.
    let refused = promote(&live_spec, 2, port, None).unwrap_err();
    assert!(refused.contains("401"), "{refused}");
    common::wait_for_rows(port, EVENTS / 4);
    let from_ms = promote(&live_spec, 2, port, Some("secret")).unwrap()["from_ms"]
        .as_i64()
        .unwrap();
    // Two checkpoints on (the second cut wholly after the promotion),
    // killed, then restored from its newest checkpoint.
    let checkpoint = || {
        common::admin_status(port)
            .and_then(|status| status["checkpoint"]["id"].as_u64())
            .unwrap_or(0)
    };
    let promoted_at = checkpoint();
    common::wait_until(
        Duration::from_secs(30),
        "no checkpoint after the promotion",
        || checkpoint() >= promoted_at + 2,
    );
    common::kill_running(&mut live);
    // The registry's record loses the promotion (restored from an older
    // copy, say): the checkpoint kept the schedule, and the restore
    // records it again before scoring.
    let record = registry.join("promotions.jsonl");
    let lines = std::fs::read_to_string(&record).unwrap();
    assert!(lines.contains(&format!("\"from_ms\":{from_ms}")), "{lines}");
    std::fs::write(&record, lines.lines().next().unwrap().to_owned() + "\n").unwrap();
    let restore = run_on(&live_spec, 2, &[]);
    assert!(restore.contains("recorded again"), "{restore}");
    let lines = std::fs::read_to_string(&record).unwrap();
    assert!(lines.contains(&format!("\"from_ms\":{from_ms}")), "{lines}");

    check_switch(&rows(&live_out), from_ms);
    assert_backfill_writes(&registry, dir.path(), &live_out, "the restored run's");
}

#[test]
fn the_admin_api_binds_loopback_unless_told() {
    common::require_onnxruntime();
    let dir = tempfile::tempdir().unwrap();
    let registry = registry(dir.path());
    let spec = spec(&registry, &dir.path().join("out"), false, false);
    let output = tideflow()
        .args(["run", &spec.display().to_string(), "--admin", "0.0.0.0:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("is not a loopback address") && stderr.contains("--admin-public"),
        "{stderr}"
    );
}

/// A backfill of the generator spec with `extra` spec text appended, on
/// `workers` workers; its rows and standard error.
fn backfill_with(
    dir: &Path,
    name: &str,
    extra: &str,
    workers: usize,
    overrides: &[&str],
) -> (Vec<Json>, String) {
    let out = dir.join(name);
    let spec = spec(&dir.join("fraud"), &out, false, false);
    let mut text = std::fs::read_to_string(&spec).unwrap();
    text.push_str(extra);
    std::fs::write(&spec, text).unwrap();
    let stderr = run_on(&spec, workers, overrides);
    (rows(&out), stderr)
}

/// The row without the columns named.
fn without(row: &Json, columns: &[&str]) -> Json {
    let mut row = row.clone();
    for column in columns {
        row.as_object_mut().unwrap().remove(*column);
    }
    row
}

#[test]
fn shadows_and_canaries_leave_the_champions_rows_as_they_are() {
    common::require_onnxruntime();
    let dir = tempfile::tempdir().unwrap();
    registry(dir.path());
    let (plain, _) = backfill_with(dir.path(), "plain", "", 2, &[]);
    let (pinned2, _) = backfill_with(dir.path(), "pinned2", "", 2, &["model.version=2"]);

    // A shadow: the champion's columns as without it, its own those of
    // version 2.
    let (shadowed, stderr) = backfill_with(
        dir.path(),
        "shadow",
        "\n[[model.shadow]]\nversion = 2\n",
        2,
        &[],
    );
    assert_eq!(shadowed.len(), plain.len());
    let shadow_columns = ["fraud_probability_v2", "fraud_label_v2"];
    for ((row, plain), pinned2) in shadowed.iter().zip(&plain).zip(&pinned2) {
        assert_eq!(without(row, &shadow_columns), *plain);
        assert_eq!(
            row["fraud_probability_v2"], pinned2["fraud_probability"],
            "{row}"
        );
        assert_eq!(row["fraud_label_v2"], pinned2["fraud_label"], "{row}");
    }
    assert!(
        stderr.contains(&format!("shadow v2: {EVENTS} rows, "))
            && stderr.contains("mean |Δ fraud_probability|"),
        "{stderr}"
    );

    // The metrics count the challenger's rows and agreement, and the rows
    // of each version.
    let spec_path = dir.path().join("shadow").join("spec.toml");
    let metrics = std::sync::Arc::new(tideflow::metrics::Metrics::default());
    let options = tideflow::dataflow::RunOptions {
        metrics: Some(metrics.clone()),
        ..tideflow::dataflow::RunOptions::with_workers(2)
    };
    let out = dir.path().join("shadow-metrics");
    let plan = tideflow::plan::load(
        &spec_path,
        &[
            format!("sink[0].path=\"{}\"", out.join("rows").display()),
            format!("dead_letters.path=\"{}\"", out.join("dead").display()),
        ],
    )
    .unwrap();
    tideflow::dataflow::run(plan, &options).unwrap();
    let text = metrics.render();
    let agreeing = shadowed
        .iter()
        .filter(|row| row["fraud_label"] == row["fraud_label_v2"])
        .count();
    for (name, expected) in [
        (
            "tideflow_shadow_rows_total{challenger=\"v2\"} ".to_owned(),
            EVENTS,
        ),
        (
            "tideflow_shadow_agreeing_rows_total{challenger=\"v2\"} ".to_owned(),
            agreeing as u64,
        ),
        (
            format!(
                "tideflow_model_rows_total{{version=\"{}\"}} ",
                shadowed[0]["_model"].as_str().unwrap()
            ),
            EVENTS,
        ),
    ] {
        let value = text.lines().find_map(|line| line.strip_prefix(&name));
        assert_eq!(
            value,
            Some(expected.to_string().as_str()),
            "{name} in:\n{text}"
        );
    }

    // A canary of 30% of users: each user always scored by one version,
    // the same on 1 and 2 workers; its rows those of version 2, the others
    // the champion's as without it.
    let canary = "\n[model.canary]\nversion = 2\nfraction = 0.3\n";
    let (canaried, _) = backfill_with(dir.path(), "canary", canary, 2, &[]);
    let (one_worker, _) = backfill_with(dir.path(), "canary1", canary, 1, &[]);
    assert!(
        canaried == one_worker,
        "canary rows differ between 1 and 2 workers"
    );
    let mut version_of_user = std::collections::BTreeMap::new();
    for ((row, plain), pinned2) in canaried.iter().zip(&plain).zip(&pinned2) {
        let version = version_of(row).to_owned();
        let user = row["user_id"].as_str().unwrap().to_owned();
        let first = version_of_user
            .entry(user)
            .or_insert_with(|| version.clone());
        assert_eq!(*first, version, "a user scored by two versions: {row}");
        let expected = if version == "fraud:v2" {
            pinned2
        } else {
            plain
        };
        assert_eq!(row, expected);
    }
    // `tideflow check` says what scores beside the champion.
    for (name, expected) in [
        (
            "shadow",
            "shadow v2 into fraud_probability_v2, fraud_label_v2",
        ),
        ("canary", "canary v2 for 30.00% of keys by user_id"),
    ] {
        let spec = dir.path().join(name).join("spec.toml");
        let output = tideflow()
            .args(["check", &spec.display().to_string()])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains(expected), "{stdout}");
    }
    let canary_users = version_of_user
        .values()
        .filter(|version| *version == "fraud:v2")
        .count();
    let share = canary_users as f64 / version_of_user.len() as f64;
    assert!(
        (0.2..0.4).contains(&share),
        "{canary_users} of {} users",
        version_of_user.len()
    );
}

/// Two free loopback ports, one after the other.
fn free_port_pair() -> u16 {
    loop {
        let port = free_port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

#[test]
fn a_launched_cluster_is_promoted_at_one_event_time_in_every_process() {
    common::require_onnxruntime();
    let dir = tempfile::tempdir().unwrap();
    let registry = registry(dir.path());
    let live_out = dir.path().join("live");
    let live_spec = spec(&registry, &live_out, true, false);
    let port = free_port_pair();
    let launch = tideflow()
        .args([
            "launch",
            &live_spec.display().to_string(),
            "--processes",
            "2",
        ])
        .args(["--workers", "1", "--quiet", "--admin", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A single process's promotion is refused in a cluster, with the way.
    let single = promote(&live_spec, 2, port, None).unwrap_err();
    assert!(
        single.contains("a cluster's processes are promoted together"),
        "{single}"
    );
    // Process 0 reads half the partitions.
    common::wait_for_rows(port, EVENTS / 8);
    let both = format!("127.0.0.1:{port},127.0.0.1:{}", port + 1);
    let from_ms = promote_at(&live_spec, 2, &both, None).unwrap()["from_ms"]
        .as_i64()
        .unwrap();
    wait_success(launch);
    let live_rows = rows(&live_out);
    assert_eq!(live_rows.len() as u64, EVENTS);
    check_switch(&live_rows, from_ms);

    assert_backfill_writes(&registry, dir.path(), &live_out, "the cluster's");
}
