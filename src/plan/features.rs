//! `[[feature]]` and `[state] key_ttl`, resolved: window features grouped
//! into stages by key, and expressions, each with its column.

use super::columns::Columns;
use super::source::{duration_ms, key_slot};
use crate::features::expr::Expr;
use crate::features::{Agg, StagePlan, WindowFeature};
use crate::schema::ColumnType;
use crate::spec::{self, FeatureSpec, SpecError, SpecSource, Window};
use toml::Spanned;

/// Expression features in spec order: (slot, expression).
pub type Expressions = Vec<(usize, Expr)>;

/// What features may read: the columns before them, of which the first
/// `readable` (fields and joined columns) can be aggregated and keyed by.
#[derive(Clone, Copy, Debug)]
pub(super) struct FeatureInputs<'spec> {
    /// `source.key`, if declared.
    pub source_key: Option<&'spec str>,
    /// How many columns are schema fields (which alone can be keys).
    pub fields: usize,
    /// How many columns are fields or joined columns.
    pub readable: usize,
}

/// Resolves the features in spec order, adding their columns; window
/// features are grouped into one stage per key, the source-keyed stage
/// first.
pub(super) fn features(
    text: &SpecSource,
    specs: &[FeatureSpec],
    columns: &mut Columns,
    inputs: FeatureInputs<'_>,
) -> Result<(Vec<StagePlan>, Expressions), SpecError> {
    let mut stages: Vec<StagePlan> = Vec::new();
    let mut expressions = Vec::new();
    for feature in specs {
        let name = &feature.name;
        if columns.is_taken(name.get_ref()) {
            return Err(text.error_at(
                name.span(),
                format!(
                    "feature '{}' has the name of an existing column",
                    name.get_ref()
                ),
                "give each feature a unique name",
            ));
        }
        match (&feature.agg, &feature.expr) {
            (Some(agg), None) => {
                let slot = columns.len();
                let (key_name, window_feature, ty) =
                    window_feature(text, (feature, agg, slot), columns, inputs)?;
                let key_span = feature.key.as_ref().map_or(name.span(), Spanned::span);
                let what = format!("the key of feature '{}'", name.get_ref());
                let key_slot =
                    key_slot(text, (&key_name, key_span), &what, (columns, inputs.fields))?;
                let source_keyed = inputs.source_key == Some(key_name.as_str());
                match stages.iter_mut().find(|stage| stage.key_name == key_name) {
                    Some(stage) => stage.features.push(window_feature),
                    None => stages.push(StagePlan {
                        key_name,
                        key_slot,
                        source_keyed,
                        features: vec![window_feature],
                        key_ttl_ms: None,
                    }),
                }
                columns.push(name.get_ref(), ty);
            }
            (None, Some(expr)) => {
                expressions.push(expression(text, feature, expr, columns)?);
            }
            _ => {
                return Err(text.error_at(
                    name.span(),
                    format!(
                        "feature '{}' needs exactly one of agg or expr",
                        name.get_ref()
                    ),
                    "set agg (with field and window) or expr",
                ));
            }
        }
    }
    stages.sort_by_key(|stage| !stage.source_keyed);
    Ok((stages, expressions))
}

/// An expression feature: its expression over numeric columns before it.
fn expression(
    text: &SpecSource,
    feature: &FeatureSpec,
    expr: &Spanned<String>,
    columns: &mut Columns,
) -> Result<(usize, Expr), SpecError> {
    let name = &feature.name;
    if feature.key.is_some() || feature.field.is_some() || feature.window.is_some() {
        return Err(text.error_at(
            name.span(),
            format!(
                "expression feature '{}' also sets key, field or window",
                name.get_ref()
            ),
            "an expression feature has only name and expr",
        ));
    }
    let resolve = |reference: &str| match columns.slot_of(reference) {
        Some(slot) if columns.get(slot).ty.is_numeric() => Ok(slot),
        Some(_) => Err(format!(
            "'{reference}' is a string; expressions compute with numbers"
        )),
        None => Err(format!(
            "unknown column '{reference}' (expressions may use fields, joined columns and features defined above them)"
        )),
    };
    let parsed = Expr::parse(expr.get_ref(), &resolve).map_err(|message| {
        text.error_at(
            expr.span(),
            format!("feature '{}': {message}", name.get_ref()),
            "see the expression reference in the README",
        )
    })?;
    let slot = columns.push(name.get_ref(), ColumnType::F64);
    Ok((slot, parsed))
}

fn window_feature(
    text: &SpecSource,
    (feature, agg, slot): (&FeatureSpec, &Spanned<Agg>, usize),
    columns: &Columns,
    inputs: FeatureInputs<'_>,
) -> Result<(String, WindowFeature, ColumnType), SpecError> {
    let name = feature.name.get_ref();
    let fail = |span: std::ops::Range<usize>, message: String, hint: &str| {
        Err(text.error_at(span, message, hint))
    };
    let agg_span = agg.span();
    let agg = *agg.get_ref();
    let key_name = match (&feature.key, inputs.source_key) {
        (Some(key), _) => key.get_ref().clone(),
        (None, Some(key)) => key.to_owned(),
        (None, None) => {
            return fail(
                feature.name.span(),
                format!("feature '{name}' has no key"),
                "set key = \"<field>\" on the feature, or source.key",
            );
        }
    };
    let field = match (&feature.field, agg) {
        (None, Agg::Count | Agg::SincePrev) => None,
        (None, _) => {
            return fail(
                agg_span,
                format!("feature '{name}' needs a field"),
                "set field = \"<schema field>\"",
            );
        }
        (Some(field), Agg::SincePrev) => {
            return fail(
                field.span(),
                format!("feature '{name}': since_prev takes no field"),
                "remove field",
            );
        }
        (Some(field), _) => {
            let Some(field_slot) = columns
                .slot_of(field.get_ref())
                .filter(|slot| *slot < inputs.readable)
            else {
                return fail(
                    field.span(),
                    format!(
                        "feature '{name}' aggregates '{}', which is neither a field nor a joined column",
                        field.get_ref()
                    ),
                    "aggregate a field or a joined column; compute derived values with expr features after",
                );
            };
            if agg.needs_numeric_field() && !columns.get(field_slot).ty.is_numeric() {
                return fail(
                    field.span(),
                    format!(
                        "feature '{name}' needs a numeric field, '{}' is a string",
                        field.get_ref()
                    ),
                    "use count or distinct_count on strings",
                );
            }
            Some(field_slot)
        }
    };
    let window = match &feature.window {
        None => None,
        Some(text_window) => match spec::parse_window(text_window.get_ref()) {
            Ok(Window::Lifetime) => None,
            Ok(Window::Millis(ms)) => Some(ms),
            Err(message) => {
                return fail(
                    text_window.span(),
                    format!("feature '{name}': {message}"),
                    "write a duration such as \"1h\", or \"lifetime\"",
                );
            }
        },
    };
    if let (Some(_), Some(window)) = (window, &feature.window)
        && matches!(agg, Agg::Prev | Agg::SincePrev)
    {
        return fail(
            window.span(),
            format!("feature '{name}' looks at the previous record and takes no window"),
            "remove window",
        );
    }
    let ty = match agg {
        Agg::Count | Agg::DistinctCount | Agg::SincePrev => ColumnType::I64,
        Agg::Prev => columns.get(field.unwrap_or(0)).ty,
        _ => ColumnType::F64,
    };
    Ok((
        key_name,
        WindowFeature {
            name: name.clone(),
            slot,
            agg,
            field,
            window,
        },
        ty,
    ))
}

/// Sets `[state] key_ttl` on every stage, refusing one shorter than a
/// stage's longest window plus the out-of-orderness bound: a key that
/// expired could then still have records inside a later record's window,
/// and finite windows would change with the TTL.
pub(super) fn key_ttl(
    text: &SpecSource,
    ttl: Option<&Spanned<String>>,
    stages: &mut [StagePlan],
    bound_ms: i64,
) -> Result<(), SpecError> {
    let Some(ttl) = ttl else {
        return Ok(());
    };
    let ttl_ms = duration_ms(text, Some(ttl), "30d")?;
    for stage in stages.iter_mut() {
        let longest = stage
            .features
            .iter()
            .filter_map(|feature| feature.window)
            .max()
            .unwrap_or(0);
        let needed = longest.saturating_add(bound_ms);
        if ttl_ms < needed || ttl_ms <= 0 {
            return Err(text.error_at(
                ttl.span(),
                format!(
                    "state.key_ttl {} is shorter than the longest window of the features keyed by '{}' plus time.max_out_of_orderness ({needed} ms)",
                    ttl.get_ref(),
                    stage.key_name
                ),
                format!("set key_ttl to at least {needed} ms, or shorten the windows"),
            ));
        }
        stage.key_ttl_ms = Some(ttl_ms);
    }
    Ok(())
}
