//! A real Prometheus server (Debian's binary) on a free loopback port, scraping the target list
//! a driver keeps, and its HTTP API.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A Prometheus server on a free loopback port, killed on drop.
pub struct Prometheus {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes the targets in `targets_json` every second and evaluates `rules` every second.
    pub fn start(targets_json: &Path, rules: &str) -> Prometheus {
        Self::start_with(targets_json, rules, "")
    }

    /// As [`Prometheus::start`], with `scrape` (YAML lines, indented for the scrape config) added
    /// to the scrape config: its `tls_config`, say.
    pub fn start_with(targets_json: &Path, rules: &str, scrape: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("alerts.yml"), rules).unwrap();
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [alerts.yml]\nscrape_configs:\n  \
             - job_name: embedstream\n    file_sd_configs: [{{files: ['{}'], refresh_interval: 1s}}]\n{scrape}",
            targets_json.display()
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus (Debian package prometheus; deploy/setup.sh installs it)");
        let p = Prometheus { child, addr, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while p.get("/-/ready").is_none_or(|(status, _)| status != 200) {
            assert!(Instant::now() < deadline, "prometheus not ready on {}", p.addr);
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    /// A GET over plain HTTP/1.0: (status, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(&self.addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr).ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        let status = resp.split_whitespace().nth(1)?.parse().ok()?;
        let body = resp.split_once("\r\n\r\n")?.1.to_string();
        Some((status, body))
    }

    /// The result series of an instant PromQL query.
    pub fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let encoded: String = expr
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        let (status, body) = self.get(&format!("/api/v1/query?query={encoded}")).expect("prometheus answers");
        assert_eq!(status, 200, "{expr}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    pub fn firing(&self) -> Vec<serde_json::Value> {
        let (_, body) = self.get("/api/v1/alerts").expect("prometheus answers");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["data"]["alerts"].as_array().unwrap().iter().filter(|a| a["state"] == "firing").cloned().collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
