//! The `tideflow` command line: run, check, inspect and demo.
//!
//! Arguments are parsed by clap into raw options, then turned into a
//! checked [`tideflow::plan::Plan`]; `anyhow` is used only here, at the
//! edge, where errors become messages and exit codes.

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tideflow::dataflow::{RunOptions, prepare_model, run};
use tideflow::plan;

/// Every record allocates its row and its strings, and workers free rows
/// other workers allocated; mimalloc's per-thread heaps make that markedly
/// cheaper than the system allocator (benches/features.rs measures it).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "tideflow",
    version,
    about = "Streaming features and ONNX inference over Kafka and files"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a dataflow spec.
    Run {
        /// The dataflow spec (TOML).
        spec: PathBuf,
        /// Worker threads.
        #[arg(long, short, default_value_t = 1)]
        workers: usize,
        /// Override a spec value: KEY=VALUE with a dotted key, array items by
        /// index (sink[0].path=/tmp/out/). May be repeated.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Do not print progress.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Validate a spec: schema, feature references, and the model's inputs
    /// and outputs.
    Check {
        /// The dataflow spec (TOML).
        spec: PathBuf,
        /// Override a spec value (as for `run`).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Show an ONNX model's inputs and outputs.
    Inspect {
        /// The `.onnx` file.
        model: PathBuf,
    },
    /// Self-contained showcase: synthetic transactions through features and
    /// the fraud model into files, with a summary.
    Demo {
        /// Synthetic transactions to score.
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        /// Worker threads.
        #[arg(long, short, default_value_t = 2)]
        workers: usize,
        /// Output directory.
        #[arg(long, default_value = "out/demo")]
        out: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    match dispatch(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run {
            spec,
            workers,
            overrides,
            quiet,
        } => {
            let plan = plan::load(&spec, &overrides)?;
            let stop = Some(stop_on_interrupt()?);
            let summary = run(
                plan,
                &RunOptions {
                    workers,
                    progress: !quiet,
                    stop,
                },
            )?;
            eprint!("{summary}");
            if !summary.counts.reconciles() {
                bail!("input records do not reconcile with outputs and dead letters");
            }
            Ok(())
        }
        Command::Check { spec, overrides } => check(&spec, &overrides),
        Command::Inspect { model } => {
            let signature = tideflow::inference::inspect(&model)?;
            println!("{}", model.display());
            println!("inputs:");
            for (name, description) in signature.inputs {
                println!("  {name}: {description}");
            }
            println!("outputs:");
            for (name, description) in signature.outputs {
                println!("  {name}: {description}");
            }
            Ok(())
        }
        Command::Demo {
            events,
            workers,
            out,
        } => demo(events, workers, &out),
    }
}

/// The first Ctrl-C (or SIGTERM) asks the run to stop reading and drain, so
/// that everything read is written and counted; a second one exits at once.
fn stop_on_interrupt() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ntideflow: stopping: finishing the records already read (Ctrl-C again to quit at once)");
    })
    .context("installing the Ctrl-C handler")?;
    Ok(stop)
}

fn check(spec: &Path, overrides: &[String]) -> anyhow::Result<()> {
    let mut plan = plan::load(spec, overrides)?;
    let model = prepare_model(&mut plan)?;
    println!("{}: ok", spec.display());
    println!(
        "  {} fields, {} stages, {} expressions",
        plan.field_count,
        plan.stages.len(),
        plan.expressions.len()
    );
    for stage in &plan.stages {
        let order = if stage.source_keyed {
            "offset order, emitted at once"
        } else {
            "event-time order, released by the watermark"
        };
        let names: Vec<_> = stage
            .features
            .iter()
            .map(|feature| feature.name.as_str())
            .collect();
        println!("  key {}: {} ({order})", stage.key_name, names.join(", "));
    }
    if let Some((identity, device, independent)) = model {
        println!("  model {identity} on {device}; rows independent: {independent}");
    }
    let columns: Vec<_> = plan
        .columns
        .iter()
        .map(|column| format!("{}:{}", column.name, column.ty.name()))
        .collect();
    println!("  output columns: {}", columns.join(", "));
    Ok(())
}

/// The spec the demo runs: the fraud dataflow over the generator.
const DEMO_SPEC: &str = "dataflows/fraud_generator.toml";

fn demo(events: u64, workers: usize, out: &Path) -> anyhow::Result<()> {
    let spec = Path::new(DEMO_SPEC);
    if !spec.is_file() {
        bail!("{DEMO_SPEC} not found: run the demo from the root of the tideflow checkout");
    }
    let overrides = vec![
        format!("source.count={events}"),
        format!("sink[0].path=\"{}\"", out.join("scores").display()),
        format!("dead_letters.path=\"{}\"", out.join("dead").display()),
    ];
    let plan = plan::load(spec, &overrides)?;
    println!(
        "tideflow demo: {events} synthetic card transactions -> user and merchant window features -> fraud MLP -> {}",
        out.display()
    );
    let stop = Some(stop_on_interrupt()?);
    let summary = run(
        plan,
        &RunOptions {
            workers,
            progress: true,
            stop,
        },
    )?;
    print!("{summary}");
    let scores = out.join("scores");
    let (rows, flagged, example) = scan_scores(&scores).context("reading the demo's scores")?;
    println!(
        "scored rows in {}: {rows}; flagged as fraud (probability > 0.5): {flagged}",
        scores.display()
    );
    if let Some(example) = example {
        println!("highest-scoring row:\n  {example}");
    }
    Ok(())
}

/// Counts the demo's output rows and finds the highest fraud score.
fn scan_scores(dir: &Path) -> anyhow::Result<(u64, u64, Option<String>)> {
    let (mut rows, mut flagged, mut best) = (0, 0, None::<(f64, String)>);
    for entry in std::fs::read_dir(dir)? {
        let text = std::fs::read_to_string(entry?.path())?;
        for line in text.lines() {
            rows += 1;
            let value: serde_json::Value = serde_json::from_str(line)?;
            let score = value["fraud_probability"].as_f64().unwrap_or(0.0);
            if score > 0.5 {
                flagged += 1;
            }
            if best.as_ref().is_none_or(|(top, _)| score > *top) {
                best = Some((score, line.to_owned()));
            }
        }
    }
    Ok((rows, flagged, best.map(|(_, line)| line)))
}
