//! Checkpoints: operator state as bytes, and back, kept in storage.
//!
//! Every stateful operator keeps its state in plain structs that derive
//! serde's traits (the feature stages' [`crate::features::StageState`]
//! among them). A checkpoint stores them in postcard's compact binary
//! form: no field names, integers as varints, so a key's record ring
//! costs about what it holds. Restoring gives back state that computes
//! exactly what the state it was taken from would have, which the oracle
//! tests check at random points of random runs.

pub mod agreement;
pub mod coordinator;
pub mod object;
pub mod restore;
pub mod storage;
pub mod store;

pub use coordinator::{Coordinator, Cut, EpochFile, FINAL, SourceStep};
pub use object::ObjectStorage;
pub use storage::{LocalStorage, Storage};
pub use store::{Checkpoint, CheckpointStore, Found, PartLink, PartReceipt, Refusal, StoredPart};

use crate::{Error, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The storage `state.dir` names: an S3 bucket for `s3://bucket/prefix`,
/// else a local directory.
pub fn open_storage(dir: &std::path::Path) -> Result<std::sync::Arc<dyn Storage>> {
    Ok(match dir.to_str() {
        Some(url) if url.starts_with(object::S3_SCHEME) => {
            std::sync::Arc::new(ObjectStorage::open(url)?)
        }
        _ => std::sync::Arc::new(LocalStorage::open(dir)?),
    })
}

/// The bytes of a piece of state.
pub fn encode<T: Serialize>(state: &T) -> Vec<u8> {
    // Serializing to a growable buffer fails only for types postcard
    // cannot represent (maps or sequences of unknown length), which no
    // state type is: a failure is a bug in the engine, not in the input.
    postcard::to_stdvec(state).expect("engine state serializes")
}

/// A piece of state from bytes written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|error| Error::Checkpoint {
        location: "state".into(),
        message: format!(
            "{error}: the bytes are not state this version of tideflow wrote; restore from an older checkpoint or start without one"
        ),
    })
}
