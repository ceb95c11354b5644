//! How far one driver goes (issue 20, item 7): what one micro-batch costs the driver, step by
//! step, for 10, 1,000 and 10,000 source partitions and 1 to 64 executors, on a real Apache
//! Kafka broker (one record a partition a batch, so every partition is a task).
//!
//!     deploy/setup.sh && cargo bench --bench driver
//!
//! The driver's own code runs as a query runs it: plan (the broker's partitions and offsets, the
//! rate limit, the tasks), log (`offsets/<N>`, written and synced), dispatch (every task to a
//! free core over gRPC, `Scheduler::run_batch`), commit (`commits/<N>` and the purge of old
//! entries), group (the end offsets committed to the consumer group). The executors are stand-ins
//! in this process that answer each task at once (a real one would read, embed and write), so
//! that 64 of them fit on one machine and what is measured is the driver's part alone. Each cell
//! is the median of 5 batches after one to warm up. `-- --quick` measures 10 and 1,000 partitions
//! only, `-- --partitions=N` N alone. The table goes to stdout and `target/embedstream-bench/driver.json`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Broker, Job};
use embedstream_core::auth::ClusterToken;
use embedstream_core::tls::Tls;
use embedstream_core::JobSpec;
use embedstream_driver::checkpoint::{Checkpoint, CommitLogEntry, OffsetLogEntry};
use embedstream_driver::executors::{ExecutorInfo, ExecutorRegistry};
use embedstream_driver::planner;
use embedstream_driver::query::batch::tasks_for;
use embedstream_driver::scheduler::Scheduler;
use embedstream_driver::source::KafkaSource;
use embedstream_proto::pb::executor_service_server::{ExecutorService, ExecutorServiceServer};
use embedstream_proto::pb::{
    task_status, ShutdownRequest, ShutdownResponse, TaskDefinition, TaskStatus, TaskSuccessful,
};
use embedstream_proto::serve::{Caller, GrpcServer};
use serde_json::json;
use tonic::{Request, Response, Status};

const BATCHES: usize = 5;
const EXECUTORS: [usize; 4] = [1, 4, 16, 64];

/// An executor that answers every task at once, as if it had read and embedded its range.
struct StandIn;

#[tonic::async_trait]
impl ExecutorService for StandIn {
    async fn run_task(&self, request: Request<TaskDefinition>) -> Result<Response<TaskStatus>, Status> {
        let task = request.into_inner();
        let rows = task.range.as_ref().map_or(0, |r| (r.until_offset - r.from_offset).max(0) as u64);
        Ok(Response::new(TaskStatus {
            batch_id: task.batch_id,
            task_id: task.task_id,
            attempt: task.attempt,
            executor_id: String::new(),
            status: Some(task_status::Status::Successful(TaskSuccessful {
                rows_read: rows,
                embeddings_written: rows,
                ..Default::default()
            })),
        }))
    }

    async fn shutdown(&self, _: Request<ShutdownRequest>) -> Result<Response<ShutdownResponse>, Status> {
        Ok(Response::new(ShutdownResponse {}))
    }
}

/// Starts `n` stand-in executors of one core each and registers them.
async fn stand_ins(n: usize, registry: &ExecutorRegistry) -> Vec<tokio::sync::watch::Sender<bool>> {
    let caller = Caller { token: ClusterToken::load(None).unwrap(), tls: Tls::plaintext() };
    let mut stops = Vec::new();
    for i in 0..n {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let server =
            GrpcServer::new(caller.token.clone(), Tls::plaintext()).guarded(ExecutorServiceServer::new(StandIn));
        tokio::spawn(server.serve(listener, async move {
            let _ = stopped.wait_for(|&s| s).await;
        }));
        let info = ExecutorInfo::connect(format!("stand-in-{i}"), address, 1, 0, String::new(), &caller).unwrap();
        registry.register(info);
        stops.push(stop);
    }
    stops
}

/// Milliseconds of each step of one batch.
#[derive(Default, Clone, Copy)]
struct Steps {
    plan: f64,
    log: f64,
    dispatch: f64,
    commit: f64,
    group: f64,
}

impl Steps {
    fn total(&self) -> f64 {
        self.plan + self.log + self.dispatch + self.commit + self.group
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let only: Option<i32> = std::env::args().find_map(|a| a.strip_prefix("--partitions=")?.parse().ok());
    let partitions: Vec<i32> = match (only, quick) {
        (Some(n), _) => vec![n],
        (None, true) => vec![10, 1000],
        (None, false) => vec![10, 1000, 10_000],
    };
    // 10,000 partitions want a larger heap than the tests' brokers.
    let broker = Broker::start_with_env(&[], "", &[("KAFKA_HEAP_OPTS", "-Xmx2g")]);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    println!(
        "driver cost of one batch, ms (median of {BATCHES}); one record a partition a batch; stand-in executors of one core"
    );
    println!(
        "{:>10} {:>9} {:>8} {:>8} {:>9} {:>8} {:>8} {:>9}",
        "partitions", "executors", "plan", "log", "dispatch", "commit", "group", "total"
    );
    let mut rows = Vec::new();
    for &n in &partitions {
        let topic = format!("scale-{n}");
        let created = Instant::now();
        // A KRaft controller writes at most 10,000 records a request (a topic's record and its
        // partitions'): a large topic is made in steps.
        broker.create_topic(&topic, n.min(5000));
        if n > 5000 {
            broker.tool("kafka-topics.sh", &["--alter", "--topic", &topic, "--partitions", &n.to_string()]);
        }
        eprintln!("driver bench: topic of {n} partitions created in {:.1} s", created.elapsed().as_secs_f64());
        let job = Job::new(&broker, &format!("scale-{n}"), &format!("subscribe = [\"{topic}\"]"), "", "");
        let spec = JobSpec::from_file(&job.path).unwrap();
        let source = Arc::new(KafkaSource::new(&spec, &spec.read_secrets().unwrap()).unwrap());
        // A new topic's partitions get their leaders over a few seconds: wait for every one.
        let until = Instant::now() + Duration::from_secs(300);
        while let Err(e) = source.partitions().and_then(|tps| source.watermarks(&tps)) {
            assert!(Instant::now() < until, "the topic of {n} partitions has no leaders: {e}");
            std::thread::sleep(Duration::from_millis(500));
        }
        eprintln!("driver bench: every partition led after {:.1} s", created.elapsed().as_secs_f64());
        for &executors in &EXECUTORS {
            let checkpoint = Checkpoint::open(&job.dir.path().join(format!("checkpoint-{executors}"))).unwrap();
            let registry = Arc::new(ExecutorRegistry::default());
            let stops = runtime.block_on(stand_ins(executors, &registry));
            let scheduler = Scheduler::new(registry.clone(), |_| Duration::from_secs(60));
            let (_, mut start) = source.watermarks(&source.partitions().unwrap()).unwrap();
            let mut all = Vec::new();
            for batch_id in 0..=BATCHES as u64 {
                // One new record in every partition.
                let records: Vec<_> = (0..n).map(|p| (p, None, Some(b"x".to_vec()))).collect();
                broker.produce(&topic, &records);
                let mut steps = Steps::default();

                let t = Instant::now();
                let tps = source.partitions().unwrap();
                let (_, latest) = source.watermarks(&tps).unwrap();
                let end = planner::rate_limit(&start, &latest, None);
                let entry = OffsetLogEntry {
                    version: 1,
                    batch_id,
                    timestamp_ms: 0,
                    start: start.clone(),
                    end: end.clone(),
                    sources: Default::default(),
                };
                let tasks = tasks_for(&entry, "scale", None, n, n);
                assert_eq!(tasks.len(), n as usize, "one task a partition");
                steps.plan = ms(t);

                let t = Instant::now();
                checkpoint.write_offsets(&entry).unwrap();
                steps.log = ms(t);

                let t = Instant::now();
                let stats = runtime.block_on(scheduler.run_batch(batch_id, tasks)).unwrap();
                assert_eq!(stats.rows_read, n as u64);
                steps.dispatch = ms(t);

                let t = Instant::now();
                let commit = CommitLogEntry { version: 1, batch_id, input_rows: stats.rows_read, ..Default::default() };
                checkpoint.write_commit(&commit).unwrap();
                checkpoint.purge_before((batch_id + 1).saturating_sub(100)).unwrap();
                steps.commit = ms(t);

                let t = Instant::now();
                source.commit_group(&end, "bench").unwrap();
                steps.group = ms(t);

                start = end;
                if batch_id > 0 {
                    all.push(steps);
                }
            }
            let m = |f: fn(&Steps) -> f64| median(all.iter().map(f).collect());
            let s = Steps {
                plan: m(|s| s.plan),
                log: m(|s| s.log),
                dispatch: m(|s| s.dispatch),
                commit: m(|s| s.commit),
                group: m(|s| s.group),
            };
            let total = m(Steps::total);
            println!(
                "{n:>10} {executors:>9} {:>8.1} {:>8.1} {:>9.1} {:>8.1} {:>8.1} {:>9.1}",
                s.plan, s.log, s.dispatch, s.commit, s.group, total
            );
            rows.push(json!({"partitions": n, "executors": executors, "plan_ms": s.plan, "log_ms": s.log,
                             "dispatch_ms": s.dispatch, "commit_ms": s.commit, "group_ms": s.group,
                             "total_ms": total}));
            for stop in stops {
                let _ = stop.send(true);
            }
        }
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/embedstream-bench");
    std::fs::create_dir_all(&out).unwrap();
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpu.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, m)| m.trim());
    let report = json!({"cores": std::thread::available_parallelism().map_or(1, |c| c.get()), "cpu": cpu,
                        "batches": BATCHES, "rows": rows});
    std::fs::write(out.join("driver.json"), serde_json::to_vec_pretty(&report).unwrap()).unwrap();
    println!("report: {}", out.join("driver.json").display());
}
