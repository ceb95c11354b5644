//! A packet capture on the loopback interface (`tests/fixtures/loopback_capture.py`, a raw
//! AF_PACKET socket: the test must run as root, as the suite does in CI): which TCP flows
//! carried a secret, and how many bytes each carried. Stopped on [`Capture::finish`] or drop.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use super::cache;

/// One direction of a TCP flow on loopback.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Flow {
    /// "IP:PORT"
    pub src: String,
    pub dst: String,
    /// Payload bytes seen.
    pub bytes: u64,
    /// The secret occurs in them.
    pub found: bool,
    /// Its first payload is a TLS handshake record.
    pub tls: bool,
}

impl Flow {
    /// Either end is on `port`.
    pub fn touches(&self, port: u16) -> bool {
        let on = |end: &str| end.rsplit_once(':').is_some_and(|(_, p)| p == port.to_string());
        on(&self.src) || on(&self.dst)
    }
}

pub struct Capture {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Capture {
    /// Starts capturing every TCP segment on `lo`, looking for `secret`; returns once the
    /// socket is open.
    pub fn start(secret: &str) -> Capture {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/loopback_capture.py");
        let mut child = Command::new(cache().join("pyenv/bin/python"))
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the setup's Python");
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{secret}").unwrap();
        stdin.flush().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the loopback capture did not start (it needs root; its error is above)");
        Capture { child, stdin: Some(stdin), stdout }
    }

    /// Stops the capture: every flow it saw. Panics if the kernel dropped packets (what was
    /// not seen cannot show that a secret was absent).
    pub fn finish(mut self) -> Vec<Flow> {
        drop(self.stdin.take());
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let out: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert_eq!(out["drops"], 0, "the capture dropped packets: it proves nothing");
        serde_json::from_value(out["flows"].clone()).unwrap()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
