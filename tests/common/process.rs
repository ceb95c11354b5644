//! The `embedstream` side of the harness: job spec files, the binary run to its end, and a
//! continuous query running in the background with its log.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::*;

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
poll_timeout = "20s"
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

    /// Rewrites the spec file with `f`.
    fn edit(self, f: impl FnOnce(&str) -> String) -> Job {
        let text = std::fs::read_to_string(&self.path).unwrap();
        std::fs::write(&self.path, f(&text)).unwrap();
        self
    }

    /// Replaces [`Job::new`]'s text from `from` through the next `through` after it (`what`, if
    /// it is missing) with `new`.
    fn replace_section(self, what: &str, from: &str, through: &str, new: &str) -> Job {
        self.edit(|text| {
            let (head, rest) = text.split_once(from).unwrap_or_else(|| panic!("Job::new's {what}"));
            let rest = rest.split_once(through).unwrap_or_else(|| panic!("the end of Job::new's {what}")).1;
            format!("{head}{new}{rest}")
        })
    }

    /// Makes `addr` the source's bootstrap servers (another listener of the broker).
    pub fn with_bootstrap(self, addr: &str) -> Job {
        let servers = format!("[source]\nbootstrap_servers = \"{addr}\"\n");
        self.replace_section("source", "[source]\nbootstrap_servers = ", "\n", &servers)
    }

    /// Drops the `starting_offsets = "earliest"` that [`Job::new`] puts first, for a test that sets its own.
    pub fn without_default_starting_offsets(self) -> Job {
        self.edit(|text| text.replacen("starting_offsets = \"earliest\"\n", "", 1))
    }

    /// Sets `model.batch_size` and `model.sort_window` (16 and 16 from [`Job::new`], so that a
    /// task of more than 16 records is embedded and written in several windows).
    pub fn with_batching(self, batch_size: usize, sort_window: usize) -> Job {
        let batching = format!("batch_size = {batch_size}\nsort_window = {sort_window}\n");
        self.edit(|text| text.replacen("batch_size = 16\nsort_window = 16\n", &batching, 1))
    }

    /// Adds `keys` (TOML lines) at the end of `[model]`, in the job's file as it is now (the
    /// same checkpoint: a resumed query with another model).
    pub fn add_model_keys(&self, keys: &str) {
        let text = std::fs::read_to_string(&self.path).unwrap();
        let edited = text.replacen("\n[sink]\n", &format!("{keys}\n\n[sink]\n"), 1);
        assert_ne!(edited, text, "[sink] after [model]");
        std::fs::write(&self.path, edited).unwrap();
    }

    /// Sets `[model]`'s batching and further keys to `keys` (TOML lines) instead of
    /// [`Job::new`]'s `batch_size = 16` and `sort_window = 16`.
    pub fn edit_model(self, keys: &str) -> Job {
        self.edit(|text| {
            text.replacen(
                "batch_size = 16
sort_window = 16
",
                &format!(
                    "{keys}
"
                ),
                1,
            )
        })
    }

    /// Replaces [`Job::new`]'s `[model]` with `models`: `[input]` and `[[models]]` sections.
    pub fn with_models(self, models: &str) -> Job {
        self.replace_section("model", "[model]\n", "\n\n", &format!("{models}\n\n"))
    }

    /// Makes the sink a Parquet table at `table` (with the `value` column) instead of a topic.
    pub fn with_parquet_sink(self, table: &Path) -> Job {
        let sink = format!("[sink]\nkind = \"parquet\"\npath = \"{}\"\ncolumns = [\"value\"]\n", table.display());
        // From the kind through the topic line.
        self.replace_section("sink", "[sink]\nkind = \"kafka\"\n", "\n", &sink)
    }

    /// Makes the sink a Delta table at `table` (with the `value` column), `keys` (TOML lines)
    /// added to `[sink]`.
    pub fn with_delta_sink(self, table: &Path, keys: &str) -> Job {
        // `columns = ["value"]` unless `keys` names its own.
        let columns = if keys.contains("columns =") { "" } else { "columns = [\"value\"]\n" };
        let sink = format!("[sink]\nkind = \"delta\"\npath = \"{}\"\n{columns}{keys}\n", table.display());
        self.replace_section("sink", "[sink]\nkind = \"kafka\"\n", "\n", &sink)
    }

    /// Makes the sink a pgvector table at `url` (no password in it) with `keys` (TOML lines:
    /// `table`, `mode`, ...), the password read from the file `pg.pass` beside the spec (a
    /// relative path, as a user would write it) holding `password`.
    pub fn with_pgvector_sink(self, url: &str, password: &str, keys: &str) -> Job {
        std::fs::write(self.dir.path().join("pg.pass"), format!("{password}\n")).unwrap();
        let sink =
            format!("[sink]\nkind = \"pgvector\"\nurl = \"{url}\"\npassword = {{ file = \"pg.pass\" }}\n{keys}\n");
        self.replace_section("sink", "[sink]\nkind = \"kafka\"\n", "\n", &sink)
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

/// A continuous query running in the background, its stderr collected line by line.
pub struct Running {
    child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Running {
    pub fn start(job: &Job, executors: u32) -> Running {
        Self::start_with_env(job, executors, &[])
    }

    /// As [`Running::start`], with `env` added to the driver's environment.
    pub fn start_with_env(job: &Job, executors: u32, env: &[(&str, &str)]) -> Running {
        let mut cmd = embedstream();
        cmd.envs(env.iter().copied());
        // Its own process group, as a shell gives a foreground job: a terminal's Ctrl-C is a
        // SIGINT to the group ([`Running::interrupt_group`]).
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
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

    /// The driver's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// The driver's metrics address (its page's too), from its "query starting" line.
    pub fn metrics_address(&self) -> Option<String> {
        let log = self.log();
        let line = log.lines().find(|l| l.contains("query starting"))?;
        Some(line.split("metrics=").nth(1)?.split_whitespace().next()?.to_string())
    }

    /// A JSON endpoint of the driver's page (a query without a configured token).
    pub fn page_json(&self, path: &str) -> serde_json::Value {
        let address = self.metrics_address().expect("the driver's metrics address in its log");
        let (status, body) = http_get(&address, path);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
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

    /// SIGKILL to the driver and then to each of its executors, as a node that loses them all
    /// at once would; waits for the driver to be gone. (Local executors have process groups of
    /// their own, and their model daemons and workers die with them by `PR_SET_PDEATHSIG`.)
    pub fn kill_all(mut self) {
        let executors = self.executor_pids();
        kill_hard(self.child.id());
        for pid in executors {
            // One may have ended already (a retried task's executor): only a live one is signalled.
            if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            }
        }
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status and the summary printed on stdout.
    pub fn stop(self) -> serde_json::Value {
        let pid = self.child.id().to_string();
        self.signal_and_wait(&["-TERM", &pid])
    }

    /// SIGINT to the query's whole process group, as Ctrl-C in a terminal sends it, then the
    /// exit status and the summary printed on stdout.
    pub fn interrupt_group(self) -> serde_json::Value {
        let group = format!("-{}", self.child.id());
        self.signal_and_wait(&["-INT", "--", &group])
    }

    fn signal_and_wait(self, kill_args: &[&str]) -> serde_json::Value {
        Command::new("kill").args(kill_args).status().unwrap();
        self.wait_for_exit(&format!("{kill_args:?}"))
    }

    /// Waits (bounded) for the query to exit 0 after `why` stopped it: its summary on stdout.
    pub fn wait_for_exit(mut self, why: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "{why} did not stop the query:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "a stop by {why} exits 0, got {status}:\n{}", self.log());
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

/// `run --local 1` of an `available_now` job to its end: whether it succeeded, its stdout and
/// its log.
pub fn run_local(job: &Job, timeout: Duration) -> (bool, Vec<u8>, String) {
    let mut run = embedstream();
    run.args(["run", job.path.to_str().unwrap(), "--local", "1"]);
    let out = run_to_end(run, timeout);
    (out.status.success(), out.stdout, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// As [`run_local`] for a run that must succeed: its summary and its log.
pub fn run_logged(job: &Job) -> (serde_json::Value, String) {
    let (ok, stdout, stderr) = run_local(job, Duration::from_secs(180));
    assert!(ok, "{stderr}");
    (serde_json::from_slice(&stdout).unwrap(), stderr)
}

/// As [`run_local`] for a run that must fail: its log.
pub fn run_refused(job: &Job) -> String {
    let (ok, _, stderr) = run_local(job, Duration::from_secs(120));
    assert!(!ok, "{stderr}");
    stderr
}

/// Resumes `job` with a shorter `max_seq_len` (another model version than `version_a`, which
/// its table holds) and asserts that the query is refused before its first batch, naming the
/// table's `model_version` column and both versions.
pub fn assert_another_version_is_refused(job: &Job, version_a: &str) {
    job.add_model_keys("max_seq_len = 64");
    let version_b = validated_version(job);
    assert_ne!(version_a, version_b);
    let refused = run_refused(job);
    assert!(
        refused.contains("column `model_version` holds vectors of model `")
            && refused.contains(&format!("version {version_a}; this query's is {version_b}")),
        "{refused}"
    );
}

/// `embedstream validate --json`'s version of the one model of `job`.
pub fn validated_version(job: &Job) -> String {
    let out = embedstream().args(["validate", job.path.to_str().unwrap(), "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let versions: std::collections::BTreeMap<String, String> =
        serde_json::from_value(shown["model_versions"].clone()).unwrap();
    assert_eq!(versions.len(), 1, "{versions:?}");
    versions.into_values().next().unwrap()
}

/// The progress records of a query's checkpoint, oldest first.
pub fn progress_records(job: &Job) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(job.checkpoint().join("progress.jsonl")).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// A plain HTTP/1.1 GET of `path` at `address`: the status code and the body (the answer's
/// Content-Length bytes; the connection closes after it).
pub fn http_get(address: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, body.to_string())
}

/// `kill -KILL pid`, as a node losing the process would.
pub fn kill_hard(pid: u32) {
    let killed = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    assert!(killed.success(), "kill -KILL {pid}: {killed}");
}

/// The pid among `pids` of the local executor started as `--executor-id id`.
pub fn pid_of_executor(id: &str, pids: &[u32]) -> u32 {
    *pids
        .iter()
        .find(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            args.windows(2).any(|w| w[0] == b"--executor-id" && w[1] == id.as_bytes())
        })
        .unwrap_or_else(|| panic!("no executor {id} among {pids:?}"))
}
