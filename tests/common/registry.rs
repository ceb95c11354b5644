//! A real Confluent-compatible Schema Registry for the schema'd-topic tests: Apicurio Registry
//! 3.0.9 (deploy/setup.sh's, from Maven Central) with in-memory storage on a free loopback port,
//! serving Confluent's API under `/apis/ccompat/v7`. [`Registry::pause`] and
//! [`Registry::resume`] (SIGSTOP, SIGCONT) make it a registry that does not answer and then
//! answers again with the same schemas. Killed when dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{cache, free_port};

pub struct Registry {
    child: Child,
    /// The Confluent-compatible base URL, `http://127.0.0.1:PORT/apis/ccompat/v7`.
    pub url: String,
    log: tempfile::NamedTempFile,
}

impl Registry {
    pub fn start() -> Registry {
        let dir = cache().join("registry");
        let jar = dir.join("apicurio-registry-app-3.0.9-runner.jar");
        assert!(jar.is_file(), "no Apicurio Registry at {}: run deploy/setup.sh", jar.display());
        let port = free_port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new("java")
            .args(["-Xmx384m", "-XX:TieredStopAtLevel=1", "-Dquarkus.http.host=127.0.0.1"])
            .arg(format!("-Dquarkus.http.port={port}"))
            .arg("-jar")
            .arg(&jar)
            .current_dir(&dir)
            .stdout(log.reopen().unwrap())
            .stderr(Stdio::from(log.reopen().unwrap()))
            .spawn()
            .expect("java");
        let mut registry = Registry { child, url: format!("http://127.0.0.1:{port}/apis/ccompat/v7"), log };
        let deadline = Instant::now() + Duration::from_secs(90);
        while registry.get("/subjects").0 != 200 {
            if let Some(status) = registry.child.try_wait().unwrap() {
                panic!("the registry exited ({status}):\n{}", registry.log());
            }
            assert!(Instant::now() < deadline, "the registry did not answer within 90 s:\n{}", registry.log());
            std::thread::sleep(Duration::from_millis(200));
        }
        registry
    }

    /// GET `path` under the Confluent API: the status (0 when nothing answered) and the body.
    pub fn get(&self, path: &str) -> (u16, String) {
        let address = self.url.trim_start_matches("http://").split('/').next().unwrap().to_string();
        let path = format!("/apis/ccompat/v7{path}");
        // Quarkus listens once the registry is ready: before that, nothing answers.
        if std::net::TcpStream::connect(&address).is_err() {
            return (0, String::new());
        }
        super::http_get(&address, &path)
    }

    /// The registry stops answering (its process is stopped; connections wait).
    pub fn pause(&self) {
        let ok = Command::new("kill").args(["-STOP", &self.child.id().to_string()]).status().unwrap();
        assert!(ok.success());
    }

    /// The registry answers again, with every schema it had.
    pub fn resume(&self) {
        let ok = Command::new("kill").args(["-CONT", &self.child.id().to_string()]).status().unwrap();
        assert!(ok.success());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.child.id().to_string()]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
