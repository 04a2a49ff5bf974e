//! Parquet in and out: a Parquet source gives the same rows as the same
//! records in JSONL, and a Parquet sink holds what the JSONL sink holds.

mod common;

use arrow_array::{Float64Array, Int64Array, RecordBatch, StringArray};
use std::sync::Arc;

const SPEC: &str = r#"
name = "parquet"
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
max_out_of_orderness = "1s"
[[feature]]
name = "amount_sum_1m"
agg = "sum"
field = "amount"
window = "1m"
[[feature]]
name = "same_time_count"
key = "ts"
agg = "count"
[[sink]]
type = "jsonl"
path = "unset"
[[sink]]
type = "parquet"
path = "unset"
[dead_letters]
type = "jsonl"
path = "unset"
"#;

fn records() -> (Vec<String>, Vec<Option<f64>>, Vec<i64>) {
    let users = (0..500).map(|i| format!("u{}", i % 7)).collect();
    let amounts = (0..500)
        .map(|i| {
            if i % 11 == 0 {
                None
            } else {
                Some(f64::from(i) * 0.25)
            }
        })
        .collect();
    let times = (0..500)
        .map(|i| 1_000_000 + i64::from(i) * 700 - i64::from(i % 3) * 300)
        .collect();
    (users, amounts, times)
}

/// Runs the spec over `input` in `format`, writing under `out`, with
/// `extra` overrides: the rows of its JSONL sink, and its Parquet sink's
/// directory.
fn run(
    out: &std::path::Path,
    input: &std::path::Path,
    format: &str,
    extra: &[String],
) -> (Vec<serde_json::Value>, std::path::PathBuf) {
    let mut overrides = vec![
        format!("source.path=\"{}\"", input.display()),
        format!("source.format=\"{format}\""),
        format!("sink[0].path=\"{}\"", out.join("jsonl").display()),
        format!("sink[1].path=\"{}\"", out.join("parquet").display()),
        format!("dead_letters.path=\"{}\"", out.join("dead").display()),
    ];
    overrides.extend_from_slice(extra);
    let summary = common::run_text(SPEC, &overrides, 2).unwrap();
    assert_eq!(
        (summary.counts.records_in, summary.counts.rows_out),
        (500, 500),
        "{summary}"
    );
    (common::read_rows(&out.join("jsonl")), out.join("parquet"))
}

/// Writes the records as JSON lines to `path`.
fn write_jsonl(path: &std::path::Path) {
    let (users, amounts, times) = records();
    let lines: String = users
        .iter()
        .zip(&amounts)
        .zip(&times)
        .map(|((user, amount), ts)| {
            format!(
                "{}\n",
                serde_json::json!({"user_id": user, "amount": amount, "ts": ts})
            )
        })
        .collect();
    std::fs::write(path, lines).unwrap();
}

#[test]
fn parquet_source_and_sink_agree_with_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let (users, amounts, times) = records();
    let jsonl = dir.path().join("in.jsonl");
    write_jsonl(&jsonl);
    let parquet = dir.path().join("in.parquet");
    let batch = RecordBatch::try_from_iter([
        ("user_id", Arc::new(StringArray::from(users.clone())) as _),
        ("amount", Arc::new(Float64Array::from(amounts.clone())) as _),
        ("ts", Arc::new(Int64Array::from(times.clone())) as _),
    ])
    .unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&parquet).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();

    let (from_jsonl, _) = run(&dir.path().join("out-jsonl"), &jsonl, "jsonl", &[]);
    let (from_parquet, parquet_out) =
        run(&dir.path().join("out-parquet"), &parquet, "parquet", &[]);
    assert_eq!(from_jsonl, from_parquet);
    assert_parquet_holds(&parquet_out, &from_jsonl);
}

/// Every column of the Parquet files in `dir` holds what the JSONL sink
/// holds: fields (string, float with nulls, time), origin and features.
fn assert_parquet_holds(dir: &std::path::Path, from_jsonl: &[serde_json::Value]) {
    let mut from_sink: Vec<_> = common::read_parquet_batches(dir)
        .iter()
        .flat_map(rows_as_json)
        .collect();
    from_sink.sort_by_key(|row| row["_offset"].as_i64());
    assert_eq!(from_sink.len(), from_jsonl.len());
    for (parquet_row, jsonl_row) in from_sink.iter().zip(from_jsonl) {
        assert_eq!(parquet_row, jsonl_row);
    }
}

#[test]
fn compressed_parquet_holds_the_jsonl_rows() {
    use parquet::basic::Compression;
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("in.jsonl");
    write_jsonl(&jsonl);
    for (setting, is_codec) in [
        (
            "snappy",
            (|codec| codec == Compression::SNAPPY) as fn(Compression) -> bool,
        ),
        ("zstd(3)", |codec| matches!(codec, Compression::ZSTD(_))),
    ] {
        let compression = format!("sink[1].compression=\"{setting}\"");
        let out = dir.path().join(setting);
        let (from_jsonl, parquet_out) = run(&out, &jsonl, "jsonl", &[compression]);
        assert_parquet_holds(&parquet_out, &from_jsonl);
        let mut chunks = 0;
        for entry in std::fs::read_dir(&parquet_out).unwrap() {
            let file = std::fs::File::open(entry.unwrap().path()).unwrap();
            let metadata = parquet::file::metadata::ParquetMetaDataReader::new()
                .parse_and_finish(&file)
                .unwrap();
            for column in metadata
                .row_groups()
                .iter()
                .flat_map(|group| group.columns())
            {
                let codec = column.compression();
                assert!(
                    is_codec(codec),
                    "{setting}: {} is {codec}",
                    column.column_path()
                );
                chunks += 1;
            }
        }
        assert!(chunks > 0, "{setting}: no column chunk written");
    }
}

/// A Parquet batch's rows as JSON objects, the way the JSONL sink writes
/// them (floats compared as numbers, times as epoch ms).
fn rows_as_json(batch: &RecordBatch) -> Vec<serde_json::Value> {
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int64Type, TimestampMillisecondType};
    use arrow_schema::DataType;
    let mut rows = vec![serde_json::Map::new(); batch.num_rows()];
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        for (index, row) in rows.iter_mut().enumerate() {
            let value = if column.is_null(index) {
                serde_json::Value::Null
            } else {
                match field.data_type() {
                    DataType::Utf8 => column.as_string::<i32>().value(index).into(),
                    DataType::Int64 => column.as_primitive::<Int64Type>().value(index).into(),
                    DataType::Timestamp(..) => column
                        .as_primitive::<TimestampMillisecondType>()
                        .value(index)
                        .into(),
                    DataType::Float64 => column.as_primitive::<Float64Type>().value(index).into(),
                    other => panic!("column {} has unexpected type {other}", field.name()),
                }
            };
            row.insert(field.name().clone(), value);
        }
    }
    rows.into_iter().map(serde_json::Value::Object).collect()
}

/// [`SPEC`] with two more string fields: `channel` and `tag`.
fn odd_spec() -> String {
    SPEC.replace(
        "ts = \"timestamp_ms\"\n",
        "ts = \"timestamp_ms\"\nchannel = \"string\"\ntag = \"string\"\n",
    )
}

/// What a run of [`odd_spec`] gave: its counts (records in, rows out,
/// dead, late), its rows, and its dead letters' origins and reasons. Its
/// Parquet sink holds the rows of its JSONL sink.
type OddRun = (
    (u64, u64, u64, u64),
    Vec<serde_json::Value>,
    Vec<(u64, String)>,
);

fn run_odd(out: &std::path::Path, input: &std::path::Path, format: &str) -> OddRun {
    let overrides = [
        format!("source.path=\"{}\"", input.display()),
        format!("source.format=\"{format}\""),
        format!("sink[0].path=\"{}\"", out.join("rows").display()),
        format!("sink[1].path=\"{}\"", out.join("parquet").display()),
        format!("dead_letters.path=\"{}\"", out.join("dead").display()),
    ];
    let summary = common::run_text(&odd_spec(), &overrides, 2).unwrap();
    assert!(summary.counts.reconciles(), "{summary}");
    let counts = &summary.counts;
    let mut dead: Vec<(u64, String)> = common::read_rows(&out.join("dead"))
        .iter()
        .map(|letter| {
            (
                letter["_offset"].as_u64().unwrap(),
                letter["_error"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    dead.sort();
    let rows = common::read_rows(&out.join("rows"));
    assert_parquet_holds(&out.join("parquet"), &rows);
    (
        (counts.records_in, counts.rows_out, counts.dead, counts.late),
        rows,
        dead,
    )
}

/// Writes `columns` as a Parquet file of row groups of 700 rows.
fn write_parquet(path: &std::path::Path, columns: Vec<(&str, arrow_array::ArrayRef)>) {
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let properties = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(700))
        .build();
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(path).unwrap(),
        batch.schema(),
        Some(properties),
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

/// Parquet columns go straight into the engine's columns: narrow integers
/// widen into a float field, microsecond timestamps become milliseconds, a
/// column the schema lacks is not read and a field the file lacks is null
/// (the sink writes the many distinct channels past its dictionary);
/// records without a key, and late ones, become the dead letters the same
/// records in JSONL (decoded line by line) become. Several Parquet row
/// groups and several reads of a partition.
#[test]
fn parquet_columns_read_as_the_same_records_in_jsonl() {
    const ROWS: i64 = 3000;
    let dir = tempfile::tempdir().unwrap();
    let user = |i: i64| (i % 37 != 5).then(|| format!("u{}", i % 13));
    let amount = |i: i64| (i % 11 != 0).then(|| i32::try_from(i % 500).unwrap() - 100);
    // Every 50th record is 5 s behind the others: late against 1 s.
    let time = |i: i64| 1_000_000 + i * 40 - if i % 50 == 49 { 5_000 } else { 0 };
    let channel = |i: i64| format!("channel-{i:06}-of-many");
    let jsonl: String = (0..ROWS)
        .map(|i| {
            format!(
                "{}\n",
                serde_json::json!({
                    "user_id": user(i), "amount": amount(i), "ts": time(i), "note": "n",
                    "channel": channel(i)
                })
            )
        })
        .collect();
    std::fs::write(dir.path().join("in.jsonl"), jsonl).unwrap();
    let parquet = dir.path().join("in.parquet");
    write_parquet(
        &parquet,
        vec![
            (
                "user_id",
                Arc::new((0..ROWS).map(user).collect::<StringArray>()) as _,
            ),
            (
                "amount",
                Arc::new((0..ROWS).map(amount).collect::<arrow_array::Int32Array>()) as _,
            ),
            (
                "ts",
                Arc::new(arrow_array::TimestampMicrosecondArray::from_iter_values(
                    (0..ROWS).map(|i| time(i) * 1000),
                )) as _,
            ),
            (
                "note",
                Arc::new(StringArray::from_iter_values((0..ROWS).map(|_| "n"))) as _,
            ),
            (
                "channel",
                Arc::new(StringArray::from_iter_values((0..ROWS).map(channel))) as _,
            ),
        ],
    );
    let from_jsonl = run_odd(
        &dir.path().join("out-jsonl"),
        &dir.path().join("in.jsonl"),
        "jsonl",
    );
    let from_parquet = run_odd(&dir.path().join("out-parquet"), &parquet, "parquet");
    let (counts, rows, dead) = &from_parquet;
    assert_eq!(counts.0, ROWS as u64);
    assert!(
        counts.2 > 0 && counts.3 > 0,
        "missing keys and late: {counts:?}"
    );
    assert!(rows.iter().all(|row| row["tag"].is_null()));
    assert!(
        dead.iter()
            .any(|(_, reason)| reason.contains("missing key field 'user_id'"))
    );
    assert_eq!(from_parquet, from_jsonl);
}

/// A Parquet column whose type does not fit its field, or that tideflow
/// cannot read at all, makes each record a dead letter naming the column;
/// the records of the other file are rows.
#[test]
fn parquet_columns_of_other_types_become_dead_letters_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let users = || {
        Arc::new(StringArray::from_iter_values(
            (0..20).map(|i| format!("u{i}")),
        )) as _
    };
    let times = || Arc::new(Int64Array::from_iter_values((0..20).map(|i| 1000 + i))) as _;
    let amounts: [(&str, arrow_array::ArrayRef); 3] = [
        (
            "a-text",
            Arc::new(StringArray::from_iter_values(
                (0..20).map(|i| i.to_string()),
            )),
        ),
        (
            "b-decimal",
            Arc::new(
                arrow_array::Decimal128Array::from_iter_values(0..20)
                    .with_precision_and_scale(10, 2)
                    .unwrap(),
            ),
        ),
        (
            "c-good",
            Arc::new(Float64Array::from_iter_values((0..20).map(f64::from))),
        ),
    ];
    for (name, amount) in amounts {
        write_parquet(
            &input.join(format!("{name}.parquet")),
            vec![("user_id", users()), ("amount", amount), ("ts", times())],
        );
    }
    let ((records, rows_out, dead, late), rows, letters) =
        run_odd(&dir.path().join("out"), &input, "parquet");
    assert_eq!((records, rows_out, dead, late), (60, 20, 40, 0));
    assert!(rows.iter().all(|row| row["_partition"] == 2));
    let letters_of = |saying: &str| {
        letters
            .iter()
            .filter(|(_, reason)| reason.contains(saying))
            .count()
    };
    assert_eq!(letters_of("field 'amount': expected f64"), 20);
    assert_eq!(
        letters_of("column 'amount' has Parquet type Decimal128(10, 2)"),
        20
    );
}
