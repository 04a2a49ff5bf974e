//! Checkpoints in S3 or an S3-compatible object store, through the
//! `object_store` crate.
//!
//! `state.dir = "s3://bucket/prefix"` keeps checkpoints under `prefix/` in
//! `bucket`. Everything else comes from the standard `AWS_*` environment
//! variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL` for a store other than AWS, `AWS_ALLOW_HTTP=true`
//! for one without TLS), so that credentials never sit in a spec. A put is
//! atomic by the nature of S3: a reader finds the whole object or none.
//! The checkpoint logic above ([`super::store`]) is the same as for a
//! local directory; only these four operations differ.

use super::storage::Storage;
use crate::{Error, Result};
use futures_util::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// The URL scheme of checkpoints in S3.
pub const S3_SCHEME: &str = "s3://";

/// Objects under a prefix of an S3 bucket.
pub struct ObjectStorage {
    store: AmazonS3,
    /// `prefix/` within the bucket (empty for the bucket's root).
    prefix: String,
    url: String,
    /// Drives the store's requests; the workers and the checkpoint writer
    /// call in from their own threads and wait.
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for ObjectStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStorage")
            .field("url", &self.url)
            .finish()
    }
}

impl ObjectStorage {
    /// The storage at `url` (`s3://bucket/prefix`), configured from the
    /// environment.
    pub fn open(url: &str) -> Result<Self> {
        let fail = |message: String| Error::Checkpoint {
            location: url.to_owned(),
            message,
        };
        let rest = url
            .strip_prefix(S3_SCHEME)
            .ok_or_else(|| fail("not an s3:// URL".into()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(fail("no bucket: write s3://BUCKET/PREFIX".into()));
        }
        let prefix = prefix.trim_matches('/');
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|error| fail(format!("{error}\n  fix: set AWS_REGION, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for a store other than AWS)")))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| fail(format!("cannot start its I/O runtime: {error}")))?;
        Ok(ObjectStorage {
            store,
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            url: url.to_owned(),
            runtime,
        })
    }

    fn path(&self, key: &str) -> ObjectPath {
        ObjectPath::from(format!("{}{key}", self.prefix))
    }

    fn failure(&self, key: &str, what: &str, error: object_store::Error) -> Error {
        Error::Checkpoint {
            location: format!("{}/{key}", self.url.trim_end_matches('/')),
            message: format!("{what}: {error}"),
        }
    }
}

/// An object gathered in memory and put whole when finished: a put is
/// atomic, and takes objects of up to 5 GB.
struct GatheredObject<'a> {
    storage: &'a ObjectStorage,
    key: String,
    bytes: Vec<u8>,
}

impl super::storage::ObjectWriter for GatheredObject<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<()> {
        let GatheredObject {
            storage,
            key,
            bytes,
        } = *self;
        storage
            .runtime
            .block_on(
                storage
                    .store
                    .put(&storage.path(&key), PutPayload::from(bytes)),
            )
            .map(|_| ())
            .map_err(|error| storage.failure(&key, "cannot write", error))
    }
}

impl Storage for ObjectStorage {
    fn create(&self, key: &str) -> Result<Box<dyn super::storage::ObjectWriter + '_>> {
        Ok(Box::new(GatheredObject {
            storage: self,
            key: key.to_owned(),
            bytes: Vec::new(),
        }))
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.runtime.block_on(async {
            match self.store.get(&self.path(key)).await {
                Ok(found) => found
                    .bytes()
                    .await
                    .map(|bytes| Some(bytes.to_vec()))
                    .map_err(|error| self.failure(key, "cannot read", error)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(error) => Err(self.failure(key, "cannot read", error)),
            }
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        // S3 lists by whole path segments: list from the last `/` of the
        // prefix and keep the keys that start with all of it.
        let directory = match prefix.rfind('/') {
            Some(end) => &prefix[..end],
            None => "",
        };
        let under = format!("{}{directory}", self.prefix);
        let under = ObjectPath::from(under.trim_end_matches('/'));
        let objects: Vec<_> = self
            .runtime
            .block_on(self.store.list(Some(&under)).try_collect())
            .map_err(|error| self.failure(prefix, "cannot list", error))?;
        let mut keys: Vec<String> = objects
            .into_iter()
            .filter_map(|object| {
                let key = object.location.as_ref().strip_prefix(&self.prefix)?;
                key.starts_with(prefix).then(|| key.to_owned())
            })
            .collect();
        keys.sort();
        Ok(keys)
    }

    fn delete(&self, key: &str) -> Result<()> {
        match self.runtime.block_on(self.store.delete(&self.path(key))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(self.failure(key, "cannot delete", error)),
        }
    }

    fn describe(&self) -> String {
        self.url.clone()
    }
}
