//! `embedstream-bench`: measures this machine with a job's broker and model. The command line
//! is [`embedstream_bench::Cli`]; what is measured is in `run.rs`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,librdkafka=warn".into()),
        )
        .init();
    let result = embedstream_bench::Cli::parse()
        .into_args()
        .map_err(anyhow::Error::msg)
        .and_then(embedstream_bench::run_blocking);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // As `embedstream` reports its errors: the chain, without a backtrace.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
