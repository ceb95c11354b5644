//! `embedstream switch`: readers of a pgvector view moved to a query's table in one transaction,
//! once a re-embedding query has caught up (docs/records-and-models.md, "Model versions and re-embedding").

use std::path::Path;

use anyhow::{bail, Result};
use embedstream_core::spec::SinkKind;
use embedstream_core::JobSpec;

/// Makes `view` read the table of the query `job` writes, dropping `drop` in the same
/// transaction when given; prints what it did.
pub async fn switch(job: &Path, conf: &[String], view: &str, drop: Option<&str>) -> Result<()> {
    let spec = JobSpec::from_file_with(job, conf)?;
    let SinkKind::Pgvector(sink) = &spec.sink.kind else {
        bail!("sink.kind: `switch` moves a pgvector view; for Kafka, move consumers to the new topic (docs/records-and-models.md)")
    };
    let secrets = spec.read_secrets()?;
    let password = spec.sink_password_value(&secrets)?;
    let switched = embedstream_sinks::pgvector::switch::switch_view(sink, password, view, drop).await?;
    let before = switched.before.map_or("nothing (a new view)".to_string(), |t| format!("`{t}`"));
    out!("view `{view}` reads `{}` (it read {before})", sink.table);
    if let Some(old) = drop {
        out!("dropped `{old}`");
    }
    Ok(())
}
