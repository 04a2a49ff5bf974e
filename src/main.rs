//! The `tideflow` command line: run, launch, check, inspect, gen and demo.
//!
//! Arguments are parsed by clap into raw options, then turned into a
//! checked [`tideflow::plan::Plan`]; `anyhow` is used only here, at the
//! edge, where errors become messages and exit codes.

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tideflow::admin::AdminOptions;
use tideflow::cluster::Cluster;
use tideflow::dataflow::{RunOptions, prepare_model, run};
use tideflow::demo::{DemoOptions, run_demo};
use tideflow::launch::{LaunchOptions, count_interrupts, launch};
use tideflow::metrics::{Metrics, MetricsServer, parse_address};
use tideflow::plan;
use tideflow_connectors::generator::GeneratorConfig;
use tideflow_connectors::kafka::{ClientOptions, GenerateOptions, produce_generated};

/// Batches allocate their columns, rows that travel alone allocate their
/// values, and workers free what other workers allocated; mimalloc's
/// per-thread heaps make that markedly cheaper than the system allocator
/// (benches/features.rs measures it).
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
    /// Run a dataflow spec: alone, or as one process of a cluster.
    Run {
        /// The dataflow spec (TOML).
        spec: PathBuf,
        #[command(flatten)]
        run: RunArgs,
        /// Processes in the cluster (each started with its own --process).
        #[arg(long, default_value_t = 1, value_parser = at_least_one)]
        processes: usize,
        /// This process's index in the cluster, 0..processes.
        #[arg(long, default_value_t = 0)]
        process: usize,
        /// The cluster's hosts file: one host:port a line, in process order
        /// (needed with --processes above 1).
        #[arg(long)]
        hosts: Option<PathBuf>,
    },
    /// Run a dataflow spec as a cluster of local processes on free
    /// loopback ports, with their output prefixed by [pI].
    Launch {
        /// The dataflow spec (TOML).
        spec: PathBuf,
        /// Processes to start.
        #[arg(long, default_value_t = 2, value_parser = at_least_one)]
        processes: usize,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Produce synthetic card transactions (the generator's records, as
    /// JSON) to a Kafka topic, creating it if needed.
    Gen {
        /// `bootstrap.servers` of the brokers.
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        /// The topic.
        #[arg(long, default_value = "transactions")]
        topic: String,
        /// Records to produce; 0 produces until interrupted.
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        /// Records per second (0: as fast as the brokers take them).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Distinct users (keys).
        #[arg(long, default_value_t = 1000)]
        keys: u64,
        /// Partitions of the topic (and of the generator).
        #[arg(long, default_value_t = 4)]
        partitions: u32,
        /// Seed of the generator.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Stamp `ts` with the wall-clock time each record is due (its send
        /// time while the producer keeps up; for live latency) instead of
        /// the generated event time.
        #[arg(long)]
        wall_clock: bool,
        /// A librdkafka producer option, KEY=VALUE (may be repeated).
        #[arg(long = "option", short = 'X', value_name = "KEY=VALUE")]
        options: Vec<String>,
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
    /// Profile a bounded run's features and model outputs (a sample of
    /// their rows binned by deciles) as the reference `[drift]` measures
    /// later runs against.
    Profile {
        /// The dataflow spec (TOML).
        spec: PathBuf,
        /// Where to write the profile (JSON).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        run: RunArgs,
    },
    /// A registry model's versions: list them, or promote one.
    Models {
        #[command(subcommand)]
        action: ModelsAction,
    },
    /// Show an ONNX model's inputs and outputs.
    Inspect {
        /// The `.onnx` file.
        model: PathBuf,
    },
    /// Self-contained showcase on an embedded Kafka broker: synthetic
    /// transactions scored live, then replayed as a backfill; prints
    /// throughput, live latency and whether the two runs agree.
    Demo {
        /// Synthetic transactions to produce and score.
        #[arg(long, default_value_t = 20_000)]
        events: u64,
        /// Production rate, events per second.
        #[arg(long, default_value_t = 2_000.0)]
        rate: f64,
        /// Worker threads.
        #[arg(long, short, default_value_t = 2, value_parser = at_least_one)]
        workers: usize,
        /// Output directory.
        #[arg(long, default_value = "out/demo")]
        out: PathBuf,
    },
}

/// What `tideflow models` does.
#[derive(Debug, Subcommand)]
enum ModelsAction {
    /// The registry's versions and which scores rows from which event time.
    List {
        /// The dataflow spec whose model is a registry.
        spec: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Switch to VERSION: in a running dataflow (--admin, at the event
    /// time after every row it scored), or recorded ahead for the rows
    /// from event time --at on (for runs that have not read them yet).
    Promote {
        spec: PathBuf,
        version: u64,
        /// The admin API of the running dataflow (HOST:PORT or a port); of
        /// a cluster, every process's, separated by commas.
        #[arg(long, value_name = "ADDRESS", conflicts_with = "at")]
        admin: Option<String>,
        /// Record the promotion from this event time (epoch ms or RFC 3339)
        /// without a running dataflow.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Switch a running dataflow back to the version before its newest
    /// promotion.
    Rollback {
        spec: PathBuf,
        /// The admin API of the running dataflow (HOST:PORT or a port).
        #[arg(long, value_name = "ADDRESS")]
        admin: String,
    },
}

fn main() -> std::process::ExitCode {
    tideflow::allocator::apply_memory_settings();
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
            run,
            processes,
            process,
            hosts,
        } => run_here(&spec, &run, processes, process, hosts.as_deref()),
        Command::Launch {
            spec,
            processes,
            run,
        } => {
            // Fail here, not in N processes at once, on a spec that does
            // not load.
            plan::load(&spec, &run.overrides())?;
            let interrupts = count_interrupts()?;
            let options = LaunchOptions {
                program: std::env::current_exe().context("finding the tideflow executable")?,
                spec,
                processes,
                workers: run.workers,
                run_args: run.to_args(),
                metrics: run.metrics.as_deref().map(parse_address).transpose()?,
                admin: run.admin.as_deref().map(parse_address).transpose()?,
            };
            Ok(launch(&options, &interrupts)?)
        }
        Command::Check { spec, overrides } => check(&spec, &overrides),
        Command::Models { action } => models(action),
        Command::Profile { spec, out, run } => profile(&spec, &out, &run),
        Command::Gen {
            brokers,
            topic,
            count,
            rate,
            keys,
            partitions,
            seed,
            wall_clock,
            options,
        } => {
            let generator = GeneratorConfig {
                seed,
                users: keys,
                partitions,
                count: (count > 0).then_some(count),
                rate: (rate > 0.0).then_some(rate),
                ..GeneratorConfig::default()
            };
            generator.validate()?;
            let options = GenerateOptions {
                brokers,
                topic,
                options: parse_client_options(&options)?,
                generator,
                first: 0,
                wall_clock,
            };
            let stop = stop_on_interrupt()?;
            let started = std::time::Instant::now();
            let produced = produce_generated(&options, &|| stop.load(Ordering::Relaxed))?;
            let seconds = started.elapsed().as_secs_f64();
            eprintln!(
                "tideflow gen: {produced} records to {} at {} in {seconds:.2} s ({:.0} records/s)",
                options.topic,
                options.brokers,
                produced as f64 / seconds.max(1e-9)
            );
            Ok(())
        }
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
            rate,
            workers,
            out,
        } => demo(&DemoOptions {
            events,
            rate,
            workers,
            out,
        }),
    }
}

/// The options of a run, shared by `run` and `launch`.
#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Worker threads (per process).
    #[arg(long, short, default_value_t = 1, value_parser = at_least_one)]
    workers: usize,
    /// Override a spec value: KEY=VALUE with a dotted key, array items by
    /// index (sink[0].path=/tmp/out/). May be repeated.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Do not print progress.
    #[arg(long, short)]
    quiet: bool,
    /// Kafka start position: earliest, latest, committed, an RFC 3339
    /// time, epoch ms, or partition:offset,... (overrides source.from).
    #[arg(long)]
    from: Option<String>,
    /// Kafka end: never (live), now (the high watermarks at start), or
    /// a time (overrides source.until).
    #[arg(long)]
    until: Option<String>,
    /// Serve Prometheus metrics at HOST:PORT (a bare port binds
    /// 127.0.0.1). `launch` gives process I the port plus I.
    #[arg(long, value_name = "ADDRESS")]
    metrics: Option<String>,
    /// Serve the admin API (status, model versions, promotions) at
    /// HOST:PORT (a bare port binds 127.0.0.1). Changes take a bearer
    /// token when TIDEFLOW_ADMIN_TOKEN is set. `launch` gives process I
    /// the port plus I.
    #[arg(long, value_name = "ADDRESS")]
    admin: Option<String>,
    /// Let --admin bind an address other than loopback.
    #[arg(long)]
    admin_public: bool,
}

impl RunArgs {
    /// The spec overrides, with --from and --until as source settings.
    fn overrides(&self) -> Vec<String> {
        let mut overrides = self.overrides.clone();
        for (key, value) in [("from", &self.from), ("until", &self.until)] {
            if let Some(value) = value {
                overrides.push(format!("source.{key}={}", toml_string(value)));
            }
        }
        overrides
    }

    /// The same options as `tideflow run` arguments, but for --workers
    /// (the launcher gives it).
    fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for value in &self.overrides {
            args.extend(["--set".to_owned(), value.clone()]);
        }
        if self.quiet {
            args.push("--quiet".into());
        }
        if self.admin_public {
            args.push("--admin-public".into());
        }
        for (flag, value) in [("--from", &self.from), ("--until", &self.until)] {
            if let Some(value) = value {
                args.extend([flag.to_owned(), value.clone()]);
            }
        }
        args
    }
}

/// `count` things, the noun in the singular for one.
fn counted(count: usize, noun: &str) -> String {
    match count {
        1 => format!("1 {noun}"),
        _ => format!("{count} {noun}s"),
    }
}

/// A count of workers or processes: a whole number, at least 1 (rather
/// than a run that quietly takes 0 for 1, or asks for a hosts file).
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(count) => Ok(count),
        Err(_) => Err(format!("'{text}' is not a whole number")),
    }
}

/// Runs a spec in this process, alone or as member `process` of a cluster.
fn run_here(
    spec: &Path,
    run_args: &RunArgs,
    processes: usize,
    process: usize,
    hosts: Option<&Path>,
) -> anyhow::Result<()> {
    let cluster = match (processes, hosts) {
        (1, None) => None,
        (_, Some(hosts)) => Some(Cluster::from_hosts_file(hosts, processes, process)?),
        (_, None) => bail!(
            "--processes {processes} needs --hosts FILE (one host:port a line); \
             `tideflow launch` starts a local cluster without one"
        ),
    };
    let plan = plan::load(spec, &run_args.overrides())?;
    let stop = Some(stop_on_interrupt()?);
    let metrics = Arc::new(Metrics::default());
    let _server = match &run_args.metrics {
        Some(address) => {
            let server = MetricsServer::start(parse_address(address)?, metrics.clone())?;
            eprintln!("tideflow: metrics at http://{}/metrics", server.address());
            Some(server)
        }
        None => None,
    };
    let admin = run_args
        .admin
        .as_deref()
        .map(|address| AdminOptions::new(parse_address(address)?, run_args.admin_public))
        .transpose()?;
    let summary = run(
        plan,
        &RunOptions {
            workers: run_args.workers,
            progress: !run_args.quiet,
            stop,
            cluster,
            metrics: Some(metrics),
            admin,
            drift: None,
        },
    )?;
    eprint!("{summary}");
    if !summary.reconciles() {
        bail!("input records do not reconcile with outputs and dead letters");
    }
    Ok(())
}

/// `tideflow profile`: runs the spec over its bounded input, sampling its
/// rows, and writes their profile.
fn profile(spec: &Path, out: &Path, run_args: &RunArgs) -> anyhow::Result<()> {
    let plan = plan::load(spec, &run_args.overrides())?;
    if let tideflow::plan::SourcePlan::Kafka(kafka) = &plan.source
        && kafka.config.end == tideflow_connectors::kafka::EndPosition::Never
    {
        bail!(
            "a profile is of a bounded run: give the Kafka source an end (--until now, or a time)"
        );
    }
    let drift = Arc::new(tideflow::models::drift::Drift::profiling(
        plan.drift_columns(),
    ));
    let summary = run(
        plan,
        &RunOptions {
            workers: run_args.workers,
            progress: !run_args.quiet,
            drift: Some(drift.clone()),
            ..RunOptions::default()
        },
    )?;
    eprint!("{summary}");
    let profile = drift.profile().expect("profiling");
    let text = serde_json::to_string_pretty(&profile)?;
    std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "profile of {} columns over a sample of {} rows written to {}",
        profile.columns.len(),
        profile.rows,
        out.display()
    );
    Ok(())
}

/// `tideflow models`.
fn models(action: ModelsAction) -> anyhow::Result<()> {
    match action {
        ModelsAction::List { spec, overrides } => {
            let registry = registry_of(&spec, &overrides)?;
            let schedule = registry.schedule()?;
            println!(
                "{}: versions {:?}",
                registry.dir().display(),
                registry.versions()?
            );
            println!("  v{} from the start", schedule.base);
            for (from, version) in &schedule.switches {
                println!("  v{version} from event time {from} ms");
            }
            Ok(())
        }
        ModelsAction::Promote {
            spec,
            version,
            admin,
            at,
            overrides,
        } => match (admin, at) {
            (Some(admin), _) => {
                let addresses: Vec<&str> = admin.split(',').map(str::trim).collect();
                if let [address] = addresses[..] {
                    let body = format!("{{\"version\":{version}}}");
                    println!("{}", admin_request(address, "/models/promote", &body)?);
                } else {
                    println!("{}", promote_cluster(&addresses, version)?);
                }
                Ok(())
            }
            (None, Some(at)) => {
                let registry = registry_of(&spec, &overrides)?;
                registry.model_path(version)?;
                let from_ms = tideflow_connectors::kafka::parse_time(&at).map_err(|error| {
                    anyhow::anyhow!("--at {at}: {error}; write epoch ms or an RFC 3339 time")
                })?;
                registry.schedule()?;
                registry.record(&tideflow::models::registry::Promotion {
                    version,
                    from_ms: Some(from_ms),
                    requested_at_ms: tideflow::models::registry::now_ms(),
                })?;
                println!("recorded: v{version} scores rows from event time {from_ms} ms");
                Ok(())
            }
            (None, None) => bail!(
                "say where: --admin ADDRESS (a running dataflow's admin API) or --at TIME (recorded ahead, for rows not yet read)"
            ),
        },
        ModelsAction::Rollback { spec: _, admin } => {
            println!("{}", admin_request(&admin, "/models/rollback", "{}")?);
            Ok(())
        }
    }
}

/// Promotes `version` in every process of a cluster: prepares them all
/// (each holds its scoring and says the newest event time it scored),
/// then commits them all from the event time after the newest of them
/// (and not before the slowest watermark). A process that cannot prepare
/// lets the others go unchanged.
fn promote_cluster(addresses: &[&str], version: u64) -> anyhow::Result<String> {
    let body = format!("{{\"version\":{version}}}");
    let mut prepared: Vec<(&str, serde_json::Value)> = Vec::new();
    for address in addresses {
        match admin_request(address, "/models/prepare", &body) {
            Ok(answer) => prepared.push((address, serde_json::from_str(&answer)?)),
            Err(error) => {
                for (address, _) in &prepared {
                    let _ = admin_request(address, "/models/abort", "{}");
                }
                bail!(
                    "{address} did not prepare the promotion, which none of the processes made: {error:#}"
                );
            }
        }
    }
    let after_scored = prepared
        .iter()
        .filter_map(|(_, answer)| answer["scored_up_to_ms"].as_i64())
        .max()
        .unwrap_or(i64::MIN)
        .saturating_add(1);
    let slowest = prepared
        .iter()
        .filter_map(|(_, answer)| answer["watermark_ms"].as_i64())
        .min();
    let from_ms = after_scored.max(slowest.unwrap_or(i64::MIN));
    let commit = format!("{{\"version\":{version},\"from_ms\":{from_ms}}}");
    let mut answer = String::new();
    for (address, _) in &prepared {
        answer = admin_request(address, "/models/commit", &commit).with_context(|| {
            format!("committing the promotion in {address} (the processes before it have it: promote again to make them agree)")
        })?;
    }
    Ok(answer)
}

/// The registry of a spec's model.
fn registry_of(
    spec: &Path,
    overrides: &[String],
) -> anyhow::Result<tideflow::models::registry::Registry> {
    let plan = plan::load(spec, overrides)?;
    let Some(registry) = plan.model.and_then(|model| model.registry) else {
        bail!(
            "{}: the model is not a registry (model.path = a directory NAME/ of NAME/VERSION/model.onnx)",
            spec.display()
        );
    };
    Ok(tideflow::models::registry::Registry::open(&registry.dir)?)
}

/// POSTs `body` to `path` of the admin API at `address`, with the bearer
/// token from the environment; the answer's body, or why it failed.
fn admin_request(address: &str, path: &str, body: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let address = parse_address(address)?;
    let mut stream = std::net::TcpStream::connect(address)
        .with_context(|| format!("connecting to the admin API at {address}"))?;
    let token = std::env::var(tideflow::admin::TOKEN_VARIABLE)
        .ok()
        .filter(|token| !token.is_empty())
        .map_or(String::new(), |token| {
            format!("Authorization: Bearer {token}\r\n")
        });
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {address}\r\n{token}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let status = answer.split(' ').nth(1).unwrap_or_default().to_owned();
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    if status != "200" {
        bail!("the admin API answered {status}: {body}");
    }
    Ok(body)
}

/// A value as a TOML string literal, for `--set`-style overrides.
fn toml_string(value: &str) -> String {
    toml::Value::String(value.to_owned()).to_string()
}

/// `KEY=VALUE` librdkafka options from the command line.
fn parse_client_options(pairs: &[String]) -> anyhow::Result<ClientOptions> {
    let mut options = ClientOptions::default();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("option '{pair}' is not KEY=VALUE");
        };
        options.set(key.trim(), value.trim());
    }
    Ok(options)
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
        "  {}, {}, {}",
        counted(plan.field_count, "field"),
        counted(plan.stages.len(), "stage"),
        counted(plan.expressions.len(), "expression")
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
    for table in &plan.tables {
        let input = &table.input;
        println!(
            "  table {}: key {}, {} ({}), versioned by {}",
            input.name,
            input.columns[table.key_slot].name,
            counted(input.columns.len(), "field"),
            tideflow::operators::source::origin(&input.source),
            input.columns[input.time_slot].name
        );
    }
    for join in &plan.joins {
        let table = &plan.tables[join.table].input;
        let added: Vec<_> = join
            .slots
            .iter()
            .map(|slot| plan.columns[*slot].name.as_str())
            .collect();
        println!(
            "  join {} as of the event time on {}: adds {}{}",
            table.name,
            plan.columns[join.on_slot].name,
            added.join(", "),
            if join.required {
                " (required: no version is a dead letter)"
            } else {
                " (null where no version)"
            }
        );
    }
    for label in &plan.labels {
        println!(
            "  label {}: {} of {} matched on {}, within {} ms after the event (default {})",
            plan.columns[label.slot].name,
            label.input.columns[label.value_slot].name,
            tideflow::operators::source::origin(&label.input.source),
            plan.columns[label.on_slot].name,
            label.horizon_ms,
            tideflow::decode::value_to_json(&label.default)
        );
    }
    if let Some(versions) = model {
        let current = versions.current();
        println!(
            "  model {} on {}; rows independent: {}",
            current.identity, current.device, current.independent
        );
        if versions.is_registry() {
            let schedule = versions.schedule();
            println!(
                "  model versions: {:?} in the registry; v{} from the start{}",
                versions.available()?,
                schedule.base,
                schedule
                    .switches
                    .iter()
                    .map(|(from, version)| format!(", v{version} from {from} ms"))
                    .collect::<String>()
            );
        }
    }
    if let Some(model) = &plan.model {
        for shadow in &model.shadows {
            let columns: Vec<&str> = shadow
                .outputs
                .iter()
                .map(|output| output.column.as_str())
                .collect();
            println!("  shadow {} into {}", shadow.label, columns.join(", "));
        }
        if let Some(canary) = &model.canary {
            println!(
                "  canary v{} for {:.2}% of keys by {}",
                canary.version,
                100.0 * canary.buckets as f64 / tideflow::plan::CANARY_BUCKETS as f64,
                plan.columns[canary.key_slot].name
            );
        }
    }
    if let Some(reference) = &plan.drift_reference {
        println!(
            "  drift of {} columns against {}",
            plan.drift_columns().len(),
            reference.display()
        );
    }
    for input in plan.model.iter().flat_map(|model| &model.inputs) {
        let columns: Vec<_> = input
            .columns
            .iter()
            .map(|column| column.name.as_str())
            .collect();
        println!(
            "  model input {}: {}",
            input.name.as_deref().unwrap_or("(its only input)"),
            columns.join(", ")
        );
    }
    let columns: Vec<_> = plan
        .columns
        .iter()
        .map(|column| format!("{}:{}", column.name, column.ty.name()))
        .collect();
    println!("  output columns: {}", columns.join(", "));
    Ok(())
}

fn demo(options: &DemoOptions) -> anyhow::Result<()> {
    let report = run_demo(options)?;
    let latency = report.latency;
    let rate = |summary: &tideflow::run::Summary| {
        summary.counts.records_in as f64 / summary.elapsed.as_secs_f64().max(1e-9)
    };
    println!();
    println!(
        "rows scored: live {}, backfill {}",
        report.live.counts.rows_out, report.backfill.counts.rows_out
    );
    println!(
        "throughput: live {:.0} events/s (paced by the producer), backfill {:.0} events/s",
        rate(&report.live),
        rate(&report.backfill)
    );
    let over = if latency.steady_events < latency.events {
        format!(
            "the {} events sent after the first second and before the last",
            latency.steady_events
        )
    } else {
        format!(
            "all {} events (production too short to leave out its first and last second)",
            latency.events
        )
    };
    println!(
        "live latency, event sent -> score produced: p50 {} ms, p99 {} ms over {over}; max {} ms (the last second's events wait for the end of the run: no later event moves the watermark past them)",
        latency.p50, latency.p99, latency.max
    );
    match report.difference {
        None => println!("parity: live and backfill outputs are identical, row for row"),
        Some(difference) => {
            bail!("parity: the live and backfill outputs differ; first difference:\n{difference}")
        }
    }
    let training = &report.training;
    println!(
        "training set: {} rows in {}, {} joined to a merchant version, {} labelled fraud, {} with a complete horizon",
        training.rows,
        options.out.join("training").display(),
        training.joined,
        training.labelled,
        training.complete
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Zero workers or processes is refused with the reason, by every
    /// command that takes them.
    #[test]
    fn counts_of_workers_and_processes_start_at_one() {
        let refused = [
            vec!["run", "x.toml", "--workers", "0"],
            vec!["run", "x.toml", "--processes", "0"],
            vec!["launch", "x.toml", "--processes", "0"],
            vec!["launch", "x.toml", "-w", "0"],
            vec!["demo", "--workers", "0"],
        ];
        for args in refused {
            let error = Cli::try_parse_from(std::iter::once("tideflow").chain(args.clone()))
                .expect_err("zero is refused");
            assert!(
                error.to_string().contains("must be at least 1"),
                "{args:?}: {error}"
            );
        }
        let error = Cli::try_parse_from(["tideflow", "run", "x.toml", "--workers", "two"])
            .expect_err("a word is refused");
        assert!(
            error.to_string().contains("'two' is not a whole number"),
            "{error}"
        );
        let parsed = Cli::try_parse_from(["tideflow", "run", "x.toml", "--workers", "3"]);
        assert!(parsed.is_ok(), "{parsed:?}");
    }

    #[test]
    fn counts_name_one_thing_in_the_singular() {
        assert_eq!(counted(1, "stage"), "1 stage");
        assert_eq!(counted(0, "expression"), "0 expressions");
        assert_eq!(counted(3, "field"), "3 fields");
    }
}
