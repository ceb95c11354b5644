//! Where a query (re)starts: from its checkpoint (the uncommitted batch again with its logged
//! offsets, or the batch after the last commit), or, new, from `source.starting_offsets`,
//! logged before the first batch so that a restart then starts from the same place rather than
//! from a newer "latest".

use embedstream_core::spec::StartAt;

use super::batch::Query;
use super::DriverError;
use crate::checkpoint::{OffsetLogEntry, Recovery};
use embedstream_core::offsets::{PartitionOffsets, SourceIds, TopicPartition};

/// The first batch a (re)started query runs.
pub(crate) struct Resume {
    pub(crate) next_batch_id: u64,
    pub(crate) start: PartitionOffsets,
    /// A logged batch that did not commit: run first, with exactly its offsets.
    pub(crate) rerun: Option<OffsetLogEntry>,
    /// The cluster and topic ids of the last batch logged.
    pub(crate) sources: SourceIds,
}

impl Query<'_> {
    pub(crate) async fn resume(&self, partitions: &[TopicPartition]) -> Result<Resume, DriverError> {
        Ok(match self.checkpoint.recover()? {
            Recovery::Fresh => Resume {
                next_batch_id: 0,
                start: self.initial_offsets(partitions).await?,
                rerun: None,
                sources: SourceIds::default(),
            },
            Recovery::Rerun(entry) => {
                tracing::info!(batch_id = entry.batch_id, "re-running the uncommitted batch with its logged offsets");
                let sources = entry.sources.clone();
                Resume { next_batch_id: entry.batch_id, start: entry.start.clone(), rerun: Some(entry), sources }
            }
            Recovery::Continue { next_batch_id, start, sources } => {
                Resume { next_batch_id, start, rerun: None, sources }
            }
        })
    }

    /// Where a new query starts (`starting_offsets`), logged once.
    async fn initial_offsets(&self, partitions: &[TopicPartition]) -> Result<PartitionOffsets, DriverError> {
        if let Some(logged) = self.checkpoint.initial_offsets()? {
            return Ok(logged);
        }
        let tps = partitions.to_vec();
        let (earliest, latest) = self.broker(move |s| s.watermarks(&tps)).await?;
        let mut start = PartitionOffsets::new();
        for tp in partitions {
            let at = self.spec.source.starting_offsets.for_partition(&tp.topic, tp.partition).ok_or_else(|| {
                DriverError::StartingOffsets(format!("partition {} of topic {} is not listed", tp.partition, tp.topic))
            })?;
            let offset = match at {
                StartAt::Earliest => earliest[tp],
                StartAt::Latest => latest[tp],
                StartAt::Offset(o) => o,
            };
            start.insert(tp.clone(), offset);
        }
        self.checkpoint.write_initial_offsets(&start)?;
        Ok(start)
    }
}
