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

use serde_json::{Value as Json, json};
use std::path::Path;

const SPEC: &str = r#"
name = "training"
[source]
type = "files"
path = "unset"
format = "jsonl"
key = "user_id"
[schema]
tx_id = "string"
user_id = "string"
merchant_id = "string"
amount = "f64"
ts = "timestamp_ms"
[time]
field = "ts"
max_out_of_orderness = "50ms"

[[table]]
name = "merchants"
type = "files"
path = "unset"
format = "jsonl"
key = "merchant_id"
[table.schema]
merchant_id = "string"
risk = "f64"
updated_at = "timestamp_ms"
[table.time]
field = "updated_at"
max_out_of_orderness = "100ms"

[[join]]
table = "merchants"
on = "merchant_id"
columns = ["risk"]

[[feature]]
name = "risk_prev"
agg = "prev"
field = "risk"

[[feature]]
name = "merchant_risk_max"
key = "merchant_id"
agg = "max"
field = "risk"
window = "300ms"

[[label]]
name = "fraud"
type = "files"
path = "unset"
format = "jsonl"
on = "tx_id"
value = "fraud"
horizon = "200ms"
default = 0
[label.schema]
tx_id = "string"
fraud = "i64"
reported_at = "timestamp_ms"
[label.time]
field = "reported_at"
max_out_of_orderness = "30ms"

[[sink]]
type = "jsonl"
path = "unset"
[dead_letters]
type = "jsonl"
path = "unset"
"#;

const HORIZON: i64 = 200;
const LABEL_BOUND: i64 = 30;
const WINDOW: i64 = 300;
const START: i64 = 1_000_000;

/// A deterministic stream of numbers (xorshift), so the data is the same
/// on every run.
struct Numbers(u64);

impl Numbers {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

#[derive(Clone, Debug)]
struct Event {
    partition: u64,
    offset: u64,
    tx_id: String,
    user: String,
    merchant: String,
    time: i64,
}

#[derive(Clone, Debug)]
struct Version {
    partition: u64,
    offset: u64,
    merchant: String,
    risk: f64,
    time: i64,
}

#[derive(Clone, Debug)]
struct Label {
    partition: u64,
    offset: u64,
    tx_id: String,
    fraud: i64,
    time: i64,
}

/// Two partitions of events keyed by user, each within the bound of its
/// own newest time; merchant m5 never has a version.
fn events(numbers: &mut Numbers) -> Vec<Event> {
    let mut events = Vec::new();
    for partition in 0..2u64 {
        for offset in 0..300u64 {
            let time = START + offset as i64 * 7 - numbers.below(40) as i64;
            events.push(Event {
                partition,
                offset,
                tx_id: format!("t{partition}-{offset}"),
                user: format!("u{}", partition + 2 * numbers.below(4)),
                merchant: format!("m{}", numbers.below(6)),
                time,
            });
        }
    }
    events
}

/// Two partitions of merchant versions for m0..m4, out of order within
/// the table's bound, with some versions of one merchant at the same time
/// in both partitions.
fn versions(numbers: &mut Numbers) -> Vec<Version> {
    let mut versions = Vec::new();
    for partition in 0..2u64 {
        for offset in 0..120u64 {
            let tie = offset % 10 == 0;
            let time = if tie {
                START + offset as i64 * 18
            } else {
                START + offset as i64 * 18 - numbers.below(90) as i64
            };
            let merchant = if tie { 0 } else { numbers.below(5) };
            versions.push(Version {
                partition,
                offset,
                merchant: format!("m{merchant}"),
                risk: (numbers.below(1000) as f64) / 100.0 + partition as f64 * 1000.0,
                time,
            });
        }
    }
    versions
}

/// Labels for some transactions at awkward times around their horizon.
fn labels(events: &[Event], numbers: &mut Numbers) -> Vec<Label> {
    let mut labels = Vec::new();
    let mut offset = 0;
    // In event-time order, so that no label is late.
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_by_key(|event| event.time);
    for event in sorted.iter().step_by(3) {
        let delay = [-5, 0, HORIZON, HORIZON + 1, 50, 120][numbers.below(6) as usize];
        for extra in 0..=numbers.below(2) as i64 {
            labels.push(Label {
                partition: 0,
                offset,
                tx_id: event.tx_id.clone(),
                fraud: 1 + extra,
                time: event.time + delay + extra * 10,
            });
            offset += 1;
        }
    }
    // Each label's time may be behind the newest before it by more than
    // the bound: keep the file in time order.
    labels.sort_by_key(|label| label.time);
    for (offset, label) in labels.iter_mut().enumerate() {
        label.offset = offset as u64;
    }
    labels
}

fn write_lines(path: &Path, lines: impl IntoIterator<Item = String>) {
    let text: String = lines.into_iter().map(|line| line + "\n").collect();
    std::fs::write(path, text).unwrap();
}

struct Data {
    events: Vec<Event>,
    versions: Vec<Version>,
    labels: Vec<Label>,
}

/// Writes the data under `dir` (tx/, merchants/, labels/), with a late
/// version, a version of the wrong type and a malformed line appended to
/// the table's first partition, and returns what a reader should keep.
fn write_data(dir: &Path) -> Data {
    let mut numbers = Numbers(0x5eed_1234_abcd);
    let events = events(&mut numbers);
    let versions = versions(&mut numbers);
    let labels = labels(&events, &mut numbers);
    for name in ["tx", "merchants", "labels"] {
        std::fs::create_dir_all(dir.join(name)).unwrap();
    }
    for partition in 0..2 {
        write_lines(
            &dir.join(format!("tx/p{partition}.jsonl")),
            events.iter().filter(|event| event.partition == partition).map(|event| {
                json!({"tx_id": event.tx_id, "user_id": event.user, "merchant_id": event.merchant, "amount": 1.5, "ts": event.time}).to_string()
            }),
        );
        let mut lines: Vec<String> = versions
            .iter()
            .filter(|version| version.partition == partition)
            .map(|version| {
                json!({"merchant_id": version.merchant, "risk": version.risk, "updated_at": version.time}).to_string()
            })
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
        }
        write_lines(&dir.join(format!("merchants/p{partition}.jsonl")), lines);
    }
    write_lines(
        &dir.join("labels/p0.jsonl"),
        labels.iter().map(|label| {
            json!({"tx_id": label.tx_id, "fraud": label.fraud, "reported_at": label.time})
                .to_string()
        }),
    );
    Data {
        events,
        versions,
        labels,
    }
}

/// The version of `merchant` as of `time`: the greatest (time, partition,
/// offset) at or before it.
fn as_of<'a>(versions: &'a [Version], merchant: &str, time: i64) -> Option<&'a Version> {
    versions
        .iter()
        .filter(|version| version.merchant == merchant && version.time <= time)
        .max_by_key(|version| (version.time, version.partition, version.offset))
}

/// Each event's expected output row, from a scan of all the data.
fn oracle(data: &Data) -> Vec<Json> {
    let risk_of =
        |event: &Event| as_of(&data.versions, &event.merchant, event.time).map(|v| v.risk);
    let newest_label = data
        .labels
        .iter()
        .map(|label| label.time)
        .max()
        .unwrap_or(i64::MIN);
    data.events
        .iter()
        .map(|event| {
            let risk = risk_of(event);
            // prev: the user's previous event in offset order (users stay
            // in one partition) that has a risk.
            let risk_prev = data
                .events
                .iter()
                .filter(|other| {
                    other.partition == event.partition
                        && other.offset < event.offset
                        && other.user == event.user
                })
                .filter_map(risk_of)
                .next_back();
            // max over the merchant's events in canonical order up to this
            // one, within the window.
            let canonical = (event.time, event.partition, event.offset);
            let merchant_risk_max = data
                .events
                .iter()
                .filter(|other| {
                    other.merchant == event.merchant
                        && (other.time, other.partition, other.offset) <= canonical
                        && other.time > event.time - WINDOW
                })
                .filter_map(risk_of)
                .reduce(f64::max);
            let fraud = data
                .labels
                .iter()
                .filter(|label| {
                    label.tx_id == event.tx_id
                        && label.time >= event.time
                        && label.time <= event.time + HORIZON
                })
                .max_by_key(|label| (label.time, label.partition, label.offset))
                .map_or(0, |label| label.fraud);
            json!({
                "_partition": event.partition,
                "_offset": event.offset,
                "tx_id": event.tx_id,
                "risk": risk,
                "risk_prev": risk_prev,
                "merchant_risk_max": merchant_risk_max,
                "fraud": fraud,
                "_label_complete": event.time + HORIZON < newest_label - LABEL_BOUND,
            })
        })
        .collect()
}

fn run(dir: &Path, out: &Path, workers: usize, policy: &str) -> tideflow::run::Summary {
    let mut overrides = vec![
        format!("source.path=\"{}\"", dir.join("tx").display()),
        format!("table[0].path=\"{}\"", dir.join("merchants").display()),
        format!("label[0].path=\"{}\"", dir.join("labels").display()),
        format!("batching.policy=\"{policy}\""),
    ];
    overrides.extend(common::output_overrides(out));
    common::run_text(SPEC, &overrides, workers).unwrap_or_else(|error| panic!("{error}"))
}

/// The columns the oracle knows, of each output row.
fn comparable(rows: Vec<Json>) -> Vec<Json> {
    rows.into_iter()
        .map(|row| {
            json!({
                "_partition": row["_partition"],
                "_offset": row["_offset"],
                "tx_id": row["tx_id"],
                "risk": row["risk"],
                "risk_prev": row["risk_prev"],
                "merchant_risk_max": row["merchant_risk_max"],
                "fraud": row["fraud"],
                "_label_complete": row["_label_complete"],
            })
        })
        .collect()
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
            let rows = comparable(common::read_rows(&out.join("rows")));
            assert_eq!(rows.len(), expected.len(), "{workers} workers, {policy}");
            for (row, expected) in rows.iter().zip(&expected) {
                assert_eq!(row, expected, "{workers} workers, {policy}");
            }
            let counts = summary.counts;
            assert_eq!(counts.records_in, counts.rows_out, "{summary}");
            assert_eq!(
                counts.inputs_in,
                (data.versions.len() + 3 + data.labels.len()) as u64,
                "{summary}"
            );
            assert_eq!(
                (counts.inputs_dead, counts.inputs_late),
                (2, 1),
                "{summary}"
            );
            let dead = common::read_rows(&out.join("dead"));
            let reasons: Vec<&str> = dead
                .iter()
                .map(|letter| letter["_error"].as_str().unwrap_or(""))
                .collect();
            assert_eq!(dead.len(), 3, "{reasons:?}");
            assert!(
                dead.iter().all(|letter| letter["_input"] == "merchants"),
                "{dead:?}"
            );
            assert!(reasons.contains(&"late"), "{reasons:?}");
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
    let summary = common::run_text(SPEC, &overrides, 2).unwrap_or_else(|error| panic!("{error}"));
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
