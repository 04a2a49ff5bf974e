//! The text models against the Python ONNX Runtime, on the same texts in
//! the same batch sizes, one intra-op thread each: the TF-IDF classifier
//! that takes the raw strings (`models/review_classifier.onnx`, spec
//! `dataflows/reviews.toml`) and the transformer-shaped encoder whose
//! token ids the engine computes with the `tokenizers` crate
//! (`models/review_encoder.onnx`, `dataflows/review_embeddings.toml`;
//! Python tokenizes with the `tokenizers` package, single-threaded). The
//! engine's side is its scoring path on batches of rows (gathering the
//! strings, tokenizing, running, outputs into columns); Python's feeds
//! numpy arrays. Each side keeps its fastest of `--repeats` passes.
//!
//! Needs the model tools (`scripts/setup-model-tools.sh`, Python's
//! onnxruntime and tokenizers). Run: `cargo bench --bench text_models`.

use clap::Parser;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tideflow::batch::Batch;
use tideflow::inference::Model;
use tideflow::row::Row;
use tideflow_connectors::Value;

#[path = "common.rs"]
mod common;

#[derive(Debug, Parser)]
struct Args {
    /// Texts scored per pass.
    #[arg(long, default_value_t = 20_000)]
    rows: usize,
    /// Batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "64,1024")]
    batches: Vec<usize>,
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    #[arg(long, hide = true)]
    bench: bool,
}

/// Product-review-like texts of 4 to 24 words, the same on every run.
fn texts(rows: usize) -> Vec<String> {
    const WORDS: [&str; 24] = [
        "great",
        "excellent",
        "love",
        "perfect",
        "fast",
        "recommend",
        "happy",
        "sturdy",
        "broken",
        "terrible",
        "refund",
        "slow",
        "disappointed",
        "cheap",
        "awful",
        "late",
        "the",
        "product",
        "arrived",
        "box",
        "color",
        "size",
        "item",
        "delivery",
    ];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |bound: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % bound as u64) as usize
    };
    (0..rows)
        .map(|_| {
            let words = 4 + next(21);
            (0..words)
                .map(|_| WORDS[next(WORDS.len())])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// The model of a spec in `dataflows/`, its paths from the repository root.
fn model_of(spec: &str) -> (tideflow::plan::ModelPlan, usize) {
    let root = common::root();
    let text = std::fs::read_to_string(root.join(spec))
        .expect("spec")
        .replace("\"models/", &format!("\"{}/models/", root.display()));
    let source = tideflow::spec::SpecSource {
        file: spec.into(),
        text,
        overrides: Vec::new(),
    };
    let plan =
        tideflow::plan::Plan::from_spec(&source.parse().expect("parse"), &source).expect("plan");
    let review = plan
        .columns
        .iter()
        .position(|column| column.name == "review")
        .expect("a review column");
    (plan.model.expect("a model"), review)
}

/// Batches of rows holding `texts` in the slot `review` (id and time
/// before it).
fn batches(texts: &[String], size: usize) -> Vec<Batch> {
    texts
        .chunks(size)
        .map(|chunk| {
            let rows = chunk
                .iter()
                .enumerate()
                .map(|(index, text)| Row {
                    partition: 0,
                    offset: index as u64,
                    time: index as i64,
                    values: vec![
                        Value::I64(index as i64),
                        Value::I64(index as i64),
                        Value::Str(text.as_str().into()),
                    ],
                    warm_up: false,
                })
                .collect();
            Batch::from_rows(rows)
        })
        .collect()
}

/// The engine's rows/s: the fastest of `repeats` passes over the batches.
fn engine_rate(model: &mut Model, batches: &[Batch], rows: usize, repeats: usize) -> f64 {
    let mut best = Duration::MAX;
    for _ in 0..repeats.max(1) {
        let mut pass = batches.to_vec();
        let started = Instant::now();
        for batch in &mut pass {
            model.score(batch).expect("score");
        }
        best = best.min(started.elapsed());
        std::hint::black_box(&pass);
    }
    rows as f64 / best.as_secs_f64()
}

/// Python's rows/s per batch size.
fn python_rates(
    args: &Args,
    model: &Path,
    texts: &Path,
    tokenizer: Option<&Path>,
) -> Vec<(usize, f64)> {
    let python = Command::new(common::root().join("scripts/setup-model-tools.sh"))
        .output()
        .expect("scripts/setup-model-tools.sh");
    assert!(
        python.status.success(),
        "{}",
        String::from_utf8_lossy(&python.stderr)
    );
    let python = String::from_utf8_lossy(&python.stdout)
        .lines()
        .last()
        .unwrap()
        .to_owned();
    let batches: Vec<String> = args.batches.iter().map(usize::to_string).collect();
    let mut command = Command::new(python);
    command
        .arg(common::root().join("benches/text_models.py"))
        .arg("--model")
        .arg(model)
        .arg("--texts")
        .arg(texts)
        .args([
            "--batches",
            &batches.join(","),
            "--repeats",
            &args.repeats.to_string(),
        ]);
    if let Some(tokenizer) = tokenizer {
        command.arg("--tokenizer").arg(tokenizer);
    }
    let output = command.output().expect("python");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let (size, rate) = line.split_once(' ').expect("BATCH RATE");
            (size.parse().expect("batch"), rate.parse().expect("rate"))
        })
        .collect()
}

fn main() {
    common::allocate_as_the_binary_does();
    common::require_onnxruntime();
    let args = Args::parse();
    let texts = texts(args.rows);
    let dir = tempfile::tempdir().expect("temporary directory");
    let texts_file = dir.path().join("texts.jsonl");
    let lines: Vec<String> = texts
        .iter()
        .map(|text| serde_json::json!({ "review": text }).to_string())
        .collect();
    std::fs::write(&texts_file, lines.join("\n") + "\n").expect("write texts");
    println!(
        "text models: {} texts of 4 to 24 words, 1 intra-op thread; engine vs Python ONNX Runtime",
        args.rows
    );
    println!(
        "{:<22} {:>6} {:>14} {:>14} {:>7}",
        "model", "batch", "engine rows/s", "python rows/s", "ratio"
    );
    for (spec, tokenizer) in [
        ("dataflows/reviews.toml", None),
        (
            "dataflows/review_embeddings.toml",
            Some("models/review_encoder.tokenizer.json"),
        ),
    ] {
        let (plan, review) = model_of(spec);
        assert_eq!(review, 2, "the batches hold the review in slot 2");
        let tokenizer = tokenizer.map(|path| common::root().join(path));
        let python = python_rates(&args, &plan.path, &texts_file, tokenizer.as_deref());
        let mut model = Model::open(&plan).expect("model");
        for (size, python_rate) in python {
            let engine = engine_rate(&mut model, &batches(&texts, size), args.rows, args.repeats);
            println!(
                "{:<22} {size:>6} {engine:>14.0} {python_rate:>14.0} {:>7.2}",
                plan.name,
                engine / python_rate
            );
        }
    }
}
