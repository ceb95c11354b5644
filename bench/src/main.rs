//! `embedstream-bench`: measures this machine with a job's broker and model. The command line
//! is [`embedstream_bench::Cli`]; what is measured is in `run.rs`.

use anyhow::Result;
use clap::Parser;

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,librdkafka=warn".into()),
        )
        .init();
    let args = embedstream_bench::Cli::parse().into_args().map_err(anyhow::Error::msg)?;
    embedstream_bench::run_blocking(args)
}
