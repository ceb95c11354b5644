//! The one offsets vocabulary: a partition ([`TopicPartition`]), an offset per partition
//! ([`PartitionOffsets`]) and a task's range ([`OffsetRange`]). The planner, the checkpoint's
//! logs, the Parquet manifests, the progress records, the reader and the admin API all use
//! these; `PartitionOffsets` serialises as Spark does in its checkpoints,
//! `{"topic": {"partition": offset}}`, so files written before this type existed read the same.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::{Deref, DerefMut};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        TopicPartition { topic: topic.into(), partition }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// An offset per partition: a start (inclusive) or an end (exclusive, the next offset to read).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionOffsets(BTreeMap<TopicPartition, i64>);

impl PartitionOffsets {
    pub fn new() -> PartitionOffsets {
        PartitionOffsets::default()
    }

    /// Spark's shape: offsets by partition number (as a string) by topic.
    pub fn by_topic(&self) -> BTreeMap<String, BTreeMap<String, i64>> {
        let mut out: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
        for (tp, &o) in &self.0 {
            out.entry(tp.topic.clone()).or_default().insert(tp.partition.to_string(), o);
        }
        out
    }

    /// The records from `self` (starts) to `end` (ends), over partitions in both.
    pub fn records_until(&self, end: &PartitionOffsets) -> i64 {
        OffsetRange::between(self, end).iter().map(OffsetRange::size).sum()
    }
}

impl Deref for PartitionOffsets {
    type Target = BTreeMap<TopicPartition, i64>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for PartitionOffsets {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl FromIterator<(TopicPartition, i64)> for PartitionOffsets {
    fn from_iter<I: IntoIterator<Item = (TopicPartition, i64)>>(iter: I) -> Self {
        PartitionOffsets(iter.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a PartitionOffsets {
    type Item = (&'a TopicPartition, &'a i64);
    type IntoIter = std::collections::btree_map::Iter<'a, TopicPartition, i64>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl IntoIterator for PartitionOffsets {
    type Item = (TopicPartition, i64);
    type IntoIter = std::collections::btree_map::IntoIter<TopicPartition, i64>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl fmt::Display for PartitionOffsets {
    /// The JSON of checkpoints and progress records, for messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&serde_json::to_string(self).map_err(|_| fmt::Error)?)
    }
}

impl Serialize for PartitionOffsets {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.by_topic().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for PartitionOffsets {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let nested = BTreeMap::<String, BTreeMap<String, i64>>::deserialize(deserializer)?;
        let mut out = PartitionOffsets::new();
        for (topic, parts) in nested {
            for (p, o) in parts {
                let partition = p
                    .parse::<i32>()
                    .map_err(|_| serde::de::Error::custom(format!("topic {topic}: partition `{p}` is not a number")))?;
                out.insert(TopicPartition::new(topic.clone(), partition), o);
            }
        }
        Ok(out)
    }
}

/// `[from, until)` of one partition: one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetRange {
    pub tp: TopicPartition,
    pub from: i64,
    pub until: i64,
}

impl OffsetRange {
    pub fn size(&self) -> i64 {
        self.until - self.from
    }

    /// The non-empty ranges between `start` and `end`, one per partition.
    pub fn between(start: &PartitionOffsets, end: &PartitionOffsets) -> Vec<OffsetRange> {
        end.iter()
            .filter_map(|(tp, &until)| {
                let from = *start.get(tp)?;
                (until > from).then(|| OffsetRange { tp: tp.clone(), from, until })
            })
            .collect()
    }
}

impl fmt::Display for OffsetRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}, {})", self.tp, self.from, self.until)
    }
}

/// Which incarnation of each topic, on which Kafka cluster, a batch's offsets belong to:
/// offsets count from 0 again in a topic deleted and created again (a new topic id) and mean
/// nothing on another cluster (a new cluster id). Empty in logs written before they were kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceIds {
    /// Kafka's cluster id, as `kafka-cluster.sh cluster-id` prints it.
    pub cluster_id: String,
    /// Each topic's id (base64), as `kafka-topics.sh --describe` prints it.
    pub topic_ids: BTreeMap<String, String>,
}

impl SourceIds {
    pub fn is_empty(&self) -> bool {
        self.cluster_id.is_empty() && self.topic_ids.is_empty()
    }

    /// `topic`'s id, empty when unknown.
    pub fn topic_id(&self, topic: &str) -> &str {
        self.topic_ids.get(topic).map_or("", String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_as_spark_checkpoints_do() {
        let o: PartitionOffsets =
            [(TopicPartition::new("a", 1), 7), (TopicPartition::new("a", 0), 5), (TopicPartition::new("b", 0), 9)]
                .into_iter()
                .collect();
        let json = serde_json::to_string(&o).unwrap();
        assert_eq!(json, r#"{"a":{"0":5,"1":7},"b":{"0":9}}"#);
        assert_eq!(serde_json::from_str::<PartitionOffsets>(&json).unwrap(), o);
        let bad = serde_json::from_str::<PartitionOffsets>(r#"{"a":{"x":1}}"#).unwrap_err();
        assert!(bad.to_string().contains("partition `x`"), "{bad}");
    }

    #[test]
    fn ranges_between_starts_and_ends() {
        let start: PartitionOffsets =
            [(TopicPartition::new("t", 0), 3), (TopicPartition::new("t", 1), 8)].into_iter().collect();
        let end: PartitionOffsets =
            [(TopicPartition::new("t", 0), 10), (TopicPartition::new("t", 1), 8)].into_iter().collect();
        assert_eq!(
            OffsetRange::between(&start, &end),
            [OffsetRange { tp: TopicPartition::new("t", 0), from: 3, until: 10 }]
        );
        assert_eq!(start.records_until(&end), 7);
    }
}
