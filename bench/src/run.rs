//! What `embedstream-bench` measures: embedstream against the limit and against a plain consumer, side by side in
//! one run on the same model, texts and cores, so that the ratios hold on a noisy machine.
//!
//! For each text set (generated product titles, and the lines of `--mixed FILE`):
//! 1. the limit: a plain ONNX Runtime session in this process, intra-op threads = cores, fed
//!    pre-tokenized batches, all texts sorted by length (and in arrival order, for reference);
//! 2. embedstream end to end: the texts in a 2-partition topic of the job's broker,
//!    `run --local 1` with 1, 2, 4 … cores workers, `available_now`, Kafka sink; embeddings/s from
//!    the first task dispatched to the last batch committed, and the peak total PSS of its process
//!    tree (driver, executor, model daemon, workers);
//! 3. with `--python`, the baseline consumer script (benches/baseline_consumer.py) and its peak PSS.
//!
//! Then latency: titles produced at half of (2)'s rate into a continuous query with a 1 s trigger,
//! from each input's Kafka timestamp to its output's (stamped by the sink's producer as it sends).
//! A table goes to stdout; `bench.json` and `bench.png` to `--out`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use embedstream_core::telemetry::pss_bytes;
use embedstream_core::JobSpec;
use embedstream_driver::source::KafkaSource;
use embedstream_driver::topics;
use embedstream_executor::model::{self, Embedder};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;

use crate::chart;

/// Partitions of every topic the bench creates.
const PARTITIONS: i32 = 2;
const TRIGGER_MS: u64 = 1000;

pub struct BenchArgs {
    pub job: PathBuf,
    pub count: usize,
    pub mixed: Option<PathBuf>,
    pub python: Option<PathBuf>,
    pub baseline: Option<PathBuf>,
    pub latency_seconds: u64,
    pub out: PathBuf,
    pub keep: bool,
    /// The `embedstream` binary whose `run --local 1` is measured.
    pub embedstream: PathBuf,
}

/// Short product titles, all about the same length.
pub fn uniform_texts(n: usize) -> Vec<String> {
    const ADJ: &[&str] = &["lightweight", "waterproof", "vintage", "ergonomic", "organic", "wireless"];
    const THING: &[&str] = &["running shoes", "desk lamp", "coffee grinder", "backpack", "wool scarf"];
    (0..n).map(|i| format!("{} {} model {}", ADJ[i % ADJ.len()], THING[(i / 7) % THING.len()], i)).collect()
}

/// One text set's figures.
struct SetResult {
    name: String,
    limit_sorted: f64,
    limit_arrival: f64,
    /// (workers, embeddings/s, peak total PSS in bytes)
    by_workers: Vec<(usize, f64, u64)>,
    /// (embeddings/s, peak total PSS in bytes)
    python: Option<(f64, u64)>,
}

impl SetResult {
    fn embedstream(&self) -> (f64, u64) {
        let &(_, rate, pss) = self.by_workers.last().expect("at least one run");
        (rate, pss)
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    let base = JobSpec::from_file(&args.job)?;
    let base_toml: toml::Table = toml::from_str(&std::fs::read_to_string(&args.job)?)?;
    ensure!(args.python.is_some() == args.baseline.is_some(), "--python and --baseline go together");
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let run_id = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let work = args.out.join(format!("run-{run_id}"));
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let bench = Bench {
        base_toml,
        bootstrap: base.source.bootstrap_servers.clone(),
        work,
        run_id,
        embedstream: args.embedstream.clone(),
    };

    let mut sets = vec![("uniform".to_string(), uniform_texts(args.count))];
    if let Some(path) = &args.mixed {
        let text = std::fs::read_to_string(path).with_context(|| format!("--mixed {}", path.display()))?;
        let lines: Vec<String> =
            text.lines().filter(|l| !l.trim().is_empty()).take(args.count).map(String::from).collect();
        ensure!(!lines.is_empty(), "--mixed {}: no text", path.display());
        sets.push(("mixed".to_string(), lines));
    }
    let mut workers: Vec<usize> = std::iter::successors(Some(1), |w| Some(w * 2)).take_while(|&w| w < cores).collect();
    workers.push(cores);

    println!(
        "embedstream-bench: {cores} cores, {} texts a set, batch {}, sort window {}, model {}\n",
        args.count,
        base.first_text_model().batch_size,
        base.first_text_model().sort_window,
        base.first_text_model().model_id()
    );
    println!(
        "{:<10} {:>12} {:>13} {:>12} {:>16} {:>18} {:>19}",
        "emb/s",
        "limit sorted",
        "limit arrival",
        "embedstream",
        "python consumer",
        "embedstream/limit",
        "embedstream/python"
    );
    model::init_runtime(&model::ort_library())?;
    let mut results = Vec::new();
    for (name, texts) in &sets {
        let (limit_sorted, limit_arrival) = limit(&base, texts, cores)?;
        let topic = format!("bench-{run_id}-{name}");
        bench.produce(&topic, texts)?;
        // The broker shares the machine and could slow down as it stores more: the baseline runs
        // first, then embedstream on every core, then fewer workers, so that the figures compared
        // are not tilted in embedstream's favour.
        let python = match (&args.python, &args.baseline) {
            (Some(py), Some(script)) => Some(bench.python(py, script, &topic, &base, texts.len())?),
            _ => None,
        };
        let mut by_workers = Vec::new();
        for &w in workers.iter().rev() {
            let (rate, pss) = bench.embedstream(&topic, &format!("{name}-{w}"), w, texts.len())?;
            by_workers.insert(0, (w, rate, pss));
        }
        let r = SetResult { name: name.clone(), limit_sorted, limit_arrival, by_workers, python };
        let (rate, _) = r.embedstream();
        let py = r.python.map_or("-".to_string(), |(p, _)| format!("{p:.1}"));
        let vs_py = r.python.map_or("-".to_string(), |(p, _)| format!("{:.2}", rate / p));
        println!(
            "{name:<10} {limit_sorted:>12.1} {limit_arrival:>13.1} {rate:>12.1} {py:>16} {:>18.2} {vs_py:>19}",
            rate / limit_sorted
        );
        results.push(r);
    }
    println!();
    let mib = |b: u64| b as f64 / 1048576.0;
    for r in &results {
        let scaling: Vec<String> = r.by_workers.iter().map(|(w, rate, _)| format!("{w}: {rate:.1}/s")).collect();
        let (_, pss) = r.embedstream();
        let memory = match r.python {
            Some((_, py)) => {
                format!("{:.0} MiB vs python {:.0} MiB ({:.2})", mib(pss), mib(py), pss as f64 / py as f64)
            }
            None => format!("{:.0} MiB", mib(pss)),
        };
        println!("{:<10} by workers {}; peak total PSS {memory}", r.name, scaling.join(", "));
    }

    let latency = if args.latency_seconds > 0 {
        let rate = (results[0].embedstream().0 / 2.0).max(1.0);
        let ms = bench.latency(rate, cores, args.latency_seconds)?;
        let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
        let (p50, p95, p99) = (at(0.5), at(0.95), at(0.99));
        let goal = 2.0 * TRIGGER_MS as f64;
        println!(
            "\nlatency at half load ({rate:.0} records/s for {} s, {TRIGGER_MS} ms trigger): p50 {p50:.0} ms, \
             p95 {p95:.0} ms, p99 {p99:.0} ms over {} records; goal p99 < 2 x trigger = {goal:.0} ms ({})",
            args.latency_seconds,
            ms.len(),
            if p99 < goal { "met" } else { "missed" }
        );
        let summary = json!({"records_per_second": rate, "trigger_ms": TRIGGER_MS, "records": ms.len(),
                             "p50_ms": p50, "p95_ms": p95, "p99_ms": p99});
        Some((summary, ms))
    } else {
        None
    };

    let report = json!({
        "cores": cores,
        "cpu": cpu_model(),
        "count": args.count,
        "batch_size": base.first_text_model().batch_size,
        "sort_window": base.first_text_model().sort_window,
        "model": base.first_text_model().model_id(),
        "runs": results.iter().map(|r| json!({
            "texts": r.name,
            "limit_sorted": r.limit_sorted,
            "limit_arrival_order": r.limit_arrival,
            "embedstream": r.embedstream().0,
            "embedstream_by_workers": r.by_workers.iter().map(|(w, rate, _)| json!([w, rate])).collect::<Vec<_>>(),
            "embedstream_peak_pss_bytes": r.embedstream().1,
            "python_consumer": r.python.map(|p| p.0),
            "python_peak_pss_bytes": r.python.map(|p| p.1),
        })).collect::<Vec<_>>(),
        "latency": latency.as_ref().map(|(summary, _)| summary),
    });
    let json_path = args.out.join("bench.json");
    std::fs::write(&json_path, serde_json::to_vec_pretty(&report)?)?;
    let png_path = args.out.join("bench.png");
    chart::draw(&png_path, &results_for_chart(&results), latency.as_ref().map(|(_, ms)| ms.as_slice()), TRIGGER_MS)
        .context("chart")?;
    println!("\nreport: {}\nchart: {}", json_path.display(), png_path.display());
    if args.keep {
        println!("runs: {}", bench.work.display());
    } else {
        std::fs::remove_dir_all(&bench.work).ok();
    }
    Ok(())
}

fn results_for_chart(results: &[SetResult]) -> Vec<chart::Series> {
    results
        .iter()
        .map(|r| chart::Series {
            name: r.name.clone(),
            limit: r.limit_sorted,
            by_workers: r.by_workers.iter().map(|&(w, rate, _)| (w, rate)).collect(),
        })
        .collect()
}

/// The limit: embeddings/s of one plain session, length-sorted and in arrival order.
fn limit(spec: &JobSpec, texts: &[String], cores: usize) -> Result<(f64, f64)> {
    let plain = Embedder::load(spec.first_text_model(), cores)?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let encodings = plain.encode(&refs)?;
    let batch = spec.first_text_model().batch_size;
    plain.embed_encoded(&encodings[..encodings.len().min(batch * 2)])?;
    let rate = |t: Instant| texts.len() as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    plain.embed_encoded(&encodings)?;
    let sorted = rate(t);
    let t = Instant::now();
    for chunk in encodings.chunks(batch) {
        plain.embed_encoded(chunk)?;
    }
    Ok((sorted, rate(t)))
}

struct Bench {
    /// The user's job spec, as TOML: its model section is kept, the rest is the bench's.
    base_toml: toml::Table,
    bootstrap: String,
    /// Job specs, checkpoints and logs of this run.
    work: PathBuf,
    run_id: u64,
    embedstream: PathBuf,
}

impl Bench {
    fn produce(&self, topic: &str, texts: &[String]) -> Result<()> {
        let handle = tokio::runtime::Handle::current();
        handle.block_on(async {
            topics::create_topic(&self.bootstrap, topic, PARTITIONS).await?;
            let producer: FutureProducer = topics::producer(&self.bootstrap)?;
            topics::produce_lines(&producer, topic, PARTITIONS, true, texts.iter().map(|t| Ok(t.clone()))).await?;
            anyhow::Ok(())
        })?;
        Ok(())
    }

    /// Writes a job spec that reads `topic`: the user's model, the bench's source, trigger and sink.
    fn job(&self, name: &str, topic: &str, trigger: toml::Table, cores: usize, starting: &str) -> Result<PathBuf> {
        let mut t = self.base_toml.clone();
        let name = format!("bench-{}-{name}", self.run_id);
        let dir = self.work.join(&name);
        t.insert("name".into(), name.clone().into());
        t.insert("checkpoint_location".into(), dir.join("checkpoint").display().to_string().into());
        let mut source = toml::Table::new();
        source.insert("bootstrap_servers".into(), self.bootstrap.clone().into());
        source.insert("subscribe".into(), toml::Value::Array(vec![topic.into()]));
        source.insert("starting_offsets".into(), starting.into());
        t.insert("source".into(), source.into());
        t.insert("trigger".into(), trigger.into());
        let mut sink = toml::Table::new();
        sink.insert("kind".into(), "kafka".into());
        sink.insert("topic".into(), format!("{name}-out").into());
        t.insert("sink".into(), sink.into());
        let mut executors = toml::Table::new();
        executors.insert("count".into(), 1.into());
        executors.insert("cores".into(), (cores as i64).into());
        t.insert("executors".into(), executors.into());
        t.remove("monitoring");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("job.toml");
        std::fs::write(&path, toml::to_string(&t)?)?;
        JobSpec::from_file(&path).with_context(|| format!("the bench's job spec {}", path.display()))?;
        Ok(path)
    }

    /// embedstream end to end with `workers` model workers: (embeddings/s, peak total PSS).
    fn embedstream(&self, topic: &str, name: &str, workers: usize, expected: usize) -> Result<(f64, u64)> {
        let mut trigger = toml::Table::new();
        trigger.insert("available_now".into(), true.into());
        let job = self.job(name, topic, trigger, workers, "earliest")?;
        let mut cmd = Command::new(&self.embedstream);
        cmd.arg("run").arg(&job).args(["--local", "1"]);
        let (stdout, pss) = run_measuring_memory(cmd, &job.with_file_name("run.log"))?;
        let summary: serde_json::Value = serde_json::from_slice(&stdout).context("the run's summary")?;
        ensure!(
            summary["embeddings"] == expected,
            "embedstream wrote {} embeddings of {expected}",
            summary["embeddings"]
        );
        Ok((summary["embeddings_per_second"].as_f64().context("embeddings_per_second")?, pss))
    }

    fn python(&self, python: &Path, script: &Path, topic: &str, spec: &JobSpec, expected: usize) -> Result<(f64, u64)> {
        let mut cmd = Command::new(python);
        cmd.arg(script).args([&self.bootstrap, topic, &format!("{topic}-python-out")]);
        cmd.arg(&spec.first_text_model().onnx)
            .arg(&spec.first_text_model().tokenizer)
            .arg(spec.first_text_model().batch_size.to_string());
        let (stdout, pss) = run_measuring_memory(cmd, &self.work.join(format!("{topic}-python.log")))?;
        let out: serde_json::Value = serde_json::from_slice(&stdout).context("the baseline's summary")?;
        ensure!(out["embeddings"] == expected, "the baseline wrote {} embeddings of {expected}", out["embeddings"]);
        Ok((out["embeddings_per_second"].as_f64().context("embeddings_per_second")?, pss))
    }

    /// Produces titles at `rate` a second for `seconds` into a continuous query; returns each
    /// record's latency in ms, sorted.
    fn latency(&self, rate: f64, workers: usize, seconds: u64) -> Result<Vec<f64>> {
        let topic = format!("bench-{}-latency", self.run_id);
        self.produce(&topic, &[])?;
        let mut trigger = toml::Table::new();
        trigger.insert("processing_time".into(), format!("{TRIGGER_MS}ms").into());
        let job = self.job("latency", &topic, trigger, workers, "latest")?;
        let spec = JobSpec::from_file(&job)?;
        let log_path = job.with_file_name("run.log");
        let mut child = Command::new(&self.embedstream)
            .arg("run")
            .arg(&job)
            .args(["--local", "1"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path)?)
            .spawn()?;
        let query = ChildGuard(&mut child);
        let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        // Producing starts once the workers are ready and the starting offsets are logged.
        wait_for("the query to start", Duration::from_secs(120), || {
            Ok(log().contains("model workers ready") && spec.checkpoint_location.join("initial_offsets").exists())
        })?;

        let texts = uniform_texts((rate * seconds as f64) as usize);
        let per_tick = (rate / 10.0).ceil() as usize;
        let producer = topics::producer(&self.bootstrap)?;
        let started = Instant::now();
        tokio::runtime::Handle::current().block_on(async {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            for chunk in texts.chunks(per_tick) {
                tick.tick().await;
                topics::produce_lines(&producer, &topic, PARTITIONS, true, chunk.iter().map(|t| Ok(t.clone()))).await?;
            }
            anyhow::Ok(())
        })?;
        tracing::info!(records = texts.len(), seconds = started.elapsed().as_secs_f64(), "latency load produced");

        let source = KafkaSource::new(&spec, &spec.read_secrets()?)?;
        let tps = source.partitions()?;
        let (_, highs) = source.watermarks(&tps)?;
        wait_for("every record to be processed", Duration::from_secs(120), || Ok(source.committed(&tps)? == highs))?;
        drop(query);

        let input = timestamps(&self.bootstrap, &topic, false)?;
        let output = timestamps(&self.bootstrap, spec.sink.output_topic().context("the bench writes to Kafka")?, true)?;
        ensure!(output.len() == input.len(), "{} outputs for {} inputs", output.len(), input.len());
        let mut ms: Vec<f64> = output
            .iter()
            .map(|(origin, out)| input.get(origin).map(|t| (out - t) as f64).context("an output without its input"))
            .collect::<Result<_>>()?;
        ms.sort_by(f64::total_cmp);
        ensure!(!ms.is_empty(), "no record went through");
        Ok(ms)
    }
}

/// Stops a query (SIGTERM, as Ctrl-C) and waits for it, also on an early return.
struct ChildGuard<'a>(&'a mut std::process::Child);

impl Drop for ChildGuard<'_> {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let until = Instant::now() + timeout;
    while !done()? {
        if Instant::now() > until {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Kafka timestamps of every record of `topic`, by (partition, offset) of the record, or, with
/// `origin`, of the input record named in its `es.partition` and `es.offset` headers.
fn timestamps(bootstrap: &str, topic: &str, origin: bool) -> Result<HashMap<(i32, i64), i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "embedstream-bench-reader")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    let mut remaining = 0;
    for p in 0..PARTITIONS {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        remaining += high - low;
        tpl.add_partition_offset(topic, p, Offset::Offset(low))?;
    }
    consumer.assign(&tpl)?;
    let mut out = HashMap::new();
    let until = Instant::now() + Duration::from_secs(120);
    while remaining > 0 {
        ensure!(Instant::now() < until, "timed out reading {topic}");
        let Some(m) = consumer.poll(Duration::from_millis(500)) else { continue };
        let m = m?;
        remaining -= 1;
        let header = |name: &str| -> Option<i64> {
            m.headers()?.iter().find(|h| h.key == name).and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
        };
        let key = if origin {
            (
                header("es.partition").context("no es.partition header")? as i32,
                header("es.offset").context("no es.offset")?,
            )
        } else {
            (m.partition(), m.offset())
        };
        out.insert(key, m.timestamp().to_millis().context("a record without a timestamp")?);
    }
    Ok(out)
}

/// Pids of `root` and all its descendants, from /proc.
fn process_tree(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(parents.iter().filter(|&&(_, pp)| pp == parent).map(|&(p, _)| p));
        i += 1;
    }
    tree
}

/// Runs `cmd` to its end (stderr to `log`) while sampling the total PSS of its process tree;
/// returns its stdout and the peak.
fn run_measuring_memory(mut cmd: Command, log: &Path) -> Result<(Vec<u8>, u64)> {
    let child = cmd.stdout(Stdio::piped()).stderr(std::fs::File::create(log)?).spawn()?;
    let root = child.id();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(process_tree(root).into_iter().filter_map(pss_bytes).sum::<u64>());
                // Reading smaps walks page tables: sample rarely, so as not to slow what is measured.
                std::thread::sleep(Duration::from_millis(500));
            }
            peak
        })
    };
    let out = child.wait_with_output()?;
    done.store(true, Ordering::Relaxed);
    let peak = sampler.join().expect("the sampler does not panic");
    if !out.status.success() {
        let log = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("{:?} failed ({}):\n{}", cmd.get_program(), out.status, tail.join("\n"));
    }
    Ok((out.stdout, peak))
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("model name"))?.split_once(':').map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_default()
}
