//! The shipped alert conditions (`deploy/prometheus/alerts.yml`) evaluated on the driver's own
//! state, for the query's page: its recent progress records, the executors wanted and alive. A
//! person who has no Prometheus still sees what would fire. Prometheus' `for:` durations become
//! the span of records a condition must hold over; worker restarts come from the executors'
//! heartbeats.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use embedstream_core::progress::ProgressRecord;
use serde::Serialize;

/// One condition and whether it holds now.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub name: &'static str,
    pub holds: bool,
    /// What was measured, in words.
    pub detail: String,
}

/// What the conditions read besides the records.
pub struct Facts {
    pub now: SystemTime,
    pub trigger: Duration,
    pub executors_wanted: u32,
    pub executors_alive: usize,
    /// Model workers each executor restarted in the last 15 minutes.
    pub restarts_15m: BTreeMap<String, u64>,
    /// The lag now: the broker's latest offsets as last refreshed less the query's committed
    /// ones (none before the first refresh: the last batch's lag is taken).
    pub lag_now: Option<i64>,
}

/// When `r`'s batch started.
pub(super) fn started(r: &ProgressRecord) -> Option<SystemTime> {
    humantime::parse_rfc3339(&r.timestamp).ok()
}

fn ended(r: &ProgressRecord) -> Option<SystemTime> {
    let took = r.duration_ms.get("triggerExecution").copied().unwrap_or(0);
    Some(started(r)? + Duration::from_millis(took))
}

/// The records that started within `span` of `now`.
fn within(records: &[ProgressRecord], now: SystemTime, span: Duration) -> Vec<&ProgressRecord> {
    records.iter().filter(|r| started(r).is_some_and(|t| now.duration_since(t).unwrap_or_default() <= span)).collect()
}

pub fn evaluate(records: &[ProgressRecord], facts: &Facts) -> Vec<Alert> {
    let lag = facts.lag_now.unwrap_or_else(|| records.last().map_or(0, ProgressRecord::lag));
    let mut alerts = Vec::new();

    // Lag above zero and growing over the last 10 minutes of batches.
    let recent = within(records, facts.now, Duration::from_secs(600));
    let growing =
        recent.len() >= 2 && recent.iter().all(|r| r.lag() > 0) && recent[recent.len() - 1].lag() > recent[0].lag();
    alerts.push(Alert {
        name: "EmbedstreamLagGrowing",
        holds: growing,
        detail: format!("lag {lag} records now, over {} batches in 10 min", recent.len()),
    });

    // Processing below 90 % of what arrives, over the last 5 minutes, as Prometheus' rates see
    // it: how far the latest offsets moved from the first batch in view to the last, against
    // what the batches after the first read in that time. A backlog that was there before the
    // window counts for neither.
    let five = within(records, facts.now, Duration::from_secs(300));
    let processed: u64 = five.iter().skip(1).map(|r| r.num_input_rows).sum();
    let arrived = arrived_between(&five);
    let below = five.len() >= 2 && (processed as f64) < 0.9 * arrived as f64 && lag > 0;
    alerts.push(Alert {
        name: "EmbedstreamProcessingBelowInput",
        holds: below,
        detail: format!("{processed} records processed of {arrived} arrived over 5 min"),
    });

    // No batch finished for 3 triggers (at least 30 s) while records wait.
    let quiet = facts.trigger.max(Duration::from_secs(10)) * 3;
    let since = records.last().and_then(ended).map(|t| facts.now.duration_since(t).unwrap_or_default());
    alerts.push(Alert {
        name: "EmbedstreamNoBatchFinished",
        holds: since.is_some_and(|s| s > quiet) && lag > 0,
        detail: match since {
            Some(s) => {
                format!("last batch finished {} s ago (alert after {} s with lag)", s.as_secs(), quiet.as_secs())
            }
            None => "no batch yet".into(),
        },
    });

    alerts.push(Alert {
        name: "EmbedstreamExecutorLost",
        holds: facts.executors_alive < facts.executors_wanted as usize,
        detail: format!("{} of {} executors alive", facts.executors_alive, facts.executors_wanted),
    });

    let (most, restarts) =
        (facts.restarts_15m.iter()).max_by_key(|(_, &n)| n).map_or(("-", 0), |(e, &n)| (e.as_str(), n));
    alerts.push(Alert {
        name: "EmbedstreamWorkerRestarts",
        holds: restarts > 3,
        detail: match restarts {
            0 => "no worker restarted in 15 min".into(),
            n => format!("{n} worker restarts on {most} in 15 min (alert above 3)"),
        },
    });

    let dead: u64 = five.iter().map(|r| r.dead_letters).sum();
    alerts.push(Alert {
        name: "EmbedstreamDeadLetters",
        holds: dead > 0,
        detail: format!("{dead} dead letters in 5 min"),
    });
    alerts
}

/// Records that arrived over `records` (oldest first): for each partition, how far its latest
/// offset moved from the first record that saw it to the last.
fn arrived_between(records: &[&ProgressRecord]) -> i64 {
    let mut first: BTreeMap<&embedstream_core::offsets::TopicPartition, i64> = BTreeMap::new();
    let mut last: BTreeMap<&embedstream_core::offsets::TopicPartition, i64> = BTreeMap::new();
    for s in records.iter().flat_map(|r| &r.sources) {
        for (tp, &latest) in s.latest_offset.iter() {
            first.entry(tp).or_insert(latest);
            last.insert(tp, latest);
        }
    }
    last.iter().map(|(tp, &l)| (l - first[tp]).max(0)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::page::test_record as record;

    fn holding(alerts: &[Alert]) -> Vec<&'static str> {
        alerts.iter().filter(|a| a.holds).map(|a| a.name).collect()
    }

    #[test]
    fn a_query_that_keeps_up_raises_nothing() {
        let now = SystemTime::now();
        let records: Vec<_> = (0..5)
            .map(|i| record(now - Duration::from_secs(50 - i * 10), 10 * (i as i64 + 1), 10 * (i as i64 + 1), 0))
            .collect();
        let facts = Facts {
            now,
            trigger: Duration::from_secs(1),
            executors_wanted: 2,
            executors_alive: 2,
            lag_now: None,
            restarts_15m: Default::default(),
        };
        assert!(holding(&evaluate(&records, &facts)).is_empty());
    }

    #[test]
    fn a_steady_backlog_processed_as_fast_as_it_grows_is_not_below_input() {
        let now = SystemTime::now();
        // 500 records behind in every batch: 10 read a batch, 10 arriving.
        let records: Vec<_> = (0..20)
            .map(|i| record(now - Duration::from_secs(200 - i * 10), 10 * (i as i64 + 1), 500 + 10 * (i as i64 + 1), 0))
            .collect();
        let facts = Facts {
            now,
            trigger: Duration::from_secs(1),
            executors_wanted: 1,
            executors_alive: 1,
            lag_now: None,
            restarts_15m: Default::default(),
        };
        let alerts = evaluate(&records, &facts);
        let below = alerts.iter().find(|a| a.name == "EmbedstreamProcessingBelowInput").unwrap();
        assert!(!below.holds, "{}", below.detail);
        assert_eq!(below.detail, "190 records processed of 190 arrived over 5 min");
    }

    #[test]
    fn a_falling_behind_query_with_dead_letters_and_a_lost_executor_raises_them() {
        let now = SystemTime::now();
        // Lag 100, 200, ... : 10 records a batch processed, 110 arriving.
        let records: Vec<_> = (0..5)
            .map(|i| record(now - Duration::from_secs(200 - i * 10), 10 * (i as i64 + 1), 110 * (i as i64 + 1), 1))
            .collect();
        let facts = Facts {
            now,
            trigger: Duration::from_secs(1),
            executors_wanted: 2,
            executors_alive: 1,
            lag_now: None,
            restarts_15m: [("exec-1".to_string(), 4)].into_iter().collect(),
        };
        assert_eq!(
            holding(&evaluate(&records, &facts)),
            [
                "EmbedstreamLagGrowing",
                "EmbedstreamProcessingBelowInput",
                "EmbedstreamNoBatchFinished",
                "EmbedstreamExecutorLost",
                "EmbedstreamWorkerRestarts",
                "EmbedstreamDeadLetters"
            ]
        );
    }
}
