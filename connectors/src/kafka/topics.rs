//! The partitions of a source's topics as one sequence of source
//! partitions: the first topic's partitions, then the second's, and so on.
//!
//! The engine orders, assigns and tracks records by one partition index;
//! a source that reads several topics numbers their partitions one after
//! the other so that every record keeps a single, stable origin, and the
//! outputs translate the index back to a topic and a Kafka partition.

use super::{KafkaSourceConfig, LOOKUP_TIMEOUT};
use crate::{Error, Result};
use rdkafka::consumer::Consumer;

/// The topics of a source with their partition counts, in the spec's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicPartitions {
    topics: Vec<(String, u32)>,
}

impl TopicPartitions {
    /// Topics and their partition counts, in order.
    pub fn new(topics: Vec<(String, u32)>) -> Self {
        TopicPartitions { topics }
    }

    /// Asks the brokers how many partitions each of the source's topics has.
    pub fn discover(config: &KafkaSourceConfig) -> Result<Self> {
        let consumer = config.consumer()?;
        let mut topics = Vec::with_capacity(config.topics.len());
        for name in &config.topics {
            let metadata = consumer
                .fetch_metadata(Some(name), LOOKUP_TIMEOUT)
                .map_err(|error| config.error("cannot read the topic's metadata", &error))?;
            let found = metadata.topics().iter().find(|topic| topic.name() == name);
            match found {
                Some(topic) if topic.error().is_none() && !topic.partitions().is_empty() => {
                    topics.push((name.clone(), topic.partitions().len() as u32));
                }
                _ => {
                    return Err(Error::Kafka {
                        context: format!("topic {name} at {}", config.brokers),
                        message: "the topic does not exist; create it (tideflow gen creates \
                                  its topic) or check source.topic / source.topics"
                            .into(),
                    });
                }
            }
        }
        Ok(TopicPartitions { topics })
    }

    /// The number of source partitions: every topic's partitions.
    pub fn len(&self) -> u32 {
        self.topics.iter().map(|(_, count)| count).sum()
    }

    /// Whether there is no partition at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the source reads more than one topic (outputs then name
    /// the topic of each row).
    pub fn is_multi_topic(&self) -> bool {
        self.topics.len() > 1
    }

    /// The topic and Kafka partition of source partition `index`.
    pub fn locate(&self, index: u32) -> Option<(&str, u32)> {
        let mut first = 0;
        for (topic, count) in &self.topics {
            if index < first + count {
                return Some((topic, index - first));
            }
            first += count;
        }
        None
    }

    /// The source partition index of a topic's Kafka partition.
    pub fn index_of(&self, topic: &str, partition: u32) -> Option<u32> {
        let mut first = 0;
        for (name, count) in &self.topics {
            if name == topic {
                return (partition < *count).then_some(first + partition);
            }
            first += count;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_numbered_topic_after_topic() {
        let partitions = TopicPartitions::new(vec![("a".into(), 2), ("b".into(), 3)]);
        assert_eq!(partitions.len(), 5);
        assert!(partitions.is_multi_topic());
        let located: Vec<_> = (0..6).map(|index| partitions.locate(index)).collect();
        assert_eq!(
            located,
            [
                Some(("a", 0)),
                Some(("a", 1)),
                Some(("b", 0)),
                Some(("b", 1)),
                Some(("b", 2)),
                None
            ]
        );
        for index in 0..5 {
            let (topic, partition) = partitions.locate(index).unwrap();
            assert_eq!(partitions.index_of(topic, partition), Some(index));
        }
        assert_eq!(partitions.index_of("b", 3), None);
        assert_eq!(partitions.index_of("c", 0), None);
    }

    #[test]
    fn one_topic_keeps_kafka_partition_numbers() {
        let partitions = TopicPartitions::new(vec![("only".into(), 4)]);
        assert!(!partitions.is_multi_topic());
        for partition in 0..4 {
            assert_eq!(partitions.locate(partition), Some(("only", partition)));
        }
    }
}
