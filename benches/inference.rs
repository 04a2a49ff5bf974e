//! Inference: the engine's scoring path (tensor assembly from a batch's
//! computed input columns, one ONNX Runtime run, outputs added as
//! columns) against bare `ort` session runs on a ready tensor that read the same two outputs (the fraud
//! probability and the label of every row) into plain vectors, same model
//! and batch size, in the same run. Only the scoring of each batch is
//! timed: its input is prepared just before, warm in cache, as the stage
//! before inference leaves it in the engine.
//!
//! Run: `cargo bench --bench inference -- --rows 200000`; on a GPU, with
//! the CUDA build of the runtime, `-- --device cuda`.

use clap::Parser;
use std::time::Instant;
use tideflow::batch::Batch;
use tideflow::inference::Model;
use tideflow::plan::{Device, ModelPlan, OutputPlan, RunRows};
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
    /// Where both sides score: cpu, cuda or cuda:N (the CUDA build of the
    /// runtime: `scripts/setup-onnxruntime.sh --gpu`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Rows in each of the engine's ONNX Runtime runs (`[model] run_rows`);
    /// 0: one run per batch, as bare ort does.
    #[arg(long, default_value_t = 0)]
    run_rows: usize,
    /// Repeats per measurement (the best is kept).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    #[arg(long, hide = true)]
    bench: bool,
}

const WIDTH: usize = 8;
/// Schema fields before the model's input columns (a transaction's four).
const FIELDS: usize = 4;

fn plan(path: &std::path::Path, device: Device, run_rows: usize) -> ModelPlan {
    ModelPlan {
        path: path.to_owned(),
        name: "bench".into(),
        input_slots: (FIELDS..FIELDS + WIDTH).collect(),
        input_columns: (0..WIDTH).map(|index| format!("c{index}")).collect(),
        input_name: None,
        outputs: vec![
            OutputPlan {
                column: "score".into(),
                slot: FIELDS + WIDTH,
                output: "probabilities".into(),
                index: Some(1),
            },
            OutputPlan {
                column: "label".into(),
                slot: FIELDS + WIDTH + 1,
                output: "label".into(),
                index: None,
            },
        ],
        device,
        fill_null: 0.0,
        run_rows: match run_rows {
            0 => RunRows::PerBatch,
            rows => RunRows::Fixed(rows),
        },
    }
}

fn input(rows: usize) -> Vec<f32> {
    (0..rows * WIDTH)
        .map(|index| ((index * 7919) % 1000) as f32 / 50.0)
        .collect()
}

/// Times only what `score` does for each batch; preparing a batch's input
/// (as the previous stage would, leaving it warm in cache) is not timed.
fn timed_batches(
    repeats: usize,
    data: &[f32],
    batch: usize,
    mut prepare_and_score: impl FnMut(&[f32], &mut dyn FnMut(&mut dyn FnMut())),
) -> f64 {
    let rows = data.len() / WIDTH;
    let mut best = f64::INFINITY;
    for _ in 0..repeats.max(1) {
        let mut total = std::time::Duration::ZERO;
        for chunk in data.chunks(batch * WIDTH) {
            prepare_and_score(chunk, &mut |score| {
                let started = Instant::now();
                score();
                total += started.elapsed();
            });
        }
        best = best.min(total.as_secs_f64());
    }
    rows as f64 / best
}

fn bare_ort(
    path: &std::path::Path,
    device: Device,
    data: &[f32],
    batch: usize,
    repeats: usize,
) -> f64 {
    // The same process-wide environment the engine uses: ONNX Runtime allows one.
    let environment = tideflow::inference::environment().expect("load ONNX Runtime");
    let cuda_index = match device {
        Device::Cuda(index) => Some(index),
        _ => None,
    };
    // The engine's own session settings, so both sides run the same kernels.
    let mut builder =
        tideflow::inference::session_builder(environment, cuda_index).expect("builder");
    let mut session = builder.commit_from_file(path).expect("session");
    let mut tensor_data = Vec::new();
    let (mut scores, mut labels) = (Vec::new(), Vec::new());
    timed_batches(repeats, data, batch, |chunk, time| {
        tensor_data.clear();
        tensor_data.extend_from_slice(chunk);
        time(&mut || {
            let tensor = ort::value::TensorRef::from_array_view((
                [tensor_data.len() / WIDTH, WIDTH],
                tensor_data.as_slice(),
            ))
            .expect("tensor");
            let outputs = session
                .run(ort::inputs!["features" => tensor])
                .expect("run");
            let (_, probabilities) = outputs["probabilities"]
                .try_extract_tensor::<f32>()
                .expect("probabilities");
            let (_, label) = outputs["label"].try_extract_tensor::<i64>().expect("label");
            scores.clear();
            scores.extend(probabilities.iter().skip(1).step_by(2).copied());
            labels.clear();
            labels.extend_from_slice(label);
        });
        std::hint::black_box((&scores, &labels));
    })
}

fn engine(
    path: &std::path::Path,
    device: Device,
    run_rows: usize,
    data: &[f32],
    batch: usize,
    repeats: usize,
) -> f64 {
    let mut model = Model::open(&plan(path, device, run_rows)).expect("model");
    timed_batches(repeats, data, batch, |chunk, time| {
        // As the feature stages leave a batch: rows of a transaction's
        // schema fields, the inputs computed as float columns beside them.
        let rows: Vec<Row> = (0..chunk.len() / WIDTH)
            .map(|offset| Row {
                partition: 0,
                offset: offset as u64,
                time: offset as i64,
                values: vec![
                    Value::Str(format!("u{offset}").into()),
                    Value::Str(format!("m{}", offset % 500).into()),
                    Value::F64(offset as f64),
                    Value::I64(offset as i64),
                ],
                warm_up: false,
            })
            .collect();
        let mut batch = Batch::from_rows(rows);
        for column in 0..WIDTH {
            batch.set_numbers(
                FIELDS + column,
                chunk
                    .iter()
                    .skip(column)
                    .step_by(WIDTH)
                    .map(|value| Some(f64::from(*value))),
            );
        }
        time(&mut || model.score(&mut batch).expect("score"));
        std::hint::black_box(&batch);
    })
}

fn main() {
    common::require_onnxruntime();
    let args = Args::parse();
    // Both sides must name the same device, so `auto` is not offered.
    let device = match Device::parse(&args.device) {
        Some(Device::Auto) | None => panic!("--device: cpu, cuda or cuda:N"),
        Some(device) => device,
    };
    let data = input(args.rows);
    println!(
        "inference: {} rows of {WIDTH} features, {}, {}, 1 intra-op thread, engine runs of {}",
        args.rows,
        args.model.display(),
        args.device,
        match args.run_rows {
            0 => "the batch size".to_owned(),
            rows => format!("{rows} rows"),
        }
    );
    println!(
        "{:>7} {:>16} {:>16} {:>8}",
        "batch", "bare ort rows/s", "engine rows/s", "ratio"
    );
    let started = Instant::now();
    for batch in &args.batches {
        let bare = bare_ort(&args.model, device, &data, *batch, args.repeats);
        let ours = engine(
            &args.model,
            device,
            args.run_rows,
            &data,
            *batch,
            args.repeats,
        );
        println!("{batch:>7} {bare:>16.0} {ours:>16.0} {:>8.2}", ours / bare);
    }
    eprintln!("({:.1} s)", started.elapsed().as_secs_f64());
}
