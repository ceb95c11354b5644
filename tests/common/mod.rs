//! Test harness: a real Apache Kafka broker on a free loopback port and Kafka helpers built on
//! rdkafka ([`broker`]), job specs and the `embedstream` binary run as a process ([`process`]),
//! Hadoop's mini cluster ([`hadoop`]), Python's reference vectors ([`reference`]), an image
//! host ([`image_server`]), a loopback packet capture ([`capture`]), PostgreSQL with pgvector
//! ([`postgres`]), a Schema Registry ([`registry`]) and small helpers every test uses. Needs deploy/setup.sh's cache.
#![allow(dead_code)]

pub mod broker;
pub mod browser;
pub mod capture;
pub mod delta;
pub mod hadoop;
pub mod image_server;
pub mod kdc;
pub mod postgres;
pub mod process;
pub mod prometheus;
pub mod reference;
pub mod registry;
pub mod table;
pub mod tls;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use broker::*;
pub use process::*;

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

/// A `Vm...:` field of `/proc/PID/status` (`VmRSS:`, `VmHWM:` for the peak), in KiB.
pub fn vm_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix(field)).unwrap().split_whitespace().next().unwrap().parse().unwrap()
}

/// The processes whose parent is `pid`, from /proc.
pub fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            // /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after ')'.
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok()) == Some(pid)
        })
        .collect()
}

/// Waits until `done` holds (what a test observes of the processes it started), polling every
/// 20 ms, failing after 30 s.
pub async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Issue 35's catalog: product `i` keyed `sku-<i>` in partition `i % partitions`, a JSON value
/// with its title and price. In pass 0 every product has its first title (edition 0); in a later
/// pass every fifth product (`i % 5 == 0`) gets a new title of the same length (its edition is
/// the pass's: the same number of tokens, so that a changed title costs the model what its old
/// one did) and the others a new price only. Returns the records and each product's title in
/// that pass.
pub fn catalog(n: usize, pass: usize, partitions: i32) -> (Vec<broker::RawRecord>, Vec<String>) {
    let base = texts(n, 35);
    let titles: Vec<String> = (0..n)
        .map(|i| match pass > 0 && i % 5 == 0 {
            true => format!("{} (item {i}, edition {pass})", base[i]),
            false => format!("{} (item {i}, edition 0)", base[i]),
        })
        .collect();
    let records = (titles.iter().enumerate())
        .map(|(i, title)| {
            let value = serde_json::json!({ "title": title, "price": 10.0 + pass as f64 + (i % 7) as f64 });
            (i as i32 % partitions, Some(format!("sku-{i}").into_bytes()), Some(value.to_string().into_bytes()))
        })
        .collect();
    (records, titles)
}

/// `[input]` of [`catalog`]'s records, and the `[model]` keys that embed their titles and skip
/// the unchanged ones.
pub const CATALOG_INPUT: &str =
    "[input]\nformat = \"json\"\nfields = { title = \"/title\", price = \"/price\" }\ntypes = { price = \"double\" }\n";
pub const CATALOG_MODEL: &str = "batch_size = 32\nsort_window = 256\ntext = \"{title}\"\nskip_unchanged = true";

/// [`catalog`]'s first pass of 2,000 products into topic `products` and `job` (a continuous
/// query on two executors); once it is committed, the driver and both executors are SIGKILLed.
pub fn first_pass_then_kill_all(broker: &Broker, job: &Job) {
    broker.produce("products", &catalog(2000, 0, 2).0);
    let mut q = Running::start(job, 2);
    q.wait_until("the first pass committed", Duration::from_secs(240), |_| skipped_and_computed(job).0 >= 2000);
    q.kill_all();
    assert_eq!(skipped_and_computed(job), (2000, 0, 2000), "every title computed once");
}

/// Summed over a query's progress records: input rows, unchanged records, model inputs.
pub fn skipped_and_computed(job: &Job) -> (u64, u64, u64) {
    let sum = |key: &str| progress_records(job).iter().map(|r| r[key].as_u64().unwrap_or(0)).sum::<u64>();
    (sum("numInputRows"), sum("unchanged"), sum("modelInputs"))
}
