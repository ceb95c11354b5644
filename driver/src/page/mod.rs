//! The query's own page (issue 18): what the Spark UI never showed, served by the driver on its
//! metrics listener beside `/metrics`.
//!
//! - `GET /`: the page (`page.html`, no build step, nothing fetched from elsewhere), which polls
//!   the JSON endpoints below and redraws;
//! - `GET /api/query`: name, state, batch id, trigger, sink, uptime, executors wanted and alive,
//!   and the last task attempt that failed (retried, or the batch's end) with why;
//! - `GET /api/partitions`: each source partition's latest and committed offsets, lag, records
//!   in and out per second over the last minute, and its lag over the last batches (for the
//!   sparkline);
//! - `GET /api/batches`: the last batches' progress records (rows, phases, dead letters, retries);
//! - `GET /api/executors`: each executor (live, draining, lost and why) with its tasks in
//!   flight, embeddings per second, worker processes and their memory, restarts, cache hits;
//! - `GET /api/dead-letters`: dead letters over the last batches by the class of their reason,
//!   and the last few with their topic, partition, offset and reason;
//! - `GET /api/alerts`: the shipped alert conditions evaluated on the driver's state ([`alerts`]);
//! - `POST /login`: a form with the cluster token, which sets a cookie.
//!
//! With a cluster token, every route but `/login` wants it ([`embedstream_core::web`], which
//! serves `/` and `/login` for this page and the resource manager's):
//! `Authorization: Bearer TOKEN` (for scripts) or the cookie the login form sets (for people).
//! `/` without it answers the login form; the endpoints answer 401.

pub mod alerts;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use embedstream_core::auth::ClusterToken;
use embedstream_core::offsets::TopicPartition;
use embedstream_core::progress::ProgressRecord;
use embedstream_core::spec::sink::{SinkKind, SinkSpec};
use embedstream_core::web::{self, json_response};
use serde_json::json;

use crate::admin::Control;
use crate::executors::ExecutorRegistry;
use crate::progress::RecentProgress;

/// Batches the page shows and the sparklines span.
const RECENT_BATCHES: usize = 60;

/// What the page reads: the query's switches and executors, and its progress records.
pub struct PageState {
    pub query: String,
    pub query_id: String,
    pub trigger: String,
    /// The trigger interval (zero: none), for the "no batch finished" condition.
    pub trigger_interval: Duration,
    pub sink: String,
    pub started: Instant,
    /// The newest progress records, as the batch loop appends them.
    pub progress: RecentProgress,
    pub control: Arc<Control>,
    pub registry: Arc<ExecutorRegistry>,
    pub token: ClusterToken,
    /// Served over TLS (the session cookie is then `Secure`).
    pub tls: bool,
}

/// The page's routes, to be merged into the metrics listener's.
pub fn router(state: Arc<PageState>) -> axum::Router {
    let (token, tls) = (state.token.clone(), state.tls);
    let api = axum::Router::new()
        .route("/api/query", get(query))
        .route("/api/partitions", get(partitions))
        .route("/api/batches", get(batches))
        .route("/api/executors", get(executors))
        .route("/api/dead-letters", get(dead_letters))
        .route("/api/alerts", get(alerts_now))
        .with_state(state);
    web::site(include_str!("page.html"), api, token, tls)
}

/// The sink in a few words: its kind and where it writes (no secret: a pgvector URL holds none).
pub fn describe_sink(sink: &SinkSpec) -> String {
    match &sink.kind {
        SinkKind::Kafka(k) => format!("kafka topic {}", k.topic),
        SinkKind::Parquet(p) => format!("parquet {}", p.path.display()),
        SinkKind::Delta(d) => format!("delta {}", d.path.display()),
        SinkKind::Pgvector(p) => format!("pgvector table {}", p.table),
    }
}

fn recent(state: &PageState) -> Vec<ProgressRecord> {
    state.progress.last(RECENT_BATCHES)
}

async fn query(State(state): State<Arc<PageState>>) -> Response {
    let snapshot = state.control.snapshot.lock().expect("not poisoned").clone();
    let status = if state.control.stopping() {
        "stopping"
    } else if *state.control.paused.borrow() {
        "paused"
    } else if state.control.yielding.lock().expect("not poisoned").is_some() {
        "yielding"
    } else {
        "running"
    };
    json_response(json!({
        "query": state.query,
        "queryId": state.query_id,
        "state": status,
        "yielding": state.control.yielding.lock().expect("not poisoned").clone(),
        "batchesCommitted": snapshot.batches_committed,
        "nextBatchId": snapshot.next_batch_id,
        "trigger": state.trigger,
        "sink": state.sink,
        "uptimeSeconds": state.started.elapsed().as_secs(),
        "executorsWanted": *state.control.target.borrow(),
        "executorsAlive": state.registry.live().len(),
        "lastTaskFailure": state.registry.last_task_failure().map(|(ago, why)| json!({
            "secondsAgo": ago.as_secs(),
            "message": why,
        })),
    }))
}

async fn partitions(State(state): State<Arc<PageState>>) -> Response {
    let records = recent(&state);
    let snapshot = state.control.snapshot.lock().expect("not poisoned").clone();
    // The broker's latest offsets as last refreshed (also while paused or idle), over those of
    // the last batch; a partition's committed offset is the query's own.
    let mut latest_offsets: std::collections::BTreeMap<_, _> = (records.last().iter())
        .flat_map(|r| r.sources.iter().flat_map(|s| s.latest_offset.iter().map(|(tp, &o)| (tp.clone(), o))))
        .collect();
    latest_offsets.extend(state.control.latest.lock().expect("not poisoned").iter().map(|(tp, &o)| (tp.clone(), o)));
    let ends: std::collections::BTreeMap<_, _> = (records.last().iter())
        .flat_map(|r| r.sources.iter().flat_map(|s| s.end_offset.iter().map(|(tp, &o)| (tp.clone(), o))))
        .collect();
    // Each record's start, read once for all the partitions' rates.
    let timed: Vec<(SystemTime, &ProgressRecord)> =
        records.iter().filter_map(|r| Some((alerts::started(r)?, r))).collect();
    let mut rows = Vec::new();
    for (tp, &latest) in latest_offsets.iter() {
        let committed = snapshot.committed.get(tp).copied().or_else(|| ends.get(tp).copied());
        let lag_history: Vec<i64> =
            records.iter().filter_map(|r| offsets_of(r, tp)).map(|(latest, end)| latest - end).collect();
        let (input, output) = rates(&timed, tp, RATE_SPAN);
        rows.push(json!({
            "topic": tp.topic,
            "partition": tp.partition,
            "latest": latest,
            "committed": committed,
            "lag": committed.map(|c| (latest - c).max(0)),
            "inputPerSecond": input,
            "outputPerSecond": output,
            "lagHistory": lag_history,
        }));
    }
    json_response(json!({"partitions": rows}))
}

/// How far back the partitions' rates look.
const RATE_SPAN: Duration = Duration::from_secs(60);

/// A record's latest and end offsets of `tp`, if its batch saw `tp`.
fn offsets_of(r: &ProgressRecord, tp: &TopicPartition) -> Option<(i64, i64)> {
    let s = r.sources.iter().find(|s| s.latest_offset.get(tp).is_some())?;
    Some((*s.latest_offset.get(tp)?, *s.end_offset.get(tp)?))
}

/// Records per second into `tp` (its latest offset's growth) and out of it (its end offset's,
/// what the batches read), between the first and the last batch that started within `span`
/// of the last one; `timed` is each record with its start, oldest first. `None` without two
/// such batches.
fn rates(timed: &[(SystemTime, &ProgressRecord)], tp: &TopicPartition, span: Duration) -> (Option<f64>, Option<f64>) {
    let Some(&(last_at, _)) = timed.last() else { return (None, None) };
    let seen: Vec<(SystemTime, (i64, i64))> = (timed.iter())
        .filter(|(t, _)| last_at.duration_since(*t).unwrap_or_default() <= span)
        .filter_map(|&(t, r)| Some((t, offsets_of(r, tp)?)))
        .collect();
    let (Some((t0, (latest0, end0))), Some((t1, (latest1, end1)))) = (seen.first(), seen.last()) else {
        return (None, None);
    };
    let secs = t1.duration_since(*t0).unwrap_or_default().as_secs_f64();
    if seen.len() < 2 || secs <= 0.0 {
        return (None, None);
    }
    (Some((latest1 - latest0).max(0) as f64 / secs), Some((end1 - end0).max(0) as f64 / secs))
}

/// The broker's latest offsets as last refreshed less the query's committed ones, summed; none
/// before the first refresh or the first committed batch.
fn lag_now(state: &PageState) -> Option<i64> {
    let latest = state.control.latest.lock().expect("not poisoned").clone();
    let committed = state.control.snapshot.lock().expect("not poisoned").committed.clone();
    if latest.is_empty() || committed.is_empty() {
        return None;
    }
    Some(latest.iter().map(|(tp, &l)| (l - committed.get(tp).copied().unwrap_or(l)).max(0)).sum())
}

async fn alerts_now(State(state): State<Arc<PageState>>) -> Response {
    let facts = alerts::Facts {
        now: std::time::SystemTime::now(),
        trigger: state.trigger_interval,
        executors_wanted: *state.control.target.borrow(),
        executors_alive: state.registry.live().len(),
        restarts_15m: state.registry.restarts_within(Duration::from_secs(15 * 60)),
        lag_now: lag_now(&state),
    };
    json_response(json!({"alerts": alerts::evaluate(&recent(&state), &facts)}))
}

async fn batches(State(state): State<Arc<PageState>>) -> Response {
    json_response(json!({"batches": recent(&state)}))
}

async fn executors(State(state): State<Arc<PageState>>) -> Response {
    let registry = &state.registry;
    let live = registry.all().into_iter().map(|(e, draining)| (e, if draining { "draining" } else { "live" }, None));
    let lost = registry.lost().into_iter().map(|(e, why)| (e, "lost", why));
    let rows: Vec<serde_json::Value> = live
        .chain(lost)
        .map(|(e, status, why)| {
            let beats = registry.beats(&e.id);
            let running: Vec<serde_json::Value> = (registry.running(&e.id).iter())
                .map(|t| {
                    json!({
                        "batchId": t.batch_id,
                        "taskId": t.task_id,
                        "attempt": t.attempt,
                        "topic": t.range.as_ref().map(|r| r.tp.topic.clone()),
                        "partition": t.range.as_ref().map(|r| r.tp.partition),
                        "fromOffset": t.range.as_ref().map(|r| r.from),
                        "untilOffset": t.range.as_ref().map(|r| r.until),
                        "runningSeconds": t.started.elapsed().as_secs_f64(),
                    })
                })
                .collect();
            json!({
                "id": e.id,
                "address": e.address,
                "metricsAddress": e.metrics_address,
                "pid": e.pid,
                "cores": e.cores,
                "state": status,
                "endedWhy": why,
                "running": running,
                "embeddingsPerSecond": beats.as_ref().map_or(0.0, |b| b.embeddings_per_second()),
                "lastHeartbeatSecondsAgo": beats.as_ref().map(|b| b.last.1.elapsed().as_secs_f64()),
                "health": beats.map(|b| b.last.0),
            })
        })
        .collect();
    json_response(json!({"executors": rows}))
}

/// Dead letters shown one by one.
const LAST_DEAD_LETTERS: usize = 10;

async fn dead_letters(State(state): State<Arc<PageState>>) -> Response {
    let records = recent(&state);
    let mut by_reason: std::collections::BTreeMap<&str, u64> = Default::default();
    for r in &records {
        for (reason, n) in &r.dead_letter_reasons {
            *by_reason.entry(reason).or_default() += n;
        }
    }
    let last: Vec<serde_json::Value> = (records.iter().rev())
        .flat_map(|r| r.dead_letter_samples.iter().rev().map(move |d| (r.batch_id, d)))
        .take(LAST_DEAD_LETTERS)
        .map(|(batch_id, d)| json!({"batchId": batch_id, "topic": d.topic, "partition": d.partition, "offset": d.offset, "reason": d.reason}))
        .collect();
    let mut reasons: Vec<(&str, u64)> = by_reason.into_iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    json_response(json!({
        "batches": records.len(),
        "total": records.iter().map(|r| r.dead_letters).sum::<u64>(),
        "byReason": reasons.iter().map(|(reason, count)| json!({"reason": reason, "count": count})).collect::<Vec<_>>(),
        "last": last,
    }))
}

/// A progress record of one partition (`t`-0) for the page's unit tests: `end` and `latest`
/// offsets, the 10 records before `end` read in a one-second batch started `at`.
#[cfg(test)]
pub(crate) fn test_record(at: SystemTime, end: i64, latest: i64, dead_letters: u64) -> ProgressRecord {
    use embedstream_core::offsets::PartitionOffsets;
    use embedstream_core::progress::SourceProgress;
    let offsets = |o: i64| -> PartitionOffsets { [(TopicPartition::new("t", 0), o)].into_iter().collect() };
    ProgressRecord {
        id: "q".into(),
        name: "q".into(),
        batch_id: 0,
        timestamp: humantime::format_rfc3339_millis(at).to_string(),
        num_input_rows: 10,
        input_rows_per_second: 0.0,
        processed_rows_per_second: 0.0,
        duration_ms: [("triggerExecution".to_string(), 1000)].into_iter().collect(),
        sources: vec![SourceProgress {
            description: String::new(),
            start_offset: offsets(end - 10),
            end_offset: offsets(end),
            latest_offset: offsets(latest),
            num_input_rows: 10,
            offsets_behind_latest: latest - end,
        }],
        embeddings: 10,
        dead_letters,
        lost_offsets: 0,
        task_retries: 0,
        executors: Default::default(),
        cache_hits: 0,
        cache_misses: 0,
        dead_letter_reasons: Default::default(),
        dead_letter_samples: Vec::new(),
        model_versions: Default::default(),
        unchanged: 0,
        model_inputs: 0,
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use embedstream_core::offsets::TopicPartition;

    use super::{alerts, rates, test_record};

    #[test]
    fn a_partitions_rates_are_its_offsets_growth_over_the_last_minute() {
        let now = SystemTime::now();
        let tp = TopicPartition::new("t", 0);
        // 100 s of batches, 10 s apart: 30 records/s arrive, 20/s are read.
        let records: Vec<_> = (0..=10)
            .map(|i| test_record(now - Duration::from_secs(100 - 10 * i), 200 * i as i64, 300 * i as i64, 0))
            .collect();
        let timed: Vec<_> = records.iter().map(|r| (alerts::started(r).unwrap(), r)).collect();
        let (input, output) = rates(&timed, &tp, Duration::from_secs(60));
        assert_eq!((input, output), (Some(30.0), Some(20.0)));
        assert_eq!(rates(&timed[..1], &tp, Duration::from_secs(60)), (None, None), "one batch: no rate");
        assert_eq!(rates(&timed, &TopicPartition::new("u", 0), Duration::from_secs(60)), (None, None));
    }
}
