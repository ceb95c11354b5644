//! The pipeline benchmark, apart from the shipped `embedstream` binary: [`run`] measures the
//! limit, embedstream end to end by workers, the Python and Spark baselines, the embedding cache
//! and latency, and [`chart`] draws them. Run as `embedstream-bench` (see its `--help`), or in-process by
//! `cargo bench --bench pipeline`.

pub mod chart;
mod run;

use std::path::PathBuf;

pub use run::{run, uniform_texts, BenchArgs, SparkBaseline};

/// Measure this machine: the model alone (the limit), embedstream end to end, and a baseline.
///
/// Uses the job spec's broker and model section (batch_size, sort_window, ...); topics, source,
/// sink, trigger and checkpoints are the bench's own (topics named bench-<time>-*). Runs the
/// limit (one ONNX Runtime session on every core, fed pre-tokenized, length-sorted batches),
/// `embedstream run --local 1` with 1, 2, 4 ... workers on generated product titles and on the
/// lines of --mixed (and with a token budget), the Python baseline with --python, Spark with
/// --spark, the embedding cache on a set sent twice, then latency at half load with a 1 s
/// trigger and at a tenth of capacity with none. Prints a table; writes bench.json and bench.png
/// to --out.
#[derive(clap::Parser)]
#[command(name = "embedstream-bench", version)]
pub struct Cli {
    /// A job spec (TOML) naming the broker and the model.
    pub job: PathBuf,
    /// Texts per set.
    #[arg(long, default_value_t = 2000)]
    pub count: usize,
    /// A file of texts, one per line: measured as the "mixed" set.
    #[arg(long, value_name = "FILE")]
    pub mixed: Option<PathBuf>,
    /// A Python interpreter to run --baseline with (deploy/setup.sh --python makes one).
    #[arg(long, requires = "baseline")]
    pub python: Option<PathBuf>,
    /// The baseline consumer script (benches/baseline_consumer.py).
    #[arg(long, requires = "python")]
    pub baseline: Option<PathBuf>,
    /// Spark Structured Streaming as a baseline too: this script (benches/spark_baseline.py), run
    /// by --python's interpreter with pyspark (deploy/setup.sh --spark).
    #[arg(long, value_name = "SCRIPT", requires = "python", requires = "spark_jars")]
    pub spark: Option<PathBuf>,
    /// The Spark Kafka connector's jars for --spark (deploy/setup.sh --spark puts them in
    /// ~/.cache/embedstream/spark/libs).
    #[arg(long, value_name = "DIR", requires = "spark")]
    pub spark_jars: Option<PathBuf>,
    /// Seconds of load for the latency measurement; 0 skips it.
    #[arg(long, default_value_t = 20)]
    pub latency_seconds: u64,
    /// Where bench.json and bench.png go.
    #[arg(long, default_value = "embedstream-bench")]
    pub out: PathBuf,
    /// Keep the runs' job specs, checkpoints (with progress.jsonl) and logs under --out.
    #[arg(long)]
    pub keep: bool,
    /// The `embedstream` binary to measure (default: the one beside this binary).
    #[arg(long, value_name = "PATH")]
    pub embedstream: Option<PathBuf>,
}

impl Cli {
    /// The bench's arguments, measuring `embedstream` (or, without --embedstream, the binary
    /// beside this one).
    pub fn into_args(self) -> Result<BenchArgs, String> {
        let embedstream = match self.embedstream {
            Some(path) => path,
            None => std::env::current_exe()
                .map_err(|e| format!("cannot find this binary's directory: {e}"))?
                .with_file_name("embedstream"),
        };
        if !embedstream.is_file() {
            return Err(format!("{}: no embedstream binary (give --embedstream)", embedstream.display()));
        }
        Ok(BenchArgs {
            job: self.job,
            count: self.count,
            mixed: self.mixed,
            python: self.python,
            baseline: self.baseline,
            spark: self.spark.zip(self.spark_jars).map(|(script, jars)| SparkBaseline { script, jars }),
            latency_seconds: self.latency_seconds,
            out: self.out,
            keep: self.keep,
            embedstream,
        })
    }
}

/// Runs the bench on a runtime of its own (it produces and consumes with async clients).
pub fn run_blocking(args: BenchArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async { tokio::task::spawn_blocking(move || run(args)).await? })
}
