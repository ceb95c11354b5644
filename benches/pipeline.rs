//! embedstream against the limit and against what a team would write instead (issue 6): starts a
//! Kafka broker on loopback and runs the bench (the `embedstream-bench` crate, in this process)
//! on it against the `embedstream` binary, with generated product titles, mixed-length English
//! (Python's docstrings, deploy/demo/sample_texts.py) and the Python consumer baseline
//! (benches/baseline_consumer.py), and Spark Structured Streaming (benches/spark_baseline.py)
//! where `deploy/setup.sh --spark` installed it. See bench/src/run.rs for what is measured.
//!
//!     deploy/setup.sh --spark && cargo bench --bench pipeline
//!
//! EMBEDSTREAM_BENCH_TEXTS sets the number of texts per set (default 2000); arguments after `--`
//! go to `embedstream-bench` (`-- --keep --latency-seconds 10`). The table goes to
//! stdout; target/embedstream-bench/{bench.json, bench.png} hold the report and the chart.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::Command;

use clap::Parser;

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

    let mut args: Vec<std::ffi::OsString> = vec!["embedstream-bench".into(), job.path.clone().into()];
    args.extend(["--count".into(), n.to_string().into(), "--mixed".into(), mixed.into()]);
    args.extend(["--python".into(), python.clone().into(), "--baseline".into()]);
    args.push(root.join("benches/baseline_consumer.py").into());
    let spark_jars = common::cache().join("spark/libs");
    let has_pyspark = Command::new(&python).args(["-c", "import pyspark, pandas"]).status().is_ok_and(|s| s.success());
    if spark_jars.is_dir() && has_pyspark {
        args.extend(["--spark".into(), root.join("benches/spark_baseline.py").into()]);
        args.extend(["--spark-jars".into(), spark_jars.into()]);
    } else {
        eprintln!("pipeline bench: no Spark baseline (deploy/setup.sh --spark installs it)");
    }
    args.extend(["--out".into(), root.join("target/embedstream-bench").into()]);
    args.extend(["--embedstream".into(), env!("CARGO_BIN_EXE_embedstream").into()]);
    // `cargo bench --bench pipeline -- --keep`, say; cargo itself adds `--bench`.
    args.extend(std::env::args_os().skip(1).filter(|a| a != "--bench"));
    let cli = embedstream_bench::Cli::try_parse_from(args).unwrap_or_else(|e| e.exit());
    embedstream_bench::run_blocking(cli.into_args().expect("the embedstream binary")).expect("embedstream-bench");
}
