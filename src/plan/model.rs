//! `[model]`, resolved: the input columns fed to it and the columns its
//! outputs fill.

use super::columns::Columns;
use super::{GPU_RUN_ROWS, ModelPlan, OutputPlan, RunRows};
use crate::schema::ColumnType;
use crate::spec::{ModelSpec, OnModelError, SpecError, SpecSource};
use toml::Spanned;

/// Resolves the model, adding its output columns (typed f64 until the
/// model itself is read; see `dataflow::prepare_model`).
pub(super) fn model(
    text: &SpecSource,
    model: Option<&Spanned<ModelSpec>>,
    columns: &mut Columns,
) -> Result<Option<ModelPlan>, SpecError> {
    let Some(model) = model else {
        return Ok(None);
    };
    let (span, model) = (model.span(), model.get_ref());
    let mut input_slots = Vec::new();
    for input in model.inputs.get_ref() {
        let name = input.get_ref();
        match columns.slot_of(name) {
            Some(slot) if columns.get(slot).ty.is_numeric() => input_slots.push(slot),
            Some(_) => {
                return Err(text.error_at(
                    input.span(),
                    format!("model input column '{name}' is a string"),
                    "feed numeric fields, joined columns or features",
                ));
            }
            None => {
                return Err(text.error_at(
                    input.span(),
                    format!("model input column '{name}' is neither a field nor a feature"),
                    "list columns defined in [schema], [[join]] or [[feature]]",
                ));
            }
        }
    }
    if input_slots.is_empty() {
        return Err(text.error_at(
            model.inputs.span(),
            "the model has no input columns",
            "set inputs = [\"feature\", ...]",
        ));
    }
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
    let name = model.name.clone().unwrap_or_else(|| {
        model
            .path
            .file_stem()
            .map_or("model".into(), |stem| stem.to_string_lossy().into_owned())
    });
    Ok(Some(ModelPlan {
        path: model.path.clone(),
        name,
        input_slots,
        input_columns: model
            .inputs
            .get_ref()
            .iter()
            .map(|input| input.get_ref().clone())
            .collect(),
        input_name: model.input_name.clone(),
        outputs,
        device: model.device,
        fill_null: model.fill_null,
        stop_on_error: model.on_error == OnModelError::Stop,
        run_rows: match model.run_rows {
            Some(0) => RunRows::PerBatch,
            Some(rows) => RunRows::Fixed(rows),
            None => RunRows::FixedOnGpu(GPU_RUN_ROWS),
        },
    }))
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
