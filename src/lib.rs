//! tideflow: a streaming dataflow engine for machine-learning features and
//! model inference over Kafka and files.
//!
//! One dataflow definition (a [`spec`], checked into a [`plan`]) runs as a
//! timely dataflow graph: [`operators::source`] reads partitions and
//! [`decode`]s records, rows are exchanged by key to the [`features`]
//! stages, then [`batching`] groups them for [`inference`], and [`sinks`]
//! write them. Bad records become dead letters; every input record is
//! accounted for in the run's [`run::Summary`].

pub mod admin;
pub mod allocator;
pub mod batch;
pub mod batching;
mod cache;
pub mod checkpoint;
pub mod cluster;
pub mod commit;
pub mod dataflow;
pub mod decode;
pub mod demo;
pub mod error;
pub mod features;
pub mod inference;
pub mod intake;
pub mod joins;
pub mod launch;
pub mod metrics;
pub mod models;
pub mod operators;
pub mod ordering;
pub mod plan;
pub mod row;
pub mod run;
pub mod schema;
pub mod sinks;
pub mod spec;
#[cfg(test)]
mod testing;
pub mod watermarks;

pub use error::{Error, Result};
