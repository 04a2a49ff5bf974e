//! `[model]`, resolved: the input columns fed to it and the columns its
//! outputs fill.

use super::columns::Columns;
use super::{
    CanaryPlan, ExecutorPlan, GPU_RUN_ROWS, ModelInputPlan, ModelPlan, OutputPlan, RegistryPlan,
    RunRows, ShadowPlan, TokensPlan,
};
use crate::models::registry::Registry;
use crate::schema::ColumnType;
use crate::spec::{
    CanarySpec, ExecutorSpec, ModelInputSpec, ModelSpec, OnModelError, ShadowSpec, SpecError,
    SpecSource,
};
use toml::Spanned;

/// Resolves the model, adding its output columns (typed f64 until the
/// model itself is read; see `dataflow::prepare_model`).
pub(super) fn model(
    text: &SpecSource,
    model: Option<&Spanned<ModelSpec>>,
    columns: &mut Columns,
    source_key: Option<&str>,
) -> Result<Option<ModelPlan>, SpecError> {
    let Some(model) = model else {
        return Ok(None);
    };
    let (span, model) = (model.span(), model.get_ref());
    let inputs = model_inputs(text, span.clone(), model, columns)?;
    let mut outputs = Vec::new();
    for (column, source) in model.outputs.get_ref() {
        if columns.is_taken(column) {
            return Err(text.error_at(
                source.span(),
                format!("model output column '{column}' has the name of an existing column"),
                "rename the output column",
            ));
        }
        let (output, index) = parse_output_source(source.get_ref()).map_err(|message| {
            text.error_at(source.span(), message, "write \"output\" or \"output[i]\"")
        })?;
        let slot = columns.push(column, ColumnType::F64);
        outputs.push(OutputPlan {
            column: column.clone(),
            slot,
            output,
            index,
        });
    }
    if outputs.is_empty() {
        return Err(text.error_at(
            span,
            "the model maps no outputs to columns",
            "add [model.outputs] column = \"model_output[i]\"",
        ));
    }
    let (path, registry) = model_file(text, model)?;
    let shadows = model
        .shadow
        .iter()
        .map(|shadow| shadow_plan(text, shadow, model, &outputs, columns))
        .collect::<Result<Vec<_>, _>>()?;
    let canary = model
        .canary
        .as_ref()
        .map(|canary| canary_plan(text, canary, model, columns, source_key))
        .transpose()?;
    let name = model.name.clone().unwrap_or_else(|| {
        let named_by = if registry.is_some() {
            model.path.file_name()
        } else {
            model.path.file_stem()
        };
        named_by.map_or("model".into(), |stem| stem.to_string_lossy().into_owned())
    });
    Ok(Some(ModelPlan {
        path,
        registry,
        name,
        inputs,
        outputs,
        device: model.device,
        fill_null: model.fill_null,
        stop_on_error: model.on_error == OnModelError::Stop,
        executor: executor(text, &model.executor)?,
        shadows,
        canary,
        run_rows: match model.run_rows {
            Some(0) => RunRows::PerBatch,
            Some(rows) => RunRows::Fixed(rows),
            None => RunRows::FixedOnGpu(GPU_RUN_ROWS),
        },
    }))
}

/// The model's inputs: the short form (`inputs`, one tensor) or the long
/// form (`[[model.input]]`, one per model input), each column resolved.
/// Element types and shapes are the model's, checked when it is opened.
fn model_inputs(
    text: &SpecSource,
    span: std::ops::Range<usize>,
    model: &ModelSpec,
    columns: &Columns,
) -> Result<Vec<ModelInputPlan>, SpecError> {
    let short = model.inputs.as_ref().map(|inputs| ModelInputSpec {
        name: model.input_name.clone().unwrap_or_default(),
        columns: Some(inputs.clone()),
        text: None,
        tokenizer: None,
        max_len: None,
        mask: None,
        type_ids: None,
    });
    let long = model
        .input
        .iter()
        .map(|input| (input.span(), input.get_ref()));
    let specs: Vec<(std::ops::Range<usize>, ModelInputSpec)> = short
        .into_iter()
        .map(|spec| (span.clone(), spec))
        .chain(long.map(|(span, spec)| (span, spec.clone())))
        .collect();
    match (&model.inputs, model.input.first()) {
        (Some(inputs), Some(_)) => {
            return Err(text.error_at(
                inputs.span(),
                "[model] has both inputs and [[model.input]]",
                "use inputs = [...] for a model with one input, [[model.input]] blocks for several",
            ));
        }
        (None, None) => {
            return Err(text.error_at(
                span,
                "the model has no input columns",
                "set inputs = [\"feature\", ...], or a [[model.input]] block per model input",
            ));
        }
        _ => {}
    }
    let mut resolved = Vec::new();
    for (span, spec) in specs {
        let input = model_input(text, span.clone(), &spec, columns)?;
        if resolved
            .iter()
            .any(|other: &ModelInputPlan| other.name == input.name)
        {
            return Err(text.error_at(
                span,
                format!("model input '{}' is fed twice", spec.name),
                "give each [[model.input]] its own model input",
            ));
        }
        resolved.push(input);
    }
    Ok(resolved)
}

/// The model file and, for a registry directory, the registry: the file
/// of the pinned version, else of the newest (the versions that score the
/// rows are the promotions record's, read when the run starts).
fn model_file(
    text: &SpecSource,
    model: &ModelSpec,
) -> Result<(std::path::PathBuf, Option<RegistryPlan>), SpecError> {
    if !Registry::is_registry(&model.path) {
        if let Some(version) = &model.version {
            return Err(text.error_at(
                version.span(),
                format!(
                    "{} is a file, not a registry directory",
                    model.path.display()
                ),
                "pin a version of a registry NAME/VERSION/model.onnx, or drop version",
            ));
        }
        return Ok((model.path.clone(), None));
    }
    let fail = |error: crate::Error| {
        text.error(
            error.to_string(),
            "a registry is a directory NAME/ of versions NAME/VERSION/model.onnx",
        )
    };
    let registry = Registry::open(&model.path).map_err(fail)?;
    let pinned = model.version.as_ref().map(|version| *version.get_ref());
    let version = match pinned {
        Some(version) => version,
        None => *registry
            .versions()
            .map_err(fail)?
            .last()
            .expect("open checked"),
    };
    let path = registry
        .model_path(version)
        .map_err(|error| match &model.version {
            Some(spanned) => text.error_at(
                spanned.span(),
                error.to_string(),
                "pin a version the registry holds",
            ),
            None => fail(error),
        })?;
    Ok((
        path,
        Some(RegistryPlan {
            dir: model.path.clone(),
            pinned,
            model_slot: 0,
        }),
    ))
}

/// A challenger: its file, and a column of its own for each of the
/// champion's outputs.
fn shadow_plan(
    text: &SpecSource,
    shadow: &Spanned<ShadowSpec>,
    model: &ModelSpec,
    outputs: &[OutputPlan],
    columns: &mut Columns,
) -> Result<ShadowPlan, SpecError> {
    let (span, spec) = (shadow.span(), shadow.get_ref());
    let (label, path) = match (&spec.version, &spec.path) {
        (Some(version), None) => {
            if !Registry::is_registry(&model.path) {
                return Err(text.error_at(
                    span,
                    "a shadow version needs the model to be a registry",
                    "give the shadow a path = \"file.onnx\" instead",
                ));
            }
            let registry = Registry::open(&model.path).map_err(|error| {
                text.error_at(span.clone(), error.to_string(), "fix the registry")
            })?;
            let path = registry.model_path(*version).map_err(|error| {
                text.error_at(
                    span.clone(),
                    error.to_string(),
                    "name a version the registry holds",
                )
            })?;
            (format!("v{version}"), path)
        }
        (None, Some(path)) => (
            path.file_stem()
                .map_or("shadow".into(), |stem| stem.to_string_lossy().into_owned()),
            path.clone(),
        ),
        _ => {
            return Err(text.error_at(
                span,
                "a shadow needs a version or a path, not both",
                "version = N (of the registry) or path = \"file.onnx\"",
            ));
        }
    };
    let suffix = spec.suffix.clone().unwrap_or_else(|| match spec.version {
        Some(version) => format!("_v{version}"),
        None => "_shadow".into(),
    });
    let mut shadow_outputs = Vec::new();
    for output in outputs {
        let column = format!("{}{suffix}", output.column);
        if columns.is_taken(&column) {
            return Err(text.error_at(
                span,
                format!("shadow column '{column}' has the name of an existing column"),
                "set a suffix of its own",
            ));
        }
        shadow_outputs.push(OutputPlan {
            slot: columns.push(&column, ColumnType::F64),
            column,
            ..output.clone()
        });
    }
    Ok(ShadowPlan {
        label,
        path,
        outputs: shadow_outputs,
    })
}

/// The canary: its version of the registry, and the keys it scores.
fn canary_plan(
    text: &SpecSource,
    canary: &Spanned<CanarySpec>,
    model: &ModelSpec,
    columns: &Columns,
    source_key: Option<&str>,
) -> Result<CanaryPlan, SpecError> {
    let (span, spec) = (canary.span(), canary.get_ref());
    if !Registry::is_registry(&model.path) || model.version.is_some() {
        return Err(text.error_at(
            span,
            "a canary needs the model to be a registry whose version is not pinned",
            "set model.path to a registry directory and remove model.version",
        ));
    }
    if !(0.0..=1.0).contains(&spec.fraction) {
        return Err(text.error_at(
            span,
            format!("canary fraction {} is not between 0 and 1", spec.fraction),
            "set fraction = 0.05 for 5% of keys",
        ));
    }
    let key = spec.key.as_deref().or(source_key).ok_or_else(|| {
        text.error_at(
            span.clone(),
            "the canary has no key (and the source none)",
            "set key = \"user_id\": a key is always scored by the same version",
        )
    })?;
    let key_slot = columns.slot_of(key).ok_or_else(|| {
        text.error_at(
            span.clone(),
            format!("canary key '{key}' is not a column"),
            "name a field of [schema]",
        )
    })?;
    let registry = Registry::open(&model.path)
        .map_err(|error| text.error_at(span.clone(), error.to_string(), "fix the registry"))?;
    registry.model_path(spec.version).map_err(|error| {
        text.error_at(
            span.clone(),
            error.to_string(),
            "name a version the registry holds",
        )
    })?;
    Ok(CanaryPlan {
        version: spec.version,
        buckets: (spec.fraction * CANARY_BUCKETS as f64).round() as u64,
        key_slot,
    })
}

/// Keys are spread over this many buckets by their stable hash; a canary
/// takes the first `fraction` of them.
pub const CANARY_BUCKETS: u64 = 10_000;

/// `[model.executor]`, defaults filled in: 16384 rows, 2 ms.
fn executor(text: &SpecSource, spec: &ExecutorSpec) -> Result<ExecutorPlan, SpecError> {
    let (max_rows, max_delay) = super::batching::rows_and_delay(
        text,
        (spec.max_rows.as_ref(), spec.max_delay.as_ref()),
        (16384, "2ms"),
    )?;
    Ok(ExecutorPlan {
        mode: spec.mode,
        max_rows,
        max_delay,
    })
}

/// One model input: its columns resolved, or its text column and how it
/// is tokenized.
fn model_input(
    text: &SpecSource,
    span: std::ops::Range<usize>,
    spec: &ModelInputSpec,
    columns: &Columns,
) -> Result<ModelInputPlan, SpecError> {
    let mut input = ModelInputPlan {
        name: (!spec.name.is_empty()).then(|| spec.name.clone()),
        columns: Vec::new(),
        slots: Vec::new(),
        tokens: None,
    };
    let listed: Vec<&Spanned<String>> = match (&spec.columns, &spec.text) {
        (Some(listed), None) => listed.get_ref().iter().collect(),
        (None, Some(column)) => vec![column],
        _ => {
            return Err(text.error_at(
                span,
                format!("model input '{}' needs columns or text, not both", spec.name),
                "columns = [...] feeds columns as they are; text = \"column\" with tokenizer = \"tokenizer.json\" feeds a string column's token ids",
            ));
        }
    };
    for column in listed {
        let Some(slot) = columns.slot_of(column.get_ref()) else {
            return Err(text.error_at(
                column.span(),
                format!(
                    "model input column '{}' is neither a field nor a feature",
                    column.get_ref()
                ),
                "list columns defined in [schema], [[join]] or [[feature]]",
            ));
        };
        input.columns.push(columns.get(slot).clone());
        input.slots.push(slot);
    }
    if input.slots.is_empty() {
        return Err(text.error_at(
            span,
            "a model input with no columns",
            "list the columns that feed it, in order",
        ));
    }
    let tokenizing = spec.tokenizer.is_some()
        || spec.max_len.is_some()
        || spec.mask.is_some()
        || spec.type_ids.is_some();
    match (&spec.text, &spec.tokenizer) {
        (Some(column), Some(tokenizer)) => {
            if input.columns[0].ty != crate::schema::ColumnType::Str {
                return Err(text.error_at(
                    column.span(),
                    format!(
                        "text column '{}' is {}, not a string",
                        column.get_ref(),
                        input.columns[0].ty.name()
                    ),
                    "tokenize a string column",
                ));
            }
            input.tokens = Some(TokensPlan {
                tokenizer: tokenizer.clone(),
                max_len: spec.max_len,
                mask: spec.mask.clone(),
                type_ids: spec.type_ids.clone(),
            });
        }
        (Some(_), None) => {
            return Err(text.error_at(
                span,
                format!(
                    "model input '{}' tokenizes text with no tokenizer",
                    spec.name
                ),
                "set tokenizer = \"path/to/tokenizer.json\"",
            ));
        }
        (None, _) if tokenizing => {
            return Err(text.error_at(
                span,
                format!(
                    "model input '{}' sets tokenizer options but has no text column",
                    spec.name
                ),
                "set text = \"column\" to tokenize a string column",
            ));
        }
        (None, _) => {}
    }
    Ok(input)
}

/// Splits `"probabilities[1]"` into `("probabilities", Some(1))`.
fn parse_output_source(source: &str) -> Result<(String, Option<usize>), String> {
    match source.split_once('[') {
        None => Ok((source.trim().to_owned(), None)),
        Some((name, rest)) => {
            let index = rest
                .strip_suffix(']')
                .and_then(|index| index.trim().parse().ok());
            match index {
                Some(index) => Ok((name.trim().to_owned(), Some(index))),
                None => Err(format!("'{source}' is not output[index]")),
            }
        }
    }
}
