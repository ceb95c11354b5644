//! Micro-batch planning rules, as pure functions over offsets.
//!
//! They follow Spark's Kafka source so its users get what they expect:
//! - [`rate_limit`]: `maxOffsetsPerTrigger` split over partitions in proportion to their backlog;
//! - [`split_ranges`]: `minPartitions`, as `KafkaOffsetRangeCalculator` does it;
//! - [`check_data_loss`]: what `failOnDataLoss` guards against;
//! - [`check_incarnations`]: a topic deleted and created again, or another cluster behind the
//!   same name, which Spark takes for the old offsets (Kafka's topic and cluster ids tell).

use std::collections::BTreeMap;

use embedstream_core::offsets::{OffsetRange, PartitionOffsets, SourceIds, TopicPartition};

/// Caps `latest` so that the batch reads at most `limit` records in all, giving each partition a
/// share in proportion to its backlog (`latest - start`). A share below one record is rounded up
/// so that small partitions are never starved, as Spark does; others are rounded down.
pub fn rate_limit(start: &PartitionOffsets, latest: &PartitionOffsets, limit: Option<u64>) -> PartitionOffsets {
    let Some(limit) = limit else {
        return latest.clone();
    };
    let backlog: BTreeMap<&TopicPartition, i64> = latest
        .iter()
        .filter_map(|(tp, &end)| {
            let begin = *start.get(tp)?;
            (end > begin).then_some((tp, end - begin))
        })
        .collect();
    let total: i64 = backlog.values().sum();
    if total < 1 {
        return latest.clone();
    }
    latest
        .iter()
        .map(|(tp, &end)| {
            let capped = match (backlog.get(tp), start.get(tp)) {
                (Some(&size), Some(&begin)) => {
                    let share = limit as f64 * (size as f64 / total as f64);
                    let share = if share < 1.0 { share.ceil() } else { share.floor() } as i64;
                    begin.saturating_add(share).min(end)
                }
                _ => end,
            };
            (tp.clone(), capped)
        })
        .collect()
}

/// Splits ranges into at least `min_partitions` tasks when there are fewer, each partition into
/// a number of pieces proportional to its size (at least one), as Spark's
/// `KafkaOffsetRangeCalculator` does. Pieces of one partition are contiguous and near-equal.
pub fn split_ranges(ranges: Vec<OffsetRange>, min_partitions: Option<u32>) -> Vec<OffsetRange> {
    let ranges: Vec<OffsetRange> = ranges.into_iter().filter(|r| r.size() > 0).collect();
    let Some(min) = min_partitions.map(i64::from) else {
        return ranges;
    };
    if ranges.len() as i64 >= min {
        return ranges;
    }
    let total: i64 = ranges.iter().map(OffsetRange::size).sum();
    ranges
        .into_iter()
        .flat_map(|r| {
            let parts = ((r.size() as f64 / total as f64 * min as f64).round() as i64).clamp(1, r.size());
            (0..parts).map(move |i| OffsetRange {
                tp: r.tp.clone(),
                from: r.from + r.size() * i / parts,
                until: r.from + r.size() * (i + 1) / parts,
            })
        })
        .collect()
}

/// Offsets that a batch would read but the broker no longer has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataLoss {
    #[error("{tp}: offsets {from}..{earliest} were deleted before they were processed (retention or compaction of the log start)")]
    Deleted { tp: TopicPartition, from: i64, earliest: i64 },
    #[error("{tp}: the latest offset {latest} is below the processed offset {from} (topic deleted and recreated, or log truncated)")]
    Truncated { tp: TopicPartition, from: i64, latest: i64 },
    #[error("{tp}: the partition no longer exists")]
    PartitionGone { tp: TopicPartition },
    #[error(
        "the source is another Kafka cluster: cluster id {from} when the last batch was planned, {to} now; \
         its offsets are not the old cluster's"
    )]
    NewCluster { from: String, to: String },
    #[error("topic {topic} was deleted and created again: topic id {from} when the last batch was planned, {to} now")]
    Recreated { topic: String, from: String, to: String },
}

/// Compares the cluster and topic ids of the last batch (`previous`) with those of now. Another
/// cluster: every partition starts over at its earliest offset. A topic with another id (deleted
/// and created again): its partitions start over at their earliest offsets. They are removed
/// from `start` here; the planner's rule for new partitions (earliest) puts them back. With
/// `fail_on_data_loss`, either is an error instead. Ids unknown on either side (a checkpoint
/// written before they were kept) are not compared.
pub fn check_incarnations(
    previous: &SourceIds,
    now: &SourceIds,
    start: &mut PartitionOffsets,
    fail_on_data_loss: bool,
) -> Result<Vec<DataLoss>, DataLoss> {
    let mut losses = Vec::new();
    if !previous.cluster_id.is_empty() && !now.cluster_id.is_empty() && previous.cluster_id != now.cluster_id {
        losses.push(DataLoss::NewCluster { from: previous.cluster_id.clone(), to: now.cluster_id.clone() });
    } else {
        for (topic, from) in &previous.topic_ids {
            match now.topic_ids.get(topic) {
                Some(to) if !from.is_empty() && !to.is_empty() && to != from => {
                    losses.push(DataLoss::Recreated { topic: topic.clone(), from: from.clone(), to: to.clone() })
                }
                _ => {}
            }
        }
    }
    if let (Some(first), true) = (losses.first(), fail_on_data_loss) {
        return Err(first.clone());
    }
    for loss in &losses {
        match loss {
            DataLoss::NewCluster { .. } => start.clear(),
            DataLoss::Recreated { topic, .. } => start.retain(|tp, _| &tp.topic != topic),
            _ => {}
        }
    }
    Ok(losses)
}

/// Checks the next batch's start offsets against what the broker holds (`earliest`/`latest` per
/// partition it knows now). With `fail_on_data_loss`, any loss is an error. Without it, the loss
/// is returned as warnings and the start moves to what can still be read: a deleted range starts
/// at `earliest`, a truncated partition starts over at `earliest`. A partition missing from the
/// broker's answer keeps its offset (it reads nothing this batch): were it dropped, its return
/// would look new and be read again from its first offset.
pub fn check_data_loss(
    start: &PartitionOffsets,
    earliest: &PartitionOffsets,
    latest: &PartitionOffsets,
    fail_on_data_loss: bool,
) -> Result<(PartitionOffsets, Vec<DataLoss>), DataLoss> {
    let mut adjusted = PartitionOffsets::new();
    let mut losses = Vec::new();
    for (tp, &from) in start {
        let (Some(&low), Some(&high)) = (earliest.get(tp), latest.get(tp)) else {
            losses.push(DataLoss::PartitionGone { tp: tp.clone() });
            adjusted.insert(tp.clone(), from);
            continue;
        };
        if high < from {
            losses.push(DataLoss::Truncated { tp: tp.clone(), from, latest: high });
            adjusted.insert(tp.clone(), low);
        } else if from < low {
            losses.push(DataLoss::Deleted { tp: tp.clone(), from, earliest: low });
            adjusted.insert(tp.clone(), low);
        } else {
            adjusted.insert(tp.clone(), from);
        }
    }
    match losses.first() {
        Some(first) if fail_on_data_loss => Err(first.clone()),
        _ => Ok((adjusted, losses)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offs(v: &[(&str, i32, i64)]) -> PartitionOffsets {
        v.iter().map(|&(t, p, o)| (TopicPartition::new(t, p), o)).collect()
    }

    fn ids(cluster: &str, topics: &[(&str, &str)]) -> SourceIds {
        SourceIds {
            cluster_id: cluster.into(),
            topic_ids: topics.iter().map(|(t, id)| (t.to_string(), id.to_string())).collect(),
        }
    }

    #[test]
    fn a_recreated_topic_or_another_cluster_starts_over() {
        let before = ids("c1", &[("a", "A1"), ("b", "B1")]);
        let start = offs(&[("a", 0, 50), ("a", 1, 40), ("b", 0, 7)]);
        // The same ids, or ids unknown before: nothing changes.
        let mut same = start.clone();
        assert_eq!(check_incarnations(&before, &before, &mut same, true), Ok(vec![]));
        assert_eq!(check_incarnations(&SourceIds::default(), &before, &mut same, true), Ok(vec![]));
        assert_eq!(same, start);
        // Topic a deleted and created again: its partitions leave the plan (to start over at
        // earliest), b keeps its offset; with fail_on_data_loss the query stops, naming both ids.
        let now = ids("c1", &[("a", "A2"), ("b", "B1")]);
        let mut moved = start.clone();
        let losses = check_incarnations(&before, &now, &mut moved, false).unwrap();
        assert_eq!(losses, vec![DataLoss::Recreated { topic: "a".into(), from: "A1".into(), to: "A2".into() }]);
        assert_eq!(moved, offs(&[("b", 0, 7)]));
        let stop = check_incarnations(&before, &now, &mut start.clone(), true).unwrap_err();
        assert!(stop.to_string().contains("topic a was deleted and created again: topic id A1"), "{stop}");
        // Another cluster: every partition starts over.
        let mut all = start.clone();
        let losses = check_incarnations(&before, &ids("c2", &[("a", "A1"), ("b", "B1")]), &mut all, false).unwrap();
        assert_eq!(losses, vec![DataLoss::NewCluster { from: "c1".into(), to: "c2".into() }]);
        assert!(all.is_empty());
    }

    #[test]
    fn rate_limit_is_proportional_to_backlog() {
        let start = offs(&[("t", 0, 0), ("t", 1, 100)]);
        let latest = offs(&[("t", 0, 300), ("t", 1, 200)]); // backlogs 300 and 100
        let end = rate_limit(&start, &latest, Some(40));
        assert_eq!(end, offs(&[("t", 0, 30), ("t", 1, 110)]));
    }

    #[test]
    fn rate_limit_never_starves_a_small_partition() {
        let start = offs(&[("t", 0, 0), ("t", 1, 0)]);
        let latest = offs(&[("t", 0, 1000), ("t", 1, 1)]);
        let end = rate_limit(&start, &latest, Some(10));
        assert_eq!(end[&TopicPartition::new("t", 1)], 1, "share 0.01 is rounded up");
        assert_eq!(end[&TopicPartition::new("t", 0)], 9);
    }

    #[test]
    fn rate_limit_without_limit_or_backlog_is_latest() {
        let start = offs(&[("t", 0, 5)]);
        let latest = offs(&[("t", 0, 9)]);
        assert_eq!(rate_limit(&start, &latest, None), latest);
        assert_eq!(rate_limit(&latest, &latest, Some(3)), latest);
        assert_eq!(rate_limit(&start, &latest, Some(100)), latest, "a limit above the backlog changes nothing");
    }

    #[test]
    fn split_reaches_min_partitions_in_proportion() {
        let r = vec![
            OffsetRange { tp: TopicPartition::new("t", 0), from: 0, until: 300 },
            OffsetRange { tp: TopicPartition::new("t", 1), from: 50, until: 150 },
        ];
        let s = split_ranges(r, Some(8));
        let zero: Vec<_> = s.iter().filter(|r| r.tp.partition == 0).collect();
        let one: Vec<_> = s.iter().filter(|r| r.tp.partition == 1).collect();
        assert_eq!((zero.len(), one.len()), (6, 2));
        // Contiguous and covering exactly the original ranges.
        assert_eq!((zero[0].from, zero.last().unwrap().until), (0, 300));
        assert!(zero.windows(2).all(|w| w[0].until == w[1].from));
        assert_eq!((one[0].from, one[0].until, one[1].from, one[1].until), (50, 100, 100, 150));
    }

    #[test]
    fn split_leaves_enough_ranges_alone_and_drops_empty() {
        let r = vec![
            OffsetRange { tp: TopicPartition::new("t", 0), from: 0, until: 10 },
            OffsetRange { tp: TopicPartition::new("t", 1), from: 4, until: 4 },
        ];
        assert_eq!(split_ranges(r.clone(), Some(1)).len(), 1);
        assert_eq!(split_ranges(r.clone(), None).len(), 1);
        // Never more pieces than records.
        let tiny = vec![OffsetRange { tp: TopicPartition::new("t", 0), from: 0, until: 2 }];
        assert_eq!(split_ranges(tiny, Some(16)).len(), 2);
    }

    #[test]
    fn data_loss_fails_or_moves_on() {
        let start = offs(&[("t", 0, 5), ("t", 1, 50), ("t", 2, 7)]);
        let earliest = offs(&[("t", 0, 10), ("t", 1, 0)]);
        let latest = offs(&[("t", 0, 20), ("t", 1, 30)]);
        let err = check_data_loss(&start, &earliest, &latest, true).unwrap_err();
        assert_eq!(err, DataLoss::Deleted { tp: TopicPartition::new("t", 0), from: 5, earliest: 10 });
        let (adj, losses) = check_data_loss(&start, &earliest, &latest, false).unwrap();
        // The missing partition keeps its offset, so that its return does not read it again.
        assert_eq!(adj, offs(&[("t", 0, 10), ("t", 1, 0), ("t", 2, 7)]));
        assert_eq!(losses.len(), 3);
        assert!(losses.contains(&DataLoss::PartitionGone { tp: TopicPartition::new("t", 2) }));
        assert!(losses.contains(&DataLoss::Truncated { tp: TopicPartition::new("t", 1), from: 50, latest: 30 }));
    }

    #[test]
    fn no_data_loss_keeps_start() {
        let start = offs(&[("t", 0, 10)]);
        let (adj, losses) = check_data_loss(&start, &offs(&[("t", 0, 0)]), &offs(&[("t", 0, 10)]), true).unwrap();
        assert_eq!(adj, start);
        assert!(losses.is_empty());
    }
}
