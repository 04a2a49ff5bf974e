//! The real ONNX Runtime: both example models load and score, and a model
//! whose inputs do not match the spec is rejected, by `check` and by `run`,
//! with a message saying what to change.

mod common;

use std::process::Command;

fn tideflow(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tideflow"))
        .args(args)
        .current_dir(common::root())
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn both_models_load_and_score() {
    common::require_onnxruntime();
    for model in ["fraud_mlp", "fraud_gbt"] {
        let out = tempfile::tempdir().unwrap();
        let summary = common::run_fraud(model, out.path(), 1).unwrap();
        assert!(
            summary
                .model
                .as_deref()
                .unwrap()
                .contains("rows scored independently"),
            "{summary}"
        );
        let rows = common::read_rows(&out.path().join("rows"));
        assert_eq!(rows.len(), 2000);
        for row in &rows {
            let probability = row["fraud_probability"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&probability), "{model}: {row}");
            let label = row["fraud_label"].as_i64().unwrap();
            assert_eq!(
                label,
                i64::from(probability > 0.5),
                "{model}: label and probability disagree: {row}"
            );
            assert!(
                row["_model"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{model}:v1@"))
            );
        }
        let flagged = rows.iter().filter(|row| row["fraud_label"] == 1).count();
        assert!(flagged < rows.len(), "{model} flags every row");
    }
}

#[test]
fn inspect_lists_the_models_inputs_and_outputs() {
    common::require_onnxruntime();
    let (ok, stdout, stderr) = tideflow(&["inspect", "models/fraud_gbt.onnx"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("features: Float32[?, 8]"), "{stdout}");
    assert!(stdout.contains("probabilities: Float32[?, 2]"), "{stdout}");
}

#[test]
fn a_model_that_does_not_fit_the_spec_is_rejected_by_check_and_run() {
    common::require_onnxruntime();
    let fewer_inputs = "model.inputs=[\"log_amount\", \"amount_ratio\", \"tx_count_1h\"]";
    let (ok, stdout, _) = tideflow(&["check", "dataflows/fraud.toml"]);
    assert!(
        ok && stdout.contains("ok"),
        "the shipped spec checks: {stdout}"
    );
    for command in ["check", "run"] {
        let (ok, _, stderr) = tideflow(&[command, "dataflows/fraud.toml", "--set", fewer_inputs]);
        assert!(
            !ok,
            "{command} accepted a model with 8 inputs fed 3 columns"
        );
        assert!(
            stderr
                .contains("input 'features' has shape Float32[?, 8], but the spec feeds 3 columns"),
            "{command}: {stderr}"
        );
    }
    let (ok, _, stderr) = tideflow(&[
        "check",
        "dataflows/fraud.toml",
        "--set",
        "model.outputs.fraud_probability=\"scores[1]\"",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("has no output 'scores'") && stderr.contains("probabilities"),
        "{stderr}"
    );
}
