//! The tests' image host (tests/fixtures/image_server.py) on a free loopback port: a directory's
//! files, slow ones, errors, redirects, oversized and endless bodies. Stopped when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::cache;

pub struct ImageServer {
    child: Child,
    pub port: u16,
}

impl ImageServer {
    pub fn start(dir: &Path) -> ImageServer {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/image_server.py");
        let mut child = Command::new(cache().join("pyenv/bin/python"))
            .args([script, dir.to_str().unwrap()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the setup's Python (deploy/setup.sh --python)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().strip_prefix("port ").and_then(|p| p.parse().ok()).expect("`port N` from the server");
        ImageServer { child, port }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The body of a GET of `path` (the server's counters), read with a plain socket.
    pub fn ask(&self, path: &str) -> String {
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(tcp, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).unwrap();
        answer.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default()
    }

    /// How many requests paths ending in `key` have had.
    pub fn count(&self, key: &str) -> usize {
        self.ask(&format!("/count/{key}")).trim().parse().unwrap()
    }
}

impl Drop for ImageServer {
    fn drop(&mut self) {
        drop(self.child.stdin.take()); // the server stops when its stdin closes
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
