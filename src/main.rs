//! `embedstream`: the one binary. The driver, its executors and the tools are subcommands.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use embedstream_core::argv::{DriverCommand, ExecutorCommand, ModelDaemonCommand, NodeAgentCommand};
use embedstream_core::tls::{Naming, Role, TlsFiles};
use embedstream_core::JobSpec;
use embedstream_proto::serve::Caller;

/// `println!` and `print!` for a command's output. A reader that went away (`status | head`)
/// ends the command quietly with 0, as other Unix tools end, instead of a panic (Rust ignores
/// SIGPIPE, so the write fails with `BrokenPipe`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            $crate::output_failed(e);
        }
    }};
}
macro_rules! out_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout().lock(), $($arg)*) {
            $crate::output_failed(e);
        }
    }};
}

/// What a failed write to stdout does: a closed pipe ends the command with 0; anything else is
/// a bug worth its panic.
fn output_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    panic!("writing to stdout: {e}");
}

/// Whether `e` is a write to a reader that went away (the output of `man` or `completions`).
fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

mod client;
mod cmd {
    pub mod switch;
}
mod embed;
mod yarn;

/// What `--version` prints: the release, the commit it was built from, and the ONNX Runtime
/// it loads.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("EMBEDSTREAM_GIT_COMMIT"),
    "; ONNX Runtime 1.22 or newer, loaded at run time from EMBEDSTREAM_ORT_LIB or deploy/setup.sh's cache)"
);

const ENVIRONMENT_AND_EXIT_CODES: &str = "\
Environment:
  EMBEDSTREAM_TOKEN     the cluster token (wins over --token-file and security.token_file)
  EMBEDSTREAM_CACHE     where deploy/setup.sh put the ONNX Runtime library and the models
                        (default ~/.cache/embedstream)
  EMBEDSTREAM_ORT_LIB   the ONNX Runtime shared library, if not the cache's
  RUST_LOG              log levels (default info,librdkafka=warn); logs go to stderr

Exit codes:
  0  done: a query stopped cleanly (Ctrl-C, SIGTERM, `stop`, or available_now caught up),
     or the command did what it was asked
  1  an error, printed on the last line of stderr as `error: ...`
  2  the command line itself is wrong (clap's usage error)

Example:
  embedstream validate job.toml && embedstream run job.toml --local 2";

#[derive(Parser)]
#[command(name = "embedstream", version = VERSION, about = "Turn Kafka streams into ML embeddings, in micro-batches.")]
#[command(after_help = ENVIRONMENT_AND_EXIT_CODES)]
#[command(long_about = "Turn Kafka streams into ML embeddings, in micro-batches.\n\n\
A driver plans each batch from Kafka offsets, logs it to a checkpoint, and runs its tasks on \
executor processes over gRPC; executors read their offset ranges, run the ONNX model and write \
the results to Kafka. Logs go to stderr (RUST_LOG sets the level); results and summaries to stdout.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How admin commands find the query's driver.
#[derive(clap::Args)]
struct AdminTarget {
    /// The cluster: its resource manager, rm://HOST:PORT, or `yarn` (HADOOP_CONF_DIR's), with
    /// the application id.
    #[arg(long, env = "EMBEDSTREAM_MASTER")]
    master: Option<String>,
    /// The application, with --master (the same as giving it as the first argument).
    #[arg(long = "app", value_name = "APP")]
    app_flag: Option<String>,
    /// The driver's address, HOST:PORT (a local run logs it as `driver=`).
    #[arg(long)]
    driver: Option<String>,
    /// A file whose first line is the cluster token (EMBEDSTREAM_TOKEN wins over it).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The CA (and, for mutual TLS, the certificate and key) to call over TLS with.
    #[command(flatten)]
    tls: TlsFiles,
}

impl AdminTarget {
    /// Which driver, and how to call it. `app` may also be a local query's job spec or
    /// checkpoint, whose `driver.json` says where its driver is.
    async fn split(self, app: Option<String>) -> Result<(client::Target, Caller)> {
        let app = app.or(self.app_flag.clone());
        if self.master.as_deref() == Some("yarn") {
            let app = app.context("--master yarn: name the application (APPLICATION_ID, or --app)")?;
            let (driver, caller) = yarn::YarnClient::from_env()?.driver(&app, &self.tls).await?;
            return Ok((client::Target { master: None, driver: Some(driver), app: None }, caller));
        }
        if let Some(arg) = &app {
            if let Some((driver, caller)) = client::local_query(arg, self.token_file.as_deref(), &self.tls)? {
                return Ok((client::Target { master: None, driver: Some(driver), app: None }, caller));
            }
        }
        let caller = client::caller(self.token_file.as_deref(), &self.tls)?;
        Ok((client::Target { master: self.master, driver: self.driver, app }, caller))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a streaming job: the driver in this process, executors as local processes.
    ///
    /// Ctrl-C or SIGTERM stops after the batch in flight and exits 0. With
    /// `trigger.available_now = true` the job exits 0 once it has processed what the topics held
    /// when it started. A summary (JSON) is printed on stdout at the end.
    #[command(after_help = "Example:\n  embedstream run job.toml --local 2")]
    Run {
        /// The job spec (TOML).
        job: PathBuf,
        /// Start N executor processes on this machine (overrides `executors.count`).
        #[arg(long, value_name = "N")]
        local: Option<u32>,
        /// Set a spec key without editing the file: KEY.PATH=VALUE (a TOML value, or a string); repeatable.
        #[arg(long = "conf", value_name = "KEY=VALUE")]
        conf: Vec<String>,
    },
    /// Check a job spec without starting anything; prints the spec with its defaults filled in.
    ///
    /// Shows what will run: every default, the derived ones too (consumer group, model id,
    /// dead-letter topic), the sink's servers and the ONNX Runtime library found (a missing one
    /// is an error here, not at `run`). With --check-broker it also connects to the brokers and
    /// lists the partitions the query would read, and for Avro or Protobuf input shows each
    /// topic's `<topic>-value` subject in the schema registry with its latest schema.
    #[command(after_help = "Examples:\n  embedstream validate job.toml\n  \
                            embedstream validate job.toml --conf source.max_offsets_per_trigger=1000")]
    Validate {
        /// The job spec (TOML).
        job: PathBuf,
        /// Set a spec key without editing the file: KEY.PATH=VALUE (a TOML value, or a string); repeatable.
        #[arg(long = "conf", value_name = "KEY=VALUE")]
        conf: Vec<String>,
        /// Print JSON (the spec, what it derives, the library, the partitions) for scripts.
        #[arg(long)]
        json: bool,
        /// Also connect to the source (and sink) brokers and list the partitions it would read
        /// (and, for schema'd input, ask the registry for each topic's latest schema).
        #[arg(long)]
        check_broker: bool,
    },
    /// Show a query's progress: one row per committed batch, with its rates, duration and lag.
    ///
    /// Reads `<checkpoint_location>/progress.jsonl`, which the driver appends to after every
    /// batch; works while the query runs and after it stopped.
    ///
    /// With --master rm://ADDR --app APP (a cluster) or --driver HOST:PORT, the records come from
    /// the driver's admin API instead of the checkpoint.
    #[command(after_help = "Examples:\n  embedstream progress job.toml --follow\n  \
                            embedstream progress --master rm://rm-host:8030 --app APP_ID --json")]
    Progress {
        /// The job spec (TOML) of the query, or with --master its application (as the other
        /// admin commands take it).
        #[arg(required_unless_present_any = ["master", "driver", "app_flag"])]
        job: Option<PathBuf>,
        #[command(flatten)]
        target: AdminTarget,
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
    #[command(
        after_help = "Examples:\n  seq 100 | embedstream produce --bootstrap-servers 127.0.0.1:9092 --topic products\n  \
                      embedstream produce --topic products --partitions 2 --key-field /sku < products.jsonl"
    )]
    Produce {
        /// The broker, HOST:PORT (plaintext).
        #[arg(long, default_value = "127.0.0.1:9092")]
        bootstrap_servers: String,
        /// The topic to write to; created if it does not exist.
        #[arg(long)]
        topic: String,
        /// Partitions of the topic, if it has to be created (at least 1).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..))]
        partitions: i32,
        /// Spread messages over partitions round-robin by line number (the key is the line number).
        #[arg(long, conflicts_with_all = ["key_field", "key_separator"])]
        keyed: bool,
        /// Key each JSON line by its value at this JSON pointer (`/sku`), partitioned as Kafka's
        /// Java clients partition keys; a line without it stops the command, naming the line.
        #[arg(long, value_name = "POINTER", conflicts_with = "key_separator")]
        key_field: Option<String>,
        /// Key each text line by its part before SEP; the value is the part after it
        /// (kafka-console-producer's parse.key and key.separator).
        #[arg(long, value_name = "SEP")]
        key_separator: Option<String>,
    },
    /// Embed the lines of standard input with a running executor's warm model (Arrow Flight).
    ///
    /// Sends the texts to the executor's Flight `DoExchange` and prints one JSON line per text:
    /// {"text": ..., "embedding": [...]}, in input order. Blank lines are skipped. The address is
    /// an executor's `flight_address` (in `<checkpoint>/monitoring/targets.json`). The cluster
    /// token, if the cluster has one, comes from EMBEDSTREAM_TOKEN.
    #[command(after_help = "Example:\n  echo 'waterproof hiking boots' | embedstream embed --flight 127.0.0.1:40123")]
    Embed {
        /// A local query's job spec or checkpoint: its token (the query's own when it was given
        /// none) and, without --flight, its first executor's Flight address.
        job: Option<PathBuf>,
        /// The executor's Flight address, HOST:PORT (the token then comes from EMBEDSTREAM_TOKEN).
        #[arg(long, value_name = "ADDR", required_unless_present = "job")]
        flight: Option<String>,
        /// Texts per DoExchange call (at most the executor's flight.max_rows_per_call).
        #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
        batch_rows: u64,
        /// The CA (and, for mutual TLS, the certificate and key) to call over TLS with.
        #[command(flatten)]
        tls: TlsFiles,
    },
    /// Run the resource manager of a cluster: it tracks nodes, applications and containers.
    ///
    /// Node agents register with it; `submit` sends it jobs; it places each query's driver and
    /// executors on nodes with free capacity (spread across nodes) and declares a node lost after
    /// --node-timeout without a heartbeat. Its state (applications, containers) is kept in --state,
    /// so a restart does not orphan running queries.
    #[command(
        after_help = "Example:\n  embedstream resource-manager --listen 127.0.0.1:8030 --state /var/lib/embedstream/rm-state.json"
    )]
    ResourceManager {
        /// Where to serve the ResourceManager gRPC API (and health, reflection).
        #[arg(long, default_value = "127.0.0.1:8030")]
        listen: SocketAddr,
        /// HOST:PORT that drivers and node agents use to reach it (default: --listen; needed
        /// when --listen is 0.0.0.0).
        #[arg(long)]
        advertise: Option<String>,
        /// Where to serve the cluster's page (nodes, applications with a link to each driver's
        /// page, containers), as YARN's RM serves its web UI on 8088.
        #[arg(long, default_value = "127.0.0.1:8088")]
        web_listen: SocketAddr,
        /// The state file.
        #[arg(long, default_value_os_t = client::default_state_file())]
        state: PathBuf,
        /// A node silent this long is lost, and its containers with it.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        node_timeout: std::time::Duration,
        /// A file whose first line is the cluster token (EMBEDSTREAM_TOKEN wins over it).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Its certificate, key and CA: it serves TLS, and node agents and drivers must call
        /// over TLS (with a certificate, under --tls-client-auth).
        #[command(flatten)]
        tls: TlsFiles,
    },
    /// Run a node agent: offers this node to the resource manager and runs its containers.
    ///
    /// It registers the node's vcores and memory, heartbeats, runs the containers the RM places
    /// here (drivers and executors) with their logs under --work-dir, reports how they end, and
    /// kills one whose process tree uses more memory than it was granted.
    #[command(
        after_help = "Example:\n  embedstream node-agent --rm 127.0.0.1:8030 --listen 127.0.0.2:0 --vcores 4 --memory 8g"
    )]
    NodeAgent(NodeAgentCommand),
    /// Submit a job to a cluster (`--master rm://HOST:PORT` or `yarn`) or run it here (`--master local[N]`).
    ///
    /// The spec is checked first; a bad one is refused naming the key. On a cluster it prints the
    /// application id and returns; with --wait it follows the application and exits 0 when it
    /// finishes (an `available_now` query), 1 if it fails or is killed. With `--master yarn`
    /// the cluster is the one HADOOP_CONF_DIR's yarn-site.xml names; the checkpoint (and a
    /// Parquet table) must be on HDFS.
    #[command(after_help = "Examples:\n  embedstream submit job.toml --master rm://rm-host:8030 --wait\n  \
                            HADOOP_CONF_DIR=/etc/hadoop/conf embedstream submit job.toml --master yarn --queue etl\n  \
                            embedstream submit job.toml --master 'local[2]'")]
    Submit {
        /// The job spec (TOML), checked here before anything is sent.
        job: PathBuf,
        /// rm://HOST:PORT (a cluster's resource manager), yarn (Hadoop YARN) or local[N] (N executors here).
        #[arg(long, env = "EMBEDSTREAM_MASTER", value_parser = client::parse_master)]
        master: client::Master,
        /// YARN: the queue to submit to.
        #[arg(long, default_value = "default")]
        queue: String,
        /// YARN: the application's name (default: the spec's `name`).
        #[arg(long)]
        name: Option<String>,
        /// YARN: attempts of the application master (0: the cluster's yarn.resourcemanager.am.max-attempts).
        #[arg(long, default_value_t = 0)]
        max_attempts: u32,
        /// Set a spec key without editing the file: KEY.PATH=VALUE (a TOML value, or a string); repeatable.
        #[arg(long = "conf", value_name = "KEY=VALUE")]
        conf: Vec<String>,
        /// Follow the application; exit 0 when it finishes, 1 if it fails or is killed.
        #[arg(long)]
        wait: bool,
        /// Vcores for the driver's container (at least 1).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        driver_cores: u32,
        /// Memory for the driver's container ("1g", "512m").
        #[arg(long, default_value = "1g")]
        driver_memory: String,
        /// The CA (and, for mutual TLS, the certificate and key) to call the RM with; default
        /// the spec's `[security] tls_*`.
        #[command(flatten)]
        tls: TlsFiles,
        /// YARN with Kerberos: log in as this principal (with --keytab) instead of from the
        /// ticket cache (`kinit`), as `spark-submit --principal`.
        #[arg(long, requires = "keytab")]
        principal: Option<String>,
        /// YARN with Kerberos: the keytab of --principal.
        #[arg(long, requires = "principal", value_name = "FILE")]
        keytab: Option<PathBuf>,
    },
    /// List the queries running on this machine, or with --master the cluster's applications.
    #[command(
        after_help = "Examples:\n  embedstream list\n  embedstream list --master rm://rm-host:8030\n  embedstream list --master yarn"
    )]
    List {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Point the readers of a pgvector view at this query's table, in one transaction (a
    /// re-embedding that has caught up): the view becomes `SELECT * FROM <sink.table>`; with
    /// --drop, the old version's table is dropped in the same transaction.
    #[command(after_help = "Example:\n  embedstream switch items-v2.toml --view items --drop items_v1")]
    Switch {
        /// The job spec (TOML) of the query whose table readers move to.
        job: PathBuf,
        /// The view readers query (`name` or `schema.name`), made if it does not exist.
        #[arg(long)]
        view: String,
        /// The old version's table, dropped once the view no longer reads it.
        #[arg(long, value_name = "TABLE")]
        drop: Option<String>,
        /// Set a spec key without editing the file: KEY.PATH=VALUE (a TOML value, or a string); repeatable.
        #[arg(long = "conf", value_name = "KEY=VALUE")]
        conf: Vec<String>,
    },
    /// Show the cluster's nodes and applications, or one query's state, executors and progress.
    #[command(after_help = "Examples:\n  embedstream status --master rm://rm-host:8030\n  \
                            embedstream status APP_ID --master rm://rm-host:8030\n  embedstream status --driver 127.0.0.1:40000")]
    Status {
        /// The application (with --master), or a local query's job spec or checkpoint; none lists the cluster.
        app: Option<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Stop a query gracefully: the batch in flight finishes and is committed.
    #[command(after_help = "Example:\n  embedstream stop APP_ID --master rm://rm-host:8030")]
    Stop {
        /// The application (with --master), or a local query's job spec or checkpoint.
        app: Option<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Pause a query: no new batch starts until `resume`.
    #[command(after_help = "Example:\n  embedstream pause APP_ID --master rm://rm-host:8030")]
    Pause {
        /// The application (with --master), or a local query's job spec or checkpoint.
        app: Option<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Resume a paused query.
    #[command(after_help = "Example:\n  embedstream resume APP_ID --master rm://rm-host:8030")]
    Resume {
        /// The application (with --master), or a local query's job spec or checkpoint.
        app: Option<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Change a running query's number of executors (new ones take tasks from the next batch;
    /// removed ones finish their tasks first).
    #[command(after_help = "Example:\n  embedstream scale APP_ID --executors 4 --master rm://rm-host:8030")]
    Scale {
        /// The application (with --master), or a local query's job spec or checkpoint.
        app: Option<String>,
        /// Executors wanted (at least 1).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        executors: u32,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Print shell completions for bash, zsh or fish (from the same definitions as --help).
    #[command(after_help = "Example:\n  embedstream completions bash > /etc/bash_completion.d/embedstream")]
    Completions {
        /// The shell: bash, zsh or fish.
        shell: clap_complete::Shell,
    },
    /// Print the man page, embedstream(1), in roff.
    #[command(after_help = "Example:\n  embedstream man > /usr/local/share/man/man1/embedstream.1")]
    Man,
    /// A driver in a cluster container (started by a node agent, not by hand).
    #[command(hide = true)]
    Driver(DriverCommand),
    /// A model daemon (started by an executor, not by hand): loads the model once, forks workers.
    #[command(hide = true)]
    ModelDaemon(ModelDaemonCommand),
    /// An executor process (started by a driver, not by hand).
    #[command(hide = true)]
    Executor(ExecutorCommand),
    /// The driver in a YARN application master's container (started by the ApplicationMaster).
    #[command(hide = true)]
    YarnDriver {
        #[arg(long)]
        job: PathBuf,
        #[arg(long)]
        listen: String,
        #[arg(long)]
        token_file: PathBuf,
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
    if let Command::ModelDaemon(ModelDaemonCommand { model_toml, workers, socket_dir, ort_library }) = cli.command {
        let model = match toml::from_str(&model_toml) {
            Ok(m) => m,
            Err(e) => {
                println!("error --model-toml: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        let args =
            embedstream_executor::model::daemon::DaemonArgs { model, workers: workers.max(1), socket_dir, ort_library };
        return std::process::ExitCode::from(embedstream_executor::model::daemon::run(args).clamp(0, 255) as u8);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if broken_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Run { job, local, conf } => run(job, local, &conf).await,
        Command::Validate { job, conf, json, check_broker } => validate(&job, &conf, json, check_broker).await,
        Command::Progress { job, target, follow, json, last } => {
            let app = target.app_flag.clone();
            // With --master, the positional names the application, as for status, stop, ...
            let (job, app) = match (job, app, target.master.is_some()) {
                (Some(job), None, true) if !job.exists() => (None, Some(job.display().to_string())),
                (job, app, _) => (job, app),
            };
            let source = match job {
                Some(job) => ProgressSource::File(JobSpec::from_file(&job)?.checkpoint_location),
                None => {
                    let (target, caller) = target.split(app).await?;
                    ProgressSource::Admin(target, caller)
                }
            };
            progress(source, follow, json, last).await
        }
        Command::Produce { bootstrap_servers, topic, partitions, keyed, key_field, key_separator } => {
            use embedstream_driver::topics::KeyBy;
            let key = match (keyed, key_field, key_separator) {
                (true, _, _) => KeyBy::LineNumber,
                (_, Some(pointer), _) if !pointer.starts_with('/') => {
                    bail!("--key-field {pointer}: a JSON pointer starts with / (say /{pointer})")
                }
                (_, Some(pointer), _) => KeyBy::JsonField(pointer),
                (_, _, Some(sep)) if sep.is_empty() => bail!("--key-separator must not be empty"),
                (_, _, Some(sep)) => KeyBy::Separator(sep),
                _ => KeyBy::None,
            };
            produce(&bootstrap_servers, &topic, partitions, &key).await
        }
        Command::Embed { job, flight, batch_rows, tls } => {
            let (flight, caller) = match job {
                None => (flight.expect("clap: --flight without a job"), client::caller(None, &tls)?),
                Some(job) => embed::of_local_query(&job, flight, &tls)?,
            };
            embed::run(embed::EmbedArgs { flight, batch_rows: batch_rows as usize, caller }).await
        }
        Command::ResourceManager { listen, advertise, web_listen, state, node_timeout, token_file, tls } => {
            let token = client::token(token_file.as_deref())?;
            let tls = tls.load(Role::Peer, Naming::Flags)?;
            let args = embedstream_cluster::RmArgs {
                listen,
                advertise,
                state_file: state,
                node_timeout,
                token,
                tls,
                web_listen,
            };
            Ok(embedstream_cluster::run_resource_manager(args, client::stop_on_signal()).await?)
        }
        Command::NodeAgent(NodeAgentCommand {
            rm,
            listen,
            vcores,
            memory,
            work_dir,
            heartbeat,
            container_log_max_size,
            token_file,
            secret_dirs,
            tls,
        }) => {
            anyhow::ensure!(vcores > 0, "--vcores: at least 1");
            let token = client::token(token_file.as_deref())?;
            let tls_files = tls;
            let tls = tls_files.load(Role::Peer, Naming::Flags)?;
            let exe = std::env::current_exe().context("cannot find the embedstream binary for containers")?;
            let work_dir = std::path::absolute(work_dir)?;
            let args = embedstream_cluster::node::NodeArgs {
                rm,
                listen,
                vcores,
                memory_mb: memory,
                work_dir,
                exe,
                token,
                heartbeat,
                log_max_bytes: container_log_max_size << 20,
                tls,
                tls_files,
                secret_dirs: embedstream_core::spec::SecretDirs::new(secret_dirs),
            };
            Ok(embedstream_cluster::node::run(args, client::stop_on_signal()).await?)
        }
        Command::Submit {
            job,
            master,
            queue,
            name,
            max_attempts,
            conf,
            wait,
            driver_cores,
            driver_memory,
            tls,
            principal,
            keytab,
        } => {
            if principal.is_some() && master != client::Master::Yarn {
                bail!("--principal and --keytab: for --master yarn (Kerberos); the other masters take a cluster token");
            }
            match master {
                client::Master::Local(n) => run(job, Some(n), &conf).await,
                client::Master::Yarn => {
                    let am_memory_mb = embedstream_core::spec::parse_memory_mb(&driver_memory)
                        .with_context(|| format!("--driver-memory {driver_memory}: not a size such as 512m or 2g"))?;
                    let keytab = principal.zip(keytab);
                    let options = yarn::SubmitOptions { name, queue, wait, am_memory_mb, max_attempts, keytab };
                    yarn::submit(&job, &conf, options).await
                }
                client::Master::Rm(address) => {
                    let master = format!("rm://{address}");
                    client::submit((&job, &conf), &master, wait, (driver_cores, &driver_memory), &tls).await
                }
            }
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            // Made whole first: clap_complete panics when its writer fails (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "embedstream", &mut script);
            std::io::Write::write_all(&mut std::io::stdout().lock(), &script)?;
            Ok(())
        }
        Command::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(())
        }
        Command::List { target } if target.master.is_none() => {
            client::list_local();
            Ok(())
        }
        Command::List { target } if target.master.as_deref() == Some("yarn") => yarn::list().await,
        Command::List { target } => {
            let (target, caller) = target.split(None).await?;
            client::status(target, caller).await
        }
        Command::Status { app, target } => {
            let (target, caller) = target.split(app).await?;
            client::status(target, caller).await
        }
        Command::Switch { job, view, drop, conf } => cmd::switch::switch(&job, &conf, &view, drop.as_deref()).await,
        Command::Stop { app, target } => admin_action(app, target, client::Action::Stop).await,
        Command::Pause { app, target } => admin_action(app, target, client::Action::Pause).await,
        Command::Resume { app, target } => admin_action(app, target, client::Action::Resume).await,
        Command::Scale { app, executors, target } => admin_action(app, target, client::Action::Scale(executors)).await,
        Command::Driver(command) => client::driver_container(command).await,
        Command::YarnDriver { job, listen, token_file } => yarn::driver(&job, &listen, &token_file).await,
        Command::ModelDaemon(_) => unreachable!("dispatched before the runtime starts"),
        Command::Executor(ExecutorCommand { driver, executor_id, cores, listen, token_file, app_secret_file, tls }) => {
            // A host name too: on YARN it is the NodeManager's ($NM_HOST).
            let listen = tokio::net::lookup_host(&listen)
                .await
                .ok()
                .and_then(|mut a| a.next())
                .with_context(|| format!("--listen {listen}: not HOST:PORT"))?;
            let tls = tls.load(Role::Peer, Naming::Flags)?;
            embedstream_executor::run(embedstream_executor::ExecutorArgs {
                driver_url: driver,
                executor_id: executor_id.clone(),
                cores,
                listen,
                token_file,
                app_secret_file,
                tls,
                ort_library: None,
                exe: std::env::current_exe().context("cannot find the embedstream binary to start the model daemon")?,
            })
            .await
            .with_context(|| format!("executor {executor_id}"))
        }
    }
}

/// `embedstream validate`: the spec as it will run, and optionally what the brokers hold for it.
async fn validate(job: &std::path::Path, conf: &[String], json: bool, check_broker: bool) -> Result<()> {
    let spec = JobSpec::from_file_with(job, conf)?;
    spec.check_files()?;
    spec.security.tls()?;
    // Every secret must be readable here; the output shows only where each comes from.
    let secrets = spec.read_secrets()?;
    let ort = embedstream_executor::model::ort_library();
    if !ort.is_file() {
        bail!(
            "the ONNX Runtime library {} does not exist: run deploy/setup.sh, or set EMBEDSTREAM_ORT_LIB",
            ort.display()
        );
    }
    let partitions = match check_broker {
        false => None,
        true => {
            let (spec, secrets) = (spec.clone(), secrets.clone());
            let found = tokio::task::spawn_blocking(move || -> Result<Vec<(String, i32, i64, i64)>> {
                embedstream_driver::source::probe_clusters(&spec, &secrets)?;
                let source = embedstream_driver::source::KafkaSource::new(&spec, &secrets)?;
                let missing = source.missing_topics()?;
                match (missing.first(), spec.source.allow_missing_topics) {
                    (Some(topic), false) => bail!(
                        "topic {topic} does not exist on {}: create it, or set source.allow_missing_topics = true to \
                         start and wait for it",
                        spec.source.bootstrap_servers
                    ),
                    (Some(_), true) => {
                        eprintln!("# topics that do not exist yet (the query waits for them): {}", missing.join(", "))
                    }
                    (None, _) => {}
                }
                let tps = source.partitions()?;
                let (earliest, latest) = source.watermarks(&tps)?;
                Ok(tps
                    .iter()
                    .map(|tp| {
                        (
                            tp.topic.clone(),
                            tp.partition,
                            earliest.get(tp).copied().unwrap_or(0),
                            latest.get(tp).copied().unwrap_or(0),
                        )
                    })
                    .collect())
            });
            Some(found.await.expect("the broker check does not panic")?)
        }
    };
    // For schema'd values: each topic's `<topic>-value` subject, latest version.
    let mut subjects = Vec::new();
    if let (Some(ps), Some(registry)) = (&partitions, &spec.input.schema_registry) {
        let client =
            embedstream_executor::schemas::registry::Registry::new(registry, spec.registry_password_value(&secrets)?)?;
        let topics: std::collections::BTreeSet<&String> = ps.iter().map(|(t, ..)| t).collect();
        for topic in topics {
            let subject = format!("{topic}-value");
            let latest =
                client.latest(&subject).await.with_context(|| format!("schema registry, subject {subject}"))?;
            subjects.push((subject, latest));
        }
    }
    // Each model's version: what every vector it writes carries (its files' bytes hashed).
    let versions = embedstream_core::model_version::model_versions(&spec)?;
    let shown = spec.with_derived();
    if json {
        let value = serde_json::json!({
            "spec": shown,
            "model_versions": versions,
            "sink_bootstrap_servers": spec.sink_bootstrap_servers(),
            "sink_kafka_properties_from": spec.sink_kafka().0,
            "onnx_runtime": ort,
            "partitions": partitions.as_ref().map(|ps| ps.iter().map(|(t, p, e, l)| serde_json::json!({
                "topic": t, "partition": p, "earliest": e, "latest": l
            })).collect::<Vec<_>>()),
            "subjects": subjects.iter().map(|(subject, latest)| serde_json::json!({
                "subject": subject,
                "version": latest.as_ref().and_then(|l| l.version),
                "id": latest.as_ref().and_then(|l| l.id),
                "type": latest.as_ref().map(|l| l.kind.clone()),
                "schema": latest.as_ref().map(|l| l.schema.clone()),
            })).collect::<Vec<_>>(),
        });
        out!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    out_raw!("{}", shown.to_toml());
    out!("\n# What it runs with:");
    out!("# sink servers: {} (properties from [{}])", spec.sink_bootstrap_servers(), spec.sink_kafka().0);
    out!("# ONNX Runtime: {}", ort.display());
    for (model, version) in &versions {
        out!("# model {model}: version {version} (es.model_version on each vector)");
    }
    if let Some(ps) = partitions {
        out!("# partitions it would read ({}), earliest..latest offset:", ps.len());
        for (topic, partition, earliest, latest) in ps {
            out!("#   {topic}-{partition}: {earliest}..{latest}");
        }
    }
    for (subject, latest) in subjects {
        match latest {
            None => out!("# schema registry: no subject {subject} (records name their schema by id all the same)"),
            Some(l) => {
                let (version, id) = (l.version.unwrap_or_default(), l.id.unwrap_or_default());
                out!("# schema registry: subject {subject}, latest version {version} (id {id}, {}):", l.kind);
                for line in l.schema.lines() {
                    out!("#   {line}");
                }
            }
        }
    }
    Ok(())
}

async fn admin_action(app: Option<String>, target: AdminTarget, action: client::Action) -> Result<()> {
    let (target, caller) = target.split(app).await?;
    client::act(target, action, caller).await
}

async fn run(job: PathBuf, local: Option<u32>, conf: &[String]) -> Result<()> {
    let mut spec = JobSpec::from_file_with(&job, conf)?;
    spec.check_files()?;
    if let Some(n) = local {
        if n == 0 {
            bail!("--local: at least one executor is needed");
        }
        spec.executors.count = n;
    }
    let exe = std::env::current_exe().context("cannot find the embedstream binary to start executors")?;
    let summary = embedstream_driver::run_local(spec, exe, client::stop_on_signal()).await?;
    out!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

enum ProgressSource {
    /// `<checkpoint_location>/progress.jsonl`.
    File(PathBuf),
    /// A driver's admin API.
    Admin(client::Target, Caller),
}

impl ProgressSource {
    async fn read(&self, last: usize) -> Result<Vec<embedstream_driver::progress::ProgressRecord>> {
        match self {
            ProgressSource::File(checkpoint) => Ok(embedstream_driver::progress::read_progress(checkpoint)?),
            ProgressSource::Admin(target, caller) => client::progress(target, caller, last as u32).await,
        }
    }
}

async fn progress(source: ProgressSource, follow: bool, json: bool, last: usize) -> Result<()> {
    use embedstream_driver::progress::{format_table, ProgressRecord};
    let print = |records: &[ProgressRecord], header: bool| {
        if json {
            for r in records {
                out!("{}", serde_json::to_string(r).expect("progress serialises"));
            }
        } else {
            out_raw!("{}", format_table(records, header));
        }
    };
    let records = source.read(last).await?;
    if records.is_empty() && !follow {
        eprintln!("no batch committed yet");
    }
    print(&records[records.len().saturating_sub(last)..], true);
    if follow {
        // Batches after the last one shown (a re-run batch keeps its id and is not shown twice).
        let mut shown = records.last().map(|r| r.batch_id);
        let mut header = records.is_empty();
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            }
            let new: Vec<ProgressRecord> =
                source.read(last).await?.into_iter().filter(|r| shown.is_none_or(|s| r.batch_id > s)).collect();
            if let Some(r) = new.last() {
                shown = Some(r.batch_id);
                print(&new, header);
                header = false;
            }
        }
    }
    Ok(())
}

async fn produce(bootstrap: &str, topic: &str, partitions: i32, key: &embedstream_driver::topics::KeyBy) -> Result<()> {
    use embedstream_driver::topics;
    tracing::info!(bootstrap, "connecting to the broker");
    let servers = bootstrap.to_string();
    tokio::task::spawn_blocking(move || embedstream_driver::source::probe_servers("--bootstrap-servers", &servers))
        .await
        .expect("the probe does not panic")?;
    topics::create_topic(bootstrap, topic, partitions).await?;
    let producer = topics::producer(bootstrap)?;
    let count = topics::produce_lines(&producer, topic, partitions, key, std::io::stdin().lock().lines()).await?;
    tracing::info!(topic, messages = count, "produced");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Issue 19, item 7: every argument of every subcommand says what it is, and every
    /// subcommand a user runs ends with an example.
    #[test]
    fn every_argument_is_described_and_every_subcommand_has_an_example() {
        let cli = Cli::command();
        for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
            let name = sub.get_name();
            let after = sub.get_after_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(
                after.contains(&format!("embedstream {name}")) || after.contains("| embedstream"),
                "{name}: {after}"
            );
            for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                assert!(arg.get_help().is_some_and(|h| !h.to_string().is_empty()), "{name} {id} has no description");
            }
        }
    }
}
