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
//! 3. embedstream again on every core with token budgets (`max_batch_tokens`): speed and memory;
//!    and on every core with the Kafka sink exactly once (`guarantee = "exactly_once"`, a Kafka
//!    transaction per task), run right after the at-least-once run it is compared with;
//! 4. with `--python`, the baseline consumer script (benches/baseline_consumer.py) and its peak PSS;
//! 5. with `--spark`, Spark Structured Streaming (benches/spark_baseline.py, `local[cores]`) in
//!    two variants: batches in arrival order, and each Arrow batch sorted by tokens.
//!
//! Then the embedding cache: the mixed set (or the titles) sent twice to a continuous query, the
//! second time with 80 % of its texts unchanged, with and without `cache_bytes`; the second
//! pass's embeddings/s compared. Then latency, from each input's Kafka timestamp to its output's
//! (stamped by the sink's producer as it sends): titles produced at half of (2)'s rate into a
//! query with a 1 s trigger, then at a tenth of it into a query with no trigger interval; and
//! at half of (2)'s rate with a 1 s trigger, exactly once, from each input's timestamp to the
//! moment a `read_committed` consumer polling the output receives it (output stamps are taken
//! when a record is sent, before its transaction commits).
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
/// The latency goal with no trigger interval, at a tenth of capacity.
const NO_TRIGGER_GOAL_MS: f64 = 500.0;
/// The token budgets of the runs with `max_batch_tokens` (the spec's `batch_size` kept): half
/// and a quarter of 32 texts of 128 tokens, the largest batch without one.
const BUDGET_TOKENS: [i64; 2] = [2048, 1024];
/// The sink key of the exactly-once runs, and issue 34's goal for their throughput against
/// at least once.
const EXACTLY_ONCE: (&str, &str) = ("guarantee", "exactly_once");
const EXACTLY_ONCE_GOAL: f64 = 0.85;

/// Spark Structured Streaming as the baseline: the script, run by `--python`'s interpreter, and
/// the directory of the Kafka connector's jars.
pub struct SparkBaseline {
    pub script: PathBuf,
    pub jars: PathBuf,
}

pub struct BenchArgs {
    pub job: PathBuf,
    pub count: usize,
    pub mixed: Option<PathBuf>,
    pub python: Option<PathBuf>,
    pub baseline: Option<PathBuf>,
    pub spark: Option<SparkBaseline>,
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

/// Keys a run sets in the bench's job spec: in its `[model]`, and in its `[sink]`.
#[derive(Default, Clone, Copy)]
struct Keys<'a> {
    model: &'a [(&'a str, toml::Value)],
    sink: &'a [(&'a str, &'a str)],
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
    /// embedstream on every core with `max_batch_tokens`: (embeddings/s, peak total PSS)
    budgets: Vec<(i64, f64, u64)>,
    /// Spark in arrival order, and sorted: (embeddings/s, peak total PSS)
    spark: Option<(f64, u64)>,
    spark_sorted: Option<(f64, u64)>,
    /// embedstream on every core, the Kafka sink exactly once: (embeddings/s, peak total PSS)
    exactly_once: (f64, u64),
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
    ensure!(args.spark.is_none() || args.python.is_some(), "--spark runs with --python's interpreter");
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
        "{:<10} {:>12} {:>13} {:>12} {:>16} {:>12} {:>13} {:>18} {:>19} {:>18} {:>19}",
        "emb/s",
        "limit sorted",
        "limit arrival",
        "embedstream",
        "python consumer",
        "spark",
        "spark sorted",
        "embedstream/limit",
        "embedstream/python",
        "embedstream/spark",
        "embedstream/sorted"
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
        let (spark, spark_sorted) = match (&args.python, &args.spark) {
            (Some(py), Some(spark)) => (
                Some(bench.spark(py, spark, &topic, &base, texts.len(), false)?),
                Some(bench.spark(py, spark, &topic, &base, texts.len(), true)?),
            ),
            _ => (None, None),
        };
        let mut by_workers = Vec::new();
        let mut exactly_once = (0.0, 0);
        for &w in workers.iter().rev() {
            let (rate, pss) = bench.embedstream(&topic, &format!("{name}-{w}"), w, texts.len(), Keys::default())?;
            by_workers.insert(0, (w, rate, pss));
            if w == cores {
                // Right after the run it is compared with, so that the machine's drift is small.
                let keys = Keys { sink: &[EXACTLY_ONCE], ..Keys::default() };
                exactly_once = bench.embedstream(&topic, &format!("{name}-eos"), w, texts.len(), keys)?;
            }
        }
        let mut budgets = Vec::new();
        for tokens in BUDGET_TOKENS {
            let model = [("max_batch_tokens", toml::Value::from(tokens))];
            let keys = Keys { model: &model, ..Keys::default() };
            let (rate, pss) =
                bench.embedstream(&topic, &format!("{name}-budget-{tokens}"), cores, texts.len(), keys)?;
            budgets.push((tokens, rate, pss));
        }
        let r = SetResult {
            name: name.clone(),
            limit_sorted,
            limit_arrival,
            by_workers,
            python,
            budgets,
            spark,
            spark_sorted,
            exactly_once,
        };
        let (rate, _) = r.embedstream();
        let rate_of = |x: Option<(f64, u64)>| x.map_or("-".to_string(), |(p, _)| format!("{p:.1}"));
        let vs = |x: Option<(f64, u64)>| x.map_or("-".to_string(), |(p, _)| format!("{:.2}", rate / p));
        println!(
            "{name:<10} {limit_sorted:>12.1} {limit_arrival:>13.1} {rate:>12.1} {:>16} {:>12} {:>13} {:>18.2} {:>19} {:>18} {:>19}",
            rate_of(r.python),
            rate_of(r.spark),
            rate_of(r.spark_sorted),
            rate / limit_sorted,
            vs(r.python),
            vs(r.spark),
            vs(r.spark_sorted),
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
        for &(tokens, budget_rate, budget_pss) in &r.budgets {
            let python_pss =
                r.python.map_or(String::new(), |(_, py)| format!(", {:.2} of python's", budget_pss as f64 / py as f64));
            println!(
                "{:<10} with max_batch_tokens = {tokens}: {budget_rate:.1}/s ({:.2} of the default), peak total PSS {:.0} MiB ({:.2} of the default{python_pss})",
                r.name,
                budget_rate / r.embedstream().0,
                mib(budget_pss),
                budget_pss as f64 / pss as f64,
            );
        }
        let (eos_rate, eos_pss) = r.exactly_once;
        println!(
            "{:<10} Kafka sink exactly once: {eos_rate:.1}/s ({:.2} of at least once; goal >= {EXACTLY_ONCE_GOAL} ({})), peak total PSS {:.0} MiB",
            r.name,
            eos_rate / r.embedstream().0,
            if eos_rate / r.embedstream().0 >= EXACTLY_ONCE_GOAL { "met" } else { "missed" },
            mib(eos_pss),
        );
        for (what, run) in [("spark", r.spark), ("spark sorted", r.spark_sorted)] {
            if let Some((_, spss)) = run {
                println!("{:<10} {what}: peak total PSS {:.0} MiB", r.name, mib(spss));
            }
        }
    }

    // The cache on the set with the costliest texts (the mixed one when given).
    let (cache_set, cache_texts) = sets.last().expect("at least the titles");
    let cache = bench.cache(cache_set, cache_texts, cores)?;
    println!(
        "\nembedding cache ({cache_set}, {} texts sent twice, 80 % unchanged the second time): second pass {:.1}/s \
         with cache_bytes, {:.1}/s without: {:.2} x ({} hits, {} misses); goal >= 3 x ({})",
        cache_texts.len(),
        cache.with,
        cache.without,
        cache.with / cache.without,
        cache.hits,
        cache.misses,
        if cache.with / cache.without >= 3.0 { "met" } else { "missed" }
    );

    let mut latencies: Vec<(serde_json::Value, chart::Latency)> = Vec::new();
    if args.latency_seconds > 0 {
        let capacity = results[0].embedstream().0;
        let phases = [
            ("half load, 1 s trigger", capacity / 2.0, Some(TRIGGER_MS), 2.0 * TRIGGER_MS as f64, false),
            ("a tenth of capacity, no trigger interval", capacity / 10.0, None, NO_TRIGGER_GOAL_MS, false),
            ("half load, 1 s trigger, exactly once", capacity / 2.0, Some(TRIGGER_MS), 2.0 * TRIGGER_MS as f64, true),
        ];
        for (label, rate, trigger_ms, goal, exactly_once) in phases {
            let rate = rate.max(1.0);
            let ms = bench.latency(rate, cores, args.latency_seconds, trigger_ms, exactly_once)?;
            let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
            let (p50, p95, p99) = (at(0.5), at(0.95), at(0.99));
            println!(
                "\nlatency at {label} ({rate:.0} records/s for {} s): p50 {p50:.0} ms, p95 {p95:.0} ms, \
                 p99 {p99:.0} ms over {} records; goal p99 < {goal:.0} ms ({})",
                args.latency_seconds,
                ms.len(),
                if p99 < goal { "met" } else { "missed" }
            );
            let summary = json!({"load": label, "records_per_second": rate, "trigger_ms": trigger_ms, "exactly_once": exactly_once,
                                 "records": ms.len(), "p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "goal_p99_ms": goal});
            latencies.push((summary, chart::Latency { label: label.to_string(), ms, goal_ms: goal }));
        }
    }

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
            "spark": r.spark.map(|p| p.0),
            "spark_peak_pss_bytes": r.spark.map(|p| p.1),
            "spark_sorted": r.spark_sorted.map(|p| p.0),
            "spark_sorted_peak_pss_bytes": r.spark_sorted.map(|p| p.1),
            "embedstream_exactly_once": r.exactly_once.0,
            "embedstream_exactly_once_peak_pss_bytes": r.exactly_once.1,
            "embedstream_budgets": r.budgets.iter().map(|(tokens, rate, pss)| json!({
                "max_batch_tokens": tokens, "embeddings_per_second": rate, "peak_pss_bytes": pss})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "cache": {"texts": cache_set, "count": cache_texts.len(), "second_pass_with_cache": cache.with,
                  "second_pass_without_cache": cache.without, "hits": cache.hits, "misses": cache.misses},
        "latency": latencies.iter().map(|(summary, _)| summary).collect::<Vec<_>>(),
    });
    let json_path = args.out.join("bench.json");
    std::fs::write(&json_path, serde_json::to_vec_pretty(&report)?)?;
    let png_path = args.out.join("bench.png");
    let curves: Vec<chart::Latency> = latencies.into_iter().map(|(_, l)| l).collect();
    chart::draw(&png_path, &results_for_chart(&results), &curves).context("chart")?;
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
            topics::produce_lines(
                &producer,
                topic,
                PARTITIONS,
                &topics::KeyBy::LineNumber,
                texts.iter().map(|t| Ok(t.clone())),
            )
            .await?;
            anyhow::Ok(())
        })?;
        Ok(())
    }

    /// Writes a job spec that reads `topic`: the user's model (with `keys.model` set in its
    /// `[model]`), the bench's source and trigger, and its sink (with `keys.sink`).
    fn job(
        &self,
        name: &str,
        topic: &str,
        trigger: toml::Table,
        cores: usize,
        starting: &str,
        keys: Keys,
    ) -> Result<PathBuf> {
        let mut t = self.base_toml.clone();
        if !keys.model.is_empty() {
            let model =
                t.get_mut("model").and_then(toml::Value::as_table_mut).context("the bench's job has a [model]")?;
            for (k, v) in keys.model {
                model.insert(k.to_string(), v.clone());
            }
        }
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
        for (k, v) in keys.sink {
            sink.insert(k.to_string(), v.to_string().into());
        }
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
    fn embedstream(&self, topic: &str, name: &str, workers: usize, expected: usize, keys: Keys) -> Result<(f64, u64)> {
        let mut trigger = toml::Table::new();
        trigger.insert("available_now".into(), true.into());
        let job = self.job(name, topic, trigger, workers, "earliest", keys)?;
        let mut cmd = Command::new(&self.embedstream);
        cmd.arg("run").arg(&job).args(["--local", "1"]);
        measured_run(cmd, &job.with_file_name("run.log"), "embedstream", expected)
    }

    fn python(&self, python: &Path, script: &Path, topic: &str, spec: &JobSpec, expected: usize) -> Result<(f64, u64)> {
        let mut cmd = Command::new(python);
        cmd.arg(script).args([&self.bootstrap, topic, &format!("{topic}-python-out")]);
        cmd.arg(&spec.first_text_model().onnx)
            .arg(&spec.first_text_model().tokenizer)
            .arg(spec.first_text_model().batch_size.to_string());
        measured_run(cmd, &self.work.join(format!("{topic}-python.log")), "the Python baseline", expected)
    }

    /// Spark Structured Streaming on `local[cores]` (benches/spark_baseline.py), in arrival order
    /// or with each Arrow batch sorted by tokens: (embeddings/s, peak total PSS).
    fn spark(
        &self,
        python: &Path,
        spark: &SparkBaseline,
        topic: &str,
        spec: &JobSpec,
        expected: usize,
        sorted: bool,
    ) -> Result<(f64, u64)> {
        let variant = if sorted { "spark-sorted" } else { "spark" };
        let out = format!("{topic}-{variant}-out");
        tokio::runtime::Handle::current().block_on(topics::create_topic(&self.bootstrap, &out, PARTITIONS))?;
        let model = spec.first_text_model();
        let mut cmd = Command::new(python);
        cmd.arg(&spark.script).args([&self.bootstrap, topic, &out]);
        cmd.arg(&model.onnx).arg(&model.tokenizer).arg(model.batch_size.to_string()).arg(&spark.jars);
        // Tuned for it: the whole set in one trigger (its tasks are the topic's partitions).
        cmd.args(["--max-offsets", &expected.to_string()]);
        cmd.arg("--checkpoint").arg(self.work.join(format!("{topic}-{variant}-checkpoint")));
        if sorted {
            cmd.arg("--sorted");
        }
        measured_run(cmd, &self.work.join(format!("{topic}-{variant}.log")), "Spark", expected)
    }

    /// A continuous query on every core (no trigger interval) reading a new topic from its
    /// start, running in the background; returns once its workers are ready.
    fn start_query(
        &self,
        name: &str,
        topic: &str,
        workers: usize,
        trigger: toml::Table,
        starting: &str,
        keys: Keys,
    ) -> Result<(std::process::Child, JobSpec, PathBuf)> {
        let job = self.job(name, topic, trigger, workers, starting, keys)?;
        let spec = JobSpec::from_file(&job)?;
        let log_path = job.with_file_name("run.log");
        let child = Command::new(&self.embedstream)
            .arg("run")
            .arg(&job)
            .args(["--local", "1"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path)?)
            .spawn()?;
        let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        // Ready once the workers are and the starting offsets are logged.
        wait_for("the query to start", Duration::from_secs(120), || {
            Ok(log().contains("model workers ready") && spec.checkpoint_location.join("initial_offsets").exists())
        })?;
        Ok((child, spec, job))
    }

    /// `embedstream pause` or `resume` of the local query of `job`.
    fn admin(&self, action: &str, job: &Path) -> Result<()> {
        let out = Command::new(&self.embedstream).arg(action).arg(job).output()?;
        ensure!(out.status.success(), "embedstream {action}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    }

    /// The embedding cache: `texts` sent to a continuous query, then sent again with 80 % of
    /// them unchanged (the rest edited), with and without `cache_bytes`: the second pass's
    /// embeddings/s from its batches' progress records.
    fn cache(&self, set: &str, texts: &[String], workers: usize) -> Result<CacheResult> {
        let mut second = texts.to_vec();
        for (i, text) in second.iter_mut().enumerate().filter(|(i, _)| i % 5 == 4) {
            *text = format!("{text} (edition {i})");
        }
        let pass = |cached: bool| -> Result<(f64, u64, u64)> {
            let which = if cached { "cache" } else { "no-cache" };
            let topic = format!("bench-{}-{set}-{which}", self.run_id);
            self.produce(&topic, &[])?;
            let model = [("cache_bytes", toml::Value::from("256m"))];
            let keys = Keys { model: if cached { &model } else { &[] }, ..Keys::default() };
            let (mut child, spec, job) =
                self.start_query(which, &topic, workers, toml::Table::new(), "earliest", keys)?;
            let query = ChildGuard(&mut child);
            let source = KafkaSource::new(&spec, &spec.read_secrets()?)?;
            let progress = spec.checkpoint_location.join("progress.jsonl");
            let records = || -> Vec<serde_json::Value> {
                let text = std::fs::read_to_string(&progress).unwrap_or_default();
                text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
            };
            for (n, batch) in [texts, &second[..]].into_iter().enumerate() {
                let before = records().len();
                // The second pass goes in while the query is paused, so that one batch reads it
                // whole, as a catalog sent at once would be.
                if n == 1 {
                    self.admin("pause", &job)?;
                }
                self.produce(&topic, batch)?;
                if n == 1 {
                    self.admin("resume", &job)?;
                }
                let tps = source.partitions()?;
                let (_, highs) = source.watermarks(&tps)?;
                wait_for("a pass to be processed", Duration::from_secs(600), || Ok(source.committed(&tps)? == highs))?;
                if n == 1 {
                    drop(query);
                    let batches: Vec<serde_json::Value> =
                        records().into_iter().skip(before).filter(|r| r["numInputRows"].as_u64() > Some(0)).collect();
                    return second_pass(&batches, batch.len());
                }
            }
            unreachable!("two passes")
        };
        let (without, ..) = pass(false)?;
        let (with, hits, misses) = pass(true)?;
        Ok(CacheResult { with, without, hits, misses })
    }

    /// Produces titles at `rate` a second for `seconds` into a continuous query (with a trigger
    /// interval of `trigger_ms`, or none); returns each record's latency in ms, sorted: to its
    /// output's stamp, or with `exactly_once`, to the moment a `read_committed` consumer got it.
    fn latency(
        &self,
        rate: f64,
        workers: usize,
        seconds: u64,
        trigger_ms: Option<u64>,
        exactly_once: bool,
    ) -> Result<Vec<f64>> {
        let name = match (trigger_ms, exactly_once) {
            (Some(ms), false) => format!("latency-{ms}ms"),
            (Some(ms), true) => format!("latency-{ms}ms-eos"),
            (None, _) => "latency-no-trigger".to_string(),
        };
        let topic = format!("bench-{}-{name}", self.run_id);
        self.produce(&topic, &[])?;
        let mut trigger = toml::Table::new();
        if let Some(ms) = trigger_ms {
            trigger.insert("processing_time".into(), format!("{ms}ms").into());
        }
        let keys = Keys { sink: if exactly_once { &[EXACTLY_ONCE] } else { &[] }, ..Keys::default() };
        let (mut child, spec, _) = self.start_query(&name, &topic, workers, trigger, "latest", keys)?;
        let query = ChildGuard(&mut child);
        let output_topic = spec.sink.output_topic().context("the bench writes to Kafka")?.to_string();
        let expected = (rate * seconds as f64) as usize;
        let visible = exactly_once.then(|| {
            let (bootstrap, topic) = (self.bootstrap.clone(), output_topic.clone());
            std::thread::spawn(move || arrivals(&bootstrap, &topic, expected))
        });

        let texts = uniform_texts(expected);
        let per_tick = (rate / 10.0).ceil() as usize;
        let producer = topics::producer(&self.bootstrap)?;
        let started = Instant::now();
        tokio::runtime::Handle::current().block_on(async {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            for chunk in texts.chunks(per_tick) {
                tick.tick().await;
                topics::produce_lines(
                    &producer,
                    &topic,
                    PARTITIONS,
                    &topics::KeyBy::LineNumber,
                    chunk.iter().map(|t| Ok(t.clone())),
                )
                .await?;
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
        let output = match visible {
            Some(reader) => reader.join().expect("the reader does not panic")?,
            None => timestamps(&self.bootstrap, &output_topic, true)?,
        };
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

/// The cache's figures: the second pass's embeddings/s with and without the cache, and the
/// cache's hits and misses over it.
struct CacheResult {
    with: f64,
    without: f64,
    hits: u64,
    misses: u64,
}

/// A pass's embeddings/s from its batches' progress records (from the first's start to the
/// last's end), and their cache hits and misses.
fn second_pass(batches: &[serde_json::Value], expected: usize) -> Result<(f64, u64, u64)> {
    let rows: u64 = batches.iter().map(|r| r["numInputRows"].as_u64().unwrap_or(0)).sum();
    ensure!(rows as usize == expected, "the pass's batches read {rows} records of {expected}");
    let time = |r: &serde_json::Value| -> Result<f64> {
        let at = r["timestamp"].as_str().context("a progress record's timestamp")?;
        let at = humantime::parse_rfc3339(at)?.duration_since(std::time::UNIX_EPOCH)?;
        Ok(at.as_secs_f64())
    };
    let (first, last) = (batches.first().context("no batch")?, batches.last().context("no batch")?);
    let took = last["durationMs"]["triggerExecution"].as_f64().context("triggerExecution")? / 1000.0;
    let seconds = time(last)? + took - time(first)?;
    let count = |k: &str| batches.iter().map(|r| r[k].as_u64().unwrap_or(0)).sum::<u64>();
    Ok((rows as f64 / seconds, count("cacheHits"), count("cacheMisses")))
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
        let key = if origin { origin_of(&m)? } else { (m.partition(), m.offset()) };
        out.insert(key, m.timestamp().to_millis().context("a record without a timestamp")?);
    }
    Ok(out)
}

/// The input record an output record was made from: its `es.partition` and `es.offset` headers.
fn origin_of(m: &impl Message) -> Result<(i32, i64)> {
    let header = |name: &str| -> Result<i64> {
        let value = m.headers().and_then(|hs| hs.iter().find(|h| h.key == name)).and_then(|h| h.value);
        let value = value.with_context(|| format!("no {name} header"))?;
        Ok(std::str::from_utf8(value)?.parse()?)
    };
    Ok((header("es.partition")? as i32, header("es.offset")?))
}

/// The wall-clock time (ms since the epoch) at which a `read_committed` consumer polling `topic`
/// from its start receives each of `expected` records, by the input (`es.partition`,
/// `es.offset`) it names. The consumer asks the broker to answer fetches within 10 ms.
fn arrivals(bootstrap: &str, topic: &str, expected: usize) -> Result<HashMap<(i32, i64), i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "embedstream-bench-committed-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "10")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut out = HashMap::new();
    let until = Instant::now() + Duration::from_secs(600);
    while out.len() < expected {
        ensure!(Instant::now() < until, "timed out reading {topic} as it is committed");
        let Some(m) = consumer.poll(Duration::from_millis(100)) else { continue };
        let m = match m {
            Ok(m) => m,
            // The topic is made by the query's first batch: unknown until then.
            Err(rdkafka::error::KafkaError::MessageConsumption(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        let received = embedstream_driver::checkpoint::now_ms() as i64;
        out.entry(origin_of(&m)?).or_insert(received);
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

/// Runs `cmd` (`what`, for errors) with [`run_measuring_memory`] and reads the JSON summary it
/// prints, which every system measured writes alike: (embeddings/s, peak total PSS), once it
/// says it wrote `expected` embeddings.
fn measured_run(cmd: Command, log: &Path, what: &str, expected: usize) -> Result<(f64, u64)> {
    let (stdout, pss) = run_measuring_memory(cmd, log)?;
    let summary: serde_json::Value =
        serde_json::from_slice(&stdout).with_context(|| format!("the summary of {what}"))?;
    ensure!(summary["embeddings"] == expected, "{what} wrote {} embeddings of {expected}", summary["embeddings"]);
    Ok((summary["embeddings_per_second"].as_f64().context("embeddings_per_second")?, pss))
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
