//! `[state]`, resolved: where and how often checkpoints are taken.

use super::CheckpointPlan;
use super::source::duration_ms;
use crate::spec::{SpecError, SpecSource, StateSpec};

/// `[state] dir`, `interval` and `retain`; `None` without a directory.
pub(super) fn checkpoints(
    text: &SpecSource,
    state: &StateSpec,
) -> Result<Option<CheckpointPlan>, SpecError> {
    let Some(dir) = &state.dir else {
        if let Some(interval) = &state.interval {
            return Err(text.error_at(
                interval.span(),
                "state.interval is set but state.dir is not",
                "set state.dir to the directory checkpoints go to",
            ));
        }
        return Ok(None);
    };
    if let Some(path) = dir.get_ref().to_str()
        && path.contains("://")
        && !path.starts_with(crate::checkpoint::object::S3_SCHEME)
    {
        return Err(text.error_at(
            dir.span(),
            "state.dir is a URL of a store tideflow cannot write to",
            "write a local directory or s3://BUCKET/PREFIX",
        ));
    }
    let interval_ms = duration_ms(text, state.interval.as_ref(), "10s")?;
    Ok(Some(CheckpointPlan {
        dir: dir.get_ref().clone(),
        interval: std::time::Duration::from_millis(interval_ms.max(1) as u64),
        retain: state.retain.unwrap_or(3).max(1),
    }))
}
