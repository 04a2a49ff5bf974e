//! Dead letters: records that cannot become rows, with their reason and
//! origin, as JSON lines into files or standard streams, or as the raw
//! record with tideflow headers on a Kafka topic.

use super::files::EpochNames;
use super::kafka::KAFKA_FINISH_TIMEOUT;
use super::kafka::{ORIGIN_HEADER, TopicOffsets, TopicResume};
use super::{EpochOutput, sink_error};
use crate::Result;
use crate::checkpoint::EpochFile;
use crate::plan::SinkPlan;
use crate::row::{DeadLetter, Origins};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use tideflow_connectors::kafka::{KafkaProducer, ProducerRecord};

/// Writes dead letters as JSON lines: `_partition`, `_offset`, `_error`,
/// `_raw`; to a Kafka topic, as the raw record with the reason and origin
/// in headers.
pub struct DeadLetterWriter {
    inner: DeadLetterTarget,
    sink: SinkPlan,
    origin: String,
    origins: Origins,
    /// A Kafka topic in a checkpointed run: written exactly once, as rows
    /// are (see [`super::kafka`]).
    exactly_once: Option<(TopicOffsets, Arc<TopicResume>)>,
    /// `<partition>:<offset>` of the letter being written.
    origin_text: String,
    /// The table or label input the letters come from (not the source).
    input: Option<String>,
}

enum DeadLetterTarget {
    File(BufWriter<File>),
    /// A checkpointed run's file per epoch (see [`EpochNames`]).
    Epochs {
        names: EpochNames,
        current: Option<(BufWriter<File>, PathBuf)>,
    },
    Stdout,
    Stderr,
    Discard,
    Kafka(KafkaProducer),
}

/// Sets `name` to bytes that are UTF-8 text, or `name_base64` to others:
/// a dead letter keeps the bytes it came with, not a lossy copy.
fn put_bytes(line: &mut serde_json::Value, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => line[name] = text.into(),
        Err(_) => line[format!("{name}_base64")] = base64(bytes).into(),
    }
}

/// Bytes as a JSON string when they are UTF-8 text, else as
/// `{"base64": "..."}`.
fn bytes_as_json(bytes: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.into(),
        Err(_) => serde_json::json!({ "base64": base64(bytes) }),
    }
}

/// Standard base64 with padding (RFC 4648).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let word = chunk.iter().enumerate().fold(0u32, |word, (index, byte)| {
            word | u32::from(*byte) << (16 - 8 * index)
        });
        for index in 0..4 {
            if index <= chunk.len() {
                text.push(ALPHABET[(word >> (18 - 6 * index) & 63) as usize] as char);
            } else {
                text.push('=');
            }
        }
    }
    text
}

/// Headers of a dead letter on a Kafka topic.
pub const DEAD_LETTER_HEADERS: [&str; 4] = [
    "tideflow-error",
    "tideflow-source",
    "tideflow-partition",
    "tideflow-offset",
];

impl std::fmt::Debug for DeadLetterWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetterWriter")
            .field("sink", &self.sink)
            .finish()
    }
}

impl DeadLetterWriter {
    /// Opens the dead-letter output of worker `worker`; `origin` names the
    /// source (a topic, a path) in Kafka headers, unless `origins` names
    /// each letter's topic. In a file sink, the file's name carries
    /// `role` (which operator writes it, empty for the source).
    pub fn open(
        sink: &SinkPlan,
        (worker, role): (usize, &str),
        origin: &str,
        origins: Origins,
    ) -> Result<Self> {
        let inner = match sink {
            SinkPlan::Jsonl(dir) | SinkPlan::Parquet { dir, .. } => {
                let path = dir.join(format!("part-{worker:04}{role}.jsonl"));
                let file = File::create(&path)
                    .map_err(|error| sink_error(sink, format!("{}: {error}", path.display())))?;
                DeadLetterTarget::File(BufWriter::new(file))
            }
            SinkPlan::Stdout => DeadLetterTarget::Stdout,
            SinkPlan::Stderr => DeadLetterTarget::Stderr,
            SinkPlan::Null => DeadLetterTarget::Discard,
            SinkPlan::Kafka {
                brokers,
                topic,
                options,
            } => DeadLetterTarget::Kafka(KafkaProducer::open(brokers, topic, options)?),
        };
        Ok(DeadLetterWriter {
            inner,
            sink: sink.clone(),
            origin: origin.to_owned(),
            origins,
            exactly_once: None,
            origin_text: String::new(),
            input: None,
        })
    }

    /// Opens the dead-letter output of worker `worker` in a checkpointed
    /// run: in a file sink, one file per epoch, named with `role` (which
    /// operator writes it) so that two writers of a worker never share a
    /// file.
    pub fn open_for_epochs(
        sink: &SinkPlan,
        worker: usize,
        role: &str,
        origin: &str,
        origins: Origins,
        resume: Option<Arc<TopicResume>>,
    ) -> Result<Self> {
        let (SinkPlan::Jsonl(dir) | SinkPlan::Parquet { dir, .. }) = sink else {
            let mut writer = DeadLetterWriter::open(sink, (worker, role), origin, origins)?;
            if let (DeadLetterTarget::Kafka(_), Some(resume)) = (&writer.inner, resume) {
                writer.exactly_once = Some((resume.starts.clone(), resume));
            }
            return Ok(writer);
        };
        Ok(DeadLetterWriter {
            inner: DeadLetterTarget::Epochs {
                names: EpochNames::new(dir, format!("part-{worker:04}{role}"), "jsonl"),
                current: None,
            },
            sink: sink.clone(),
            origin: origin.to_owned(),
            origins,
            exactly_once: None,
            origin_text: String::new(),
            input: None,
        })
    }

    /// Marks the letters as those of a table or label input named `name`
    /// (JSON lines carry `_input`; Kafka headers name its topic).
    pub fn of_input(mut self, name: &str) -> Self {
        self.input = Some(name.to_owned());
        self
    }

    /// Ends the epoch of checkpoint `id` (see [`RowWriter::close_epoch`]).
    pub fn close_epoch(&mut self, id: u64) -> Result<EpochOutput> {
        let DeadLetterTarget::Epochs { names, current } = &mut self.inner else {
            self.finish()?;
            let (DeadLetterTarget::Kafka(producer), Some((starts, resume))) =
                (&self.inner, &mut self.exactly_once)
            else {
                return Ok(EpochOutput::default());
            };
            // As a Kafka sink of rows does: later letters land after
            // the ends of those acknowledged now.
            resume.move_starts(starts, producer.delivered_ends());
            return Ok(EpochOutput {
                files: Vec::new(),
                topic_starts: Some(starts.clone()),
            });
        };
        let Some((mut file, pending)) = current.take() else {
            return Ok(EpochOutput::default());
        };
        file.flush()
            .and_then(|()| file.get_ref().sync_data())
            .map_err(|error| sink_error(&self.sink, error))?;
        Ok(EpochOutput {
            files: vec![EpochFile {
                pending,
                published: names.published(id),
            }],
            topic_starts: None,
        })
    }

    /// Writes one dead letter.
    pub fn write(&mut self, letter: &DeadLetter) -> Result<()> {
        let (topic, partition) = self.origins.locate(letter.partition);
        if let DeadLetterTarget::Kafka(producer) = &self.inner {
            if let Some((_, resume)) = &self.exactly_once
                && resume.was_written(letter.partition, letter.offset)
            {
                return Ok(());
            }
            let (partition, offset) = (partition.to_string(), letter.offset.to_string());
            self.origin_text.clear();
            write!(self.origin_text, "{}:{}", letter.partition, letter.offset)
                .expect("writing to a String cannot fail");
            let values = [
                letter.error.as_bytes(),
                topic.unwrap_or(&self.origin).as_bytes(),
                partition.as_bytes(),
                offset.as_bytes(),
            ];
            // The record as it came (value, key, its own headers), with
            // the reason and origin in headers of tideflow's.
            let headers: Vec<(&str, &[u8])> = letter
                .headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_slice()))
                .chain(DEAD_LETTER_HEADERS.into_iter().zip(values))
                .chain([(ORIGIN_HEADER, self.origin_text.as_bytes())])
                .collect();
            return Ok(producer.send(&ProducerRecord {
                key: letter.key.as_deref(),
                value: &letter.raw,
                headers: &headers,
                partition: None,
                ticket: 0,
            })?);
        }
        let mut line = serde_json::json!({
            "_partition": partition,
            "_offset": letter.offset,
            "_error": letter.error,
        });
        put_bytes(&mut line, "_raw", &letter.raw);
        if let Some(key) = &letter.key {
            put_bytes(&mut line, "_key", key);
        }
        if !letter.headers.is_empty() {
            let mut headers = serde_json::Map::new();
            for (name, value) in &letter.headers {
                headers.insert(name.clone(), bytes_as_json(value));
            }
            line["_headers"] = headers.into();
        }
        if let Some(topic) = topic {
            line["_topic"] = topic.into();
        }
        if let Some(input) = &self.input {
            line["_input"] = input.as_str().into();
        }
        let mut text = line.to_string();
        text.push('\n');
        let written = match &mut self.inner {
            DeadLetterTarget::File(file) => file.write_all(text.as_bytes()),
            DeadLetterTarget::Epochs { names, current } => {
                if current.is_none() {
                    let path = names.next_pending();
                    let file = File::create(&path).map_err(|error| {
                        sink_error(&self.sink, format!("{}: {error}", path.display()))
                    })?;
                    *current = Some((BufWriter::new(file), path));
                }
                let (file, _) = current.as_mut().expect("opened above");
                file.write_all(text.as_bytes())
            }
            DeadLetterTarget::Stdout => std::io::stdout().lock().write_all(text.as_bytes()),
            DeadLetterTarget::Stderr => std::io::stderr().lock().write_all(text.as_bytes()),
            DeadLetterTarget::Discard | DeadLetterTarget::Kafka(_) => Ok(()),
        };
        written.map_err(|error| sink_error(&self.sink, error))
    }

    /// Flushes to durable storage (for Kafka: waits for every dead letter
    /// to be acknowledged).
    pub fn finish(&mut self) -> Result<()> {
        match &mut self.inner {
            DeadLetterTarget::File(file)
            | DeadLetterTarget::Epochs {
                current: Some((file, _)),
                ..
            } => {
                file.flush()
                    .map_err(|error| sink_error(&self.sink, error))?;
                file.get_ref()
                    .sync_data()
                    .map_err(|error| sink_error(&self.sink, error))?;
            }
            DeadLetterTarget::Epochs { current: None, .. } => {}
            DeadLetterTarget::Kafka(producer) => producer.flush(KAFKA_FINISH_TIMEOUT)?,
            DeadLetterTarget::Stdout | DeadLetterTarget::Stderr | DeadLetterTarget::Discard => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vectors of RFC 4648, section 10.
    #[test]
    fn base64_gives_the_rfc_test_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (bytes, text) in vectors {
            assert_eq!(base64(bytes.as_bytes()), text);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }
}
