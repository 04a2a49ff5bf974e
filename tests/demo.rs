//! `tideflow demo`, the README's first command, end to end on a small
//! production: the embedded broker, the live run and the backfill score
//! every event, their outputs agree row for row, the live latency is
//! reported over the steady part of production, and the training set built
//! from the same topic joins and labels every transaction.

mod common;

use std::process::Command;

#[test]
fn the_demo_scores_every_event_live_and_in_the_backfill_alike() {
    common::require_onnxruntime();
    let _turn = common::one_at_a_time();
    let out = tempfile::tempdir().unwrap();
    // Four seconds of production: two steady seconds between the first
    // and the last.
    let output = Command::new(env!("CARGO_BIN_EXE_tideflow"))
        .current_dir(common::root())
        .args([
            "demo",
            "--events",
            "8000",
            "--rate",
            "2000",
            "--workers",
            "2",
        ])
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("rows scored: live 8000, backfill 8000"),
        "{stdout}"
    );
    assert!(
        stdout.contains("parity: live and backfill outputs are identical, row for row"),
        "{stdout}"
    );
    let steady_events: usize = stdout
        .lines()
        .find_map(|line| {
            let (_, after) = line.split_once(" ms over the ")?;
            after.split_once(' ')?.0.parse().ok()
        })
        .unwrap_or_else(|| panic!("no latency line: {stdout}"));
    assert!(
        steady_events > 0 && steady_events < 8000,
        "the steady part leaves out the first and last second: {stdout}"
    );
    // The training set: every transaction, each joined to its merchant's
    // version (every merchant has one before any transaction), some
    // labelled, and those of the last two seconds with an open horizon.
    let training: Vec<usize> = stdout
        .lines()
        .find_map(|line| {
            line.strip_prefix("training set: ")
                .filter(|rest| rest.contains(" rows in "))
        })
        .unwrap_or_else(|| panic!("no training set line: {stdout}"))
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|number| number.parse().ok())
        .collect();
    let (rows, joined, labelled, complete) = (
        training[0],
        training[training.len() - 3],
        training[training.len() - 2],
        training[training.len() - 1],
    );
    assert_eq!((rows, joined), (8000, 8000), "{stdout}");
    assert!(labelled > 0 && labelled < rows / 10, "{stdout}");
    assert!(complete > rows / 2 && complete < rows, "{stdout}");
    // Both runs wrote their score files.
    for run in ["live", "backfill"] {
        assert_eq!(
            common::read_rows(&out.path().join(run)).len(),
            8000,
            "{run}"
        );
    }
}
