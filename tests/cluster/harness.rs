//! The cluster tests' harness: the resource manager, node agents and their processes, the
//! RM's client, and what the tests read from it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use embedstream_core::auth::ClusterToken;
use embedstream_core::tls::{Naming, Role, Tls, TlsFiles};
use embedstream_proto::pb::resource_manager_client::ResourceManagerClient;
use embedstream_proto::pb::{
    ApplicationReport, ApplicationState, ContainerReport, ContainerState, ListApplicationsRequest, ListNodesRequest,
    NodeReport,
};

pub const TOKEN: &str = "cluster-test-token";

/// A process of the cluster, its stderr collected; killed (with its containers) when dropped.
pub struct Proc {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn start(args: &[&str]) -> Proc {
        Proc::start_with(args, &[])
    }

    /// `embedstream ARGS` with `env` added.
    pub fn start_with(args: &[&str], env: &[(&str, &Path)]) -> Proc {
        let mut cmd = embedstream();
        cmd.args(args).env("EMBEDSTREAM_TOKEN", TOKEN).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.envs(env.iter().copied());
        let mut child = cmd.spawn().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let sink = lines.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stream).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
        }
        Proc { child, lines }
    }

    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself.
    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "did not exit within {timeout:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Processes whose command line holds `needle` (NUL-separated arguments joined by spaces).
pub fn pids_with(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).replace('\0', " ").contains(needle))
        })
        .collect()
}

pub fn kill9(pid: u32) {
    std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
}

/// A resource manager and two node agents, 4 vcores and 12 GiB each.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub rm_port: u16,
    pub rm: Proc,
    pub nodes: Vec<Proc>,
    pub runtime: tokio::runtime::Runtime,
    /// The `--tls-*` flags every process and command of this cluster gets (none: plaintext).
    pub tls: TlsFiles,
}

impl Cluster {
    pub fn start() -> Cluster {
        Cluster::start_with_tls(TlsFiles::default())
    }

    /// A cluster whose RM, node agents (and so drivers and executors), and the test's commands
    /// and clients all use `tls`.
    pub fn start_with_tls(tls: TlsFiles) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let rm_port = free_port();
        let mut c = Cluster {
            rm: Cluster::start_rm(dir.path(), rm_port, &tls),
            dir,
            rm_port,
            nodes: Vec::new(),
            runtime: tokio::runtime::Runtime::new().unwrap(),
            tls,
        };
        let tls_flags = c.tls.flags();
        for host in ["127.0.0.2", "127.0.0.3"] {
            let work = c.dir.path().join(host);
            let args = [
                "node-agent",
                "--master",
                &c.master(),
                "--listen",
                &format!("{host}:0"),
                "--vcores",
                "4",
                "--memory",
                "12g",
                "--work-dir",
                work.to_str().unwrap(),
            ];
            c.nodes.push(Proc::start(&[&args[..], &tls_flags.iter().map(String::as_str).collect::<Vec<_>>()].concat()));
        }
        c.wait_for("two nodes", |c| c.nodes().len() == 2);
        c
    }

    pub fn start_rm(dir: &Path, port: u16, tls: &TlsFiles) -> Proc {
        let state = dir.join("rm-state.json");
        let tls_flags = tls.flags();
        let args = [
            "resource-manager",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--state",
            state.to_str().unwrap(),
            "--node-timeout",
            "2s",
            "--web-listen",
            "127.0.0.1:0",
        ];
        Proc::start(&[&args[..], &tls_flags.iter().map(String::as_str).collect::<Vec<_>>()].concat())
    }

    /// The RM's page, from its "resource manager listening" line.
    pub fn page_url(&self) -> String {
        let log = self.rm.log();
        let line = log.lines().find(|l| l.contains("resource manager listening")).expect("the RM's listening line");
        line.split("page=").nth(1).and_then(|s| s.split_whitespace().next()).expect("page=").to_string()
    }

    pub fn rm_address(&self) -> String {
        format!("127.0.0.1:{}", self.rm_port)
    }

    /// This cluster's container processes (their working directory is under its work
    /// directories) whose command line holds `needle`; other tests' clusters may use the same ids.
    pub fn pids_with(&self, needle: &str) -> Vec<u32> {
        pids_with(needle)
            .into_iter()
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(self.dir.path()))
            })
            .collect()
    }

    pub fn master(&self) -> String {
        format!("rm://{}", self.rm_address())
    }

    pub fn client(
        &self,
        token: Option<&str>,
    ) -> ResourceManagerClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, ClusterToken>>
    {
        let _guard = self.runtime.enter();
        let channel =
            embedstream_proto::serve::endpoint(&self.rm_address(), &self.client_tls()).unwrap().connect_lazy();
        ResourceManagerClient::with_interceptor(channel, token.map(ClusterToken::new).unwrap_or_default())
    }

    /// The TLS of the test's own clients: the cluster's files.
    pub fn client_tls(&self) -> Tls {
        self.tls.load(Role::Client, Naming::Flags).unwrap()
    }

    pub fn nodes(&self) -> Vec<NodeReport> {
        let mut client = self.client(Some(TOKEN));
        self.runtime.block_on(client.list_nodes(ListNodesRequest {})).map(|r| r.into_inner().nodes).unwrap_or_default()
    }

    pub fn app(&self, id: &str) -> Option<ApplicationReport> {
        let mut client = self.client(Some(TOKEN));
        let apps = self.runtime.block_on(client.list_applications(ListApplicationsRequest {})).ok()?.into_inner();
        apps.applications.into_iter().find(|a| a.app_id == id)
    }

    pub fn wait_for(&self, what: &str, mut cond: impl FnMut(&Cluster) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !cond(self) {
            assert!(
                Instant::now() < deadline,
                "no {what} within 120 s\nRM:\n{}\nnodes: {:?}\ncontainer logs:\n{}",
                self.rm.log(),
                self.nodes(),
                self.container_logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every container's stderr, for failure messages.
    pub fn container_logs(&self) -> String {
        let mut out = String::new();
        for entry in walk(self.dir.path()) {
            if entry.file_name().is_some_and(|n| n == "stderr") {
                let text = std::fs::read_to_string(&entry).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                out += &format!("== {}\n{}\n", entry.display(), tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            }
        }
        out
    }

    /// Where this cluster's commands keep what `submit` saved (the applications' secrets):
    /// their `XDG_CONFIG_HOME`.
    pub fn config_home(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    /// The secret `submit` kept for `app_id`.
    pub fn app_secret(&self, app_id: &str) -> String {
        let rm = self.rm_address().replace(':', "_");
        let path = self.config_home().join("embedstream/applications").join(rm).join(app_id);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).trim().to_string()
    }

    /// `submit JOB --wait`, running.
    pub fn submit_waiting(&self, job: &Job) -> Proc {
        let args = ["submit", job.path.to_str().unwrap(), "--master", &self.master(), "--wait"];
        let tls = self.tls.flags();
        Proc::start_with(
            &[&args[..], &tls.iter().map(String::as_str).collect::<Vec<_>>()].concat(),
            &[("XDG_CONFIG_HOME", &self.config_home())],
        )
    }

    pub fn submit(&self, job: &Job) -> String {
        let mut cmd = embedstream();
        cmd.args(["submit", job.path.to_str().unwrap(), "--master", &self.master()])
            .args(self.tls.flags())
            .env("EMBEDSTREAM_TOKEN", TOKEN)
            .env("XDG_CONFIG_HOME", self.config_home());
        let out = run_to_end(cmd, Duration::from_secs(30));
        assert!(out.status.success(), "submit: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub fn admin(&self, args: &[&str]) -> String {
        let mut cmd = embedstream();
        cmd.args(args)
            .args(["--master", &self.master()])
            .args(self.tls.flags())
            .env("EMBEDSTREAM_TOKEN", TOKEN)
            .env("XDG_CONFIG_HOME", self.config_home());
        let out = run_to_end(cmd, Duration::from_secs(30));
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Containers outlive a killed node agent by design: end every process started under
        // this cluster's work directories.
        for n in &mut self.nodes {
            n.kill();
        }
        // Those naming the directory (the RM's state file), and the containers working in it.
        for pid in pids_with(self.dir.path().to_str().unwrap()).into_iter().chain(self.pids_with("")) {
            kill9(pid);
        }
    }
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

pub fn executors(app: &ApplicationReport, state: ContainerState) -> Vec<&ContainerReport> {
    app.containers.iter().filter(|c| c.role == "executor" && c.state == state as i32).collect()
}

pub fn host(node_id: &str) -> &str {
    node_id.split(':').next().unwrap()
}

pub fn state(app: &ApplicationReport) -> ApplicationState {
    ApplicationState::try_from(app.state).unwrap()
}

/// A continuous query of 2 executors of 1 core and 3 GiB, 20 records a batch.
pub fn cluster_job(broker: &Broker, name: &str, topic: &str) -> Job {
    Job::new(
        broker,
        name,
        &format!("subscribe = [\"{topic}\"]\nmax_offsets_per_trigger = 20"),
        "processing_time = \"300ms\"",
        "\n[executors]\ncount = 2\ncores = 1\nmemory = \"3g\"",
    )
}

/// Every input (partition, offset) below `highs` has at least one output.
pub fn assert_every_input_embedded(broker: &Broker, topic: &str, highs: &[i64]) {
    let outputs: BTreeSet<(i32, i64)> = broker.read_all(topic, highs.len() as i32).iter().map(|r| r.origin()).collect();
    for (p, &high) in highs.iter().enumerate() {
        for o in 0..high {
            assert!(outputs.contains(&(p as i32, o)), "input {p}-{o} has no output");
        }
    }
}
