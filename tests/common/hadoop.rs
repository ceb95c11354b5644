//! Hadoop's own mini cluster for the tests: a real ResourceManager, two NodeManagers that launch
//! real processes and enforce container memory, a NameNode and a DataNode, in one JVM on
//! loopback (`deploy/hadoop/src/io/embedstream/yarn/MiniCluster.java`, with the jars
//! deploy/setup.sh installed). Stopped on drop: its standard input closes and it shuts down.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// Java 17 keeps JDK internals closed that Hadoop's servers (Guice, the NameNode) open.
const ADD_OPENS: &[&str] = &[
    "java.base/java.lang",
    "java.base/java.lang.reflect",
    "java.base/java.util",
    "java.base/java.util.concurrent",
    "java.base/java.io",
    "java.base/java.net",
    "java.base/java.nio",
    "java.base/sun.nio.ch",
];

pub struct HadoopCluster {
    child: Child,
    /// Held open: the mini cluster runs until it closes.
    stdin: Option<ChildStdin>,
    pub dir: tempfile::TempDir,
    /// What HADOOP_CONF_DIR points clients at.
    pub conf_dir: PathBuf,
    /// hdfs://localhost:PORT
    pub hdfs: String,
    /// The ResourceManager's client address.
    pub rm: String,
    /// The DataNode's data transfer port (block reads and writes).
    pub datanode_port: u16,
    /// On a Kerberized cluster: the realm's krb5.conf and the test user's ticket cache.
    pub kerberos: Option<Kerberos>,
}

/// A Kerberized cluster's realm, as its clients need it.
pub struct Kerberos {
    pub krb5_conf: PathBuf,
    /// The test user's (`USER` below) ticket cache, from its keytab.
    pub ccache: PathBuf,
    pub user_keytab: PathBuf,
}

/// The test user's principal on a Kerberized cluster (`USER@REALM`).
pub const USER: &str = "alice";

pub fn hadoop_libs() -> PathBuf {
    let libs = cache().join("hadoop/libs");
    assert!(libs.is_dir(), "{} is missing: run deploy/setup.sh", libs.display());
    libs
}

pub fn yarn_jar() -> PathBuf {
    cache().join("hadoop/embedstream-yarn.jar")
}

impl HadoopCluster {
    pub fn start() -> HadoopCluster {
        HadoopCluster::start_with(None)
    }

    /// A Kerberized cluster on `kdc`'s realm: every server logs in as `hadoop/localhost`, and
    /// [`USER`] has a keytab, a ticket cache and a home directory.
    pub fn start_secure(kdc: &super::kdc::Kdc) -> HadoopCluster {
        HadoopCluster::start_with(Some(kdc))
    }

    fn start_with(kdc: Option<&super::kdc::Kdc>) -> HadoopCluster {
        let dir = tempfile::tempdir().unwrap();
        let libs = format!("{}/*", hadoop_libs().display());
        let log = std::fs::File::create(dir.path().join("cluster.log")).unwrap();
        let mut java = Command::new("java");
        for o in ADD_OPENS {
            java.arg("--add-opens").arg(format!("{o}=ALL-UNNAMED"));
        }
        let mut kerberos = None;
        let mut secure_args = Vec::new();
        if let Some(kdc) = kdc {
            let service = kdc.add_principal("hadoop/localhost");
            let http = kdc.add_principal("HTTP/localhost");
            let user_keytab = kdc.add_principal(USER);
            let ccache = dir.path().join("alice.ccache");
            kdc.kinit(USER, &user_keytab, &ccache);
            java.arg(format!("-Djava.security.krb5.conf={}", kdc.krb5_conf().display()));
            secure_args = vec![
                format!("hadoop/localhost@{}", super::kdc::REALM),
                service.display().to_string(),
                http.display().to_string(),
                kdc.krb5_conf().display().to_string(),
                USER.to_string(),
            ];
            kerberos = Some(Kerberos { krb5_conf: kdc.krb5_conf(), ccache, user_keytab });
        }
        let mut child = java
            .arg("-Xmx1g")
            .arg("-cp")
            .arg(format!("{libs}:{}", yarn_jar().display()))
            .arg("io.embedstream.yarn.MiniCluster")
            .arg(dir.path())
            .arg(&libs)
            .args(&secure_args)
            // MiniYARNCluster keeps its NodeManagers' directories under ./target.
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let ready = dir.path().join("ready");
        let deadline = Instant::now() + Duration::from_secs(180);
        while !ready.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the Hadoop mini cluster exited with {status}: {}", tail(&dir.path().join("cluster.log")));
            }
            assert!(Instant::now() < deadline, "the Hadoop mini cluster did not start within 180 s");
            std::thread::sleep(Duration::from_millis(200));
        }
        let ready: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
        let conf_dir = dir.path().join("conf");
        HadoopCluster {
            child,
            stdin,
            hdfs: ready["hdfs"].as_str().unwrap().trim_end_matches('/').to_string(),
            rm: ready["rm"].as_str().unwrap().to_string(),
            datanode_port: ready["datanode_port"].as_u64().unwrap() as u16,
            kerberos,
            dir,
            conf_dir,
        }
    }

    /// `embedstream` with HADOOP_CONF_DIR set to this cluster's configuration (and, on a
    /// Kerberized one, KRB5_CONFIG to its realm's, with no ticket: the test gives one or not).
    pub fn embedstream(&self) -> Command {
        let mut c = embedstream();
        c.env("HADOOP_CONF_DIR", &self.conf_dir);
        if let Some(k) = &self.kerberos {
            c.env("KRB5_CONFIG", &k.krb5_conf)
                .env("KRB5CCNAME", format!("FILE:{}", self.dir.path().join("no-ticket").display()));
        }
        c
    }

    /// `KRB5CCNAME` for the test user's ticket (a Kerberized cluster's, from `kinit`).
    pub fn ticket_cache(&self) -> String {
        let k = self.kerberos.as_ref().expect("a Kerberized cluster");
        format!("FILE:{}", k.ccache.display())
    }

    /// [`Self::embedstream`] run with the test user's ticket.
    pub fn embedstream_with_ticket(&self) -> Command {
        let mut c = self.embedstream();
        c.env("KRB5CCNAME", self.ticket_cache());
        c
    }

    /// `hdfs://localhost:PORT/<path>`
    pub fn url(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("{}/{}", self.hdfs, path.trim_start_matches('/')))
    }

    /// Hadoop's own YARN client (`deploy/hadoop/src/.../Client.java`) on this cluster.
    fn client(&self, args: &[&str]) -> String {
        let mut java = Command::new("java");
        if let Some(k) = &self.kerberos {
            java.arg(format!("-Djava.security.krb5.conf={}", k.krb5_conf.display()))
                .env("KRB5CCNAME", format!("FILE:{}", k.ccache.display()));
        }
        let out = java
            .arg("-cp")
            .arg(format!("{}:{}:{}/*", self.conf_dir.display(), yarn_jar().display(), hadoop_libs().display()))
            .arg("io.embedstream.yarn.Client")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// YARN's report of `app` (state, final_status, attempt, diagnostics, ...): what
    /// `yarn application -status` prints, from the same `YarnClient` call.
    pub fn report(&self, app: &str) -> HashMap<String, String> {
        self.client(&["report", app])
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// What `yarn application -kill` does: `YarnClient.killApplication`.
    pub fn kill(&self, app: &str) {
        self.client(&["kill", app]);
    }

    /// Waits until YARN says `app` has ended; its report then.
    pub fn wait_for_end(&self, app: &str, timeout: Duration) -> HashMap<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.report(app);
            if matches!(r["state"].as_str(), "FINISHED" | "FAILED" | "KILLED") {
                return r;
            }
            assert!(Instant::now() < deadline, "{app} did not end within {timeout:?}: {r:?}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The NodeManagers' log directories (MiniYARNCluster keeps them under ./target).
    fn nm_log_dirs(&self) -> Vec<(String, PathBuf)> {
        let mut found = Vec::new();
        let mut dirs = vec![(0, self.dir.path().join("target"))];
        while let Some((depth, dir)) = dirs.pop() {
            for e in std::fs::read_dir(&dir).into_iter().flatten().filter_map(Result::ok) {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.contains("logDir-nm") {
                    found.push((name, e.path()));
                } else if depth < 6 && e.path().is_dir() {
                    dirs.push((depth + 1, e.path()));
                }
            }
        }
        found
    }

    /// The containers of `app` by the NodeManager that ran them: (NodeManager, container).
    pub fn containers_of(&self, app: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (nm, dir) in self.nm_log_dirs() {
            // nm-0_0, nm-1_0: NodeManager 0 and 1, each with its log directory.
            let nm = nm.rsplit_once('_').map(|(n, _)| n.to_string()).unwrap_or(nm);
            for c in std::fs::read_dir(dir.join(app)).into_iter().flatten().filter_map(Result::ok) {
                out.push((nm.clone(), c.file_name().to_string_lossy().into_owned()));
            }
        }
        out.sort();
        out
    }

    /// Every container log file of `app` named `file` (stderr, driver.log), concatenated.
    pub fn logs(&self, app: &str, file: &str) -> String {
        let mut text = String::new();
        for (_, dir) in self.nm_log_dirs() {
            for c in std::fs::read_dir(dir.join(app)).into_iter().flatten().filter_map(Result::ok) {
                if let Ok(t) = std::fs::read_to_string(c.path().join(file)) {
                    text.push_str(&format!("==> {} <==\n{t}\n", c.path().display()));
                }
            }
        }
        text
    }

    pub fn log(&self) -> String {
        tail(&self.dir.path().join("cluster.log"))
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

impl Drop for HadoopCluster {
    fn drop(&mut self) {
        // Closing its standard input stops the cluster (and the containers on it).
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The application id a `submit --master yarn` printed.
pub fn app_id(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find(|l| l.starts_with("application_"))
        .unwrap_or_else(|| panic!("no application id: {stdout} {}", String::from_utf8_lossy(&out.stderr)))
        .to_string()
}

/// Processes whose command line contains every one of `words`: (pid, command line).
pub fn processes_with(words: &[&str]) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if words.iter().all(|w| cmdline.contains(w)) {
            out.push((pid, cmdline));
        }
    }
    out
}

/// The executor processes of YARN application `app` (their command lines name its containers).
pub fn executors_of(app: &str) -> Vec<(u32, String)> {
    processes_with(&["embedstream", " executor ", &app.replace("application_", "container_")])
}

/// The one running YARN driver (one application at a time in these tests); the master's
/// container ends with it, and YARN starts another attempt.
pub fn the_driver() -> (u32, String) {
    let drivers = processes_with(&["embedstream", "yarn-driver", "--job"]);
    assert_eq!(drivers.len(), 1, "one driver running: {drivers:?}");
    drivers[0].clone()
}
