//! The inference stage: ONNX Runtime sessions that score batches of rows.
//!
//! The runtime library is loaded dynamically: from `ORT_DYLIB_PATH`, else
//! from tideflow's own setup location (`scripts/setup-onnxruntime.sh`
//! installs it from the `onnxruntime` wheel on PyPI, or with `--gpu` the
//! CUDA build from `onnxruntime-gpu`). A batch's input
//! columns are assembled into one contiguous float32 tensor, and each mapped
//! output becomes a column. The same code scores micro-batches and bulk
//! batches; only the batch size differs.

use crate::batch::{Batch, Cells, SlotCells};
use crate::plan::{Device, ModelPlan, OutputPlan};
use crate::schema::ColumnType;
use crate::{Error, Result};
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef, ValueType};
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
    output_types: Vec<ColumnType>,
    identity: String,
    device: String,
    /// Reused tensor buffer: rows x inputs.
    tensor: Vec<f32>,
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

fn describe(dtype: &ValueType) -> String {
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
        let input_name = check_input(&session, plan)?;
        let output_types = plan
            .outputs
            .iter()
            .map(|output| check_output(&session, plan, output))
            .collect::<Result<Vec<_>>>()?;
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
            runs: Runs {
                session,
                input_name,
                run_rows,
            },
            plan: plan.clone(),
            output_types,
            identity,
            device,
            tensor: Vec::new(),
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
        let width = self.plan.input_slots.len();
        let count = batch.len();
        // Every cell of the rows is written below, and the padding of a
        // last short run is zeroed; the buffer keeps its capacity from
        // batch to batch.
        self.tensor.resize(self.padded(count) * width, 0.0);
        self.tensor[count * width..].fill(0.0);
        gather_inputs(
            batch,
            &self.plan.input_slots,
            self.plan.fill_null,
            &mut self.tensor[..count * width],
        );
        let mut columns: Vec<Cells> = self
            .output_types
            .iter()
            .map(|ty| Cells::for_type(*ty, count))
            .collect();
        self.runs.score(
            &self.tensor,
            width,
            count,
            &self.plan.outputs,
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

    /// Scores a `rows x width` matrix and returns one column per mapped
    /// output. Used to check row independence.
    fn score_matrix(&mut self, matrix: &[f32], rows: usize) -> Result<Vec<Vec<Value>>> {
        let width = self.plan.input_slots.len();
        let mut padded = matrix.to_vec();
        padded.resize(self.padded(rows) * width, 0.0);
        let mut columns = vec![Vec::with_capacity(rows); self.plan.outputs.len()];
        self.runs
            .score(&padded, width, rows, &self.plan.outputs, |outputs, used| {
                for (values, output) in columns.iter_mut().zip(outputs) {
                    values.extend((0..used).map(|row| output.value(row)));
                }
            })?;
        Ok(columns)
    }

    /// Whether the model computes each row independently of the others in
    /// its batch, bit for bit: a probe batch is scored whole and row by row.
    /// Parity of model outputs across batching policies holds only then.
    pub fn is_row_independent(&mut self) -> Result<bool> {
        let width = self.plan.input_slots.len();
        let rows = 37;
        let probe: Vec<f32> = (0..rows * width)
            .map(|index| ((index * 7919 % 1000) as f32) / 97.0 - 3.0)
            .collect();
        let whole = self.score_matrix(&probe, rows)?;
        for row in 0..rows {
            let single = self.score_matrix(&probe[row * width..(row + 1) * width], 1)?;
            for (column, single_column) in whole.iter().zip(&single) {
                if column[row] != single_column[0] {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}

/// A tensor cell from a value: numbers narrowed to `f32`, anything else
/// the null fill.
#[inline]
/// Writes the input cells of every row of `batch` into `tensor`, row by
/// row (`slots.len()` cells each); nulls and non-numbers become
/// `fill_null`.
fn gather_inputs(batch: &Batch, slots: &[usize], fill_null: f32, tensor: &mut [f32]) {
    let width = slots.len();
    let readers: Vec<SlotCells<'_>> = slots.iter().map(|slot| batch.cells(*slot)).collect();
    let floats: Option<Vec<(&[f64], &[bool])>> = readers.iter().map(SlotCells::floats).collect();
    match floats {
        // Inputs computed as float columns (features, expressions): the
        // common case, read straight from the vectors, a block of rows at
        // a time so that the block's part of the tensor stays in L1.
        Some(columns) => gather_floats(&columns, fill_null, tensor),
        // Some inputs in the rows (fields, or features that travelled
        // with their rows): float columns column by column, then the cells
        // the rows hold in one pass over the rows. Each row's cells are an
        // allocation of their own, so reading them a column at a time
        // would bring every row into cache once per column.
        None => {
            let mut held_by_rows = Vec::new();
            for (column, reader) in readers.iter().enumerate() {
                let Some((values, present)) = reader.floats() else {
                    held_by_rows.push((column, reader));
                    continue;
                };
                let rows = tensor.chunks_exact_mut(width);
                for (cells, (value, present)) in rows.zip(values.iter().zip(present)) {
                    cells[column] = if *present { *value as f32 } else { fill_null };
                }
            }
            for (index, cells) in tensor.chunks_exact_mut(width).enumerate() {
                for (column, reader) in &held_by_rows {
                    cells[*column] = reader
                        .number(index)
                        .map_or(fill_null, |number| number as f32);
                }
            }
        }
    }
}

/// Row by row, the cells of float columns into `tensor`: every value
/// first, then `fill_null` over the nulls of the columns that have any.
/// A model's width is known here only at run time; for the widths of
/// small models the loop over a row's cells is compiled for that width,
/// which the compiler unrolls (measured by benches/inference.rs: the
/// general loop with a null check per cell took several times as long).
fn gather_floats(columns: &[(&[f64], &[bool])], fill_null: f32, tensor: &mut [f32]) {
    let width = columns.len();
    let values: Vec<&[f64]> = columns.iter().map(|(values, _)| *values).collect();
    copy_values(&values, tensor);
    for (column, (_, present)) in columns.iter().enumerate() {
        // Not `all`: without its early exit the check is vectorized.
        if present.iter().fold(true, |all, present| all & present) {
            continue;
        }
        for (cells, present) in tensor.chunks_exact_mut(width).zip(*present) {
            if !present {
                cells[column] = fill_null;
            }
        }
    }
}

/// `tensor[row * width + column] = columns[column][row]`, narrowed.
fn copy_values(columns: &[&[f64]], tensor: &mut [f32]) {
    macro_rules! fixed_widths {
        ($($width:literal)*) => {
            match columns.len() {
                $($width => {
                    if let Ok(columns) = <&[_; $width]>::try_from(columns) {
                        return copy_fixed::<$width>(columns, tensor);
                    }
                })*
                _ => {}
            }
        };
    }
    fixed_widths!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
    for (row, cells) in tensor.chunks_exact_mut(columns.len()).enumerate() {
        for (cell, values) in cells.iter_mut().zip(columns) {
            *cell = values[row] as f32;
        }
    }
}

fn copy_fixed<const WIDTH: usize>(columns: &[&[f64]; WIDTH], tensor: &mut [f32]) {
    for (row, cells) in tensor.chunks_exact_mut(WIDTH).enumerate() {
        for (cell, values) in cells.iter_mut().zip(columns) {
            *cell = values[row] as f32;
        }
    }
}

/// A session and how its runs are shaped.
#[derive(Debug)]
struct Runs {
    session: Session,
    /// The model input fed the tensor.
    input_name: String,
    /// Rows in every run, if fixed.
    run_rows: Option<usize>,
}

impl Runs {
    /// Scores the first `rows` rows of `matrix` (`width` cells each): in
    /// one run, or with a fixed run size in runs of exactly that many
    /// rows, `matrix` then holding whole runs (the rows past `rows` are
    /// padding). Each run's mapped outputs go to `take(outputs, used)`,
    /// in row order, `used` being the run's rows that are not padding.
    fn score(
        &mut self,
        matrix: &[f32],
        width: usize,
        rows: usize,
        mapped: &[OutputPlan],
        mut take: impl FnMut(&[OutputColumn<'_>], usize),
    ) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        let per_run = self.run_rows.unwrap_or(rows);
        for (index, run) in matrix.chunks(per_run * width).enumerate() {
            let first = index * per_run;
            if first >= rows {
                break;
            }
            let used = (rows - first).min(per_run);
            self.run_once(run, width, used, mapped, &mut take)?;
        }
        Ok(())
    }

    /// Runs the session once on a float32 matrix of `width` columns and
    /// hands its mapped outputs to `take(outputs, used)`, `used` being
    /// the rows that are not padding.
    fn run_once(
        &mut self,
        matrix: &[f32],
        width: usize,
        used: usize,
        mapped: &[OutputPlan],
        take: &mut impl FnMut(&[OutputColumn<'_>], usize),
    ) -> Result<()> {
        let rows = matrix.len() / width;
        let fail = |error: ort::Error| Error::Inference {
            rows,
            message: error.to_string(),
        };
        let tensor = TensorRef::from_array_view(([rows, width], matrix)).map_err(fail)?;
        let outputs = self
            .session
            .run(ort::inputs![self.input_name.as_str() => tensor])
            .map_err(fail)?;
        let columns = mapped
            .iter()
            .map(|output| {
                let value = outputs
                    .get(&output.output)
                    .ok_or_else(|| Error::Inference {
                        rows,
                        message: format!("the model produced no output '{}'", output.output),
                    })?;
                OutputColumn::new(value, rows, output.index.unwrap_or(0)).map_err(fail)
            })
            .collect::<Result<Vec<_>>>()?;
        take(&columns, used);
        Ok(())
    }
}

/// Column `index` of a model output: its data, whatever the element type,
/// and the output's row width.
struct OutputColumn<'output> {
    data: OutputData<'output>,
    width: usize,
    index: usize,
}

enum OutputData<'output> {
    F32(&'output [f32]),
    F64(&'output [f64]),
    I64(&'output [i64]),
    I32(&'output [i32]),
}

impl<'output> OutputColumn<'output> {
    fn new(value: &'output ort::value::DynValue, rows: usize, index: usize) -> ort::Result<Self> {
        // Extracted as the element type the value has: a failed attempt
        // builds an error message, which costs more than a small batch's
        // scatter.
        let element = match value.dtype() {
            ValueType::Tensor { ty, .. } => Some(*ty),
            _ => None,
        };
        let data = match element {
            Some(TensorElementType::Float64) => OutputData::F64(value.try_extract_tensor()?.1),
            Some(TensorElementType::Int64) => OutputData::I64(value.try_extract_tensor()?.1),
            Some(TensorElementType::Int32) => OutputData::I32(value.try_extract_tensor()?.1),
            // Float32, and anything else, whose error the extraction gives.
            _ => OutputData::F32(value.try_extract_tensor()?.1),
        };
        let mut column = OutputColumn {
            data,
            width: 1,
            index,
        };
        column.width = column.len().checked_div(rows).unwrap_or(0).max(1);
        Ok(column)
    }

    /// Appends the values of the first `rows` rows to `cells`: copied
    /// in bulk where the cells have the output's type (widened), value by
    /// value otherwise.
    fn append_to(&self, cells: &mut Cells, rows: usize) {
        let complete = self.index < self.width && rows * self.width <= self.len();
        let (width, index) = (self.width, self.index);
        match (&self.data, complete) {
            (OutputData::F32(data), true) => {
                cells.extend_f64(column_of(data, width, index, rows).map(f64::from))
            }
            (OutputData::F64(data), true) => cells.extend_f64(column_of(data, width, index, rows)),
            (OutputData::I64(data), true) => cells.extend_i64(column_of(data, width, index, rows)),
            (OutputData::I32(data), true) => {
                cells.extend_i64(column_of(data, width, index, rows).map(i64::from))
            }
            _ => (0..rows).for_each(|row| cells.push(self.value(row))),
        }
    }

    fn len(&self) -> usize {
        match self.data {
            OutputData::F32(data) => data.len(),
            OutputData::F64(data) => data.len(),
            OutputData::I64(data) => data.len(),
            OutputData::I32(data) => data.len(),
        }
    }

    /// The value of `row`, or null past the end of a short output.
    fn value(&self, row: usize) -> Value {
        let at = row * self.width + self.index;
        let value = match self.data {
            OutputData::F32(data) => data.get(at).map(|value| Value::F64(f64::from(*value))),
            OutputData::F64(data) => data.get(at).map(|value| Value::F64(*value)),
            OutputData::I64(data) => data.get(at).map(|value| Value::I64(*value)),
            OutputData::I32(data) => data.get(at).map(|value| Value::I64(i64::from(*value))),
        };
        value.unwrap_or(Value::Null)
    }
}

/// Element `index` of each of the first `rows` rows of `width` elements.
fn column_of<T: Copy>(
    data: &[T],
    width: usize,
    index: usize,
    rows: usize,
) -> impl Iterator<Item = T> + '_ {
    data.chunks_exact(width)
        .take(rows)
        .map(move |row| row[index])
}

fn check_input(session: &Session, plan: &ModelPlan) -> Result<String> {
    let inputs = session.inputs();
    let listing = || {
        inputs
            .iter()
            .map(|input| format!("{}: {}", input.name(), describe(input.dtype())))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let input = match &plan.input_name {
        Some(name) => inputs
            .iter()
            .find(|input| input.name() == name)
            .ok_or_else(|| {
                model_error(
                    &plan.path,
                    format!("has no input '{name}'; its inputs are {}", listing()),
                )
            })?,
        None if inputs.len() == 1 => &inputs[0],
        None => {
            return Err(model_error(
                &plan.path,
                format!(
                    "has {} inputs ({}); name the one that takes the feature columns with input_name",
                    inputs.len(),
                    listing()
                ),
            ));
        }
    };
    let ValueType::Tensor { ty, shape, .. } = input.dtype() else {
        return Err(model_error(
            &plan.path,
            format!("input '{}' is not a tensor", input.name()),
        ));
    };
    if *ty != TensorElementType::Float32 {
        return Err(model_error(
            &plan.path,
            format!(
                "input '{}' is {ty:?}; tideflow feeds float32 tensors",
                input.name()
            ),
        ));
    }
    let width = plan.input_slots.len() as i64;
    let fits = shape.len() == 2 && (shape[1] < 0 || shape[1] == width);
    if !fits {
        return Err(model_error(
            &plan.path,
            format!(
                "input '{}' has shape {}, but the spec feeds {width} columns ({}); make [model] inputs list exactly the model's features, in order",
                input.name(),
                describe(input.dtype()),
                plan.input_columns.join(", ")
            ),
        ));
    }
    Ok(input.name().to_owned())
}

fn check_output(session: &Session, plan: &ModelPlan, output: &OutputPlan) -> Result<ColumnType> {
    let outputs = session.outputs();
    let listing = || {
        outputs
            .iter()
            .map(|outlet| format!("{}: {}", outlet.name(), describe(outlet.dtype())))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let outlet = outputs
        .iter()
        .find(|outlet| outlet.name() == output.output)
        .ok_or_else(|| {
            model_error(
                &plan.path,
                format!(
                    "has no output '{}' (for column '{}'); its outputs are {}",
                    output.output,
                    output.column,
                    listing()
                ),
            )
        })?;
    let ValueType::Tensor { ty, shape, .. } = outlet.dtype() else {
        return Err(model_error(
            &plan.path,
            format!(
                "output '{}' is not a tensor (export classifiers without ZipMap)",
                output.output
            ),
        ));
    };
    let column_type = match ty {
        TensorElementType::Float32 | TensorElementType::Float64 => ColumnType::F64,
        TensorElementType::Int64 | TensorElementType::Int32 => ColumnType::I64,
        other => {
            return Err(model_error(
                &plan.path,
                format!(
                    "output '{}' is {other:?}; tideflow reads float and integer outputs",
                    output.output
                ),
            ));
        }
    };
    match (output.index, shape.len()) {
        (None, 1) => {}
        (None, 2) if shape[1] == 1 => {}
        (Some(index), 2) if shape[1] < 0 || (index as i64) < shape[1] => {}
        _ => {
            return Err(model_error(
                &plan.path,
                format!(
                    "output '{}' has shape {}; map it as '{}' for 1 value per row, or '{}[i]' to pick column i",
                    output.output,
                    describe(outlet.dtype()),
                    output.output,
                    output.output
                ),
            ));
        }
    }
    Ok(column_type)
}

fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::Row;

    /// Three rows with two fields (an integer, then null, then a boolean;
    /// always null), two float columns with nulls and a column of values
    /// that are not all numbers.
    fn batch() -> Batch {
        let fields = [
            vec![Value::I64(3), Value::Null],
            vec![Value::Null, Value::Null],
            vec![Value::Bool(true), Value::Null],
        ];
        let rows = fields
            .into_iter()
            .enumerate()
            .map(|(offset, values)| Row {
                offset: offset as u64,
                values,
                ..Row::default()
            })
            .collect();
        let mut batch = Batch::from_rows(rows);
        batch.set_numbers(2, [Some(1.5), None, Some(2.5)]);
        batch.set_numbers(3, [None, Some(4.0), Some(5.0)]);
        batch.set_column(
            4,
            ColumnType::Str,
            [Value::Str("x".into()), Value::F64(7.0), Value::Null],
        );
        batch
    }

    fn gathered(slots: &[usize]) -> Vec<f32> {
        let mut tensor = vec![f32::NAN; 3 * slots.len()];
        gather_inputs(&batch(), slots, -1.0, &mut tensor);
        tensor
    }

    #[test]
    fn float_columns_fill_their_nulls() {
        assert_eq!(gathered(&[2, 3]), [1.5, -1.0, -1.0, 4.0, 2.5, 5.0]);
        assert_eq!(gathered(&[3]), [-1.0, 4.0, 5.0]);
        // Wider than the widths compiled for.
        let wide: Vec<usize> = (0..17).map(|index| 2 + index % 2).collect();
        let expected: Vec<f32> = [[1.5, -1.0], [-1.0, 4.0], [2.5, 5.0]]
            .iter()
            .flat_map(|row| (0..17).map(move |index| row[index % 2]))
            .collect();
        assert_eq!(gathered(&wide), expected);
    }

    #[test]
    fn inputs_from_rows_and_value_columns_read_as_numbers_or_fill() {
        assert_eq!(
            gathered(&[0, 2, 4, 1]),
            [
                3.0, 1.5, -1.0, -1.0, -1.0, -1.0, 7.0, -1.0, 1.0, 2.5, -1.0, -1.0
            ]
        );
    }
}
