//! Inference: the engine's scoring path (tensor assembly from rows, one
//! ONNX Runtime run, output columns written back) against bare `ort` session
//! runs on a prebuilt tensor, same model and batch size, in the same run.
//!
//! Run: `cargo bench --bench inference -- --rows 200000`

use clap::Parser;
use std::time::Instant;
use tideflow::inference::Model;
use tideflow::plan::{Device, ModelPlan, OutputPlan};
use tideflow::row::Row;
use tideflow_connectors::Value;

#[path = "common.rs"]
mod common;

#[derive(Debug, Parser)]
struct Args {
    /// Rows scored per measurement.
    #[arg(long, default_value_t = 200_000)]
    rows: usize,
    /// Batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "64,512,4096")]
    batches: Vec<usize>,
    /// Model file.
    #[arg(long, default_value = "models/fraud_mlp.onnx")]
    model: std::path::PathBuf,
    /// Repeats per measurement (the best is kept).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    #[arg(long, hide = true)]
    bench: bool,
}

const WIDTH: usize = 8;

fn plan(path: &std::path::Path) -> ModelPlan {
    ModelPlan {
        path: path.to_owned(),
        name: "bench".into(),
        input_slots: (0..WIDTH).collect(),
        input_columns: (0..WIDTH).map(|index| format!("c{index}")).collect(),
        input_name: None,
        outputs: vec![
            OutputPlan {
                column: "score".into(),
                slot: WIDTH,
                output: "probabilities".into(),
                index: Some(1),
            },
            OutputPlan {
                column: "label".into(),
                slot: WIDTH + 1,
                output: "label".into(),
                index: None,
            },
        ],
        device: Device::Cpu,
        fill_null: 0.0,
    }
}

fn input(rows: usize) -> Vec<f32> {
    (0..rows * WIDTH)
        .map(|index| ((index * 7919) % 1000) as f32 / 50.0)
        .collect()
}

fn bare_ort(path: &std::path::Path, data: &[f32], batch: usize, repeats: usize) -> f64 {
    // The same process-wide environment the engine uses: ONNX Runtime allows one.
    let environment = tideflow::inference::environment().expect("load ONNX Runtime");
    let mut session = ort::session::Session::builder(environment)
        .expect("builder")
        .with_intra_threads(1)
        .expect("threads")
        .commit_from_file(path)
        .expect("session");
    let rows = data.len() / WIDTH;
    let (_, elapsed) = common::best_of(repeats, || {
        let mut checksum = 0.0f32;
        for chunk in data.chunks(batch * WIDTH) {
            let tensor =
                ort::value::TensorRef::from_array_view(([chunk.len() / WIDTH, WIDTH], chunk))
                    .expect("tensor");
            let outputs = session
                .run(ort::inputs!["features" => tensor])
                .expect("run");
            let (_, probabilities) = outputs["probabilities"]
                .try_extract_tensor::<f32>()
                .expect("probabilities");
            checksum += probabilities[1];
        }
        std::hint::black_box(checksum)
    });
    rows as f64 / elapsed.as_secs_f64()
}

fn engine(path: &std::path::Path, data: &[f32], batch: usize, repeats: usize) -> f64 {
    let mut model = Model::open(&plan(path)).expect("model");
    let mut rows: Vec<Row> = data
        .chunks(WIDTH)
        .enumerate()
        .map(|(offset, values)| {
            let mut values: Vec<Value> = values
                .iter()
                .map(|value| Value::F64(f64::from(*value)))
                .collect();
            values.extend([Value::Null, Value::Null]);
            Row {
                partition: 0,
                offset: offset as u64,
                time: 0,
                values,
            }
        })
        .collect();
    let count = rows.len();
    let (_, elapsed) = common::best_of(repeats, || {
        for chunk in rows.chunks_mut(batch) {
            model.score(chunk).expect("score");
        }
    });
    count as f64 / elapsed.as_secs_f64()
}

fn main() {
    common::require_onnxruntime();
    let args = Args::parse();
    let data = input(args.rows);
    println!(
        "inference: {} rows of {WIDTH} features, {}, CPU, 1 intra-op thread",
        args.rows,
        args.model.display()
    );
    println!(
        "{:>7} {:>16} {:>16} {:>8}",
        "batch", "bare ort rows/s", "engine rows/s", "ratio"
    );
    let started = Instant::now();
    for batch in &args.batches {
        let bare = bare_ort(&args.model, &data, *batch, args.repeats);
        let ours = engine(&args.model, &data, *batch, args.repeats);
        println!("{batch:>7} {bare:>16.0} {ours:>16.0} {:>8.2}", ours / bare);
    }
    eprintln!("({:.1} s)", started.elapsed().as_secs_f64());
}
