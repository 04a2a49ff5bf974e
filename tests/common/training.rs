//! A training-set dataflow and its oracle, shared by the tests that run it
//! over files and over Kafka: transactions joined as of their time to a
//! merchant changelog, a feature over the joined column keyed by the
//! source's key (offset order) and one keyed by merchant (event-time
//! order), and a chargeback label.
//!
//! The data is built to be awkward: versions out of order within the
//! table's bound, ties in time across the table's partitions, a merchant
//! without a version, deletions (Kafka), labels before a row's time, at
//! both bounds of its horizon, after it, and several for one row. The
//! oracle scans every record for every row.

use serde_json::{Value as Json, json};

/// The label horizon, ms.
pub const HORIZON: i64 = 200;
/// The label input's out-of-orderness bound, ms.
pub const LABEL_BOUND: i64 = 30;
/// The window of `merchant_risk_max`, ms.
pub const WINDOW: i64 = 300;

/// Where the dataflow's three inputs are read from.
#[derive(Clone, Copy, Debug)]
pub enum Inputs<'a> {
    /// Directories `tx/`, `merchants/`, `labels/` (paths set by overrides).
    Files,
    /// Topics `tx`, `merchants`, `chargebacks` on these brokers.
    Kafka(&'a str),
}

/// The spec, reading its inputs from `inputs`.
pub fn spec(inputs: Inputs<'_>) -> String {
    let (source, table, label) = match inputs {
        Inputs::Files => (
            "type = \"files\"\npath = \"unset\"\nformat = \"jsonl\"".to_owned(),
            "type = \"files\"\npath = \"unset\"\nformat = \"jsonl\"",
            "type = \"files\"\npath = \"unset\"\nformat = \"jsonl\"",
        ),
        Inputs::Kafka(brokers) => (
            format!(
                "type = \"kafka\"\nbrokers = \"{brokers}\"\ntopic = \"tx\"\nfrom = \"earliest\"\nuntil = \"now\""
            ),
            "type = \"kafka\"\ntopic = \"merchants\"",
            "type = \"kafka\"\ntopic = \"chargebacks\"",
        ),
    };
    format!(
        r#"
name = "training"
[source]
{source}
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
{table}
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
window = "{WINDOW}ms"

[[label]]
name = "fraud"
{label}
on = "tx_id"
value = "fraud"
horizon = "{HORIZON}ms"
default = 0
[label.schema]
tx_id = "string"
fraud = "i64"
reported_at = "timestamp_ms"
[label.time]
field = "reported_at"
max_out_of_orderness = "{LABEL_BOUND}ms"

[[sink]]
type = "jsonl"
path = "unset"
[dead_letters]
type = "jsonl"
path = "unset"
"#
    )
}

/// A deterministic stream of numbers (xorshift), so the data is the same
/// on every run.
pub struct Numbers(pub u64);

impl Numbers {
    /// A number in `0..bound`.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

/// A transaction.
#[derive(Clone, Debug)]
pub struct Event {
    pub partition: u64,
    pub offset: u64,
    pub tx_id: String,
    pub user: String,
    pub merchant: String,
    pub time: i64,
}

/// A version of a merchant; `risk` `None` deletes it.
#[derive(Clone, Debug)]
pub struct Version {
    pub partition: u64,
    pub offset: u64,
    pub merchant: String,
    pub risk: Option<f64>,
    pub time: i64,
}

/// A chargeback.
#[derive(Clone, Debug)]
pub struct Label {
    pub partition: u64,
    pub offset: u64,
    pub tx_id: String,
    pub fraud: i64,
    pub time: i64,
}

/// The records of the three inputs, each with the partition and offset
/// it is written at.
#[derive(Clone, Debug)]
pub struct Data {
    pub events: Vec<Event>,
    pub versions: Vec<Version>,
    pub labels: Vec<Label>,
}

/// How much data, where, and when.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// The first event time, epoch ms.
    pub start: i64,
    /// Partitions of each input: events, versions, labels.
    pub partitions: (u64, u64, u64),
    /// Events per partition.
    pub events: u64,
    /// Whether some versions are deletions.
    pub deletions: bool,
}

/// Generates the data of `shape`.
pub fn generate(shape: Shape, seed: u64) -> Data {
    let mut numbers = Numbers(seed);
    let events = events(shape, &mut numbers);
    let versions = versions(shape, &mut numbers);
    let labels = labels(shape, &events, &mut numbers);
    Data {
        events,
        versions,
        labels,
    }
}

/// Events keyed by user (each user in one partition), each within the
/// bound of its partition's newest time; merchant m5 has no version.
fn events(shape: Shape, numbers: &mut Numbers) -> Vec<Event> {
    let partitions = shape.partitions.0;
    let mut events = Vec::new();
    for partition in 0..partitions {
        for offset in 0..shape.events {
            events.push(Event {
                partition,
                offset,
                tx_id: format!("t{partition}-{offset}"),
                user: format!("u{}", partition + partitions * numbers.below(4)),
                merchant: format!("m{}", numbers.below(6)),
                time: shape.start + offset as i64 * 7 - numbers.below(40) as i64,
            });
        }
    }
    events
}

/// Versions of m0..m4, out of order within the table's bound; every tenth
/// is m0 at the same time in every partition.
fn versions(shape: Shape, numbers: &mut Numbers) -> Vec<Version> {
    let count = shape.events * 2 / 5;
    let mut versions = Vec::new();
    for partition in 0..shape.partitions.1 {
        for offset in 0..count {
            let tie = offset % 10 == 0;
            let time =
                shape.start + offset as i64 * 18 - if tie { 0 } else { numbers.below(90) as i64 };
            let merchant = if tie { 0 } else { numbers.below(5) };
            let deleted = shape.deletions && !tie && numbers.below(8) == 0;
            let risk = (numbers.below(1000) as f64) / 100.0 + partition as f64 * 1000.0;
            versions.push(Version {
                partition,
                offset,
                merchant: format!("m{merchant}"),
                risk: (!deleted).then_some(risk),
                time,
            });
        }
    }
    versions
}

/// Labels for every third transaction at awkward times around its
/// horizon, each label partition in time order.
fn labels(shape: Shape, events: &[Event], numbers: &mut Numbers) -> Vec<Label> {
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_by_key(|event| (event.time, event.partition, event.offset));
    let mut labels = Vec::new();
    for event in sorted.iter().step_by(3) {
        let delay = [-5, 0, HORIZON, HORIZON + 1, 50, 120][numbers.below(6) as usize];
        for extra in 0..=numbers.below(2) as i64 {
            labels.push(Label {
                partition: numbers.below(shape.partitions.2),
                offset: 0,
                tx_id: event.tx_id.clone(),
                fraud: 1 + extra,
                time: event.time + delay + extra * 10,
            });
        }
    }
    labels.sort_by_key(|label| label.time);
    let mut next = vec![0; shape.partitions.2 as usize];
    for label in labels.iter_mut() {
        label.offset = next[label.partition as usize];
        next[label.partition as usize] += 1;
    }
    labels
}

/// The event record as JSON.
pub fn event_json(event: &Event) -> String {
    json!({"tx_id": event.tx_id, "user_id": event.user, "merchant_id": event.merchant, "amount": 1.5, "ts": event.time}).to_string()
}

/// The version record as JSON (`None` for a deletion).
pub fn version_json(version: &Version) -> Option<String> {
    let risk = version.risk?;
    Some(
        json!({"merchant_id": version.merchant, "risk": risk, "updated_at": version.time})
            .to_string(),
    )
}

/// The label record as JSON.
pub fn label_json(label: &Label) -> String {
    json!({"tx_id": label.tx_id, "fraud": label.fraud, "reported_at": label.time}).to_string()
}

/// The risk of `merchant` as of `time`: that of its version with the
/// greatest (time, partition, offset) at or before it, unless deleted.
pub fn as_of(versions: &[Version], merchant: &str, time: i64) -> Option<f64> {
    versions
        .iter()
        .filter(|version| version.merchant == merchant && version.time <= time)
        .max_by_key(|version| (version.time, version.partition, version.offset))
        .and_then(|version| version.risk)
}

/// Each event's expected output row (the columns [`comparable`] keeps),
/// from a scan of all the data.
pub fn oracle(data: &Data) -> Vec<Json> {
    let risk_of = |event: &Event| as_of(&data.versions, &event.merchant, event.time);
    let newest_label = data.labels.iter().map(|label| label.time).max();
    let mut rows: Vec<(u64, u64, Json)> = data
        .events
        .iter()
        .map(|event| {
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
            let complete =
                newest_label.is_some_and(|newest| event.time + HORIZON < newest - LABEL_BOUND);
            let row = json!({
                "_partition": event.partition,
                "_offset": event.offset,
                "tx_id": event.tx_id,
                "risk": risk_of(event),
                "risk_prev": risk_prev,
                "merchant_risk_max": merchant_risk_max,
                "fraud": fraud,
                "_label_complete": complete,
            });
            (event.partition, event.offset, row)
        })
        .collect();
    rows.sort_by_key(|(partition, offset, _)| (*partition, *offset));
    rows.into_iter().map(|(_, _, row)| row).collect()
}

/// The columns the oracle knows, of each output row.
pub fn comparable(rows: Vec<Json>) -> Vec<Json> {
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

/// Asserts that `rows` (as read back) are the oracle's, row by row.
pub fn assert_rows(rows: Vec<Json>, expected: &[Json], what: &str) {
    let rows = comparable(rows);
    assert_eq!(rows.len(), expected.len(), "{what}: rows");
    for (row, expected) in rows.iter().zip(expected) {
        assert_eq!(row, expected, "{what}");
    }
}
