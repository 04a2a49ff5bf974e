//! Drift: `tideflow profile` samples a backfill's features and model
//! outputs into a reference (the same on 1 and 2 workers), and a run with
//! `[drift] reference` reports each column's population stability index:
//! none for the same rows, little for other rows of the same generator,
//! a shift where the data moved; each value equal to the PSI this test
//! computes itself from the run's output rows and the reference's bins.

mod common;

use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tideflow::dataflow::{RunOptions, run};

const EVENTS: u64 = 30_000;

/// `dataflows/fraud_generator.toml` for `EVENTS` events with `generator`
/// settings replaced, writing to `out`, with `extra` spec text appended.
fn spec_text(out: &Path, generator: &[(&str, &str)], extra: &str) -> String {
    let root = common::root();
    let mut text = std::fs::read_to_string(root.join("dataflows/fraud_generator.toml"))
        .unwrap()
        .replace("count = 200000", &format!("count = {EVENTS}"))
        .replace(
            "models/fraud_mlp.onnx",
            &root.join("models/fraud_mlp.onnx").display().to_string(),
        )
        .replace("out/demo/scores/", &out.join("rows").display().to_string())
        .replace("out/demo/dead/", &out.join("dead").display().to_string());
    for (from, to) in generator {
        text = text.replace(from, to);
    }
    text.push_str(extra);
    text
}

/// `tideflow profile` of the spec on `workers` workers: the profile.
fn profile_of(dir: &Path, workers: usize) -> (PathBuf, Json) {
    let out = dir.join(format!("profile{workers}"));
    std::fs::create_dir_all(&out).unwrap();
    let spec = common::write_spec(&out, "spec.toml", &spec_text(&out, &[], ""));
    let reference = out.join("reference.json");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tideflow"))
        .args([
            "profile",
            &spec.display().to_string(),
            "--quiet",
            "--workers",
        ])
        .arg(workers.to_string())
        .arg("--out")
        .arg(&reference)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let profile = serde_json::from_str(&std::fs::read_to_string(&reference).unwrap()).unwrap();
    (reference, profile)
}

/// Runs the spec with `generator` settings against `reference` on 2
/// workers: the engine's PSI per column (from the summary and from the
/// metrics, which must agree) and the run's rows.
fn monitored(
    dir: &Path,
    name: &str,
    generator: &[(&str, &str)],
    reference: &Path,
) -> (Vec<(String, f64)>, Vec<Json>) {
    let out = dir.join(name);
    let extra = format!("\n[drift]\nreference = \"{}\"\n", reference.display());
    let source = tideflow::spec::SpecSource {
        file: "drift.toml".into(),
        text: spec_text(&out, generator, &extra),
        overrides: Vec::new(),
    };
    let plan = tideflow::plan::Plan::from_spec(&source.parse().unwrap(), &source).unwrap();
    let metrics = Arc::new(tideflow::metrics::Metrics::default());
    let options = RunOptions {
        metrics: Some(metrics.clone()),
        ..RunOptions::with_workers(2)
    };
    let summary = run(plan, &options).unwrap();
    let rendered = metrics.render();
    for (column, psi) in &summary.drift {
        let name = format!("tideflow_drift_psi{{column=\"{column}\"}} ");
        let gauge: f64 = rendered
            .lines()
            .find_map(|line| line.strip_prefix(&name))
            .unwrap_or_else(|| panic!("no {name} in the metrics:\n{rendered}"))
            .parse()
            .unwrap();
        assert_eq!(gauge, *psi, "{column}");
    }
    (summary.drift, common::read_rows(&out.join("rows")))
}

/// The PSI of `rows`' values of `column` against its profile, computed
/// here: bins by the edges (a value in the bin of the edges at or below
/// it), nulls last, shares floored at 1e-4.
fn oracle_psi(profile: &Json, rows: &[Json]) -> f64 {
    let edges: Vec<f64> = profile["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_f64().unwrap())
        .collect();
    let expected: Vec<f64> = profile["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_f64().unwrap())
        .collect();
    let name = profile["name"].as_str().unwrap();
    let mut counts = vec![0u64; expected.len()];
    for row in rows {
        let bin = match row[name].as_f64() {
            Some(value) => edges.iter().filter(|edge| **edge <= value).count(),
            None => edges.len() + 1,
        };
        counts[bin] += 1;
    }
    let total = rows.len() as f64;
    expected
        .iter()
        .zip(&counts)
        .map(|(expected, count)| {
            let (expected, actual) = (expected.max(1e-4), (*count as f64 / total).max(1e-4));
            (actual - expected) * (actual / expected).ln()
        })
        .sum()
}

#[test]
fn drift_is_measured_against_a_profile_of_a_backfill() {
    common::require_onnxruntime();
    let dir = tempfile::tempdir().unwrap();
    let (reference, profile) = profile_of(dir.path(), 2);
    let (_, one_worker) = profile_of(dir.path(), 1);
    assert_eq!(profile, one_worker, "the profile depends on the workers");
    let columns = profile["columns"].as_array().unwrap();
    let names: Vec<&str> = columns
        .iter()
        .map(|column| column["name"].as_str().unwrap())
        .collect();
    for expected in [
        "tx_count_1h",
        "amount_ratio",
        "fraud_probability",
        "fraud_label",
    ] {
        assert!(names.contains(&expected), "{names:?}");
    }
    assert!(
        !names.contains(&"amount") && !names.contains(&"ts"),
        "schema fields are not profiled: {names:?}"
    );

    let psi_of = |drift: &[(String, f64)], column: &str| {
        drift.iter().find(|(name, _)| name == column).unwrap().1
    };
    // The same rows: no drift at all.
    let (same, rows) = monitored(dir.path(), "same", &[], &reference);
    for column in columns {
        let name = column["name"].as_str().unwrap();
        assert!(psi_of(&same, name).abs() < 1e-12, "{name}: {same:?}");
        assert!((oracle_psi(column, &rows) - psi_of(&same, name)).abs() < 1e-9);
    }
    // Other rows of the same generator: little drift.
    let (other_seed, _) = monitored(
        dir.path(),
        "seed",
        &[(
            "key = \"user_id\"\nusers",
            "key = \"user_id\"\nseed = 7\nusers",
        )],
        &reference,
    );
    for (name, psi) in &other_seed {
        assert!(*psi < 0.1, "{name} drifted {psi} on another seed");
    }
    // A hundred times fewer users, each with a hundred times the
    // transactions: the per-user counts shift.
    let (shifted, rows) = monitored(
        dir.path(),
        "shifted",
        &[("users = 10000", "users = 100")],
        &reference,
    );
    assert!(psi_of(&shifted, "tx_count_1h") > 0.25, "{shifted:?}");
    for column in columns {
        let name = column["name"].as_str().unwrap();
        let ours = oracle_psi(column, &rows);
        assert!(
            (ours - psi_of(&shifted, name)).abs() < 1e-9,
            "{name}: engine {}, test {ours}",
            psi_of(&shifted, name)
        );
    }
}
