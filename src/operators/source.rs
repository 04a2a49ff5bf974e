//! The source operator: reads this worker's partitions, decodes records,
//! separates late ones, and advances the watermark.

use super::RowStream;
use crate::decode::Decoder;
use crate::ordering::PartitionClock;
use crate::plan::SourcePlan;
use crate::row::{DeadLetter, LATE};
use crate::run::{Shared, Stats};
use crate::sinks::DeadLetterWriter;
use crate::{Error, Result};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tideflow_connectors::files::{discover_partitions, open_partition};
use tideflow_connectors::generator::GeneratorReader;
use tideflow_connectors::{PartitionReader, Poll, RawRecord};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Scope;
use timely::dataflow::operators::generic::operator::source;

/// How many records one activation reads from a partition, at most.
const RECORDS_PER_POLL: usize = 1024;

/// The number of partitions of a source.
pub fn partition_count(plan: &SourcePlan) -> Result<usize> {
    Ok(match plan {
        SourcePlan::Files { path, format, .. } => discover_partitions(path, *format)?.len(),
        SourcePlan::Generator(config) => config.partitions as usize,
    })
}

/// Opens the readers of the partitions assigned to worker `index` of
/// `peers`: partition `p` goes to worker `p % peers`.
pub fn open_assigned(
    plan: &SourcePlan,
    columns: &[String],
    index: usize,
    peers: usize,
) -> Result<Vec<Box<dyn PartitionReader>>> {
    let mut readers: Vec<Box<dyn PartitionReader>> = Vec::new();
    match plan {
        SourcePlan::Files {
            path,
            format,
            max_record_bytes,
        } => {
            for (partition, file) in discover_partitions(path, *format)?.iter().enumerate() {
                if partition % peers == index {
                    readers.push(open_partition(
                        file,
                        partition as u32,
                        *format,
                        columns,
                        *max_record_bytes,
                    )?);
                }
            }
        }
        SourcePlan::Generator(config) => {
            for partition in 0..config.partitions {
                if partition as usize % peers == index {
                    readers.push(Box::new(GeneratorReader::open(config, partition, columns)?));
                }
            }
        }
    }
    Ok(readers)
}

/// One assigned partition: its reader, its clock, and whether it ended.
struct Partition {
    reader: Box<dyn PartitionReader>,
    clock: PartitionClock,
    finished: bool,
    behind: bool,
}

/// Builds the source operator of worker `scope.index()`.
pub fn read_source<'scope>(
    scope: Scope<'scope, i64>,
    shared: Arc<Shared>,
    readers: Vec<Box<dyn PartitionReader>>,
    mut dead_letters: DeadLetterWriter,
) -> RowStream<'scope> {
    let decoder = Decoder::new(&shared.plan);
    let bound_ms = shared.plan.bound_ms;
    let tracks_lateness = shared.plan.tracks_lateness();
    let mut partitions: Vec<Partition> = readers
        .into_iter()
        .map(|reader| {
            let behind = reader.is_behind();
            if behind {
                shared.partitions_behind.fetch_add(1, Ordering::SeqCst);
            }
            Partition {
                reader,
                clock: PartitionClock::default(),
                finished: false,
                behind,
            }
        })
        .collect();
    source::<i64, CapacityContainerBuilder<Vec<crate::row::Row>>, _, _>(
        scope,
        "Source",
        move |capability, info| {
            let activator = scope.activator_for(info.address.clone());
            let mut capability = Some(capability);
            let mut raw: Vec<RawRecord> = Vec::with_capacity(RECORDS_PER_POLL);
            move |output| {
                let Some(held) = capability.as_mut() else {
                    return;
                };
                let mut rows = Vec::new();
                let mut again: Option<Duration> = None;
                for partition in partitions
                    .iter_mut()
                    .filter(|partition| !partition.finished)
                {
                    if shared.is_aborted() {
                        break;
                    }
                    raw.clear();
                    let polled = match partition.reader.poll(&mut raw, RECORDS_PER_POLL) {
                        Ok(polled) => polled,
                        Err(error) => {
                            shared.abort(Error::from(error));
                            break;
                        }
                    };
                    Stats::add(&shared.stats.records_in, raw.len() as u64);
                    for record in raw.drain(..) {
                        let letter = match decoder.decode(record) {
                            Ok(row)
                                if tracks_lateness
                                    && partition.clock.is_late(row.time, bound_ms) =>
                            {
                                Stats::add(&shared.stats.late, 1);
                                DeadLetter {
                                    partition: row.partition,
                                    offset: row.offset,
                                    error: LATE.into(),
                                    raw: late_raw(&shared, &row),
                                }
                            }
                            Ok(row) => {
                                partition.clock.observe(row.time);
                                rows.push(row);
                                continue;
                            }
                            Err(letter) => {
                                Stats::add(&shared.stats.dead, 1);
                                letter
                            }
                        };
                        if let Err(error) = dead_letters.write(&letter) {
                            shared.abort(error);
                        }
                    }
                    match polled {
                        Poll::Ready => again = Some(Duration::ZERO),
                        Poll::Pending(wait) => {
                            again = Some(again.map_or(wait, |other| other.min(wait)))
                        }
                        Poll::Finished => partition.finished = true,
                    }
                    let behind = !partition.finished && partition.reader.is_behind();
                    if behind != partition.behind {
                        partition.behind = behind;
                        if behind {
                            shared.partitions_behind.fetch_add(1, Ordering::SeqCst);
                        } else {
                            shared.partitions_behind.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                    let mut progress = shared
                        .progress
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    progress.insert(partition.reader.partition(), partition.reader.progress());
                }
                if !rows.is_empty() {
                    output.session(&*held).give_container(&mut rows);
                }
                let all_finished = partitions.iter().all(|partition| partition.finished);
                if all_finished || shared.is_aborted() || shared.stop_requested() {
                    if let Err(error) = dead_letters.finish() {
                        shared.abort(error);
                    }
                    for partition in partitions.iter_mut().filter(|partition| partition.behind) {
                        partition.behind = false;
                        shared.partitions_behind.fetch_sub(1, Ordering::SeqCst);
                    }
                    capability = None;
                    return;
                }
                let watermark = partitions
                    .iter()
                    .filter(|partition| !partition.finished)
                    .map(|partition| partition.clock.watermark(bound_ms))
                    .min()
                    .unwrap_or(i64::MAX);
                if watermark > *held.time() {
                    held.downgrade(&watermark);
                }
                match again {
                    Some(Duration::ZERO) | None => activator.activate(),
                    Some(wait) => activator.activate_after(wait),
                }
            }
        },
    )
}

/// The original record of a late row, rebuilt as JSON from its fields.
fn late_raw(shared: &Shared, row: &crate::row::Row) -> String {
    let plan = &shared.plan;
    let object: serde_json::Map<String, serde_json::Value> = plan.columns[..plan.field_count]
        .iter()
        .zip(&row.values)
        .map(|(column, value)| (column.name.clone(), crate::decode::value_to_json(value)))
        .collect();
    serde_json::Value::Object(object).to_string()
}
