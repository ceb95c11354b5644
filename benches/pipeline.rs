//! embedstream against the limit and against what a team would write instead (issue 6): starts a
//! Tansu broker on loopback and runs `embedstream bench` on it, with generated product titles,
//! mixed-length English (Python's docstrings, deploy/demo/sample_texts.py) and the Python
//! consumer baseline (benches/baseline_consumer.py). See src/bench.rs for what is measured.
//!
//!     deploy/setup.sh --python && cargo bench --bench pipeline
//!
//! EMBEDSTREAM_BENCH_TEXTS sets the number of texts per set (default 2000); arguments after `--`
//! go to `embedstream bench` (`-- --keep --latency-seconds 10`). The table goes to
//! stdout; target/embedstream-bench/{bench.json, bench.png} hold the report and the chart.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Broker, Job};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("EMBEDSTREAM_BENCH_TEXTS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = common::cache().join("pyenv/bin/python");
    assert!(python.is_file(), "{} is missing: run deploy/setup.sh --python", python.display());

    let broker = Broker::start();
    // The bench keeps this job's broker and model section, with the spec's default batching.
    let job =
        Job::new(&broker, "bench", "subscribe = [\"unused\"]", "available_now = true", "").with_batching(32, 1024);
    let mixed = job.path.with_file_name("mixed.txt");
    let texts = Command::new("python3")
        .arg("-I")
        .arg(root.join("deploy/demo/sample_texts.py"))
        .arg(n.to_string())
        .output()
        .expect("python3");
    assert!(texts.status.success(), "{}", String::from_utf8_lossy(&texts.stderr));
    std::fs::write(&mixed, texts.stdout).unwrap();

    let status = common::embedstream()
        .arg("bench")
        .arg(&job.path)
        .args(["--count", &n.to_string()])
        .arg("--mixed")
        .arg(&mixed)
        .arg("--python")
        .arg(&python)
        .arg("--baseline")
        .arg(root.join("benches/baseline_consumer.py"))
        .arg("--out")
        .arg(root.join("target/embedstream-bench"))
        // `cargo bench --bench pipeline -- --keep`, say; cargo itself adds `--bench`.
        .args(std::env::args().skip(1).filter(|a| a != "--bench"))
        .status()
        .expect("embedstream bench");
    assert!(status.success(), "embedstream bench failed");
}
