//! Events/s against workers for the four backfill workloads, and the plot
//! of them the README shows (written by this program, with the machine it
//! ran on in its title).
//!
//! Workloads, on the same generated transactions (those of
//! `dataflows/fraud_generator.toml` with 100k users and 16 partitions; the
//! files hold the records the generator makes):
//! - generator → the 8 features of `dataflows/fraud_generator.toml` → null;
//! - the same → the fraud MLP → null;
//! - JSONL files → the 8 features → the MLP → Parquet (`dataflows/fraud.toml`);
//! - Parquet files → the same;
//! - JSONL files → the 4 user features of the feature bench → Parquet.
//!
//! Each point is the best of `--rounds` runs taken in turn. Prints each
//! workload's events/s, its rate at the most workers over its rate at one,
//! and the end-to-end paths' rates over the features-only rate at each
//! worker count.
//!
//! Run: `cargo bench --bench workers -- --events 2000000 --plot docs/workers.svg`

use clap::Parser;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[path = "common.rs"]
mod common;

#[derive(Debug, Parser)]
struct Args {
    /// Events per run.
    #[arg(long, default_value_t = 2_000_000)]
    events: u64,
    /// Worker counts (default: powers of two up to the machine's cores).
    #[arg(long, value_delimiter = ',')]
    workers: Vec<usize>,
    /// Runs per point, taken in turn (the best is kept).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Where to write the plot (SVG).
    #[arg(long)]
    plot: Option<PathBuf>,
    #[arg(long, hide = true)]
    bench: bool,
}

const PARTITIONS: u32 = 16;

/// A workload: its name, spec text and overrides.
struct Workload {
    name: &'static str,
    spec: String,
    overrides: Vec<String>,
}

fn workloads(root: &Path, dir: &Path, events: u64) -> Vec<Workload> {
    let generator_spec =
        std::fs::read_to_string(root.join("dataflows/fraud_generator.toml")).expect("spec");
    let files_spec = std::fs::read_to_string(root.join("dataflows/fraud.toml")).expect("spec");
    let model = format!(
        "model.path=\"{}\"",
        root.join("models/fraud_mlp.onnx").display()
    );
    let generator = vec![
        format!("source.count={events}"),
        format!("source.partitions={PARTITIONS}"),
        "source.users=100000".to_owned(),
        "batching.policy=\"bulk\"".to_owned(),
    ];
    let tideflow::plan::SourcePlan::Generator(transactions) =
        common::plan_of(&generator_spec, &generator).source
    else {
        unreachable!("fraud_generator.toml reads the generator")
    };
    let (input, parquet_input) = (dir.join("in"), dir.join("in-parquet"));
    for input in [&input, &parquet_input] {
        std::fs::create_dir_all(input).expect("input dir");
    }
    common::write_transactions(&input, &transactions);
    common::write_transactions_parquet(&parquet_input, &transactions);
    let files = |input: &Path, name: &str| {
        vec![
            format!("source.path=\"{}\"", input.display()),
            "batching.policy=\"bulk\"".to_owned(),
            "sink[0].type=\"parquet\"".to_owned(),
            format!("sink[0].path=\"{}\"", dir.join(name).display()),
            format!("dead_letters.path=\"{}\"", dir.join("dead").display()),
        ]
    };
    let mut scored = generator.clone();
    scored.push(model.clone());
    let mut end_to_end = files(&input, "out-mlp");
    end_to_end.push(model.clone());
    let mut from_parquet = files(&parquet_input, "out-mlp-parquet");
    from_parquet.extend([model, "source.format=\"parquet\"".to_owned()]);
    let four_features = format!(
        "name = \"four_features\"\n[source]\ntype = \"files\"\npath = \"unset\"\nformat = \"jsonl\"\n\
         key = \"user_id\"\n[schema]\nuser_id = \"string\"\nmerchant_id = \"string\"\n\
         amount = \"f64\"\nts = \"timestamp_ms\"\n[time]\nfield = \"ts\"\n\
         max_out_of_orderness = \"5s\"\n{}\
         [[sink]]\ntype = \"parquet\"\npath = \"unset\"\n[dead_letters]\ntype = \"null\"\n",
        common::FOUR_FEATURES
    );
    vec![
        Workload {
            name: "generator → 8 features → null",
            spec: common::features_only(&generator_spec),
            overrides: generator,
        },
        Workload {
            name: "generator → 8 features → MLP → null",
            spec: common::null_outputs(&generator_spec),
            overrides: scored,
        },
        Workload {
            name: "JSONL → 8 features → MLP → Parquet",
            spec: files_spec.clone(),
            overrides: end_to_end,
        },
        Workload {
            name: "Parquet → 8 features → MLP → Parquet",
            spec: files_spec,
            overrides: from_parquet,
        },
        Workload {
            name: "JSONL → 4 user features → Parquet",
            spec: four_features,
            overrides: vec![
                format!("source.path=\"{}\"", input.display()),
                format!("sink[0].path=\"{}\"", dir.join("out-four").display()),
            ],
        },
    ]
}

fn main() {
    common::allocate_as_the_binary_does();
    let args = Args::parse();
    common::require_onnxruntime();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let workers = if args.workers.is_empty() {
        std::iter::successors(Some(1), |count| Some(count * 2))
            .take_while(|count| *count <= cores)
            .collect()
    } else {
        args.workers.clone()
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let workloads = workloads(&common::root(), dir.path(), args.events);
    // rates[workload][worker count]
    let mut rates = vec![vec![0.0f64; workers.len()]; workloads.len()];
    for _ in 0..args.rounds {
        for (workload, rates) in workloads.iter().zip(&mut rates) {
            for (count, rate) in workers.iter().zip(rates.iter_mut()) {
                let (summary, elapsed) =
                    common::run_spec(&workload.spec, &workload.overrides, *count);
                assert_eq!(summary.counts.records_in, args.events, "{summary}");
                *rate = rate.max(args.events as f64 / elapsed.as_secs_f64());
            }
        }
    }
    println!(
        "events/s against workers: {} events, {PARTITIONS} partitions, {cores} cores, best of {}",
        args.events, args.rounds
    );
    print!("{:<40}", "workload");
    for count in &workers {
        print!(" {:>12}", format!("{count} w"));
    }
    println!(" {:>9}", "last / 1");
    for (workload, rates) in workloads.iter().zip(&rates) {
        print!("{:<40}", workload.name);
        for rate in rates {
            print!(" {rate:>12.0}");
        }
        println!(" {:>9.2}", rates[rates.len() - 1] / rates[0]);
    }
    for (index, name) in [(2, "JSONL"), (3, "Parquet")] {
        print!("{:<40}", format!("{name} end to end / generator features"));
        for (end_to_end, features) in rates[index].iter().zip(&rates[0]) {
            print!(" {:>12.2}", end_to_end / features);
        }
        println!();
    }
    if let Some(path) = &args.plot {
        let title = format!(
            "events/s against workers ({} events, {PARTITIONS} partitions, a {cores}-core machine)",
            args.events
        );
        let names: Vec<&str> = workloads.iter().map(|workload| workload.name).collect();
        std::fs::write(path, plot(&title, &workers, &names, &rates)).expect("writing the plot");
        println!("plot written to {}", path.display());
    }
}

/// A line chart as SVG: workers on a log-2 axis, events/s from zero.
fn plot(title: &str, workers: &[usize], names: &[&str], rates: &[Vec<f64>]) -> String {
    const COLOURS: [&str; 5] = ["#1b6ca8", "#d1495b", "#2e8b57", "#7b4fa0", "#e0a030"];
    let (width, height) = (800.0, 420.0);
    let (left, right, top, bottom) = (80.0, 300.0, 40.0, 50.0);
    let plot_width = width - left - right;
    let plot_height = height - top - bottom;
    let highest = rates.iter().flatten().copied().fold(0.0, f64::max);
    let step = nice_step(highest / 5.0);
    let y_max = (highest / step).ceil() * step;
    let last = (workers.len().max(2) - 1) as f64;
    let x_of = |index: usize| left + plot_width * index as f64 / last;
    let y_of = |rate: f64| top + plot_height * (1.0 - rate / y_max);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" font-size="14" text-anchor="middle">{}</text>"#,
        width / 2.0,
        escape(title)
    );
    let mut tick = 0.0;
    while tick <= y_max + step / 2.0 {
        let y = y_of(tick);
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            left + plot_width,
            left - 6.0,
            y + 4.0,
            millions(tick)
        );
        tick += step;
    }
    for (index, count) in workers.iter().enumerate() {
        let x = x_of(index);
        let _ = writeln!(
            svg,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{count}</text>"#,
            top + plot_height + 18.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">workers</text>"#,
        left + plot_width / 2.0,
        height - 10.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">events/s</text>"#,
        top + plot_height / 2.0,
        top + plot_height / 2.0
    );
    for (series, (name, rates)) in names.iter().zip(rates).enumerate() {
        let colour = COLOURS[series % COLOURS.len()];
        let points: Vec<String> = rates
            .iter()
            .enumerate()
            .map(|(index, rate)| format!("{:.1},{:.1}", x_of(index), y_of(*rate)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        for point in &points {
            let (x, y) = point.split_once(',').expect("x,y");
            let _ = writeln!(
                svg,
                r#"<circle cx="{x}" cy="{y}" r="3.5" fill="{colour}"/>"#
            );
        }
        let legend_y = top + 10.0 + 22.0 * series as f64;
        let legend_x = left + plot_width + 16.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{legend_x}" y1="{legend_y}" x2="{:.1}" y2="{legend_y}" stroke="{colour}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            legend_x + 18.0,
            legend_x + 24.0,
            legend_y + 4.0,
            escape(name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// A round step (1, 2 or 5 times a power of ten) near `rough`.
fn nice_step(rough: f64) -> f64 {
    let power = 10f64.powf(rough.max(1.0).log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|factor| factor * power)
        .find(|step| *step >= rough)
        .unwrap_or(10.0 * power)
}

fn millions(rate: f64) -> String {
    format!("{:.1}M", rate / 1e6)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
