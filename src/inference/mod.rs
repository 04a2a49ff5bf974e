//! The inference stage: ONNX Runtime sessions that score batches of rows.
//!
//! The runtime library is loaded dynamically: from `ORT_DYLIB_PATH`, else
//! from tideflow's own setup location (`scripts/setup-onnxruntime.sh`
//! installs it from the `onnxruntime` wheel on PyPI, or with `--gpu` the
//! CUDA build from `onnxruntime-gpu`). A batch's columns are gathered into
//! one tensor per model input (`feeds`), and each mapped output becomes a
//! column (`outputs`). The same code scores micro-batches and bulk
//! batches; only the batch size differs.

mod executor;
mod feeds;
mod outputs;
mod text;

pub use executor::{ExecutorHandle, Scorer, SharedExecutor};

use crate::batch::{Batch, Cells};
use crate::plan::{Device, ModelPlan, OutputPlan};
use crate::schema::ColumnType;
use crate::{Error, Result};
use feeds::Feed;
use ort::session::Session;
use ort::value::ValueType;
use outputs::{OutputColumn, Reading};
use std::path::PathBuf;
use std::sync::OnceLock;
use tideflow_connectors::Value;

/// The ONNX Runtime version tideflow targets (what `ort` was built for).
pub const ORT_VERSION: &str = "1.31.1";

/// Where `scripts/setup-onnxruntime.sh` installs the CPU build.
pub fn setup_location() -> PathBuf {
    cache_dir()
        .join(format!("onnxruntime-{ORT_VERSION}"))
        .join("libonnxruntime.so")
}

/// Where `scripts/setup-onnxruntime.sh --gpu` installs the CUDA build.
pub fn gpu_setup_location() -> PathBuf {
    cache_dir()
        .join(format!("onnxruntime-gpu-{ORT_VERSION}"))
        .join("libonnxruntime.so")
}

fn cache_dir() -> PathBuf {
    std::env::var_os("TIDEFLOW_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/tideflow"))
        })
        .unwrap_or_else(|| PathBuf::from(".cache/tideflow"))
}

/// `ORT_DYLIB_PATH` when set; else the CUDA build if it was installed (it
/// runs on the CPU as well), else the CPU build.
fn library_path() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        return Err(Error::RuntimeMissing {
            looked_at: format!("ORT_DYLIB_PATH={}", path.display()),
            version: ORT_VERSION,
        });
    }
    let candidates = [gpu_setup_location(), setup_location()];
    if let Some(found) = candidates.iter().find(|path| path.is_file()) {
        return Ok(found.clone());
    }
    Err(Error::RuntimeMissing {
        looked_at: format!(
            "ORT_DYLIB_PATH (unset), {}, {}",
            candidates[0].display(),
            candidates[1].display()
        ),
        version: ORT_VERSION,
    })
}

/// The process-wide ONNX Runtime environment, loaded on first use.
pub fn environment() -> Result<&'static ort::environment::Environment> {
    static ENVIRONMENT: OnceLock<std::result::Result<ort::environment::Environment, String>> =
        OnceLock::new();
    let loaded = ENVIRONMENT.get_or_init(|| {
        let path = library_path().map_err(|error| error.to_string())?;
        let builder = ort::init_from(&path)
            .map_err(|error| format!("cannot load {}: {error}", path.display()))?;
        builder
            .with_name("tideflow")
            .build()
            .map_err(|error| format!("cannot start ONNX Runtime from {}: {error}", path.display()))
    });
    loaded.as_ref().map_err(|message| {
        if message.contains("not found") {
            library_path()
                .err()
                .unwrap_or_else(|| Error::Runtime(message.clone()))
        } else {
            Error::Runtime(message.clone())
        }
    })
}

/// What a model offers, as checked against its plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Signature {
    /// `(name, description)` of every model input.
    pub inputs: Vec<(String, String)>,
    /// `(name, description)` of every model output.
    pub outputs: Vec<(String, String)>,
}

/// A loaded model, ready to score batches.
#[derive(Debug)]
pub struct Model {
    runs: Runs,
    plan: ModelPlan,
    /// The model's inputs, each with its buffer.
    feeds: Vec<Feed>,
    /// How each mapped output is read, in plan order.
    readings: Vec<Reading>,
    output_types: Vec<ColumnType>,
    identity: String,
    device: String,
}

/// Describes a model's inputs and outputs (for `tideflow inspect`).
pub fn inspect(path: &std::path::Path) -> Result<Signature> {
    let session = open_session(path, Device::Cpu)?.0;
    Ok(signature(&session))
}

fn model_error(path: &std::path::Path, message: impl Into<String>) -> Error {
    Error::Model {
        path: path.display().to_string(),
        message: message.into(),
    }
}

fn open_session(path: &std::path::Path, device: Device) -> Result<(Session, String)> {
    let environment = environment()?;
    if !path.is_file() {
        return Err(model_error(
            path,
            "no such file; check [model] path (relative paths are taken from the working directory)",
        ));
    }
    let fail = |error: ort::Error| model_error(path, error.to_string().trim_end());
    match device {
        Device::Cpu => session_on(environment, path, None).map_err(fail),
        Device::Cuda(index) => session_on(environment, path, Some(index)).map_err(|error| {
            model_error(
                path,
                format!(
                    "device cuda:{index} is unavailable: {}\n  fix: install the CUDA build with `scripts/setup-onnxruntime.sh --gpu` (it needs an NVIDIA GPU and the CUDA 13 and cuDNN 9 libraries on the loader's path, e.g. LD_LIBRARY_PATH), or use device = \"cpu\"",
                    error.to_string().trim_end()
                ),
            )
        }),
        Device::Auto if cuda_compiled_in() => {
            // The CUDA build without a usable GPU (no device, no CUDA
            // libraries) fails at registration or at commit: either way
            // the model is scored on the CPU, and the user is told why.
            session_on(environment, path, Some(0)).or_else(|error| {
                static TOLD: std::sync::Once = std::sync::Once::new();
                TOLD.call_once(|| {
                    let reason = error.to_string();
                    eprintln!(
                        "tideflow: device auto: CUDA unavailable ({}); scoring on the CPU",
                        reason.trim_end()
                    );
                });
                session_on(environment, path, None).map_err(fail)
            })
        }
        Device::Auto => session_on(environment, path, None).map_err(fail),
    }
}

/// A session for the model at `path` on the CPU, or on the CUDA device
/// `cuda_index`, with the name of the device it runs on.
fn session_on(
    environment: &ort::environment::Environment,
    path: &std::path::Path,
    cuda_index: Option<i32>,
) -> std::result::Result<(Session, String), ort::Error> {
    let used = cuda_index.map_or("cpu".to_owned(), |index| format!("cuda:{index}"));
    let session = session_builder(environment, cuda_index)?.commit_from_file(path)?;
    Ok((session, used))
}

/// A session builder set up as tideflow runs its models, on the CPU or on
/// the CUDA device `cuda_index` (public so that benchmarks compare like
/// with like).
pub fn session_builder(
    environment: &ort::environment::Environment,
    cuda_index: Option<i32>,
) -> std::result::Result<ort::session::builder::SessionBuilder, ort::Error> {
    // One intra-op thread: tideflow parallelises over workers, and a
    // thread pool per worker would oversubscribe the cores.
    let builder = Session::builder(environment)?.with_intra_threads(1)?;
    let Some(index) = cuda_index else {
        return Ok(builder);
    };
    // Scores must not depend on the device's mood: full float32 precision
    // (no TF32 matrix products, which would differ from the CPU in the
    // third digit), convolution algorithms chosen by rule rather than by
    // timing, and deterministic kernels.
    let cuda = ort::ep::CUDA::default()
        .with_device_id(index)
        .with_tf32(false)
        .with_conv_algorithm_search(ort::ep::cuda::ConvAlgorithmSearch::Heuristic)
        .build()
        .error_on_failure();
    Ok(builder
        .with_deterministic_compute(true)?
        .with_execution_providers([cuda])?)
}

fn cuda_compiled_in() -> bool {
    use ort::ep::ExecutionProvider;
    ort::ep::CUDA::is_available().unwrap_or(false)
}

pub(crate) fn describe(dtype: &ValueType) -> String {
    match dtype {
        ValueType::Tensor { ty, shape, .. } => {
            let dims: Vec<String> = shape
                .iter()
                .map(|dim| {
                    if *dim < 0 {
                        "?".to_owned()
                    } else {
                        dim.to_string()
                    }
                })
                .collect();
            format!("{ty:?}[{}]", dims.join(", "))
        }
        other => format!("{other:?}"),
    }
}

fn signature(session: &Session) -> Signature {
    let list = |outlets: &[ort::value::Outlet]| {
        outlets
            .iter()
            .map(|outlet| (outlet.name().to_owned(), describe(outlet.dtype())))
            .collect()
    };
    Signature {
        inputs: list(session.inputs()),
        outputs: list(session.outputs()),
    }
}

impl Model {
    /// The plan the model was opened for.
    pub fn plan(&self) -> &ModelPlan {
        &self.plan
    }

    /// Loads the model of a plan and checks that its inputs and outputs fit
    /// the plan's columns.
    pub fn open(plan: &ModelPlan) -> Result<Model> {
        let (session, device) = open_session(&plan.path, plan.device)?;
        let fail = |message: String| model_error(&plan.path, message);
        let feeds = plan
            .inputs
            .iter()
            .map(|input| {
                let outlet = find_input(&session, input.name.as_deref()).map_err(fail)?;
                Feed::new(&session, outlet, input, plan.fill_null).map_err(fail)
            })
            .collect::<Result<Vec<_>>>()?;
        let fed: Vec<&str> = feeds.iter().flat_map(Feed::names).collect();
        if let Some(twice) = fed
            .iter()
            .enumerate()
            .find(|(index, name)| fed[..*index].contains(name))
        {
            return Err(fail(format!("input '{}' is fed twice", twice.1)));
        }
        if let Some(unfed) = session
            .inputs()
            .iter()
            .find(|outlet| !fed.contains(&outlet.name()))
        {
            return Err(fail(format!(
                "input '{}' ({}) is fed no columns; add a [[model.input]] for it",
                unfed.name(),
                describe(unfed.dtype())
            )));
        }
        let (output_types, readings) = plan
            .outputs
            .iter()
            .map(|output| {
                let outlet = find_output(&session, output).map_err(fail)?;
                outputs::check_output(outlet, output).map_err(fail)
            })
            .collect::<Result<(Vec<_>, Vec<_>)>>()?;
        let bytes = std::fs::read(&plan.path)
            .map_err(|error| model_error(&plan.path, error.to_string()))?;
        let version = session
            .metadata()
            .ok()
            .and_then(|metadata| metadata.version())
            .unwrap_or(0);
        let identity = format!("{}:v{version}@{:016x}", plan.name, fnv64(&bytes));
        let run_rows = plan.run_rows.fixed(device.starts_with("cuda"));
        Ok(Model {
            runs: Runs { session, run_rows },
            plan: plan.clone(),
            feeds,
            readings,
            output_types,
            identity,
            device,
        })
    }

    /// The column type of each mapped output, in plan order.
    pub fn output_types(&self) -> &[ColumnType] {
        &self.output_types
    }

    /// Name, version and content hash, as recorded in `_model`.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The device the session runs on.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The model's signature.
    pub fn signature(&self) -> Signature {
        signature(&self.runs.session)
    }

    /// Scores the rows of `batch` (in runs of `run_rows`, or one run) and
    /// adds the mapped outputs to it as columns.
    pub fn score(&mut self, batch: &mut Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let count = batch.len();
        let padded = self.padded(count);
        for feed in &mut self.feeds {
            feed.gather(batch, padded)
                .map_err(|message| Error::Inference {
                    rows: count,
                    message,
                })?;
        }
        let mut columns: Vec<Cells> = self
            .output_types
            .iter()
            .map(|ty| Cells::for_type(*ty, count))
            .collect();
        self.runs.score(
            &self.feeds,
            count,
            (&self.plan.outputs, &self.readings),
            |outputs, used| {
                for (cells, output) in columns.iter_mut().zip(outputs) {
                    output.append_to(cells, used);
                }
            },
        )?;
        for (cells, output) in columns.into_iter().zip(&self.plan.outputs) {
            batch.set_cells(output.slot, cells);
        }
        Ok(())
    }

    /// Rows held by the runs that score `rows` rows: `rows` rounded up to
    /// whole runs when runs have a fixed size.
    fn padded(&self, rows: usize) -> usize {
        self.runs
            .run_rows
            .map_or(rows, |run_rows| rows.div_ceil(run_rows) * run_rows)
    }

    /// Scores the first `rows` rows of `feeds` and returns one column per
    /// mapped output. Used to check row independence.
    fn score_feeds(&mut self, feeds: &[Feed], rows: usize) -> Result<Vec<Vec<Value>>> {
        let mut columns = vec![Vec::with_capacity(rows); self.plan.outputs.len()];
        self.runs.score(
            feeds,
            rows,
            (&self.plan.outputs, &self.readings),
            |outputs, used| {
                for (values, output) in columns.iter_mut().zip(outputs) {
                    values.extend(output.values(used));
                }
            },
        )?;
        Ok(columns)
    }

    /// Whether the model computes each row independently of the others in
    /// its batch, bit for bit: a probe batch is scored whole and row by row.
    /// Parity of model outputs across batching policies holds only then.
    pub fn is_row_independent(&mut self) -> Result<bool> {
        let rows = 37;
        let padded = self.padded(rows);
        let mut probe = std::mem::take(&mut self.feeds);
        for feed in &mut probe {
            feed.probe(padded);
        }
        let independent = self.scores_rows_alone(&probe, rows);
        self.feeds = probe;
        independent
    }

    /// Whether a probe batch scores NaN in any output: a version that
    /// does is refused before it is promoted.
    pub fn probe_has_nan(&mut self) -> Result<bool> {
        let rows = 37;
        let padded = self.padded(rows);
        let mut probe = std::mem::take(&mut self.feeds);
        for feed in &mut probe {
            feed.probe(padded);
        }
        let scored = self.score_feeds(&probe, rows);
        self.feeds = probe;
        let is_nan = |value: &Value| match value {
            Value::F64(number) => number.is_nan(),
            Value::F64List(list) => list.iter().any(|number| number.is_nan()),
            _ => false,
        };
        Ok(scored?.iter().flatten().any(is_nan))
    }

    /// Whether scoring the first `rows` rows of `probe` together gives
    /// each row the outputs it gets alone.
    fn scores_rows_alone(&mut self, probe: &[Feed], rows: usize) -> Result<bool> {
        let whole = self.score_feeds(probe, rows)?;
        for row in 0..rows {
            let single: Vec<Feed> = probe
                .iter()
                .map(|feed| feed.single_row(row, self.padded(1)))
                .collect();
            let single = self.score_feeds(&single, 1)?;
            let differs = whole
                .iter()
                .zip(&single)
                .any(|(column, single)| column[row] != single[0]);
            if differs {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// The model input named `name`, or its only input.
fn find_input<'session>(
    session: &'session Session,
    name: Option<&str>,
) -> std::result::Result<&'session ort::value::Outlet, String> {
    let inputs = session.inputs();
    let listing = || listing(inputs);
    match name {
        Some(name) => inputs
            .iter()
            .find(|input| input.name() == name)
            .ok_or_else(|| format!("has no input '{name}'; its inputs are {}", listing())),
        None if inputs.len() == 1 => Ok(&inputs[0]),
        None => Err(format!(
            "has {} inputs ({}); feed each with a [[model.input]] block (or name the one inputs = [...] feeds with input_name)",
            inputs.len(),
            listing()
        )),
    }
}

/// The model output an output column reads.
fn find_output<'session>(
    session: &'session Session,
    output: &OutputPlan,
) -> std::result::Result<&'session ort::value::Outlet, String> {
    let outputs = session.outputs();
    outputs
        .iter()
        .find(|outlet| outlet.name() == output.output)
        .ok_or_else(|| {
            format!(
                "has no output '{}' (for column '{}'); its outputs are {}",
                output.output,
                output.column,
                listing(outputs)
            )
        })
}

fn listing(outlets: &[ort::value::Outlet]) -> String {
    outlets
        .iter()
        .map(|outlet| format!("{}: {}", outlet.name(), describe(outlet.dtype())))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A session and how its runs are shaped.
#[derive(Debug)]
struct Runs {
    session: Session,
    /// Rows in every run, if fixed.
    run_rows: Option<usize>,
}

impl Runs {
    /// Scores the first `rows` rows of `feeds`: in one run, or with a
    /// fixed run size in runs of exactly that many rows, the feeds then
    /// holding whole runs (the rows past `rows` are padding). Each run's
    /// mapped outputs go to `take(outputs, used)`, in row order, `used`
    /// being the run's rows that are not padding.
    fn score(
        &mut self,
        feeds: &[Feed],
        rows: usize,
        mapped: (&[OutputPlan], &[Reading]),
        mut take: impl FnMut(&[OutputColumn<'_>], usize),
    ) -> Result<()> {
        let per_run = self.run_rows.unwrap_or(rows);
        let mut first = 0;
        while first < rows {
            let used = (rows - first).min(per_run);
            self.run_once(feeds, first, per_run, used, mapped, &mut take)?;
            first += per_run;
        }
        Ok(())
    }

    /// Runs the session once on rows `first..first + rows` of `feeds` and
    /// hands its mapped outputs to `take(outputs, used)`, `used` being
    /// the rows that are not padding.
    fn run_once(
        &mut self,
        feeds: &[Feed],
        first: usize,
        rows: usize,
        used: usize,
        (mapped, readings): (&[OutputPlan], &[Reading]),
        take: &mut impl FnMut(&[OutputColumn<'_>], usize),
    ) -> Result<()> {
        let fail = |error: ort::Error| Error::Inference {
            rows,
            message: error.to_string(),
        };
        let mut inputs = Vec::new();
        for feed in feeds {
            inputs.extend(feed.tensors(first, rows).map_err(fail)?);
        }
        let outputs = self.session.run(inputs).map_err(fail)?;
        let columns = mapped
            .iter()
            .zip(readings)
            .map(|(output, reading)| {
                let value = outputs
                    .get(&output.output)
                    .ok_or_else(|| Error::Inference {
                        rows,
                        message: format!("the model produced no output '{}'", output.output),
                    })?;
                OutputColumn::new(value, rows, *reading).map_err(fail)
            })
            .collect::<Result<Vec<_>>>()?;
        take(&columns, used);
        Ok(())
    }
}

fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
