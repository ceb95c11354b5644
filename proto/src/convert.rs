//! Conversions between the wire's messages and the domain types of `embedstream-core`, so that
//! `pb::` types stop at the gRPC edge: a message that cannot be a valid domain value is refused
//! here, with what is wrong.

use std::collections::HashMap;

use embedstream_core::offsets::{OffsetRange, PartitionOffsets, TopicPartition};
use embedstream_core::spec::{Secret, Secrets};

use crate::pb;

/// A message whose fields cannot make the domain value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}: {field}")]
pub struct InvalidMessage {
    pub field: &'static str,
    pub message: String,
}

impl From<OffsetRange> for pb::OffsetRange {
    fn from(r: OffsetRange) -> Self {
        pb::OffsetRange { topic: r.tp.topic, partition: r.tp.partition, from_offset: r.from, until_offset: r.until }
    }
}

impl TryFrom<pb::OffsetRange> for OffsetRange {
    type Error = InvalidMessage;

    fn try_from(r: pb::OffsetRange) -> Result<Self, Self::Error> {
        let invalid = |field, message: String| Err(InvalidMessage { field, message });
        if r.topic.is_empty() {
            return invalid("OffsetRange.topic", "empty topic".into());
        }
        if r.partition < 0 {
            return invalid("OffsetRange.partition", format!("negative partition {}", r.partition));
        }
        if r.from_offset < 0 || r.until_offset < r.from_offset {
            return invalid(
                "OffsetRange.until_offset",
                format!("range [{}, {}) is not valid", r.from_offset, r.until_offset),
            );
        }
        Ok(OffsetRange { tp: TopicPartition::new(r.topic, r.partition), from: r.from_offset, until: r.until_offset })
    }
}

/// Offsets per partition as the wire lists them.
pub fn offsets_to_pb(offsets: &PartitionOffsets) -> Vec<pb::PartitionOffset> {
    offsets
        .iter()
        .map(|(tp, &offset)| pb::PartitionOffset { topic: tp.topic.clone(), partition: tp.partition, offset })
        .collect()
}

/// The wire's list back into offsets per partition.
pub fn offsets_from_pb(offsets: Vec<pb::PartitionOffset>) -> PartitionOffsets {
    offsets.into_iter().map(|o| (TopicPartition::new(o.topic, o.partition), o.offset)).collect()
}

impl pb::QueryState {
    /// How `status` prints it.
    pub fn label(self) -> &'static str {
        match self {
            pb::QueryState::Running => "running",
            pb::QueryState::Paused => "paused",
            pb::QueryState::Stopping => "stopping",
            pb::QueryState::Unspecified => "unknown",
        }
    }
}

/// The driver's read secrets, for `GetJobSpecResponse.secrets`.
pub fn secrets_to_pb(secrets: &Secrets) -> HashMap<String, String> {
    secrets.iter().map(|(k, v)| (k.to_string(), v.expose().to_string())).collect()
}

pub fn secrets_from_pb(secrets: HashMap<String, String>) -> Secrets {
    Secrets::from_pairs(secrets.into_iter().map(|(k, v)| (k, Secret::new(v))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_round_trip_and_bad_ones_are_refused() {
        let r = OffsetRange { tp: TopicPartition::new("t", 2), from: 5, until: 9 };
        let wire: pb::OffsetRange = r.clone().into();
        assert_eq!(OffsetRange::try_from(wire.clone()).unwrap(), r);
        let backwards = pb::OffsetRange { from_offset: 9, until_offset: 5, ..wire.clone() };
        assert_eq!(OffsetRange::try_from(backwards).unwrap_err().field, "OffsetRange.until_offset");
        let negative = pb::OffsetRange { partition: -1, ..wire };
        assert_eq!(OffsetRange::try_from(negative).unwrap_err().field, "OffsetRange.partition");
    }

    #[test]
    fn offsets_round_trip() {
        let o: PartitionOffsets =
            [(TopicPartition::new("a", 0), 5), (TopicPartition::new("b", 3), 9)].into_iter().collect();
        assert_eq!(offsets_from_pb(offsets_to_pb(&o)), o);
    }
}
