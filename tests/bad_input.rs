//! Bad input never crashes a run and is never dropped in silence: each bad
//! record becomes a dead letter with its reason and origin, and the counts
//! reconcile exactly.

mod common;

use std::io::Write;
use std::path::Path;

const SPEC: &str = r#"
name = "bad_input"
[source]
type = "files"
path = "unset"
format = "jsonl"
key = "user_id"
[schema]
user_id = "string"
amount = "f64"
ts = "timestamp_ms"
[time]
field = "ts"
[[feature]]
name = "amount_sum"
agg = "sum"
field = "amount"
window = "1h"
[[sink]]
type = "jsonl"
path = "unset"
[dead_letters]
type = "jsonl"
path = "unset"
"#;

/// Runs `SPEC` on the files in `input` with `extra` overrides, writing
/// rows and dead letters under `out`.
fn run_spec(
    input: &Path,
    out: &Path,
    extra: &[&str],
    workers: usize,
) -> tideflow::Result<tideflow::run::Summary> {
    let mut overrides = vec![format!("source.path=\"{}\"", input.display())];
    overrides.extend(extra.iter().map(|extra| extra.to_string()));
    overrides.extend(common::output_overrides(out));
    common::run_text(SPEC, &overrides, workers)
}

#[test]
fn bad_records_become_dead_letters_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let mut file = std::fs::File::create(input.join("a.jsonl")).unwrap();
    writeln!(file, r#"{{"user_id":"u1","amount":1.5,"ts":1000}}"#).unwrap();
    writeln!(file, r#"{{"user_id":"u1","amount":1.5,"ts":"#).unwrap();
    writeln!(file, r#"{{"user_id":"u1","amount":"lots","ts":1001}}"#).unwrap();
    writeln!(file, r#"{{"user_id":"u1","amount":2.0}}"#).unwrap();
    writeln!(file, r#"{{"amount":2.0,"ts":1002}}"#).unwrap();
    writeln!(file).unwrap();
    writeln!(file, r#"[1, 2, 3]"#).unwrap();
    file.write_all(b"{\"user_id\":\"u\xff\xfe\",\"amount\":1,\"ts\":1003}\n")
        .unwrap();
    writeln!(
        file,
        r#"{{"user_id":"u1","amount":"{}","ts":1004}}"#,
        "x".repeat(10 << 20)
    )
    .unwrap();
    writeln!(file, r#"{{"user_id":"u1","amount":2.5,"ts":1005}}"#).unwrap();
    drop(file);
    std::fs::File::create(input.join("b.jsonl")).unwrap();

    let summary = run_spec(&input, dir.path(), &[], 2).unwrap();
    assert_eq!(
        (
            summary.counts.records_in,
            summary.counts.rows_out,
            summary.counts.dead
        ),
        (10, 2, 8),
        "{summary}"
    );
    assert!(summary.counts.reconciles());

    let rows = common::read_rows(&dir.path().join("rows"));
    assert_eq!(rows[1]["amount_sum"], serde_json::json!(4.0));
    let dead = common::read_rows(&dir.path().join("dead"));
    let reasons: Vec<(u64, String)> = dead
        .iter()
        .map(|d| {
            (
                d["_offset"].as_u64().unwrap(),
                d["_error"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expect = [
        (1, "malformed JSON"),
        (2, "field 'amount': expected f64"),
        (3, "missing event time field 'ts'"),
        (4, "missing key field 'user_id'"),
        (5, "empty record"),
        (6, "not a JSON object"),
        (7, "not valid UTF-8"),
        (8, "exceeds max_record_bytes"),
    ];
    for ((offset, reason), (expected_offset, expected_reason)) in reasons.iter().zip(expect) {
        assert_eq!(*offset, expected_offset);
        assert!(
            reason.contains(expected_reason),
            "offset {offset}: {reason:?} should mention {expected_reason:?}"
        );
    }
    // Each dead letter keeps the bytes it came with: as text, or, where
    // they are not UTF-8, in base64.
    assert!(dead.iter().all(|d| d["_partition"] == 0));
    for (index, letter) in dead.iter().enumerate() {
        assert_eq!(letter["_raw"].is_string(), index != 6, "{letter}");
    }
    assert_eq!(
        decode_base64(dead[6]["_raw_base64"].as_str().unwrap()),
        b"{\"user_id\":\"u\xff\xfe\",\"amount\":1,\"ts\":1003}"
    );
    assert!(
        dead[7]["_raw"].as_str().unwrap().len() <= 1024,
        "an over-long record keeps only a prefix"
    );
}

/// The same records written as producers mostly write them (flat, no
/// escapes, which the decoder scans itself) and in shapes only serde reads
/// (escaped keys and strings, nested fields the schema lacks, spacing)
/// give the same rows and the same dead letters, late records included.
#[test]
fn records_decode_alike_whichever_shape_they_are_written_in() {
    // (user, amount, ts): the fourth is late against a 1 s bound, the
    // fifth has no key.
    let records = [
        ("u1", "1.25", 1000),
        ("u2", "7", 2000),
        ("u1", "-0.5e1", 5000),
        ("u1", "3.5", 3000),
        ("", "2", 6000),
        ("u\\u00e9", "2.0", 7000),
    ];
    let flat = |(user, amount, ts): (&str, &str, i64)| {
        if user.is_empty() {
            format!(r#"{{"amount":{amount},"ts":{ts}}}"#)
        } else {
            format!(r#"{{"user_id":"{user}","amount":{amount},"ts":{ts}}}"#)
        }
    };
    let unusual = |(user, amount, ts): (&str, &str, i64)| {
        let user = if user.is_empty() {
            String::new()
        } else {
            format!(r#""us\u0065r_id" : "{user}","#)
        };
        format!(r#" {{ "note": {{"a": [1, "\"x\""]}}, {user} "amount":{amount},"ts" :{ts} }} "#)
    };
    let run = |write: &dyn Fn((&str, &str, i64)) -> String, name: &str| {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in");
        std::fs::create_dir(&input).unwrap();
        let lines: Vec<String> = records.iter().map(|record| write(*record)).collect();
        std::fs::write(input.join("a.jsonl"), lines.join("\n") + "\n").unwrap();
        let bound = ["time.max_out_of_orderness=\"1s\""];
        let summary = run_spec(&input, dir.path(), &bound, 1).unwrap();
        assert_eq!(
            (
                summary.counts.rows_out,
                summary.counts.late,
                summary.counts.dead
            ),
            (4, 1, 1),
            "{name}: {summary}"
        );
        let rows = common::read_rows(&dir.path().join("rows"));
        let dead = common::read_rows(&dir.path().join("dead"));
        // A dead letter keeps the line it came from.
        for letter in &dead {
            let offset = letter["_offset"].as_u64().unwrap() as usize;
            assert_eq!(
                letter["_raw"].as_str(),
                Some(lines[offset].as_str()),
                "{name}"
            );
        }
        let fields = |row: &serde_json::Value, names: &[&str]| -> Vec<String> {
            names.iter().map(|name| row[*name].to_string()).collect()
        };
        (
            rows.iter()
                .map(|row| fields(row, &["_offset", "user_id", "amount", "ts", "amount_sum"]))
                .collect::<Vec<_>>(),
            dead.iter()
                .map(|letter| fields(letter, &["_offset", "_error"]))
                .collect::<Vec<_>>(),
        )
    };
    let (flat_rows, flat_dead) = run(&flat, "flat");
    let (unusual_rows, unusual_dead) = run(&unusual, "unusual");
    assert_eq!(flat_rows, unusual_rows);
    assert_eq!(flat_dead, unusual_dead);
    // What the rows hold, worked out by hand: u1's sums over the hour.
    let expected: Vec<Vec<String>> = [
        ("0", "\"u1\"", "1.25", "1000", "1.25"),
        ("1", "\"u2\"", "7.0", "2000", "7.0"),
        ("2", "\"u1\"", "-5.0", "5000", "-3.75"),
        ("5", "\"ué\"", "2.0", "7000", "2.0"),
    ]
    .iter()
    .map(|(offset, user, amount, ts, sum)| {
        [offset, user, amount, ts, sum]
            .iter()
            .map(|text| text.to_string())
            .collect()
    })
    .collect();
    assert_eq!(flat_rows, expected);
    assert_eq!(flat_dead[0][0], "3");
    assert!(flat_dead[0][1].contains("late"), "{:?}", flat_dead);
    assert!(
        flat_dead[1][1].contains("missing key field"),
        "{:?}",
        flat_dead
    );
}

/// Base64 (RFC 4648, padded) decoded by looking each character up.
fn decode_base64(text: &str) -> Vec<u8> {
    const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let sextets: Vec<u32> = text
        .trim_end_matches('=')
        .chars()
        .map(|character| ALPHABET.find(character).unwrap() as u32)
        .collect();
    let mut bytes = Vec::new();
    for group in sextets.chunks(4) {
        let word = group
            .iter()
            .enumerate()
            .fold(0, |word, (index, sextet)| word | sextet << (18 - 6 * index));
        bytes.extend(word.to_be_bytes()[1..group.len()].iter());
    }
    bytes
}

#[test]
fn spec_mistakes_name_their_line_and_a_fix() {
    let text = SPEC.replace("field = \"amount\"", "field = \"amount_typo\"");
    let error = common::run_text(&text, &[], 1).unwrap_err().to_string();
    assert!(error.contains("test.toml:17"), "{error}");
    assert!(
        error.contains("'amount_typo', which is neither a field nor a joined column"),
        "{error}"
    );
    assert!(error.contains("hint:"), "{error}");
}

/// A source declared keyed by a field whose keys are not confined to one
/// partition stops the run with the key and both partitions named, however
/// many workers read the partitions (with several, the two partitions are
/// read by different workers, which compute their keys apart).
#[test]
fn a_source_key_found_in_two_partitions_stops_the_run_on_any_number_of_workers() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    for (name, users) in [
        ("a.jsonl", ["u1", "u2", "u3"]),
        ("b.jsonl", ["u4", "u5", "u1"]),
    ] {
        let mut file = std::fs::File::create(input.join(name)).unwrap();
        for (index, user) in users.iter().enumerate() {
            writeln!(file, r#"{{"user_id":"{user}","amount":1.0,"ts":{index}}}"#).unwrap();
        }
    }
    for workers in [1, 2, 4] {
        let out = dir.path().join(format!("out{workers}"));
        let error = run_spec(&input, &out, &[], workers).unwrap_err();
        let tideflow::Error::KeyInTwoPartitions {
            key,
            first,
            second,
            offset,
            ..
        } = &error
        else {
            panic!("{workers} workers: expected a key conflict, got: {error}");
        };
        assert_eq!(key, "'u1'", "{workers} workers");
        // Whichever partition reached u1 second is named with the offset
        // of u1 in it.
        assert!(
            matches!((first, second, offset), (0, 1, 2) | (1, 0, 0)),
            "{workers} workers: {error}"
        );
    }
}

/// The spec above with a model that looks each amount up in a table of
/// ten scores (models/table_lookup.onnx), which ONNX Runtime fails a whole
/// run on for an amount of 10 or more, in batches of four.
fn table_model_spec() -> String {
    format!(
        r#"{SPEC}
[model]
path = "unset"
inputs = ["amount"]
[model.outputs]
score = "score[0]"
[batching]
policy = "bulk"
bulk = {{ max_rows = 4, max_delay = "10s" }}
"#
    )
}

/// Writes 40 records, amounts 0.5 to 9.5 but for the ones at `bad`
/// offsets, which hold 12.0; returns the overrides that run them.
fn table_model_input(dir: &std::path::Path, bad: &[u64]) -> Vec<String> {
    let input = dir.join("in.jsonl");
    let mut file = std::fs::File::create(&input).unwrap();
    for offset in 0..40u64 {
        let amount = if bad.contains(&offset) {
            12.0
        } else {
            (offset % 10) as f64 + 0.5
        };
        writeln!(
            file,
            r#"{{"user_id":"u{offset}","amount":{amount},"ts":{}}}"#,
            1000 + offset
        )
        .unwrap();
    }
    let mut overrides = vec![
        format!("source.path=\"{}\"", input.display()),
        format!(
            "model.path=\"{}\"",
            common::root().join("models/table_lookup.onnx").display()
        ),
    ];
    overrides.extend(common::output_overrides(dir));
    overrides
}

/// A batch the model fails on becomes dead letters, one per row with the
/// model's message and the row's origin, and the run goes on to score
/// every other batch: nothing is lost and the counts reconcile.
#[test]
fn a_batch_the_model_fails_on_goes_to_dead_letters_and_the_run_goes_on() {
    common::require_onnxruntime();
    let dir = tempfile::tempdir().unwrap();
    let bad = [5, 22];
    let overrides = table_model_input(dir.path(), &bad);
    let summary = common::run_text(&table_model_spec(), &overrides, 1).unwrap();
    assert!(summary.counts.reconciles(), "{summary}");
    assert_eq!(summary.counts.records_in, 40, "{summary}");

    let dead = common::read_rows(&dir.path().join("dead"));
    let rows = common::read_rows(&dir.path().join("rows"));
    assert_eq!(rows.len() + dead.len(), 40);
    for letter in &dead {
        let error = letter["_error"].as_str().unwrap();
        assert!(
            error.starts_with("inference failed") && error.contains("out of data bounds"),
            "{letter}"
        );
        // The row's fields, as a record the source could read again.
        let raw: serde_json::Value =
            serde_json::from_str(letter["_raw"].as_str().unwrap()).unwrap();
        assert_eq!(
            raw["user_id"],
            serde_json::json!(format!("u{}", letter["_offset"]))
        );
    }
    // Every bad record is among the dead, each with at most the three
    // others of its batch of four; every row written was scored as the
    // table says.
    let dead_offsets: Vec<u64> = dead
        .iter()
        .map(|d| d["_offset"].as_u64().unwrap())
        .collect();
    for offset in bad {
        assert!(dead_offsets.contains(&offset), "{dead_offsets:?}");
    }
    assert!(dead.len() <= 4 * bad.len(), "{dead_offsets:?}");
    for row in &rows {
        let amount = row["amount"].as_f64().unwrap();
        let expected = f64::from((amount.trunc() / 10.0) as f32);
        assert_eq!(row["score"].as_f64().unwrap(), expected, "{row}");
    }
}

/// With `model.on_error = "stop"`, the first failed batch stops the run
/// with the model's message.
#[test]
fn a_failed_batch_stops_the_run_when_the_spec_says_so() {
    common::require_onnxruntime();
    let dir = tempfile::tempdir().unwrap();
    let mut overrides = table_model_input(dir.path(), &[7]);
    overrides.push("model.on_error=\"stop\"".into());
    let error = common::run_text(&table_model_spec(), &overrides, 1).unwrap_err();
    assert!(error.to_string().contains("out of data bounds"), "{error}");
}
