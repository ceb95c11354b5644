//! The command lines embedstream's processes start each other with, typed once: each hidden
//! or daemon subcommand is one `clap::Args` struct that the binary parses and that the starter
//! (a launcher, the resource manager, an executor) renders with [`ProcessCommand::argv`]. A
//! flag renamed here is renamed on both sides.

use std::path::PathBuf;
use std::time::Duration;

use crate::tls::TlsFiles;

/// Filled in by the node agent that starts a container: its host's address.
pub const HOST_PLACEHOLDER: &str = "{host}";
/// Filled in by the node agent that starts a container: the container's id.
pub const CONTAINER_ID_PLACEHOLDER: &str = "{container_id}";

/// A process kind's command line.
pub trait ProcessCommand {
    /// The subcommand of the `embedstream` binary.
    const SUBCOMMAND: &'static str;

    /// The flags, without the subcommand.
    fn flags(&self) -> Vec<String>;

    /// The subcommand and its flags: what follows the binary's path.
    fn argv(&self) -> Vec<String> {
        let mut argv = vec![Self::SUBCOMMAND.to_string()];
        argv.extend(self.flags());
        argv
    }
}

fn flag(name: &str, value: impl ToString) -> [String; 2] {
    [format!("--{name}"), value.to_string()]
}

/// `embedstream executor`: started by a driver's launcher (a local process or a container).
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct ExecutorCommand {
    /// The driver's gRPC address, http://HOST:PORT.
    #[arg(long)]
    pub driver: String,
    #[arg(long)]
    pub executor_id: String,
    #[arg(long, default_value_t = 1)]
    pub cores: u32,
    /// Where to serve ExecutorService and Flight: HOST:PORT (port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// A file whose first line is the cluster token, for an executor whose token is not in its
    /// environment (a local executor: its driver's file, mode 0600).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// A file (0600) whose first line is its application's secret (a cluster's executor: its
    /// node agent wrote it): the executor requires it of its driver and sends it, in place of
    /// any cluster token.
    #[arg(long)]
    pub app_secret_file: Option<PathBuf>,
    /// Its certificate, key and CA: the driver's (a local executor) or the node agent's.
    #[command(flatten)]
    pub tls: TlsFiles,
}

impl ProcessCommand for ExecutorCommand {
    const SUBCOMMAND: &'static str = "executor";

    fn flags(&self) -> Vec<String> {
        let mut flags = [
            flag("driver", &self.driver),
            flag("executor-id", &self.executor_id),
            flag("cores", self.cores),
            flag("listen", &self.listen),
        ]
        .concat();
        if let Some(t) = &self.token_file {
            flags.extend(flag("token-file", t.display()));
        }
        if let Some(f) = &self.app_secret_file {
            flags.extend(flag("app-secret-file", f.display()));
        }
        flags.extend(self.tls.flags());
        flags
    }
}

/// `embedstream driver`: a query's driver in a cluster container, started by the RM.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct DriverCommand {
    /// The resource manager, HOST:PORT.
    #[arg(long)]
    pub rm: String,
    #[arg(long)]
    pub app_id: String,
    /// Where to serve DriverService and QueryAdmin: HOST:PORT.
    #[arg(long)]
    pub listen: String,
    /// A file (0600) whose first line is the application's secret, written by the node agent:
    /// its `Allocate` calls carry it, and it is what the driver requires of its executors and
    /// admin callers (the cluster token does not reach it).
    #[arg(long)]
    pub app_secret_file: Option<PathBuf>,
    /// Its certificate, key and CA: the node agent's.
    #[command(flatten)]
    pub tls: TlsFiles,
}

impl ProcessCommand for DriverCommand {
    const SUBCOMMAND: &'static str = "driver";

    fn flags(&self) -> Vec<String> {
        let mut flags = [flag("rm", &self.rm), flag("app-id", &self.app_id), flag("listen", &self.listen)].concat();
        if let Some(f) = &self.app_secret_file {
            flags.extend(flag("app-secret-file", f.display()));
        }
        flags.extend(self.tls.flags());
        flags
    }
}

/// `embedstream model-daemon`: started by an executor; loads the model once and forks workers.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct ModelDaemonCommand {
    /// The model's entry of the job spec (`text-onnx` or `image-onnx`, named), as TOML (the
    /// spec's one encoding).
    #[arg(long)]
    pub model_toml: String,
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    #[arg(long)]
    pub socket_dir: PathBuf,
    #[arg(long)]
    pub ort_library: PathBuf,
}

impl ProcessCommand for ModelDaemonCommand {
    const SUBCOMMAND: &'static str = "model-daemon";

    fn flags(&self) -> Vec<String> {
        [
            flag("model-toml", &self.model_toml),
            flag("workers", self.workers),
            flag("socket-dir", self.socket_dir.display()),
            flag("ort-library", self.ort_library.display()),
        ]
        .concat()
    }
}

/// "512m", "8g": a memory size in MiB, for clap.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    crate::spec::parse_memory_mb(text).ok_or_else(|| format!("`{text}` is not a size such as 8g or 512m"))
}

/// `rm://HOST:PORT` or `HOST:PORT`: the resource manager's HOST:PORT.
fn rm_address(text: &str) -> Result<String, String> {
    let address = text.strip_prefix("rm://").unwrap_or(text);
    match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(address.to_string()),
        _ => Err(format!("`{text}` is not rm://HOST:PORT")),
    }
}

/// `embedstream node-agent`: offers a machine to the resource manager (systemd, YARN's
/// distributed shell or a test starts it).
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct NodeAgentCommand {
    /// The resource manager, rm://HOST:PORT as everywhere else (HOST:PORT and the older --rm
    /// are read too).
    #[arg(long = "master", visible_alias = "rm", value_name = "rm://HOST:PORT", value_parser = rm_address)]
    pub rm: String,
    /// This node's address: its id, and containers listen on its host. The host's own
    /// address, not 0.0.0.0; port 0 picks a free one.
    #[arg(long)]
    pub listen: std::net::SocketAddr,
    /// Vcores to offer.
    #[arg(long)]
    pub vcores: u32,
    /// Memory to offer ("8g", "512m").
    #[arg(long, value_parser = parse_memory)]
    pub memory: u64,
    /// Where container logs go: DIR/<application>/<container>/{stdout,stderr}.
    #[arg(long, default_value = "embedstream-node")]
    pub work_dir: PathBuf,
    /// How often it reports to the RM (its containers' states); the RM's --node-timeout must be longer.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,
    /// A container's stdout or stderr past this size ("64m") is rotated: moved to `stderr.1`
    /// (replacing the one before), and the container writes on in an empty file.
    #[arg(long, default_value = "64m", value_parser = parse_memory)]
    pub container_log_max_size: u64,
    /// A file whose first line is the cluster token (EMBEDSTREAM_TOKEN wins over it).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// A directory whose files job specs may name as `{ file = ... }` secrets (repeat it for
    /// several). A driver on this node reads no secret file outside them, and no secret from an
    /// `EMBEDSTREAM_*` variable: a job spec must not send the node's files or the cluster token
    /// to a broker of its author's choosing. None given: no secret files.
    #[arg(long = "secret-dir", value_name = "DIR")]
    pub secret_dirs: Vec<PathBuf>,
    /// Its certificate, key and CA, for its own port and its calls to the RM; the containers it
    /// starts (drivers, executors) get the same files.
    #[command(flatten)]
    pub tls: TlsFiles,
}

impl ProcessCommand for NodeAgentCommand {
    const SUBCOMMAND: &'static str = "node-agent";

    fn flags(&self) -> Vec<String> {
        let mut flags = [
            flag("master", format!("rm://{}", self.rm)),
            flag("listen", self.listen),
            flag("vcores", self.vcores),
            flag("memory", format!("{}m", self.memory)),
            flag("work-dir", self.work_dir.display()),
            flag("heartbeat", humantime::format_duration(self.heartbeat)),
            flag("container-log-max-size", format!("{}m", self.container_log_max_size)),
        ]
        .concat();
        if let Some(t) = &self.token_file {
            flags.extend(flag("token-file", t.display()));
        }
        for d in &self.secret_dirs {
            flags.extend(flag("secret-dir", d.display()));
        }
        flags.extend(self.tls.flags());
        flags
    }
}

#[cfg(test)]
mod tests {
    use clap::{Args, FromArgMatches};

    use super::*;

    /// Parses `argv` (subcommand first) as clap does in the binary.
    fn parse<T: Args + FromArgMatches + ProcessCommand>(argv: &[String]) -> T {
        assert_eq!(argv[0], T::SUBCOMMAND);
        let cmd = T::augment_args(clap::Command::new(T::SUBCOMMAND).no_binary_name(true));
        let matches = cmd.try_get_matches_from(&argv[1..]).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        T::from_arg_matches(&matches).unwrap()
    }

    #[test]
    fn every_command_line_parses_back_to_itself() {
        let executor = ExecutorCommand {
            driver: "http://127.0.0.1:7077".into(),
            executor_id: CONTAINER_ID_PLACEHOLDER.into(),
            cores: 3,
            listen: format!("{HOST_PLACEHOLDER}:0"),
            token_file: None,
            app_secret_file: None,
            tls: TlsFiles::default(),
        };
        assert_eq!(parse::<ExecutorCommand>(&executor.argv()), executor);
        let tls = TlsFiles {
            tls_cert: Some("/etc/es/node.pem".into()),
            tls_key: Some("/etc/es/node.key".into()),
            tls_ca: Some("/etc/es/ca.pem".into()),
            tls_client_auth: true,
            tls_server_name: Some("application.example".into()),
        };
        let local = ExecutorCommand { token_file: Some("/tmp/x/token".into()), tls: tls.clone(), ..executor.clone() };
        assert_eq!(parse::<ExecutorCommand>(&local.argv()), local);
        let in_cluster =
            ExecutorCommand { app_secret_file: Some("/var/lib/es/app-1/c-2/app-secret".into()), ..executor };
        assert_eq!(parse::<ExecutorCommand>(&in_cluster.argv()), in_cluster);
        let driver = DriverCommand {
            rm: "127.0.0.1:8030".into(),
            app_id: "app-1".into(),
            listen: "{host}:0".into(),
            app_secret_file: Some("/var/lib/es/app-1/c-1/app-secret".into()),
            tls: tls.clone(),
        };
        assert_eq!(parse::<DriverCommand>(&driver.argv()), driver);
        let daemon = ModelDaemonCommand {
            model_toml: "onnx = \"/m/model.onnx\"\ntokenizer = \"/m/t.json\"\n".into(),
            workers: 2,
            socket_dir: "/tmp/s".into(),
            ort_library: "/lib/libonnxruntime.so".into(),
        };
        assert_eq!(parse::<ModelDaemonCommand>(&daemon.argv()), daemon);
        let node = NodeAgentCommand {
            rm: "127.0.0.1:8030".into(),
            listen: "127.0.0.2:0".parse().unwrap(),
            vcores: 2,
            memory: 1536,
            work_dir: "/var/lib/embedstream".into(),
            heartbeat: Duration::from_millis(250),
            container_log_max_size: 16,
            token_file: Some("/etc/embedstream/token".into()),
            secret_dirs: vec!["/etc/embedstream/secrets".into(), "/srv/kafka/pass".into()],
            tls,
        };
        assert_eq!(parse::<NodeAgentCommand>(&node.argv()), node);
    }
}
