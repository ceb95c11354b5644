//! The pgvector sink: rows in a PostgreSQL table with a `vector(N)` column per model,
//! exactly-once by construction rather than by transaction: every write is a merge that a
//! retried task, a batch run again after a driver crash, or the two tasks of a `min_partitions`
//! split can repeat in any order and leave the same table.
//!
//! - `mode = "upsert"`: one row per Kafka key. A record replaces its key's row only if it comes
//!   after it ([`table::after`]: the later offset in one partition of one topic incarnation, else
//!   the later Kafka timestamp); a tombstone (a key with a null value) deletes the row and is
//!   remembered in `<table>_tombstones`, so that an older record written after it does not
//!   bring the row back. The keys of a window are locked (advisory locks, in one order) for its
//!   transaction, so a record and a tombstone of one key never pass each other.
//! - `mode = "append"`: one row per record, unique on (topic, topic_id, partition, offset); a
//!   row already there is left as it is.
//!
//! Each window goes in as one transaction: binary `COPY` into a temporary staging table, then
//! one `INSERT ... SELECT ... ON CONFLICT`. Connections are kept per executor (one per task
//! slot in use) and reused. The executor checks the table when it opens the sink ([`open`]):
//! a table it may create is created with its index; one that exists must have every column
//! with its type, or the executor stops before any batch, naming the column. The driver's
//! [`OffsetsCommitter`] writes each batch's end offsets into the offsets table. With
//! `sink.tls_ca` (or `sslmode=require`) every connection is TLS through rustls ([`tls_of`]).

mod committer;
pub mod switch;
pub(crate) mod table;
mod vector;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow_array::{
    Array, ArrayRef, BinaryArray, FixedSizeListArray, Float32Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use embedstream_core::spec::{FieldColumn, PgMode, PgvectorSinkSpec, Secret};
use futures::future::BoxFuture;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Config, NoTls};

pub use committer::OffsetsCommitter;
pub use table::TableDef;

use crate::rows::Output;
use crate::{Admit, Sink, SinkError, TaskInfo, TaskOutput, TaskWriter};
use vector::PgVector;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a window's transaction waits for a lock another writer holds before it fails (and
/// its task is retried).
const LOCK_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest one statement may run (a window's merge, a table's index).
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(600);
/// A transaction left open and idle (an executor stopped mid-window) is ended by the server.
const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(120);

/// Where the sink connects, with its password, and how errors name it.
#[derive(Clone)]
pub struct Database {
    config: Config,
    /// `sink.url` as written (it holds no password), for errors.
    url: String,
    /// TLS (`sink.tls_ca`, or `sslmode=require`): rustls, the certificate and host name checked.
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

/// The TLS connector for `spec`, if it asks for TLS: its CA when it names one (libpq's
/// `verify-full`), else the public CAs for `sslmode=require`. Either way the connection is then
/// TLS or nothing (`sslmode` becomes `require`).
fn tls_of(
    spec: &PgvectorSinkSpec,
    config: &mut Config,
) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>, SinkError> {
    use embedstream_core::tls;
    let require = config.get_ssl_mode() == tokio_postgres::config::SslMode::Require;
    if spec.tls_ca.is_none() && !require {
        return Ok(None);
    }
    let roots = tls::outside_roots(spec.tls_ca.as_deref(), "sink.tls_ca")
        .map_err(|e| SinkError::Database { url: spec.url.clone(), message: e.to_string() })?;
    config.ssl_mode(tokio_postgres::config::SslMode::Require);
    Ok(Some(tokio_postgres_rustls::MakeRustlsConnect::new(tls::client_config(roots))))
}

impl Database {
    pub fn new(spec: &PgvectorSinkSpec, password: Option<&Secret>) -> Result<Database, SinkError> {
        let mut config: Config = spec.url.parse().map_err(|e| SinkError::Database {
            url: spec.url.clone(),
            message: format!("not a connection string: {e}"),
        })?;
        if let Some(p) = password {
            config.password(p.expose());
        }
        config.application_name("embedstream").connect_timeout(CONNECT_TIMEOUT);
        // A frozen executor must not hold other writers up for hours: its locks and statements
        // are bounded by the server, and a dead peer is found by TCP keepalives. Options the URL
        // gives come after ours, so a site can set its own values.
        let ours = format!(
            "-c lock_timeout={}ms -c statement_timeout={}ms -c idle_in_transaction_session_timeout={}ms",
            LOCK_TIMEOUT.as_millis(),
            STATEMENT_TIMEOUT.as_millis(),
            IDLE_IN_TRANSACTION_TIMEOUT.as_millis()
        );
        let options = match config.get_options() {
            Some(theirs) if !theirs.is_empty() => format!("{ours} {theirs}"),
            _ => ours,
        };
        config
            .options(&options)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .keepalives_interval(Duration::from_secs(10))
            .keepalives_retries(3);
        let tls = tls_of(spec, &mut config)?;
        Ok(Database { config, url: spec.url.clone(), tls })
    }

    /// A connection, its driver task spawned on this runtime.
    pub async fn connect(&self) -> Result<Client, SinkError> {
        let ended = |e: tokio_postgres::Error| tracing::debug!(error = %e, "a pgvector sink connection ended");
        let client = match &self.tls {
            Some(tls) => {
                let (client, connection) =
                    self.config.connect(tls.clone()).await.map_err(|e| self.error("cannot connect", &e))?;
                tokio::spawn(async move { connection.await.unwrap_or_else(ended) });
                client
            }
            None => {
                let (client, connection) =
                    self.config.connect(NoTls).await.map_err(|e| self.error("cannot connect", &e))?;
                tokio::spawn(async move { connection.await.unwrap_or_else(ended) });
                client
            }
        };
        Ok(client)
    }

    /// `e` in words, with the server's own message where it sent one.
    pub fn error(&self, doing: &str, e: &tokio_postgres::Error) -> SinkError {
        let message = match e.as_db_error() {
            Some(db) => format!("{doing}: {}: {}", db.severity(), db.message()),
            None => {
                let mut m = format!("{doing}: {e}");
                let mut source = std::error::Error::source(e);
                while let Some(s) = source {
                    m.push_str(&format!(": {s}"));
                    source = s.source();
                }
                m
            }
        };
        SinkError::Database { url: self.url.clone(), message }
    }
}

/// A connection with its staging table made and the `vector` type's id looked up.
struct Conn {
    client: Client,
    vector: Type,
}

/// The sink on one executor: the table checked, connections kept for the next task.
pub struct PgvectorSink {
    db: Database,
    table: Arc<TableDef>,
    outputs: Vec<Output>,
    idle: Arc<Mutex<Vec<Conn>>>,
}

/// Connects, makes the table if the spec lets it and it is missing, and checks it: the
/// executor's start fails here, naming the column, rather than at the first batch.
pub async fn open(
    spec: &PgvectorSinkSpec,
    password: Option<&Secret>,
    outputs: Vec<Output>,
    fields: Vec<FieldColumn>,
    skip_unchanged: bool,
) -> Result<PgvectorSink, SinkError> {
    let db = Database::new(spec, password)?;
    let table = Arc::new(TableDef::new(spec, &outputs, &fields, skip_unchanged));
    let client = db.connect().await?;
    prepare_table(&db, &client, &table, spec.create_table).await?;
    let conn = ready(&db, client, &table).await?;
    // The merge planned against the table: a table that exists without the unique key the mode
    // needs is refused now (PostgreSQL infers ON CONFLICT's arbiter when it plans).
    let explain = format!("EXPLAIN {}", table.merge());
    conn.client.batch_execute(&explain).await.map_err(|e| {
        db.error(&format!("sink.table `{}` cannot take this query's {:?} writes", table.name, table.mode), &e)
    })?;
    Ok(PgvectorSink { db, table, outputs, idle: Arc::new(Mutex::new(vec![conn])) })
}

/// Creates (under a lock, as every executor starts at once) or checks the sink's table.
async fn prepare_table(db: &Database, client: &Client, table: &TableDef, create: bool) -> Result<(), SinkError> {
    let lock = table::lock_space(&table.name);
    let checking = format!("sink.table `{}`", table.name);
    let mut existing = columns_of(client, &table.name).await.map_err(|e| db.error(&checking, &e))?;
    if existing.is_empty() && create {
        let mut ddl = vec!["CREATE EXTENSION IF NOT EXISTS vector".to_string()];
        ddl.extend(table.create());
        ddl_under_lock(client, lock, &ddl.join(";\n"))
            .await
            .map_err(|e| db.error(&format!("creating sink.table `{}`", table.name), &e))?;
        tracing::info!(table = %table.name, mode = ?table.mode, "pgvector sink table ready");
        existing = columns_of(client, &table.name).await.map_err(|e| db.error(&checking, &e))?;
    }
    if existing.is_empty() {
        return Err(SinkError::Database {
            url: db.url.clone(),
            message: format!("{checking} does not exist (sink.create_table = false)"),
        });
    }
    // Columns earlier versions did not make: the topic id, and each output's model version
    // (rows written before versions were have none, and are not compared: `versions::check`).
    let added: Vec<(&str, &str)> = (table::TABLE_COLUMNS_ADDED.iter().copied())
        .chain(table.version_columns.iter().map(|name| (name.as_str(), "text")))
        .chain(table.input_hash.then_some((crate::rows::INPUT_HASH, "text")))
        .collect();
    if create
        && add_missing_columns(client, lock, &table.name, &added)
            .await
            .map_err(|e| db.error(&format!("adding columns to {checking}"), &e))?
    {
        existing = columns_of(client, &table.name).await.map_err(|e| db.error(&checking, &e))?;
    }
    if let Some(misfit) = table.misfit(&existing) {
        return Err(SinkError::Database { url: db.url.clone(), message: format!("{checking} {misfit}") });
    }
    if table.mode == PgMode::Upsert {
        // A table made by hand for upserts gets the sink's own tombstones table beside it.
        let tombstones = table.create().pop().expect("upsert mode makes its tombstones table");
        client.batch_execute(&tombstones).await.map_err(|e| db.error(&checking, &e))?;
        add_missing_columns(client, lock, &table.tombstones(), table::TOMBSTONE_COLUMNS_ADDED)
            .await
            .map_err(|e| db.error(&format!("adding columns to `{}`", table.tombstones()), &e))?;
    }
    Ok(())
}

/// Runs `ddl` holding the session's advisory lock `lock`, taken and given back outside the
/// DDL's transaction (one multi-statement call is one transaction): released inside it, the
/// next process would go on before the DDL was committed, and fail on what it creates.
pub(crate) async fn ddl_under_lock(client: &Client, lock: i32, ddl: &str) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(&format!("SELECT pg_advisory_lock({lock}, 0)")).await?;
    let created = client.batch_execute(ddl).await;
    let unlocked = client.batch_execute(&format!("SELECT pg_advisory_unlock({lock}, 0)")).await;
    created.and(unlocked)
}

/// Adds to `table` those of `columns` (name, SQL definition) it lacks, under the advisory lock
/// `lock` (every executor starts at once); returns whether it added any. A table that has them
/// all is not altered, so a table made by its DBA needs no owner's rights for it.
pub(crate) async fn add_missing_columns(
    client: &Client,
    lock: i32,
    table: &str,
    columns: &[(&str, &str)],
) -> Result<bool, tokio_postgres::Error> {
    let existing = columns_of(client, table).await?;
    let missing: Vec<String> = columns
        .iter()
        .filter(|(name, _)| !existing.iter().any(|(have, _)| have == name))
        .map(|(name, def)| format!("ADD COLUMN IF NOT EXISTS \"{name}\" {def}"))
        .collect();
    if missing.is_empty() {
        return Ok(false);
    }
    ddl_under_lock(client, lock, &format!("ALTER TABLE {} {}", table::quote(table), missing.join(", "))).await?;
    Ok(true)
}

/// The columns of `table` and their types, none if it does not exist.
pub(crate) async fn columns_of(client: &Client, table: &str) -> Result<Vec<(String, String)>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
            &[&table::quote(table)],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// A connection made ready for windows: its staging table and the `vector` type.
async fn ready(db: &Database, client: Client, table: &TableDef) -> Result<Conn, SinkError> {
    client.batch_execute(&table.create_stage()).await.map_err(|e| db.error("creating the staging table", &e))?;
    let vector = client
        .prepare("SELECT NULL::vector")
        .await
        .map_err(|e| db.error("looking up pgvector's `vector` type", &e))?
        .columns()[0]
        .type_()
        .clone();
    Ok(Conn { client, vector })
}

impl PgvectorSink {
    async fn take(&self) -> Result<Conn, SinkError> {
        let idle = self.idle.lock().expect("the pool's lock is never poisoned").pop();
        match idle {
            Some(conn) if !conn.client.is_closed() => Ok(conn),
            _ => ready(&self.db, self.db.connect().await?, &self.table).await,
        }
    }
}

impl Sink for Arc<PgvectorSink> {
    fn open(&self, task: &TaskInfo) -> Result<Box<dyn TaskWriter>, SinkError> {
        Ok(Box::new(PgWriter {
            sink: self.clone(),
            topic_id: task.topic_id.clone(),
            conn: None,
            stamps: Vec::new(),
            acked: Vec::new(),
        }))
    }

    fn admit(&self, key: Option<&[u8]>, value: Option<&[u8]>) -> Admit {
        let key = match key.map(std::str::from_utf8) {
            Some(Err(_)) => {
                return Admit::Refuse("the key is not UTF-8 text: the pgvector table's `key` column is text".into())
            }
            Some(Ok(k)) if k.contains('\0') => {
                return Admit::Refuse("the key holds a NUL byte, which PostgreSQL's text cannot store".into())
            }
            Some(Ok(k)) => Some(k),
            None => None,
        };
        // The value is written as text too (`columns` names it): refused here, not by the
        // window's transaction, which would fail on every attempt and every restart.
        if let (true, Some(v)) = (self.table.with_value, value) {
            match std::str::from_utf8(v) {
                Err(_) => {
                    return Admit::Refuse(
                        "the value is not UTF-8 text: the pgvector table's `value` column is text".into(),
                    )
                }
                Ok(v) if v.contains('\0') => {
                    return Admit::Refuse("the value holds a NUL byte, which PostgreSQL's text cannot store".into())
                }
                Ok(_) => {}
            }
        }
        match (self.table.mode, key, value) {
            (PgMode::Upsert, None, _) => Admit::Refuse(
                "the record has no key: sink.mode = \"upsert\" keeps one row per Kafka key (mode = \"append\" \
                 writes every record)"
                    .into(),
            ),
            (PgMode::Upsert, Some(_), None) => Admit::Delete,
            _ => Admit::Embed,
        }
    }
}

/// The latest Kafka timestamp written as itself: the end of year 9999, in milliseconds since
/// the epoch. PostgreSQL's `timestamptz` ends in 294276, but a producer's clock that far off is
/// no time at all; such a row's `kafka_timestamp` is NULL, as is a negative one (Kafka's -1,
/// no timestamp).
const LATEST_TIMESTAMP_MS: i64 = 253_402_300_799_999;

/// A row's `kafka_timestamp`: the record's, or NULL when it is none or out of range.
fn kafka_timestamp(ms: Option<i64>) -> Option<SystemTime> {
    ms.filter(|t| (0..=LATEST_TIMESTAMP_MS).contains(t)).map(|t| UNIX_EPOCH + Duration::from_millis(t as u64))
}

/// The PostgreSQL type of a field column of Arrow type `t` (`crate::rows::field_type`).
fn field_sql_type(t: &arrow_schema::DataType) -> Type {
    use arrow_schema::DataType;
    match t {
        DataType::Utf8 => Type::TEXT,
        DataType::Int64 => Type::INT8,
        DataType::Float64 => Type::FLOAT8,
        DataType::Boolean => Type::BOOL,
        DataType::Timestamp(..) => Type::TIMESTAMPTZ,
        other => unreachable!("a field column is never {other}"),
    }
}

/// Row `i` of a field column, to bind as its [`field_sql_type`]. Timestamps are within
/// PostgreSQL's range: `RecordFields` refused those past the year 9999.
fn field_cell(array: &ArrayRef, i: usize) -> Box<dyn ToSql + Sync + Send + '_> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int64Type, TimestampMillisecondType};
    use arrow_schema::DataType;
    let valid = array.is_valid(i);
    match array.data_type() {
        DataType::Utf8 => Box::new(valid.then(|| array.as_string::<i32>().value(i))),
        DataType::Int64 => Box::new(valid.then(|| array.as_primitive::<Int64Type>().value(i))),
        DataType::Float64 => Box::new(valid.then(|| array.as_primitive::<Float64Type>().value(i))),
        DataType::Boolean => Box::new(valid.then(|| array.as_boolean().value(i))),
        DataType::Timestamp(..) => Box::new(valid.then(|| {
            let ms = array.as_primitive::<TimestampMillisecondType>().value(i);
            match ms >= 0 {
                true => UNIX_EPOCH + Duration::from_millis(ms as u64),
                false => UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs()),
            }
        })),
        other => unreachable!("a field column is never {other}"),
    }
}

/// One task attempt's writes: a connection held from its first window to its end.
struct PgWriter {
    sink: Arc<PgvectorSink>,
    /// The topic id of the task's records: which incarnation of the topic they are in.
    topic_id: String,
    conn: Option<Conn>,
    /// Kafka timestamps of the rows written, and when each window's transaction committed.
    stamps: Vec<i64>,
    acked: Vec<(usize, i64)>,
}

/// The columns that say where each row came from: its key and its place in the source.
struct Origins<'a> {
    keys: &'a BinaryArray,
    topics: &'a StringArray,
    partitions: &'a Int32Array,
    offsets: &'a Int64Array,
}

impl<'a> Origins<'a> {
    fn of(rows: &'a RecordBatch) -> Origins<'a> {
        Origins {
            keys: column(rows, "key"),
            topics: column(rows, "topic"),
            partitions: column(rows, "partition"),
            offsets: column(rows, "offset"),
        }
    }

    /// Row `i`'s key as text: keys are UTF-8 where they reach the sink (`admit`).
    fn key(&self, i: usize) -> Option<&'a str> {
        self.keys.is_valid(i).then(|| std::str::from_utf8(self.keys.value(i)).unwrap_or_default())
    }
}

fn column<'a, T: 'static>(rows: &'a RecordBatch, name: &str) -> &'a T {
    rows.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<T>()).expect("the output schema's column")
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as i64
}

impl PgWriter {
    async fn conn(&mut self) -> Result<&mut Conn, SinkError> {
        if self.conn.is_none() {
            self.conn = Some(self.sink.take().await?);
        }
        Ok(self.conn.as_mut().expect("just set"))
    }

    async fn write_rows(&mut self, rows: &RecordBatch) -> Result<(), SinkError> {
        let table = self.sink.table.clone();
        let db = self.sink.db.clone();
        let origins = Origins::of(rows);
        let stamps: &Int64Array = column(rows, "timestamp_ms");
        let values: Option<&BinaryArray> = table.with_value.then(|| column(rows, "value"));
        let vectors: Vec<(&[f32], usize)> = (self.sink.outputs.iter())
            .map(|o| {
                let c: &FixedSizeListArray = column(rows, &o.column);
                let values = c.values().as_any().downcast_ref::<Float32Array>().expect("f32 vectors");
                (values.values().as_ref(), c.value_length() as usize)
            })
            .collect();
        let topic_id = self.topic_id.clone();
        let conn = self.conn().await?;
        let fail = |doing: &str| {
            let db = db.clone();
            let doing = format!("{doing} (sink.table `{}`)", table.name);
            move |e: tokio_postgres::Error| db.error(&doing, &e)
        };
        let mut types = vec![Type::TEXT, Type::TEXT, Type::TEXT, Type::INT4, Type::INT8, Type::TIMESTAMPTZ];
        if table.model.is_some() {
            types.push(Type::TEXT);
        }
        types.extend(vectors.iter().map(|_| conn.vector.clone()));
        types.extend(table.versions.iter().map(|_| Type::TEXT));
        let hashes: Option<&StringArray> = table.input_hash.then(|| column(rows, crate::rows::INPUT_HASH));
        if hashes.is_some() {
            types.push(Type::TEXT);
        }
        if table.with_value {
            types.push(Type::TEXT);
        }
        let fields: Vec<&ArrayRef> = (table.columns.iter().filter(|c| c.field))
            .map(|c| rows.column_by_name(&c.name).expect("the output schema's field column"))
            .collect();
        types.extend(fields.iter().map(|f| field_sql_type(f.data_type())));
        let tx = conn.client.transaction().await.map_err(fail("beginning a transaction"))?;
        let copy = tx.copy_in(&table.copy_in()).await.map_err(fail("copying rows in"))?;
        let writer = BinaryCopyInWriter::new(copy, &types);
        futures::pin_mut!(writer);
        for i in 0..rows.num_rows() {
            // Upsert rows always have a key (`admit`).
            let key = origins.key(i);
            let stamp = kafka_timestamp(stamps.is_valid(i).then(|| stamps.value(i)));
            // UTF-8 without NUL bytes: `admit` refused the others.
            let value = values.and_then(|v| v.is_valid(i).then(|| std::str::from_utf8(v.value(i)).unwrap_or_default()));
            let row_vectors: Vec<PgVector<'_>> =
                vectors.iter().map(|(all, dim)| PgVector(&all[i * dim..(i + 1) * dim])).collect();
            let (topic, partition, offset) =
                (origins.topics.value(i), origins.partitions.value(i), origins.offsets.value(i));
            let mut row: Vec<&(dyn ToSql + Sync)> = vec![&key, &topic, &topic_id, &partition, &offset, &stamp];
            if let Some(model) = &table.model {
                row.push(model);
            }
            row.extend(row_vectors.iter().map(|v| v as &(dyn ToSql + Sync)));
            row.extend(table.versions.iter().map(|v| v as &(dyn ToSql + Sync)));
            let hash = hashes.map(|h| h.value(i));
            if hashes.is_some() {
                row.push(&hash);
            }
            if table.with_value {
                row.push(&value);
            }
            let cells: Vec<Box<dyn ToSql + Sync + Send + '_>> = fields.iter().map(|f| field_cell(f, i)).collect();
            row.extend(cells.iter().map(|c| c.as_ref() as &(dyn ToSql + Sync)));
            writer.as_mut().write(&row).await.map_err(fail("copying rows in"))?;
        }
        writer.finish().await.map_err(fail("copying rows in"))?;
        if table.mode == PgMode::Upsert {
            let lock = table.lock_stage_keys(table::lock_space(&table.name));
            tx.batch_execute(&lock).await.map_err(fail("locking the window's keys"))?;
        }
        tx.batch_execute(&table.merge()).await.map_err(fail("merging the window"))?;
        tx.commit().await.map_err(fail("committing the window"))?;
        self.stamps.extend(stamps.iter().flatten());
        self.acked.push((self.stamps.len(), now_ms()));
        Ok(())
    }

    async fn delete_rows(&mut self, rows: &RecordBatch) -> Result<(), SinkError> {
        let table = self.sink.table.clone();
        let db = self.sink.db.clone();
        let origins = Origins::of(rows);
        let keys: Vec<&str> = (0..rows.num_rows()).map(|i| origins.key(i).unwrap_or_default()).collect();
        let topics: Vec<&str> = origins.topics.iter().flatten().collect();
        let partitions: Vec<i32> = origins.partitions.values().to_vec();
        let offsets: Vec<i64> = origins.offsets.values().to_vec();
        let topic_ids: Vec<String> = vec![self.topic_id.clone(); keys.len()];
        let stamps: &Int64Array = column(rows, "timestamp_ms");
        let stamps: Vec<Option<SystemTime>> =
            (0..rows.num_rows()).map(|i| kafka_timestamp(stamps.is_valid(i).then(|| stamps.value(i)))).collect();
        let lock = table::lock_space(&table.name);
        let conn = self.conn().await?;
        let fail =
            |e: tokio_postgres::Error| db.error(&format!("deleting tombstoned keys (sink.table `{}`)", table.name), &e);
        let tx = conn.client.transaction().await.map_err(fail)?;
        let [lock_keys, remember, delete] = table.delete();
        tx.execute(lock_keys.as_str(), &[&keys, &lock]).await.map_err(fail)?;
        tx.execute(remember.as_str(), &[&keys, &topics, &topic_ids, &partitions, &offsets, &stamps])
            .await
            .map_err(fail)?;
        let deleted = tx.execute(delete.as_str(), &[&keys]).await.map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        tracing::debug!(tombstones = keys.len(), deleted, "tombstones applied");
        Ok(())
    }
}

impl PgWriter {
    /// A connection whose transaction failed midway is not handed to the next task.
    fn keep_if_ok(&mut self, result: Result<(), SinkError>) -> Result<(), SinkError> {
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    /// The connection goes back to the executor's pool.
    fn give_back(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.sink.idle.lock().expect("the pool's lock is never poisoned").push(conn);
        }
    }
}

impl TaskWriter for PgWriter {
    fn last_inputs<'a>(
        &'a mut self,
        keys: &'a [Vec<u8>],
    ) -> BoxFuture<'a, Result<std::collections::HashMap<Vec<u8>, String>, SinkError>> {
        Box::pin(async move {
            if !self.sink.table.input_hash || keys.is_empty() {
                return Ok(Default::default());
            }
            // Keys reach the sink as UTF-8 text (`admit`).
            let texts: Vec<&str> = keys.iter().map(|k| std::str::from_utf8(k).unwrap_or_default()).collect();
            let (db, table) = (self.sink.db.clone(), self.sink.table.clone());
            let conn = self.conn().await?;
            let found = match conn.client.query(table.last_inputs().as_str(), &[&texts]).await {
                Ok(rows) => rows,
                Err(e) => {
                    // A connection whose call failed is not handed to the next task.
                    self.conn = None;
                    return Err(db.error(&format!("reading input fingerprints (sink.table `{}`)", table.name), &e));
                }
            };
            Ok(found.iter().map(|r| (r.get::<_, String>(0).into_bytes(), r.get::<_, String>(1))).collect())
        })
    }

    fn write<'a>(&'a mut self, rows: &'a RecordBatch) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            if rows.num_rows() == 0 {
                return Ok(());
            }
            let written = self.write_rows(rows).await;
            self.keep_if_ok(written)
        })
    }

    fn delete<'a>(&'a mut self, rows: &'a RecordBatch) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            if rows.num_rows() == 0 {
                return Ok(());
            }
            let deleted = self.delete_rows(rows).await;
            self.keep_if_ok(deleted)
        })
    }

    /// Every window is already committed in the table: the connection goes back to the pool.
    fn commit(mut self: Box<Self>) -> BoxFuture<'static, Result<TaskOutput, SinkError>> {
        Box::pin(async move {
            let mut out = TaskOutput::default();
            let mut from = 0;
            for &(until, acked) in &self.acked {
                self.stamps[from..until].iter().for_each(|t| out.latency.observe((acked - t).max(0) as f64 / 1000.0));
                from = until;
            }
            self.give_back();
            Ok(out)
        })
    }

    /// Windows written stay: each is a merge that the retried attempt repeats to the same rows.
    fn abort(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move { self.give_back() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 31, item 10: no timeout bounded a frozen executor's locks or transactions.
    #[test]
    fn bounded_locks_and_timeouts_are_set_on_every_connection() {
        let spec: PgvectorSinkSpec =
            toml::from_str("url = \"postgresql://u@h/d?options=-c%20work_mem%3D64MB\"\ntable = \"t\"").unwrap();
        let db = Database::new(&spec, None).unwrap();
        let options = db.config.get_options().unwrap();
        for want in
            ["lock_timeout=60000ms", "statement_timeout=600000ms", "idle_in_transaction_session_timeout=120000ms"]
        {
            assert!(options.contains(want), "{options}");
        }
        assert!(options.ends_with("-c work_mem=64MB"), "the URL's own options come last: {options}");
        assert!(db.config.get_keepalives());
        assert_eq!(db.config.get_keepalives_idle(), Duration::from_secs(30));
    }
}
