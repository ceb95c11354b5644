//! Test harness: a real Tansu broker on a free loopback port, Kafka helpers built on rdkafka,
//! job specs, and the `embedstream` binary run as a process. Needs deploy/setup.sh's cache.
#![allow(dead_code)]

pub mod table;

use std::collections::{BTreeMap, HashMap};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// A record to produce: partition, key, value.
pub type RawRecord = (i32, Option<Vec<u8>>, Option<Vec<u8>>);

pub const TIMEOUT: Duration = Duration::from_secs(60);
pub const DIM: usize = 384;

pub fn cache() -> PathBuf {
    std::env::var_os("EMBEDSTREAM_CACHE")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/embedstream"))
}

pub fn model_dir() -> PathBuf {
    let dir = cache().join("models/all-MiniLM-L6-v2");
    assert!(dir.join("model.onnx").is_file(), "{} has no model: run deploy/setup.sh", dir.display());
    dir
}

/// A Tansu broker with SQLite storage in a temporary directory, stopped on drop.
pub struct Broker {
    child: Child,
    pub addr: String,
    dir: tempfile::TempDir,
}

impl Broker {
    pub fn start() -> Broker {
        let tansu = cache().join("bin/tansu");
        assert!(tansu.is_file(), "{} is missing: run deploy/setup.sh", tansu.display());
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("broker.log")).unwrap();
        let child = Command::new(&tansu)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://{addr}"),
                "--advertised-listener-url",
                &format!("tcp://{addr}"),
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(dir.path())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut broker = Broker { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&broker.addr).is_err() {
            if let Ok(Some(status)) = broker.child.try_wait() {
                panic!("tansu exited with {status}: {}", broker.log());
            }
            assert!(Instant::now() < deadline, "tansu did not listen on {} within 20 s", broker.addr);
            std::thread::sleep(Duration::from_millis(50));
        }
        broker
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }

    pub fn create_topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", &self.addr).create().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let res = rt
            .block_on(
                admin.create_topics(
                    &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                    &AdminOptions::new(),
                ),
            )
            .unwrap();
        for r in res {
            r.unwrap();
        }
        // Wait until metadata lists the topic with all its partitions.
        let consumer = self.consumer();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)).unwrap();
            if md.topics().first().is_some_and(|t| t.error().is_none() && t.partitions().len() == partitions as usize) {
                return;
            }
            assert!(Instant::now() < deadline, "topic {topic} did not appear");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn consumer(&self) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .set("group.id", "embedstream-tests")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()
            .unwrap()
    }

    /// Produces `records` (partition, key, value) and waits for every acknowledgement.
    pub fn produce(&self, topic: &str, records: &[RawRecord]) {
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()
            .unwrap();
        for (p, k, v) in records {
            let mut r = BaseRecord::<[u8], [u8]>::to(topic).partition(*p);
            if let Some(k) = k {
                r = r.key(k.as_slice());
            }
            if let Some(v) = v {
                r = r.payload(v.as_slice());
            }
            producer.send(r).map_err(|(e, _)| e).unwrap();
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    }

    /// Produces texts keyed `key-<i>`, text `i` to partition `i % partitions`.
    pub fn produce_texts(&self, topic: &str, partitions: i32, first_key: usize, texts: &[String]) {
        let records: Vec<_> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let n = first_key + i;
                (n as i32 % partitions, Some(format!("key-{n}").into_bytes()), Some(t.clone().into_bytes()))
            })
            .collect();
        self.produce(topic, &records);
    }

    pub fn high_watermarks(&self, topic: &str, partitions: i32) -> Vec<i64> {
        let c = self.consumer();
        (0..partitions).map(|p| c.fetch_watermarks(topic, p, Duration::from_secs(5)).unwrap().1).collect()
    }

    /// Every record of `topic`, read up to the high watermark of each partition.
    pub fn read_all(&self, topic: &str, partitions: i32) -> Vec<Record> {
        let highs = self.high_watermarks(topic, partitions);
        let c = self.consumer();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
        }
        c.assign(&tpl).unwrap();
        let total: i64 = highs.iter().sum();
        let mut out = Vec::new();
        let deadline = Instant::now() + TIMEOUT;
        while (out.len() as i64) < total {
            assert!(Instant::now() < deadline, "read {} of {total} records of {topic}", out.len());
            if let Some(m) = c.poll(Duration::from_millis(100)) {
                let m = m.unwrap();
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Record {
                    timestamp_ms: m.timestamp().to_millis(),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
        }
        out
    }

    /// The offsets `group` has committed for the partitions of `topic` (-1 where none).
    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
        (0..partitions)
            .map(|p| match got.find_partition(topic, p).unwrap().offset() {
                Offset::Offset(o) => o,
                _ => -1,
            })
            .collect()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone)]
pub struct Record {
    /// The Kafka timestamp (the producer's create time).
    pub timestamp_ms: Option<i64>,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
}

impl Record {
    pub fn header(&self, k: &str) -> &str {
        self.headers.get(k).map(String::as_str).unwrap_or_else(|| panic!("no header {k} in {:?}", self.headers))
    }

    pub fn vector(&self) -> Vec<f32> {
        self.value.as_ref().unwrap().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    }

    /// (source partition, source offset) from the headers.
    pub fn origin(&self) -> (i32, i64) {
        (self.header("es.partition").parse().unwrap(), self.header("es.offset").parse().unwrap())
    }
}

/// A job spec file in a temporary directory, with its checkpoint beside it.
pub struct Job {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Job {
    /// `source_extra`, `trigger` and `rest` are TOML lines added to [source], [trigger] and the end.
    pub fn new(broker: &Broker, name: &str, source_extra: &str, trigger: &str, rest: &str) -> Job {
        let dir = tempfile::tempdir().unwrap();
        let m = model_dir();
        let text = format!(
            r#"name = "{name}"
checkpoint_location = "{cp}"

[source]
bootstrap_servers = "{addr}"
starting_offsets = "earliest"
group_id = "{name}-group"
poll_timeout_ms = 20000
{source_extra}

[trigger]
{trigger}

[model]
onnx = "{onnx}"
tokenizer = "{tok}"
batch_size = 16
sort_window = 16

[sink]
kind = "kafka"
topic = "{name}-out"
dead_letter_topic = "{name}-dlq"
{rest}
"#,
            cp = dir.path().join("checkpoint").display(),
            addr = broker.addr,
            onnx = m.join("model.onnx").display(),
            tok = m.join("tokenizer.json").display(),
        );
        let path = dir.path().join("job.toml");
        std::fs::write(&path, text).unwrap();
        Job { dir, path }
    }

    /// Drops the `starting_offsets = "earliest"` that [`Job::new`] puts first, for a test that sets its own.
    pub fn without_default_starting_offsets(self) -> Job {
        let text = std::fs::read_to_string(&self.path).unwrap().replacen("starting_offsets = \"earliest\"\n", "", 1);
        std::fs::write(&self.path, text).unwrap();
        self
    }

    /// Sets `model.batch_size` and `model.sort_window` (16 and 16 from [`Job::new`], so that a
    /// task of more than 16 records is embedded and written in several windows).
    pub fn with_batching(self, batch_size: usize, sort_window: usize) -> Job {
        let text = std::fs::read_to_string(&self.path).unwrap().replacen(
            "batch_size = 16\nsort_window = 16\n",
            &format!("batch_size = {batch_size}\nsort_window = {sort_window}\n"),
            1,
        );
        std::fs::write(&self.path, text).unwrap();
        self
    }

    /// Makes the sink a Parquet table at `table` (with the `value` column) instead of a topic.
    pub fn with_parquet_sink(self, table: &Path) -> Job {
        let text = std::fs::read_to_string(&self.path).unwrap();
        let (head, rest) = text.split_once("[sink]\nkind = \"kafka\"\n").expect("Job::new's sink");
        let rest = rest.split_once('\n').expect("the topic line").1;
        let sink = format!("[sink]\nkind = \"parquet\"\npath = \"{}\"\ncolumns = [\"value\"]\n", table.display());
        std::fs::write(&self.path, format!("{head}{sink}{rest}")).unwrap();
        self
    }

    pub fn checkpoint(&self) -> PathBuf {
        self.dir.path().join("checkpoint")
    }

    /// Batch ids that have a file in `offsets/` or `commits/`.
    pub fn logged_batches(&self, log: &str) -> Vec<u64> {
        let mut v: Vec<u64> = std::fs::read_dir(self.checkpoint().join(log))
            .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

pub fn embedstream() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_embedstream"));
    c.env("EMBEDSTREAM_CACHE", cache()).env("RUST_LOG", "info,librdkafka=warn");
    c
}

/// Runs `embedstream ARGS` to its end, killing it past `timeout`.
pub fn run_to_end(mut cmd: Command, timeout: Duration) -> Output {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("embedstream did not finish within {timeout:?}");
        }
    }
}

/// Runs an `available_now` job with N local executors and returns its summary (JSON).
pub fn run_job(job: &Job, executors: u32) -> serde_json::Value {
    let mut cmd = embedstream();
    cmd.args(["run", job.path.to_str().unwrap(), "--local", &executors.to_string()]);
    let out = run_to_end(cmd, Duration::from_secs(180));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "embedstream run failed ({}):\n{stderr}", out.status);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("summary: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Product-like texts of varied length, `n` of them, different for each `seed`.
pub fn texts(n: usize, seed: usize) -> Vec<String> {
    const ADJ: &[&str] =
        &["lightweight", "waterproof", "vintage", "ergonomic", "organic", "wireless", "handmade", "compact"];
    const THING: &[&str] = &[
        "running shoes",
        "desk lamp",
        "coffee grinder",
        "backpack",
        "wool scarf",
        "bluetooth speaker",
        "chef's knife",
    ];
    const TAIL: &[&str] = &[
        "",
        "with free shipping",
        "in three colours, made to last through years of daily use",
        "for travel, the office and weekends outdoors; easy to clean, backed by a two-year warranty and loved by reviewers",
    ];
    (0..n)
        .map(|i| {
            let k = i + seed * 7919;
            format!("{} {} {} no. {k}", ADJ[k % ADJ.len()], THING[(k / 3) % THING.len()], TAIL[(k / 5) % TAIL.len()])
        })
        .collect()
}

/// Output records grouped by source partition, each group in sink order.
pub fn by_partition(records: &[Record]) -> BTreeMap<i32, Vec<&Record>> {
    let mut m: BTreeMap<i32, Vec<&Record>> = BTreeMap::new();
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    for r in sorted {
        m.entry(r.origin().0).or_default().push(r);
    }
    m
}

pub fn read_checkpoint_file(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A continuous query running in the background, its stderr collected line by line.
pub struct Running {
    child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Running {
    pub fn start(job: &Job, executors: u32) -> Running {
        let mut cmd = embedstream();
        cmd.args(["run", job.path.to_str().unwrap(), "--local", &executors.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Running { child, lines }
    }

    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits until `cond` holds, failing if the query exits or `timeout` passes.
    pub fn wait_until(&mut self, what: &str, timeout: Duration, mut cond: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond(self) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the query exited ({status}) while waiting for {what}:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "no {what} within {timeout:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// PIDs of the executors, from the driver's "executor registered" lines.
    pub fn executor_pids(&self) -> Vec<u32> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("embedstream_driver") && l.contains("executor registered"))
            .filter_map(|l| l.split("pid=").nth(1)?.split_whitespace().next()?.parse().ok())
            .collect()
    }

    /// SIGTERM, then the exit status and the summary printed on stdout.
    pub fn stop(mut self) -> serde_json::Value {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "SIGTERM did not stop the query:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "a stop by SIGTERM exits 0, got {status}:\n{}", self.log());
        let mut out = String::new();
        std::io::Read::read_to_string(self.child.stdout.as_mut().unwrap(), &mut out).unwrap();
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("summary: {e}: {out}"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
