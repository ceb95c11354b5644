//! The pgvector sink's batch committer: after every task of a batch wrote its windows, the
//! batch's end offsets go into the offsets table of the same database (one row per query and
//! source partition), so `SELECT` shows how far the table is. Nothing is ever "published
//! already": the rows are merges, and a batch run again writes the same table. In upsert mode
//! it also forgets tombstones older than `sink.tombstone_retention`, at most every
//! [`PRUNE_EVERY`]. A table belongs to one query (its checkpoint's id): [`claim`] refuses one
//! that another query writes.

use embedstream_core::manifest::ManifestFile;
use embedstream_core::spec::{PgvectorSinkSpec, Secret};
use futures::future::BoxFuture;
use tokio::sync::Mutex;
use tokio_postgres::Client;

use super::table::{column_definitions, create_ivfflat, lock_space, prune_tombstones, quote, IVFFLAT_MIN_ROWS};
use super::{add_missing_columns, ddl_under_lock, Database};
use crate::commit::{BatchCommitter, BatchRange, CommitError, Published};
use crate::SinkError;

pub struct OffsetsCommitter {
    db: Database,
    query: String,
    /// The checkpoint's query id: the table belongs to it.
    query_id: String,
    sink_table: String,
    offsets_table: String,
    client: Mutex<Option<Client>>,
    /// Upsert mode: how long tombstones are kept, and when they were last pruned.
    tombstones: Option<(std::time::Duration, std::sync::Mutex<Option<std::time::Instant>>)>,
    /// `index = "ivfflat"`: its operator class, until the index is there.
    ivfflat: std::sync::Mutex<Option<&'static str>>,
}

/// Columns of the offsets table that earlier versions did not make: the query's checkpoint id
/// (whose table it is) and each partition's topic id (which incarnation it read).
const OFFSETS_COLUMNS_ADDED: &[(&str, &str)] =
    &[("query_id", "text NOT NULL DEFAULT ''"), ("topic_id", "text NOT NULL DEFAULT ''")];

/// How often the committer prunes old tombstones.
pub const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

impl OffsetsCommitter {
    /// Connects, makes the offsets table and claims the sink's table for the query whose
    /// checkpoint has `query_id`: a wrong password, a server that cannot be reached or a table
    /// another query writes ([`claim`]) stops the query here, before any executor starts.
    pub async fn connect(
        spec: &PgvectorSinkSpec,
        password: Option<&Secret>,
        query: &str,
        query_id: &str,
    ) -> Result<OffsetsCommitter, SinkError> {
        let db = Database::new(spec, password)?;
        let client = db.connect().await?;
        let lock = lock_space(&spec.offsets_table);
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS {} (\"query\" text NOT NULL, \"topic\" text NOT NULL, \
             \"partition\" integer NOT NULL, \"end_offset\" bigint NOT NULL, \"batch_id\" bigint NOT NULL, \
             \"sink_table\" text NOT NULL, \"committed_at\" timestamp with time zone NOT NULL DEFAULT now(), \
             {}, PRIMARY KEY (\"query\", \"topic\", \"partition\"))",
            quote(&spec.offsets_table),
            column_definitions(OFFSETS_COLUMNS_ADDED)
        );
        let making = || format!("creating sink.offsets_table `{}`", spec.offsets_table);
        ddl_under_lock(&client, lock, &ddl).await.map_err(|e| db.error(&making(), &e))?;
        add_missing_columns(&client, lock, &spec.offsets_table, OFFSETS_COLUMNS_ADDED)
            .await
            .map_err(|e| db.error(&making(), &e))?;
        claim(&db, &client, spec, query, query_id).await?;
        Ok(OffsetsCommitter {
            db,
            query: query.to_string(),
            query_id: query_id.to_string(),
            sink_table: spec.table.clone(),
            offsets_table: spec.offsets_table.clone(),
            client: Mutex::new(Some(client)),
            tombstones: (spec.mode == embedstream_core::spec::PgMode::Upsert)
                .then(|| (spec.tombstone_retention.get(), std::sync::Mutex::new(None))),
            ivfflat: std::sync::Mutex::new(
                (spec.index == embedstream_core::spec::PgIndex::Ivfflat && spec.create_table)
                    .then(|| spec.distance.ops()),
            ),
        })
    }

    /// `index = "ivfflat"`: once the table holds [`IVFFLAT_MIN_ROWS`] rows, builds the index of
    /// each vector column with a list per thousand rows. A failure is logged: the next batch
    /// tries again.
    async fn build_ivfflat(&self, c: &Client) {
        let Some(ops) = *self.ivfflat.lock().unwrap() else { return };
        let table = quote(&self.sink_table);
        let ask = async {
            let rows: i64 = c.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await?.get(0);
            if rows < IVFFLAT_MIN_ROWS {
                return Ok(false);
            }
            let columns = c
                .query(
                    "SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 \
                     AND NOT a.attisdropped AND format_type(a.atttypid, a.atttypmod) LIKE 'vector(%'",
                    &[&table],
                )
                .await?;
            let lists = (rows / 1_000).clamp(1, 4_000);
            for column in columns.iter().map(|r| r.get::<_, String>(0)) {
                c.batch_execute(&create_ivfflat(&self.sink_table, &column, ops, lists)).await?;
                tracing::info!(table = %self.sink_table, %column, rows, lists, "built the IVFFlat index now that the table holds rows");
            }
            Ok::<_, tokio_postgres::Error>(true)
        };
        match ask.await {
            Ok(true) => *self.ivfflat.lock().unwrap() = None,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %self.db.error("building the IVFFlat index", &e), "index not built yet"),
        }
    }

    /// Deletes the tombstones older than the retention, if the last pruning was
    /// [`PRUNE_EVERY`] ago. A failure is logged: the next batch tries again.
    async fn prune(&self, c: &Client) {
        let Some((retention, last)) = &self.tombstones else { return };
        {
            let mut last = last.lock().unwrap();
            if last.is_some_and(|at| at.elapsed() < PRUNE_EVERY) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        match c.execute(prune_tombstones(&self.sink_table).as_str(), &[&retention.as_secs_f64()]).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(table = %self.sink_table, tombstones = n, "forgot tombstones past sink.tombstone_retention")
            }
            Err(e) => tracing::warn!(error = %self.db.error("pruning tombstones", &e), "tombstones not pruned"),
        }
    }

    async fn write(&self, batch: &BatchRange<'_>) -> Result<(), SinkError> {
        let mut client = self.client.lock().await;
        if client.as_ref().is_none_or(Client::is_closed) {
            *client = Some(self.db.connect().await?);
        }
        let c = client.as_ref().expect("just connected");
        let (mut topics, mut topic_ids, mut partitions, mut ends) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (tp, end) in batch.end.iter() {
            topics.push(tp.topic.as_str());
            topic_ids.push(batch.sources.topic_id(&tp.topic));
            partitions.push(tp.partition);
            ends.push(*end);
        }
        let sql = format!(
            "INSERT INTO {} AS o (\"query\", \"topic\", \"partition\", \"end_offset\", \"batch_id\", \"sink_table\", \
               \"query_id\", \"topic_id\") \
             SELECT $1, u.t, u.p, u.e, $5, $6, $7, u.i FROM unnest($2::text[], $3::int4[], $4::int8[], $8::text[]) AS u(t, p, e, i) \
             ON CONFLICT (\"query\", \"topic\", \"partition\") DO UPDATE SET \"end_offset\" = EXCLUDED.\"end_offset\", \
               \"batch_id\" = EXCLUDED.\"batch_id\", \"sink_table\" = EXCLUDED.\"sink_table\", \"committed_at\" = now(), \
               \"query_id\" = EXCLUDED.\"query_id\", \"topic_id\" = EXCLUDED.\"topic_id\" \
             WHERE o.\"batch_id\" <= EXCLUDED.\"batch_id\"",
            quote(&self.offsets_table)
        );
        let batch_id = batch.batch_id as i64;
        let written = c
            .execute(
                sql.as_str(),
                &[&self.query, &topics, &partitions, &ends, &batch_id, &self.sink_table, &self.query_id, &topic_ids],
            )
            .await;
        if let Err(e) = written {
            *client = None;
            return Err(self.db.error(&format!("writing batch {} to sink.offsets_table", batch.batch_id), &e));
        }
        self.prune(c).await;
        self.build_ivfflat(c).await;
        Ok(())
    }
}

/// Refuses a sink table that another query writes, as the Parquet sink refuses a table another
/// checkpoint's manifests fill: its offsets table rows name the table with another query id (or,
/// rows written before ids were kept, another query name). Two queries upserting one table would
/// each order only their own records; a new checkpoint on an old table would replay its topics
/// over rows it did not write. Deleting the old query's rows from the offsets table hands the
/// table over.
async fn claim(
    db: &Database,
    client: &Client,
    spec: &PgvectorSinkSpec,
    query: &str,
    query_id: &str,
) -> Result<(), SinkError> {
    let sql = format!(
        "SELECT \"query\", \"query_id\" FROM {} WHERE \"sink_table\" = $1 \
         AND (\"query_id\" NOT IN ('', $2) OR (\"query_id\" = '' AND \"query\" <> $3)) LIMIT 1",
        quote(&spec.offsets_table)
    );
    let owner = client
        .query_opt(sql.as_str(), &[&spec.table, &query_id, &query])
        .await
        .map_err(|e| db.error(&format!("reading sink.offsets_table `{}`", spec.offsets_table), &e))?;
    let Some(owner) = owner else { return Ok(()) };
    let (other, other_id): (String, String) = (owner.get(0), owner.get(1));
    Err(SinkError::Database {
        url: spec.url.clone(),
        message: format!(
            "sink.table `{table}` belongs to query `{other}` (checkpoint query id {other_id:?}), not to this \
             checkpoint's query `{query}` ({query_id}): sink.offsets_table `{offsets}` holds its offsets. A table \
             belongs to the checkpoint that writes it: give a new sink.table, or the old checkpoint_location; \
             to hand the table over, delete the old query's rows (DELETE FROM {offsets} WHERE sink_table = '{table}')",
            table = spec.table,
            offsets = spec.offsets_table,
        ),
    })
}

impl BatchCommitter for OffsetsCommitter {
    fn published<'a>(&'a self, _: &'a BatchRange<'a>) -> BoxFuture<'a, Result<Option<Published>, CommitError>> {
        Box::pin(async { Ok(None) })
    }

    fn publish<'a>(
        &'a self,
        batch: &'a BatchRange<'a>,
        _: &'a [ManifestFile],
    ) -> BoxFuture<'a, Result<(), CommitError>> {
        Box::pin(async move { self.write(batch).await.map_err(CommitError::from) })
    }
}
