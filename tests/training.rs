//! Training sets from files: transactions joined as of their time to a
//! merchant changelog, with features over the joined column and a label
//! that arrives later, against a naive oracle written here, on 1, 2 and 4
//! workers with micro and bulk batches.
//!
//! The data is built to be awkward: versions out of order within the
//! bound, ties in time across the table's partitions, merchants without a
//! version, a late version, bad table records, labels before a row's time,
//! at both bounds of its horizon, after it, and several for one row.

mod common;

use common::training::{
    Data, Event, Inputs, Shape, as_of, assert_rows, event_json, generate, label_json, oracle, spec,
    version_json,
};
use serde_json::{Value as Json, json};
use std::path::Path;

const START: i64 = 1_000_000;

fn write_lines(path: &Path, lines: impl IntoIterator<Item = String>) {
    let text: String = lines.into_iter().map(|line| line + "\n").collect();
    std::fs::write(path, text).unwrap();
}

/// Writes the data under `dir` (tx/, merchants/, labels/), with a late
/// version, a version of the wrong type, a malformed line and a version
/// without its key appended to
/// the table's first partition, and returns what a reader should keep.
fn write_data(dir: &Path) -> Data {
    let shape = Shape {
        start: START,
        partitions: (2, 2, 1),
        events: 300,
        deletions: false,
    };
    let data = generate(shape, 0x5eed_1234_abcd);
    for name in ["tx", "merchants", "labels"] {
        std::fs::create_dir_all(dir.join(name)).unwrap();
    }
    for partition in 0..2 {
        let events = data
            .events
            .iter()
            .filter(|event| event.partition == partition);
        write_lines(
            &dir.join(format!("tx/p{partition}.jsonl")),
            events.map(event_json),
        );
        let mut lines: Vec<String> = data
            .versions
            .iter()
            .filter(|version| version.partition == partition)
            .filter_map(version_json)
            .collect();
        if partition == 0 {
            lines.push(
                json!({"merchant_id": "m1", "risk": 777.0, "updated_at": START - 10_000})
                    .to_string(),
            );
            lines.push(
                json!({"merchant_id": "m1", "risk": "high", "updated_at": START + 2_000})
                    .to_string(),
            );
            lines.push("{\"merchant_id\": \"m1\", ".to_owned());
            lines.push(json!({"risk": 0.5, "updated_at": START + 2_100}).to_string());
        }
        write_lines(&dir.join(format!("merchants/p{partition}.jsonl")), lines);
    }
    write_lines(
        &dir.join("labels/p0.jsonl"),
        data.labels.iter().map(label_json),
    );
    data
}

fn run(dir: &Path, out: &Path, workers: usize, policy: &str) -> tideflow::run::Summary {
    let mut overrides = vec![
        format!("source.path=\"{}\"", dir.join("tx").display()),
        format!("table[0].path=\"{}\"", dir.join("merchants").display()),
        format!("label[0].path=\"{}\"", dir.join("labels").display()),
        format!("batching.policy=\"{policy}\""),
    ];
    overrides.extend(common::output_overrides(out));
    common::run_text(&spec(Inputs::Files), &overrides, workers)
        .unwrap_or_else(|error| panic!("{error}"))
}

#[test]
fn joined_and_labelled_rows_equal_the_oracle_on_every_shape() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(dir.path());
    let expected = oracle(&data);
    assert!(
        expected.iter().any(|row| row["risk"].is_null())
            && expected.iter().any(|row| row["fraud"] != 0)
            && expected.iter().any(|row| row["_label_complete"] == false),
        "the data has rows without a version, labelled rows and incomplete horizons"
    );
    for workers in [1, 2, 4] {
        for policy in ["micro", "bulk"] {
            let out = dir.path().join(format!("out-{workers}-{policy}"));
            let summary = run(dir.path(), &out, workers, policy);
            let what = format!("{workers} workers, {policy}");
            assert_rows(common::read_rows(&out.join("rows")), &expected, &what);
            let counts = summary.counts;
            assert_eq!(counts.records_in, counts.rows_out, "{summary}");
            assert_eq!(
                counts.inputs_in,
                (data.versions.len() + 4 + data.labels.len()) as u64,
                "{summary}"
            );
            assert_eq!(
                (counts.inputs_dead, counts.inputs_late),
                (3, 1),
                "{summary}"
            );
            let dead = common::read_rows(&out.join("dead"));
            let reasons: Vec<&str> = dead
                .iter()
                .map(|letter| letter["_error"].as_str().unwrap_or(""))
                .collect();
            assert_eq!(dead.len(), 4, "{reasons:?}");
            assert!(
                dead.iter().all(|letter| letter["_input"] == "merchants"),
                "{dead:?}"
            );
            for reason in [
                "late",
                "missing key field 'merchant_id'",
                "field 'risk': expected f64, got \"high\"",
            ] {
                assert!(reasons.contains(&reason), "{reason}: {reasons:?}");
            }
            assert!(
                reasons
                    .iter()
                    .any(|reason| reason.starts_with("malformed JSON")),
                "{reasons:?}"
            );
        }
    }
}

/// Data built to leak: every event's merchant has a version 1 ms before
/// the event (risk = the event's index) and one 1 ms after it (risk a
/// million more); every transaction has a label 1 ms before and 1 ms
/// after. A join or a feature that looked past the event's time would
/// show a million; the label must look ahead, and only ahead.
#[test]
fn no_joined_or_feature_column_sees_past_the_event_and_labels_look_ahead() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["tx", "merchants", "labels"] {
        std::fs::create_dir_all(dir.path().join(name)).unwrap();
    }
    let time = |index: i64| START + 10 * index;
    write_lines(
        &dir.path().join("tx/p0.jsonl"),
        (0..100).map(|index| {
            json!({"tx_id": format!("t{index}"), "user_id": "u0", "merchant_id": format!("m{}", index % 3), "amount": 1.0, "ts": time(index)}).to_string()
        }),
    );
    write_lines(
        &dir.path().join("merchants/p0.jsonl"),
        (0..100).flat_map(|index| {
            let merchant = format!("m{}", index % 3);
            [
                json!({"merchant_id": merchant, "risk": index as f64, "updated_at": time(index) - 1}).to_string(),
                json!({"merchant_id": merchant, "risk": 1e6 + index as f64, "updated_at": time(index) + 1}).to_string(),
            ]
        }),
    );
    write_lines(
        &dir.path().join("labels/p0.jsonl"),
        (0..100).flat_map(|index| {
            let tx = format!("t{index}");
            [
                json!({"tx_id": tx, "fraud": 2, "reported_at": time(index) - 1}).to_string(),
                json!({"tx_id": tx, "fraud": 1, "reported_at": time(index) + 1}).to_string(),
            ]
        }),
    );
    let out = dir.path().join("out");
    run(dir.path(), &out, 2, "bulk");
    let rows = common::read_rows(&out.join("rows"));
    assert_eq!(rows.len(), 100);
    for (index, row) in rows.iter().enumerate() {
        assert_eq!(row["risk"], json!(index as f64), "{row}");
        assert_eq!(row["merchant_risk_max"], json!(index as f64), "{row}");
        let previous = index.checked_sub(1).map(|previous| previous as f64);
        assert_eq!(row["risk_prev"], json!(previous), "{row}");
        assert_eq!(row["fraud"], json!(1), "the label 1 ms after: {row}");
    }
}

/// A required join makes an event without a version a dead letter with
/// its reason, and the counts still reconcile.
#[test]
fn a_required_join_sends_events_without_a_version_to_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(dir.path());
    let out = dir.path().join("out");
    let mut overrides = vec![
        format!("source.path=\"{}\"", dir.path().join("tx").display()),
        format!(
            "table[0].path=\"{}\"",
            dir.path().join("merchants").display()
        ),
        format!("label[0].path=\"{}\"", dir.path().join("labels").display()),
        "join[0].required=true".to_owned(),
    ];
    overrides.extend(common::output_overrides(&out));
    let summary = common::run_text(&spec(Inputs::Files), &overrides, 2)
        .unwrap_or_else(|error| panic!("{error}"));
    let unmatched: Vec<&Event> = data
        .events
        .iter()
        .filter(|event| as_of(&data.versions, &event.merchant, event.time).is_none())
        .collect();
    assert!(!unmatched.is_empty());
    let counts = summary.counts;
    assert_eq!(counts.dead, unmatched.len() as u64, "{summary}");
    assert_eq!(
        counts.records_in,
        counts.rows_out + counts.dead,
        "{summary}"
    );
    let letters: Vec<Json> = common::read_rows(&out.join("dead"))
        .into_iter()
        .filter(|letter| letter["_input"].is_null())
        .collect();
    let origins: Vec<(u64, u64)> = letters
        .iter()
        .map(|letter| {
            (
                letter["_partition"].as_u64().unwrap(),
                letter["_offset"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(u64, u64)> = unmatched
        .iter()
        .map(|event| (event.partition, event.offset))
        .collect();
    assert_eq!(origins, expected);
    for letter in &letters {
        let reason = letter["_error"].as_str().unwrap_or("");
        assert!(
            reason.starts_with("no_match: table merchants has no version of merchant_id"),
            "{reason}"
        );
        let raw: Json = serde_json::from_str(letter["_raw"].as_str().unwrap()).unwrap();
        assert!(
            raw["tx_id"].is_string(),
            "the letter keeps the event's fields: {raw}"
        );
    }
}
