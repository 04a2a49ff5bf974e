//! `[batching]`, resolved: the policy and the limits of both kinds of
//! batch.

use super::source::duration_ms;
use super::{BatchLimits, BatchingPlan};
use crate::spec::{BatchLimitsSpec, BatchingSpec, SpecError, SpecSource};
use std::time::Duration;
use toml::Spanned;

/// The micro-batch defaults: 256 rows, 5 ms.
const MICRO: (usize, &str) = (256, "5ms");

/// The bulk-batch defaults: 16384 rows (the largest size tried when the
/// size is tuned), 1 s.
const BULK: (usize, &str) = (16384, "1s");

/// Resolves the batching policy and limits, defaults filled in.
pub(super) fn batching(
    text: &SpecSource,
    batching: &BatchingSpec,
) -> Result<BatchingPlan, SpecError> {
    Ok(BatchingPlan {
        policy: batching.policy,
        micro: limits(text, &batching.micro, MICRO)?,
        bulk: limits(text, &batching.bulk, BULK)?,
        tuned_bulk: batching.bulk.max_rows.is_none(),
    })
}

fn limits(
    text: &SpecSource,
    spec: &BatchLimitsSpec,
    defaults: (usize, &str),
) -> Result<BatchLimits, SpecError> {
    let (max_rows, max_delay) = rows_and_delay(
        text,
        (spec.max_rows.as_ref(), spec.max_delay.as_ref()),
        defaults,
    )?;
    Ok(BatchLimits {
        max_rows,
        max_delay,
    })
}

/// A `max_rows` (at least 1) and a `max_delay` of the spec, or their
/// defaults: batches' limits and the shared executor's.
pub(super) fn rows_and_delay(
    text: &SpecSource,
    (max_rows, max_delay): (Option<&Spanned<usize>>, Option<&Spanned<String>>),
    (default_rows, default_delay): (usize, &str),
) -> Result<(usize, Duration), SpecError> {
    let rows = match max_rows {
        None => default_rows,
        Some(rows) if *rows.get_ref() == 0 => {
            return Err(text.error_at(
                rows.span(),
                "max_rows must be at least 1",
                "set max_rows to a positive number",
            ));
        }
        Some(rows) => *rows.get_ref(),
    };
    let delay_ms = duration_ms(text, max_delay, default_delay)?;
    Ok((rows, Duration::from_millis(delay_ms.max(0) as u64)))
}
