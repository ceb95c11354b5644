//! `embedstream switch`: readers moved from one version's table to another in one transaction
//! (issue 35, re-embedding without downtime). Readers query a view; the view is dropped and
//! made again over the new table, and the old table dropped when asked, inside one transaction:
//! PostgreSQL's DDL is transactional, so a reader's query sees the old view or the new one,
//! never a mix and never no view (it waits for the switch's lock for the moment it takes).

use embedstream_core::spec::sink::pgvector::is_table_name;
use embedstream_core::spec::{PgvectorSinkSpec, Secret};

use super::table::{quote, tombstones_of};
use super::Database;
use crate::SinkError;

/// What a switch did: the table the view read before (none when it is new).
pub struct Switched {
    pub before: Option<String>,
}

/// Makes `view` read `spec.table` (the query's) in one transaction, dropping `drop` (the old
/// version's table, with its tombstones) in the same transaction when given.
pub async fn switch_view(
    spec: &PgvectorSinkSpec,
    password: Option<&Secret>,
    view: &str,
    drop: Option<&str>,
) -> Result<Switched, SinkError> {
    let bad = |what: &str, name: &str| SinkError::Database {
        url: spec.url.clone(),
        message: format!("{what} `{name}` is not a table name (`name` or `schema.name`, letters, digits and _)"),
    };
    if !is_table_name(view) {
        return Err(bad("--view", view));
    }
    if let Some(old) = drop.filter(|t| !is_table_name(t)) {
        return Err(bad("--drop", old));
    }
    if drop == Some(spec.table.as_str()) {
        return Err(SinkError::Database {
            url: spec.url.clone(),
            message: format!("--drop `{}` is the table the view is switched to", spec.table),
        });
    }
    let db = Database::new(spec, password)?;
    let mut client = db.connect().await?;
    let doing = format!("switching view `{view}` to sink.table `{}`", spec.table);
    let fail = |e: tokio_postgres::Error| db.error(&doing, &e);
    let tx = client.transaction().await.map_err(fail)?;
    let before = tx
        .query_opt(
            "SELECT u.table_schema || '.' || u.table_name FROM information_schema.view_table_usage u \
             WHERE u.view_schema || '.' || u.view_name = (SELECT n.nspname || '.' || c.relname FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)) LIMIT 1",
            &[&quote(view)],
        )
        .await
        .map_err(fail)?
        .map(|r| r.get::<_, String>(0));
    let mut ddl = vec![
        format!("DROP VIEW IF EXISTS {}", quote(view)),
        format!("CREATE VIEW {} AS SELECT * FROM {}", quote(view), quote(&spec.table)),
    ];
    if let Some(old) = drop {
        ddl.push(format!("DROP TABLE {}", quote(old)));
        ddl.push(format!("DROP TABLE IF EXISTS {}", quote(&tombstones_of(old))));
    }
    tx.batch_execute(&ddl.join(";\n")).await.map_err(fail)?;
    tx.commit().await.map_err(fail)?;
    Ok(Switched { before })
}
