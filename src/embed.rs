//! `embedstream embed --flight ADDR`: texts from standard input, one per line, embedded by an
//! executor's Arrow Flight `DoExchange`; prints one JSON line per text.

use std::io::{BufRead, Write};
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow_array::{Array, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::FlightClient;
use arrow_schema::{DataType, Field, Schema};
use embedstream_proto::serve::Caller;
use futures::TryStreamExt;

pub struct EmbedArgs {
    /// host:port or http://host:port.
    pub flight: String,
    /// Texts per DoExchange call.
    pub batch_rows: usize,
    /// The cluster token and the TLS to call with.
    pub caller: Caller,
}

/// A local query's Flight address (the one given, or its first executor's in
/// `<checkpoint>/monitoring/targets.json`) and how to call it (its token, as admin commands find
/// it: the flags, the spec's, or the one the query made for itself).
pub fn of_local_query(
    job: &std::path::Path,
    flight: Option<String>,
    tls: &embedstream_core::tls::TlsFiles,
) -> Result<(String, Caller)> {
    let arg = job.to_string_lossy();
    let (_, caller) = crate::client::local_query(&arg, None, tls)?
        .with_context(|| format!("{}: no such job spec or checkpoint", job.display()))?;
    if let Some(flight) = flight {
        return Ok((flight, caller));
    }
    let checkpoint = match job.is_dir() {
        true => job.to_path_buf(),
        false => embedstream_core::JobSpec::from_file(job)?.checkpoint_location,
    };
    let targets = checkpoint.join("monitoring/targets.json");
    let listed: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&targets).with_context(|| format!("{}: the query lists no executor yet", targets.display()))?,
    )?;
    let flight = (listed.as_array().into_iter().flatten())
        .find_map(|t| t["labels"]["flight_address"].as_str())
        .with_context(|| format!("{}: no live executor", targets.display()))?;
    Ok((flight.to_string(), caller))
}

/// Connects to an executor's Flight service, over the caller's TLS and with its token on every
/// call.
pub async fn connect(address: &str, caller: &Caller) -> Result<FlightClient> {
    let url = caller.tls.url(address);
    let channel = caller
        .endpoint(address)
        .with_context(|| format!("--flight {address}: not an address"))?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    let mut client = FlightClient::new(channel);
    if let Some(value) = caller.token.header_value() {
        client.add_header("authorization", &value)?;
    }
    Ok(client)
}

/// Sends `texts` in one DoExchange call; returns one vector per text, in order.
pub async fn embed_texts(client: &mut FlightClient, texts: Vec<String>) -> Result<Vec<Vec<f32>>> {
    let schema = Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, false)]));
    let batch = RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(texts))])?;
    let request = FlightDataEncoderBuilder::new().build(futures::stream::iter([Ok(batch)]));
    let batches: Vec<RecordBatch> = client.do_exchange(request).await?.try_collect().await?;
    let mut vectors = Vec::new();
    for b in &batches {
        let column = b.column_by_name("embedding").context("the answer has no embedding column")?;
        let list =
            column.as_any().downcast_ref::<FixedSizeListArray>().context("embedding is not a fixed-size list")?;
        let dim = list.value_length() as usize;
        let values = list.values().as_any().downcast_ref::<Float32Array>().context("embedding is not float32")?;
        let offset = list.offset() * dim;
        for row in 0..list.len() {
            vectors.push(values.values()[offset + row * dim..offset + (row + 1) * dim].to_vec());
        }
    }
    Ok(vectors)
}

/// A call refused for its token, said with where the token comes from.
fn refused_token(e: anyhow::Error) -> anyhow::Error {
    let code = |c: &(dyn std::error::Error + 'static)| match c.downcast_ref::<arrow_flight::error::FlightError>() {
        Some(arrow_flight::error::FlightError::Tonic(s)) => Some(s.code()),
        _ => c.downcast_ref::<tonic::Status>().map(tonic::Status::code),
    };
    let unauthenticated = e.chain().any(|c| code(c) == Some(tonic::Code::Unauthenticated));
    match unauthenticated {
        false => e,
        true => e.context(
            "the executor refused the token: give the query's job spec (`embedstream embed JOB.toml`), which finds \
             its token (a local query given none made its own, in the file its <checkpoint>/driver.json names), or \
             set EMBEDSTREAM_TOKEN to the cluster's",
        ),
    }
}

/// Reads standard input, skipping blank lines, and prints `{"text": ..., "embedding": [...]}` lines.
pub async fn run(args: EmbedArgs) -> Result<()> {
    let mut client = connect(&args.flight, &args.caller).await?;
    let mut lines = std::io::stdin().lock().lines();
    let mut out = std::io::stdout().lock();
    let mut printed = 0usize;
    loop {
        let mut texts = Vec::with_capacity(args.batch_rows);
        for line in lines.by_ref() {
            let line = line.context("cannot read standard input")?;
            if !line.trim().is_empty() {
                texts.push(line);
                if texts.len() == args.batch_rows {
                    break;
                }
            }
        }
        if texts.is_empty() {
            break;
        }
        let vectors = embed_texts(&mut client, texts.clone()).await.map_err(refused_token).with_context(|| {
            format!("DoExchange on {} (texts {}..{})", args.flight, printed + 1, printed + texts.len())
        })?;
        anyhow::ensure!(vectors.len() == texts.len(), "{} texts sent, {} vectors back", texts.len(), vectors.len());
        for (text, vector) in texts.iter().zip(vectors) {
            let line = serde_json::json!({ "text": text, "embedding": vector });
            writeln!(out, "{line}")?;
        }
        printed += texts.len();
    }
    out.flush()?;
    tracing::info!(texts = printed, "embedded");
    Ok(())
}
