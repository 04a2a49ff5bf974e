//! Models of every input and output kind, scored by the engine and
//! compared with the Python ONNX Runtime's scores of the same rows
//! (`models/reference/*.jsonl`, written by `models/make_kinds_models.py`):
//! float64, int64, int32, bool, string and fixed 3-D inputs; float,
//! integer, narrow integer, bool and string outputs, picked elements and
//! list columns (embeddings), through JSONL and Parquet.

mod common;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, RecordBatch};
use serde_json::Value as Json;
use std::path::Path;

/// The outputs of `models/input_kinds.onnx` the spec maps, each to a
/// column of the same name, and one picked element.
const KIND_OUTPUTS: [&str; 9] = [
    "score",
    "code",
    "negated",
    "small_plus",
    "count_u8",
    "embedding",
    "doubled",
    "pair",
    "echo",
];

fn input_kinds_spec(out: &Path, batching: &str) -> String {
    let root = common::root();
    format!(
        r#"
name = "input_kinds"
[source]
type = "files"
path = "{reference}"
format = "jsonl"
[schema]
id = "i64"
ts = "timestamp_ms"
a = "f64"
b = "f64"
count = "i64"
small = "i64"
flag = "bool"
merchant = "string"
g0 = "f64"
g1 = "f64"
g2 = "f64"
g3 = "f64"
g4 = "f64"
g5 = "f64"
[time]
field = "ts"
[model]
path = "{model}"
[[model.input]]
name = "amounts"
columns = ["a", "b"]
[[model.input]]
name = "counts"
columns = ["count"]
[[model.input]]
name = "small"
columns = ["small"]
[[model.input]]
name = "flags"
columns = ["flag"]
[[model.input]]
name = "grid"
columns = ["g0", "g1", "g2", "g3", "g4", "g5"]
[[model.input]]
name = "merchant"
columns = ["merchant"]
[model.outputs]
{outputs}
embedding_1 = "embedding[1]"
[batching]
{batching}
[[sink]]
type = "jsonl"
path = "{rows}"
[[sink]]
type = "parquet"
path = "{parquet}"
[dead_letters]
type = "jsonl"
path = "{dead}"
"#,
        reference = root.join("models/reference/input_kinds.jsonl").display(),
        model = root.join("models/input_kinds.onnx").display(),
        outputs = KIND_OUTPUTS
            .map(|name| format!("{name} = \"{name}\""))
            .join("\n"),
        rows = out.join("rows").display(),
        parquet = out.join("parquet").display(),
        dead = out.join("dead").display(),
    )
}

/// The reference rows, by id.
fn reference(name: &str) -> Vec<Json> {
    let path = common::root().join(format!("models/reference/{name}.jsonl"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| {
        panic!(
            "{}: {error}; it is committed (python models/make_kinds_models.py writes it)",
            path.display()
        )
    });
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// A reference output of one value per row is written as a list of one
/// (its shape is `[rows, 1]`): the value.
fn single(expected: &Json) -> &Json {
    match expected.as_array() {
        Some(list) if list.len() == 1 => &list[0],
        _ => expected,
    }
}

/// Whether an engine value equals the Python ONNX Runtime's: numbers
/// within float rounding (the engine widens float32 to f64, JSON prints
/// both sides' shortest forms), lists element by element, the rest
/// exactly.
fn same(engine: &Json, python: &Json) -> bool {
    match (engine, python) {
        (Json::Number(a), Json::Number(b)) => {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0)
        }
        (Json::Array(a), Json::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same(a, b))
        }
        _ => engine == python,
    }
}

fn check_against_reference(rows: &[Json], reference: &[Json], outputs: &[&str]) {
    assert_eq!(rows.len(), reference.len(), "every reference row is scored");
    for (row, expected) in rows.iter().zip(reference) {
        assert_eq!(row["id"], expected["id"]);
        for output in outputs {
            let python = single(&expected["expected"][output]);
            assert!(
                same(&row[output], python),
                "row {}: {output} is {} in the engine, {python} in Python ONNX Runtime",
                row["id"],
                row[output]
            );
        }
    }
}

#[test]
fn every_input_and_output_kind_scores_as_python_onnx_runtime_does() {
    common::require_onnxruntime();
    let reference = reference("input_kinds");
    // One bulk batch, and micro-batches of 3 rows (runs of other sizes).
    for batching in [
        "policy = \"bulk\"",
        "policy = \"micro\"\nmicro = { max_rows = 3, max_delay = \"1s\" }",
    ] {
        let out = tempfile::tempdir().unwrap();
        let summary = common::run_text(&input_kinds_spec(out.path(), batching), &[], 1)
            .unwrap_or_else(|error| panic!("{batching}: {error}"));
        assert_eq!(summary.counts.dead, 0, "{summary}");
        let mut rows = common::read_rows(&out.path().join("rows"));
        rows.sort_by_key(|row| row["id"].as_i64());
        check_against_reference(&rows, &reference, &KIND_OUTPUTS);
        for (row, expected) in rows.iter().zip(&reference) {
            let picked = &expected["expected"]["embedding"][1];
            assert!(same(&row["embedding_1"], picked), "{row}");
        }
        let parquet = common::read_parquet_batches(&out.path().join("parquet"));
        assert_eq!(parquet_as_json(&parquet, "id"), json_column(&rows, "id"));
        for output in [
            "score",
            "embedding",
            "doubled",
            "pair",
            "code",
            "negated",
            "echo",
        ] {
            assert_eq!(
                parquet_as_json(&parquet, output),
                json_column(&rows, output),
                "{output}: Parquet and JSONL differ"
            );
        }
    }
}

#[test]
fn list_columns_are_typed_lists_in_parquet() {
    common::require_onnxruntime();
    let out = tempfile::tempdir().unwrap();
    common::run_text(&input_kinds_spec(out.path(), "policy = \"bulk\""), &[], 1).unwrap();
    let parquet = common::read_parquet_batches(&out.path().join("parquet"));
    let schema = parquet[0].schema();
    let type_of = |name: &str| {
        schema
            .field_with_name(name)
            .unwrap()
            .data_type()
            .to_string()
    };
    assert_eq!(type_of("embedding"), "List(Float64)");
    assert_eq!(type_of("doubled"), "List(Float64)");
    assert_eq!(type_of("pair"), "List(Int64)");
    assert_eq!(type_of("score"), "Float64");
    assert_eq!(type_of("count_u8"), "Int64");
    assert_eq!(type_of("negated"), "Boolean");
    assert_eq!(type_of("echo"), "Utf8");
}

/// A column of JSON rows, in row order.
fn json_column(rows: &[Json], name: &str) -> Vec<Json> {
    rows.iter().map(|row| row[name].clone()).collect()
}

/// A column of Parquet batches as JSON values, sorted by the rows' ids.
fn parquet_as_json(batches: &[RecordBatch], name: &str) -> Vec<Json> {
    let mut rows: Vec<(i64, Json)> = Vec::new();
    for batch in batches {
        let ids = batch
            .column_by_name("id")
            .unwrap()
            .as_primitive::<Int64Type>();
        let column = batch.column_by_name(name).unwrap();
        for row in 0..batch.num_rows() {
            rows.push((ids.value(row), arrow_json(column.as_ref(), row)));
        }
    }
    rows.sort_by_key(|(id, _)| *id);
    rows.into_iter().map(|(_, value)| value).collect()
}

fn arrow_json(column: &dyn Array, row: usize) -> Json {
    use arrow_schema::DataType;
    if column.is_null(row) {
        return Json::Null;
    }
    match column.data_type() {
        DataType::Float64 => Json::from(column.as_primitive::<Float64Type>().value(row)),
        DataType::Int64 => Json::from(column.as_primitive::<Int64Type>().value(row)),
        DataType::Boolean => Json::from(column.as_boolean().value(row)),
        DataType::Utf8 => Json::from(column.as_string::<i32>().value(row)),
        DataType::List(_) => {
            let list = column.as_list::<i32>().value(row);
            Json::Array(
                (0..list.len())
                    .map(|item| arrow_json(&list, item))
                    .collect(),
            )
        }
        other => panic!("unexpected Parquet type {other}"),
    }
}

#[test]
fn a_text_classifier_scores_raw_strings_as_python_onnx_runtime_does() {
    common::require_onnxruntime();
    let reference = reference("review_classifier");
    let out = tempfile::tempdir().unwrap();
    let root = common::root();
    let mut overrides = vec![format!(
        "source.path=\"{}\"",
        root.join("models/reference/review_classifier.jsonl")
            .display()
    )];
    overrides.push(format!(
        "model.path=\"{}\"",
        root.join("models/review_classifier.onnx").display()
    ));
    overrides.extend(common::output_overrides(out.path()));
    let plan = tideflow::plan::load(&root.join("dataflows/reviews.toml"), &overrides).unwrap();
    let summary =
        tideflow::dataflow::run(plan, &tideflow::dataflow::RunOptions::with_workers(2)).unwrap();
    assert_eq!(summary.counts.dead, 0, "{summary}");
    let mut rows = common::read_rows(&out.path().join("rows"));
    rows.sort_by_key(|row| row["id"].as_i64());
    assert_eq!(rows.len(), reference.len());
    for (row, expected) in rows.iter().zip(&reference) {
        let python = &expected["expected"];
        assert_eq!(row["label"], python["label"], "{row}");
        assert!(
            same(&row["positive"], &python["probabilities"][1]),
            "{row} {python}"
        );
    }
    // Both classes occur, so the comparison is not of a constant.
    let labels: std::collections::BTreeSet<_> =
        rows.iter().map(|row| row["label"].to_string()).collect();
    assert_eq!(labels.len(), 2, "{labels:?}");
}

/// Runs a spec of `dataflows/` on its reference rows (paths from the
/// repository root) on `workers` workers; its rows, sorted by id.
fn run_example(spec: &str, out: &Path, workers: usize, extra: &[String]) -> Vec<Json> {
    let root = common::root();
    let plan_text = std::fs::read_to_string(root.join(spec)).unwrap();
    let absolute = |path: &str| root.join(path).display().to_string();
    // The example's paths are relative to the repository root.
    let text = plan_text.replace("\"models/", &format!("\"{}/", absolute("models")));
    let mut overrides = common::output_overrides(out);
    overrides.extend(extra.iter().cloned());
    let summary = common::run_text(&text, &overrides, workers).unwrap();
    assert_eq!(summary.counts.dead, 0, "{summary}");
    let mut rows = common::read_rows(&out.join("rows"));
    rows.sort_by_key(|row| row["id"].as_i64());
    rows
}

#[test]
fn a_text_model_tokenized_in_the_engine_scores_as_python_onnx_runtime_does() {
    common::require_onnxruntime();
    let reference = reference("review_encoder");
    for (workers, batching) in [(1, "bulk"), (2, "micro")] {
        let out = tempfile::tempdir().unwrap();
        let policy = vec![format!("batching.policy=\"{batching}\"")];
        let rows = run_example(
            "dataflows/review_embeddings.toml",
            out.path(),
            workers,
            &policy,
        );
        check_against_reference(&rows, &reference, &["embedding", "score"]);
    }
    // The reference rows truncate (reviews of more than 14 words) and pad
    // (short ones, the empty review): both are exercised.
    let words = |row: &Json| {
        row["review"]
            .as_str()
            .map_or(0, |text| text.split(' ').count())
    };
    assert!(reference.iter().any(|row| words(row) > 14));
    assert!(reference.iter().any(|row| words(row) < 5));
}

#[test]
fn tokenizer_options_that_do_not_fit_the_model_are_refused_with_the_reason() {
    common::require_onnxruntime();
    let out = tempfile::tempdir().unwrap();
    let root = common::root();
    let text = std::fs::read_to_string(root.join("dataflows/review_embeddings.toml"))
        .unwrap()
        .replace("\"models/", &format!("\"{}/models/", root.display()));
    let cases = [
        (
            "model.input[0].max_len=32",
            "input 'input_ids' takes 16 tokens per row, but max_len is 32",
        ),
        (
            "model.input[0].mask=\"nope\"",
            "has no input 'nope' (for the tokens of 'input_ids')",
        ),
        (
            "model.input[0].tokenizer=\"missing.json\"",
            "cannot read tokenizer missing.json",
        ),
        (
            "model.input[0].text=\"id\"",
            "text column 'id' is i64, not a string",
        ),
        (
            "model.input[0].mask=\"input_ids\"",
            "input 'input_ids' is fed twice",
        ),
    ];
    for (set, expected) in cases {
        let error = common::run_text(&text, &[set.to_owned()], 1)
            .map(|_| ())
            .expect_err(set)
            .to_string();
        assert!(error.contains(expected), "{set}: {error}");
    }
    let without_mask: Vec<String> = text
        .lines()
        .filter(|line| !line.starts_with("mask"))
        .map(str::to_owned)
        .collect();
    let error = common::run_text(&without_mask.join("\n"), &[], 1)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("input 'attention_mask' (Int64[?, 16]) is fed no columns"),
        "{error}"
    );
    drop(out);
}

#[test]
fn columns_that_do_not_fit_a_model_input_are_refused_with_the_reason() {
    common::require_onnxruntime();
    let out = tempfile::tempdir().unwrap();
    let spec = common::write_spec(
        out.path(),
        "kinds.toml",
        &input_kinds_spec(out.path(), "policy = \"bulk\""),
    );
    let check = |overrides: &[&str]| {
        let mut arguments = vec!["check".to_owned(), spec.display().to_string()];
        for set in overrides {
            arguments.extend(["--set".to_owned(), set.to_string()]);
        }
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_tideflow"))
            .args(&arguments)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{overrides:?} was accepted");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let cases: [(&[&str], &str); 4] = [
        (
            &["model.input[0].columns=[\"merchant\", \"b\"]"],
            "input 'amounts' is Float64, but column 'merchant' is string; feed it numeric columns",
        ),
        (
            &["model.input[1].columns=[\"a\"]"],
            "input 'counts' is Int64, but column 'a' is f64; feed it integer, timestamp or bool columns",
        ),
        (
            &["model.input[4].columns=[\"g0\", \"g1\", \"g2\"]"],
            "input 'grid' has shape Float32[?, 2, 3], but the spec feeds 3 columns",
        ),
        (
            &["model.input[5].name=\"amounts\""],
            "model input 'amounts' is fed twice",
        ),
    ];
    for (overrides, expected) in cases {
        let stderr = check(overrides);
        assert!(stderr.contains(expected), "{overrides:?}: {stderr}");
    }
}

#[test]
fn a_value_out_of_an_int32_inputs_range_is_a_dead_letter_with_the_reason() {
    common::require_onnxruntime();
    let out = tempfile::tempdir().unwrap();
    let input = out.path().join("rows.jsonl");
    let mut lines: Vec<String> =
        std::fs::read_to_string(common::root().join("models/reference/input_kinds.jsonl"))
            .unwrap()
            .lines()
            .take(2)
            .map(str::to_owned)
            .collect();
    let mut too_big: Json = serde_json::from_str(&lines[1]).unwrap();
    too_big["small"] = Json::from(5_000_000_000i64);
    lines[1] = too_big.to_string();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let spec = input_kinds_spec(out.path(), "policy = \"micro\"\nmicro = { max_rows = 1 }");
    let overrides = [format!("source.path=\"{}\"", input.display())];
    let summary = common::run_text(&spec, &overrides, 1).unwrap();
    assert_eq!(
        (summary.counts.dead, summary.counts.rows_out),
        (1, 1),
        "{summary}"
    );
    let dead = common::read_rows(&out.path().join("dead"));
    let reason = dead[0]["_error"].as_str().unwrap();
    assert!(
        reason.contains("5000000000 does not fit the model's int32 input"),
        "{reason}"
    );
}
