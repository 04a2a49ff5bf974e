//! Inference: the engine's scoring path (tensor assembly from a batch's
//! computed input columns, one ONNX Runtime run, outputs added as
//! columns) against bare `ort` session runs on a ready tensor that read
//! the same two outputs (the fraud probability and the label of every row)
//! into plain vectors, same model and batch size, in the same run. Only
//! the scoring of each batch is timed: its input is prepared just before,
//! warm in cache, as the stage before inference leaves it in the engine.
//! The two sides take turns batch by batch (see `paired_times`).
//!
//! Run: `cargo bench --bench inference -- --rows 200000`; on a GPU, with
//! the CUDA build of the runtime, `-- --device cuda`.

use clap::Parser;
use std::time::{Duration, Instant};
use tideflow::inference::Model;
use tideflow::plan::Device;

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
    /// Rounds over the rows; each batch's fastest run on each side is kept
    /// (see `paired_times`).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    #[arg(long, hide = true)]
    bench: bool,
}

use common::{WIDTH, mlp_plan as plan, scoring_batch};

fn input(rows: usize) -> Vec<f32> {
    (0..rows * WIDTH)
        .map(|index| ((index * 7919) % 1000) as f32 / 50.0)
        .collect()
}

/// Scores one batch and returns how long the scoring itself took.
type ScoreBatch<'a> = dyn FnMut(&[f32]) -> Duration + 'a;

/// Scores `data` in batches of `batch` rows, each batch on both sides in
/// turn, `rounds` times over, and returns each side's time: the sum over
/// batches of its fastest run of each. Pairing batch by batch lets a burst
/// of noise from other work on the machine fall on both sides alike, and
/// keeping each batch's fastest run drops such bursts from both.
fn paired_times(
    rounds: usize,
    data: &[f32],
    batch: usize,
    mut sides: [&mut ScoreBatch; 2],
) -> [Duration; 2] {
    let chunks: Vec<&[f32]> = data.chunks(batch * WIDTH).collect();
    let mut fastest = vec![[Duration::MAX; 2]; chunks.len()];
    for _ in 0..rounds.max(1) {
        for (chunk, best) in chunks.iter().zip(&mut fastest) {
            for (score, best) in sides.iter_mut().zip(best.iter_mut()) {
                *best = (*best).min(score(chunk));
            }
        }
    }
    [0, 1].map(|side| fastest.iter().map(|best| best[side]).sum())
}

/// Bare `ort`: a session with the engine's own settings, run on a ready
/// tensor, its two outputs read into plain vectors.
struct BareOrt {
    session: ort::session::Session,
    tensor_data: Vec<f32>,
    scores: Vec<f32>,
    labels: Vec<i64>,
}

impl BareOrt {
    fn open(path: &std::path::Path, device: Device) -> Self {
        // The same process-wide environment the engine uses: ONNX Runtime allows one.
        let environment = tideflow::inference::environment().expect("load ONNX Runtime");
        let cuda_index = match device {
            Device::Cuda(index) => Some(index),
            _ => None,
        };
        // The engine's own session settings, so both sides run the same kernels.
        let mut builder =
            tideflow::inference::session_builder(environment, cuda_index).expect("builder");
        BareOrt {
            session: builder.commit_from_file(path).expect("session"),
            tensor_data: Vec::new(),
            scores: Vec::new(),
            labels: Vec::new(),
        }
    }

    /// Scores one batch; only the run and the reading of its outputs are
    /// timed, not copying the input into the tensor's buffer.
    fn score(&mut self, chunk: &[f32]) -> Duration {
        self.tensor_data.clear();
        self.tensor_data.extend_from_slice(chunk);
        let started = Instant::now();
        let tensor = ort::value::TensorRef::from_array_view((
            [self.tensor_data.len() / WIDTH, WIDTH],
            self.tensor_data.as_slice(),
        ))
        .expect("tensor");
        let outputs = self
            .session
            .run(ort::inputs!["features" => tensor])
            .expect("run");
        let (_, probabilities) = outputs["probabilities"]
            .try_extract_tensor::<f32>()
            .expect("probabilities");
        let (_, label) = outputs["label"].try_extract_tensor::<i64>().expect("label");
        self.scores.clear();
        self.scores
            .extend(probabilities.iter().skip(1).step_by(2).copied());
        self.labels.clear();
        self.labels.extend_from_slice(label);
        let elapsed = started.elapsed();
        std::hint::black_box((&self.scores, &self.labels));
        elapsed
    }
}

/// The engine's scoring path on one batch as the feature stages leave it
/// (see `scoring_batch`). Only scoring is timed, not building the batch.
fn engine_score(model: &mut Model, chunk: &[f32]) -> Duration {
    let mut batch = scoring_batch(chunk);
    let started = Instant::now();
    model.score(&mut batch).expect("score");
    let elapsed = started.elapsed();
    std::hint::black_box(&batch);
    elapsed
}

fn main() {
    common::allocate_as_the_binary_does();
    common::require_onnxruntime();
    let args = Args::parse();
    let device = common::explicit_device(&args.device);
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
        let mut bare = BareOrt::open(&args.model, device);
        let mut model = Model::open(&plan(&args.model, device, args.run_rows)).expect("model");
        let times = paired_times(
            args.repeats,
            &data,
            *batch,
            [&mut |chunk| bare.score(chunk), &mut |chunk| {
                engine_score(&mut model, chunk)
            }],
        );
        let [bare, ours] = times.map(|time| args.rows as f64 / time.as_secs_f64());
        println!("{batch:>7} {bare:>16.0} {ours:>16.0} {:>8.2}", ours / bare);
    }
    eprintln!("({:.1} s)", started.elapsed().as_secs_f64());
}
