//! `embedstream`: the one binary. The driver, its executors and the tools are subcommands.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use embedstream_proto::JobSpec;
use tokio::sync::watch;

mod bench;
mod chart;
mod embed;
mod kafka;

#[derive(Parser)]
#[command(name = "embedstream", version, about = "Turn Kafka streams into ML embeddings, in micro-batches.")]
#[command(long_about = "Turn Kafka streams into ML embeddings, in micro-batches.\n\n\
A driver plans each batch from Kafka offsets, logs it to a checkpoint, and runs its tasks on \
executor processes over gRPC; executors read their offset ranges, run the ONNX model and write \
the results to Kafka. Logs go to stderr (RUST_LOG sets the level); results and summaries to stdout.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a streaming job: the driver in this process, executors as local processes.
    ///
    /// Ctrl-C or SIGTERM stops after the batch in flight and exits 0. With
    /// `trigger.available_now = true` the job exits 0 once it has processed what the topics held
    /// when it started. A summary (JSON) is printed on stdout at the end.
    Run {
        /// The job spec (TOML).
        job: PathBuf,
        /// Start N executor processes on this machine (overrides `executors.count`).
        #[arg(long, value_name = "N")]
        local: Option<u32>,
    },
    /// Check a job spec without starting anything; prints the spec with its defaults filled in.
    Validate {
        /// The job spec (TOML).
        job: PathBuf,
    },
    /// Show a query's progress: one row per committed batch, with its rates, duration and lag.
    ///
    /// Reads `<checkpoint_location>/progress.jsonl`, which the driver appends to after every
    /// batch; works while the query runs and after it stopped.
    Progress {
        /// The job spec (TOML) of the query.
        job: PathBuf,
        /// Keep printing batches as they are committed, until Ctrl-C.
        #[arg(long)]
        follow: bool,
        /// Print the records as JSON lines (Spark's StreamingQueryProgress field names) instead of a table.
        #[arg(long)]
        json: bool,
        /// How many of the latest batches to show first.
        #[arg(long, default_value_t = 20)]
        last: usize,
    },
    /// Write the lines of standard input to a topic, one message per line (creates the topic).
    Produce {
        #[arg(long, default_value = "127.0.0.1:9092")]
        bootstrap_servers: String,
        #[arg(long)]
        topic: String,
        /// Partitions of the topic, if it has to be created.
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        /// Spread messages over partitions round-robin by line number (the key is the line number).
        #[arg(long)]
        keyed: bool,
    },
    /// Measure this machine: the model alone (the limit), embedstream end to end, and a baseline.
    ///
    /// Uses the job spec's broker and model section (batch_size, sort_window, ...); topics, source,
    /// sink, trigger and checkpoints are the bench's own (topics named bench-<time>-*). Runs the
    /// limit (one ONNX Runtime session on every core, fed pre-tokenized, length-sorted batches),
    /// `run --local 1` with 1, 2, 4 ... workers on generated product titles and on the lines of
    /// --mixed, the Python baseline with --python, then latency at half load with a 1 s trigger.
    /// Prints a table; writes bench.json and bench.png to --out.
    Bench {
        /// A job spec (TOML) naming the broker and the model.
        job: PathBuf,
        /// Texts per set.
        #[arg(long, default_value_t = 2000)]
        count: usize,
        /// A file of texts, one per line: measured as the "mixed" set.
        #[arg(long, value_name = "FILE")]
        mixed: Option<PathBuf>,
        /// A Python interpreter to run --baseline with (deploy/setup.sh --python makes one).
        #[arg(long, requires = "baseline")]
        python: Option<PathBuf>,
        /// The baseline consumer script (benches/baseline_consumer.py).
        #[arg(long, requires = "python")]
        baseline: Option<PathBuf>,
        /// Seconds of load for the latency measurement; 0 skips it.
        #[arg(long, default_value_t = 20)]
        latency_seconds: u64,
        /// Where bench.json and bench.png go.
        #[arg(long, default_value = "embedstream-bench")]
        out: PathBuf,
        /// Keep the runs' job specs, checkpoints (with progress.jsonl) and logs under --out.
        #[arg(long)]
        keep: bool,
    },
    /// Embed the lines of standard input with a running executor's warm model (Arrow Flight).
    ///
    /// Sends the texts to the executor's Flight `DoExchange` and prints one JSON line per text:
    /// {"text": ..., "embedding": [...]}, in input order. Blank lines are skipped. The address is
    /// an executor's `flight_address` (in `<checkpoint>/monitoring/targets.json`). The cluster
    /// token, if the cluster has one, comes from EMBEDSTREAM_TOKEN.
    Embed {
        /// The executor's Flight address, HOST:PORT.
        #[arg(long, value_name = "ADDR")]
        flight: String,
        /// Texts per DoExchange call (at most the executor's flight.max_rows_per_call).
        #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
        batch_rows: u64,
    },
    /// A model daemon (started by an executor, not by hand): loads the model once, forks workers.
    #[command(hide = true)]
    ModelDaemon {
        /// The model section of the job spec, as JSON.
        #[arg(long)]
        model_json: String,
        #[arg(long, default_value_t = 1)]
        workers: usize,
        #[arg(long)]
        socket_dir: PathBuf,
        #[arg(long)]
        ort_library: PathBuf,
    },
    /// An executor process (started by a driver, not by hand).
    #[command(hide = true)]
    Executor {
        /// The driver's gRPC address, http://HOST:PORT.
        #[arg(long)]
        driver: String,
        #[arg(long)]
        executor_id: String,
        #[arg(long, default_value_t = 1)]
        cores: u32,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

fn main() -> std::process::ExitCode {
    // Tokenizers must not start its own thread pool: executors bound their threads by `cores`.
    std::env::set_var("TOKENIZERS_PARALLELISM", "false");
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,librdkafka=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    // The model daemon forks its workers: it must start no thread, so no tokio runtime.
    if let Command::ModelDaemon { model_json, workers, socket_dir, ort_library } = cli.command {
        let model = match serde_json::from_str(&model_json) {
            Ok(m) => m,
            Err(e) => {
                println!("error --model-json: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        let args = embedstream_executor::daemon::DaemonArgs { model, workers: workers.max(1), socket_dir, ort_library };
        return std::process::ExitCode::from(embedstream_executor::daemon::run(args).clamp(0, 255) as u8);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Run { job, local } => run(job, local).await,
        Command::Validate { job } => {
            let spec = JobSpec::from_file(&job)?;
            print!("{}", spec.to_toml());
            Ok(())
        }
        Command::Progress { job, follow, json, last } => progress(&job, follow, json, last).await,
        Command::Produce { bootstrap_servers, topic, partitions, keyed } => {
            produce(&bootstrap_servers, &topic, partitions, keyed).await
        }
        Command::Bench { job, count, mixed, python, baseline, latency_seconds, out, keep } => {
            let args = bench::BenchArgs { job, count, mixed, python, baseline, latency_seconds, out, keep };
            tokio::task::spawn_blocking(move || bench::run(args)).await?
        }
        Command::Embed { flight, batch_rows } => {
            let token = embedstream_proto::auth::ClusterToken::load(None)?;
            embed::run(embed::EmbedArgs { flight, batch_rows: batch_rows as usize, token }).await
        }
        Command::ModelDaemon { .. } => unreachable!("dispatched before the runtime starts"),
        Command::Executor { driver, executor_id, cores, listen } => {
            embedstream_executor::run(embedstream_executor::ExecutorArgs {
                driver_url: driver,
                executor_id: executor_id.clone(),
                cores,
                listen,
                ort_library: None,
                exe: std::env::current_exe().context("cannot find the embedstream binary to start the model daemon")?,
            })
            .await
            .with_context(|| format!("executor {executor_id}"))
        }
    }
}

async fn run(job: PathBuf, local: Option<u32>) -> Result<()> {
    let mut spec = JobSpec::from_file(&job)?;
    if let Some(n) = local {
        if n == 0 {
            bail!("--local: at least one executor is needed");
        }
        spec.executors.count = n;
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stopping after the batch in flight");
        let _ = stop_tx.send(true);
    });
    let exe = std::env::current_exe().context("cannot find the embedstream binary to start executors")?;
    let summary = embedstream_driver::run_local(spec, exe, stop_rx).await?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

async fn progress(job: &std::path::Path, follow: bool, json: bool, last: usize) -> Result<()> {
    use embedstream_driver::progress::{format_table, read_progress, ProgressRecord};
    let spec = JobSpec::from_file(job)?;
    let print = |records: &[ProgressRecord], header: bool| {
        if json {
            for r in records {
                println!("{}", serde_json::to_string(r).expect("progress serialises"));
            }
        } else {
            print!("{}", format_table(records, header));
        }
    };
    let records = read_progress(&spec.checkpoint_location)?;
    if records.is_empty() && !follow {
        eprintln!("no batch committed yet ({})", spec.checkpoint_location.display());
    }
    print(&records[records.len().saturating_sub(last)..], true);
    if follow {
        let mut shown = records.len();
        let mut header = records.is_empty();
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            }
            let records = read_progress(&spec.checkpoint_location)?;
            if records.len() > shown {
                print(&records[shown..], header);
                header = false;
                shown = records.len();
            }
        }
    }
    Ok(())
}

async fn produce(bootstrap: &str, topic: &str, partitions: i32, keyed: bool) -> Result<()> {
    kafka::create_topic(bootstrap, topic, partitions).await?;
    let producer = kafka::producer(bootstrap)?;
    let count = kafka::produce_lines(&producer, topic, partitions, keyed, std::io::stdin().lock().lines()).await?;
    tracing::info!(topic, messages = count, "produced");
    Ok(())
}
