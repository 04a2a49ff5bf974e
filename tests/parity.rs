//! One parity harness: the same input through every configuration the
//! engine offers (workers 1/2/4 x batching micro/bulk/adaptive) must give
//! identical output rows, features and model outputs bit for bit, and the
//! same dead letters; so must one process and a cluster of processes
//! started with `tideflow launch`.

mod common;

#[test]
fn every_configuration_gives_identical_rows() {
    common::require_onnxruntime();
    let root = common::root();
    let model = root.join("models/fraud_mlp.onnx");
    let dir = tempfile::tempdir().unwrap();
    let mut reference: Option<(Vec<String>, Vec<String>, tideflow::run::Counts)> = None;
    for workers in [1, 2, 4] {
        for policy in ["micro", "bulk", "adaptive"] {
            let out = dir.path().join(format!("{workers}-{policy}"));
            let mut overrides = vec![
                format!("batching.policy={policy}"),
                format!("model.path=\"{}\"", model.display()),
            ];
            overrides.extend(common::output_overrides(&out));
            let summary = common::run_text(common::PARITY_SPEC, &overrides, workers).unwrap();
            assert!(summary.counts.reconciles(), "{summary}");
            let rows = common::read_lines(&out.join("rows"));
            let dead = common::read_lines(&out.join("dead"));
            assert_eq!(rows.len() as u64, summary.counts.rows_out);
            assert_eq!(dead.len() as u64, summary.counts.dead + summary.counts.late);
            match &reference {
                None => {
                    assert_eq!(summary.counts.records_in, 12000);
                    assert!(
                        summary.counts.late > 0,
                        "the input is meant to hold late records: {summary}"
                    );
                    reference = Some((rows, dead, summary.counts));
                }
                Some((expected_rows, expected_dead, counts)) => {
                    let first_difference =
                        expected_rows.iter().zip(&rows).position(|(a, b)| a != b);
                    assert_eq!(
                        first_difference, None,
                        "{workers} workers, {policy}: rows differ"
                    );
                    assert_eq!(
                        expected_rows.len(),
                        rows.len(),
                        "{workers} workers, {policy}: row count"
                    );
                    assert_eq!(
                        expected_dead, &dead,
                        "{workers} workers, {policy}: dead letters differ"
                    );
                    assert_eq!(counts.late, summary.counts.late);
                }
            }
        }
    }
}

/// Runs the parity spec with `tideflow launch` (`processes` x `workers`),
/// writing under `out`, and returns the launcher's standard error.
fn launch(
    spec: &std::path::Path,
    out: &std::path::Path,
    processes: usize,
    workers: usize,
) -> String {
    let model = common::root().join("models/fraud_mlp.onnx");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tideflow"));
    command
        .arg("launch")
        .arg(spec)
        .args(["--processes", &processes.to_string()])
        .args(["--workers", &workers.to_string()])
        .args(["--set", "batching.policy=adaptive"])
        .args(["--set", &format!("model.path=\"{}\"", model.display())]);
    for value in common::output_overrides(out) {
        command.args(["--set", &value]);
    }
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "launch {processes}x{workers} failed: {}\n{stderr}",
        output.status
    );
    stderr
}

#[test]
fn processes_give_identical_rows() {
    common::require_onnxruntime();
    let dir = tempfile::tempdir().unwrap();
    let spec = common::write_spec(dir.path(), "parity.toml", common::PARITY_SPEC);
    let model = common::root().join("models/fraud_mlp.onnx");

    let single = dir.path().join("1x1");
    let mut overrides = vec![format!("model.path=\"{}\"", model.display())];
    overrides.extend(common::output_overrides(&single));
    let summary = common::run_text(common::PARITY_SPEC, &overrides, 1).unwrap();
    let expected_rows = common::read_lines(&single.join("rows"));
    let expected_dead = common::read_lines(&single.join("dead"));
    assert_eq!(expected_rows.len() as u64, summary.counts.rows_out);

    for (processes, workers) in [(1, 4), (2, 2)] {
        let out = dir.path().join(format!("{processes}x{workers}"));
        let log = launch(&spec, &out, processes, workers);
        let rows = common::read_lines(&out.join("rows"));
        let first_difference = expected_rows.iter().zip(&rows).position(|(a, b)| a != b);
        assert_eq!(first_difference, None, "{processes}x{workers}: rows differ");
        assert_eq!(expected_rows.len(), rows.len(), "{processes}x{workers}");
        assert_eq!(
            common::read_lines(&out.join("dead")),
            expected_dead,
            "{processes}x{workers}: dead letters differ"
        );
        // Every process's output is prefixed, and process 0 prints the
        // cluster's total, which matches the single process's counts.
        for process in 0..processes {
            assert!(log.contains(&format!("[p{process}] ")), "{log}");
        }
        let total = format!(
            "{} records in = {} rows out + {} dead letters + {} late",
            summary.counts.records_in,
            summary.counts.rows_out,
            summary.counts.dead,
            summary.counts.late
        );
        let total_line = log
            .lines()
            .find(|line| line.starts_with("[p0] tideflow parity"))
            .unwrap_or_else(|| panic!("no summary from process 0:\n{log}"));
        assert!(total_line.contains(&total), "{total_line} vs {total}");
        if processes > 1 {
            assert!(
                total_line.contains("cluster total of 2 processes"),
                "{total_line}"
            );
        }
    }
}

/// One merchant holds every row: its stage puts them all on one worker.
/// The model and the sinks still share them among the workers (each
/// worker's file holds a fair part), and the rows are those of one worker.
#[test]
fn rows_of_one_hot_key_are_scored_on_every_worker() {
    common::require_onnxruntime();
    let dir = tempfile::tempdir().unwrap();
    let model = common::root().join("models/fraud_mlp.onnx");
    let run = |workers: usize, policy: &str| {
        let out = dir.path().join(format!("{workers}-{policy}"));
        let mut overrides = vec![
            "source.merchants=1".to_owned(),
            "source.count=40000".to_owned(),
            format!("batching.policy={policy}"),
            format!("model.path=\"{}\"", model.display()),
        ];
        overrides.extend(common::output_overrides(&out));
        let summary = common::run_text(common::PARITY_SPEC, &overrides, workers).unwrap();
        assert!(summary.counts.reconciles(), "{summary}");
        out.join("rows")
    };
    let expected = common::read_lines(&run(1, "bulk"));
    for policy in ["micro", "bulk"] {
        let rows = run(4, policy);
        assert_eq!(common::read_lines(&rows), expected, "{policy}: rows differ");
        let per_worker: Vec<usize> = (0..4)
            .map(|worker| {
                let file = rows.join(format!("part-{worker:04}.jsonl"));
                std::fs::read_to_string(&file)
                    .unwrap_or_else(|error| panic!("{}: {error}", file.display()))
                    .lines()
                    .count()
            })
            .collect();
        let fair = expected.len() / 4;
        assert!(
            per_worker.iter().all(|rows| *rows >= fair / 2),
            "{policy}: rows per worker {per_worker:?}, a fair part {fair}"
        );
    }
}
