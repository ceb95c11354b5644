//! The pgvector sink's tables and statements: the columns a query's rows need, the DDL that
//! makes them, the check of a table that exists, and the SQL of each window's write. Every
//! identifier is quoted; names come from the spec, where they are plain identifiers
//! (`embedstream_core::spec::sink::pgvector::is_table_name`) or the models' column names.

use embedstream_core::spec::{FieldColumn, FieldType, PgIndex, PgMode, PgvectorSinkSpec};

use crate::rows::{Output, INPUT_HASH};

/// The per-connection temporary table each window is copied into first.
pub const STAGE: &str = "embedstream_stage";

/// One column of the table: its name and SQL type (as PostgreSQL's `format_type` prints it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub sql_type: String,
    /// A vector column: the model that fills it.
    pub model: Option<String>,
    /// An input field's column (`sink.columns`): null where a record lacks the field.
    pub field: bool,
}

impl Column {
    fn plain(name: &str, sql_type: &str) -> Column {
        Column { name: name.into(), sql_type: sql_type.into(), model: None, field: false }
    }
}

/// The SQL type of a field column, as PostgreSQL's `format_type` names it.
pub fn sql_type(ty: FieldType) -> &'static str {
    match ty {
        FieldType::Text => "text",
        FieldType::Bigint => "bigint",
        FieldType::Double => "double precision",
        FieldType::Boolean => "boolean",
        FieldType::Timestamp => "timestamp with time zone",
    }
}

/// The sink's table as the query writes it.
#[derive(Debug, Clone)]
pub struct TableDef {
    /// As the spec names it (`schema.name` or `name`).
    pub name: String,
    pub mode: PgMode,
    pub columns: Vec<Column>,
    /// The single model's id, written in the `model` column (one output only).
    pub model: Option<String>,
    /// Each output's model version, in the version columns that follow the vector columns
    /// ([`Output::version_column`]).
    pub versions: Vec<String>,
    /// The names of those version columns, in the same order.
    pub version_columns: Vec<String>,
    pub with_value: bool,
    /// `skip_unchanged`: each row keeps its input's fingerprint in [`INPUT_HASH`] (after the
    /// version columns), which the next window of its key is compared with.
    pub input_hash: bool,
    pub index: PgIndex,
    pub ops: &'static str,
}

/// `a.b` as `"a"."b"`.
pub fn quote(name: &str) -> String {
    name.split('.').map(|p| format!("\"{}\"", p.replace('"', "\"\""))).collect::<Vec<_>>().join(".")
}

impl TableDef {
    pub fn new(spec: &PgvectorSinkSpec, outputs: &[Output], fields: &[FieldColumn], input_hash: bool) -> TableDef {
        let mut columns = vec![
            Column::plain("key", "text"),
            Column::plain("topic", "text"),
            Column::plain("topic_id", "text"),
            Column::plain("partition", "integer"),
            Column::plain("offset", "bigint"),
            Column::plain("kafka_timestamp", "timestamp with time zone"),
        ];
        let model = match outputs {
            [one] => {
                columns.push(Column::plain("model", "text"));
                Some(one.model.clone())
            }
            _ => None,
        };
        columns.extend(outputs.iter().map(|o| Column {
            name: o.column.clone(),
            sql_type: format!("vector({})", o.dim),
            model: Some(o.model.clone()),
            field: false,
        }));
        columns.extend(outputs.iter().map(|o| Column::plain(&o.version_column(outputs), "text")));
        if input_hash {
            columns.push(Column::plain(INPUT_HASH, "text"));
        }
        if spec.with_value() {
            columns.push(Column::plain("value", "text"));
        }
        columns.extend(fields.iter().map(|f| Column {
            name: f.name.clone(),
            sql_type: sql_type(f.ty).into(),
            model: None,
            field: true,
        }));
        TableDef {
            name: spec.table.clone(),
            mode: spec.mode,
            columns,
            model,
            versions: outputs.iter().map(|o| o.version.clone()).collect(),
            version_columns: outputs.iter().map(|o| o.version_column(outputs)).collect(),
            with_value: spec.with_value(),
            input_hash,
            index: spec.index,
            ops: spec.distance.ops(),
        }
    }

    /// Where upsert mode remembers each key's latest tombstone, so that an older record
    /// written after it (a retried task, the other task of a split) does not bring the row back.
    pub fn tombstones(&self) -> String {
        tombstones_of(&self.name)
    }

    fn column_list(&self, prefix: &str) -> String {
        self.columns.iter().map(|c| format!("{prefix}{}", quote(&c.name))).collect::<Vec<_>>().join(", ")
    }

    /// The table, its unique key and an index per vector column.
    pub fn create(&self) -> Vec<String> {
        let mut columns: Vec<String> = self
            .columns
            .iter()
            .map(|c| {
                let nullable = matches!(c.name.as_str(), "kafka_timestamp" | "value" | INPUT_HASH)
                    || c.field
                    || (c.name == "key" && self.mode == PgMode::Append);
                format!("{} {}{}", quote(&c.name), c.sql_type, if nullable { "" } else { " NOT NULL" })
            })
            .collect();
        columns.push(match self.mode {
            PgMode::Upsert => "PRIMARY KEY (\"key\")".into(),
            PgMode::Append => format!("PRIMARY KEY ({APPEND_KEY})"),
        });
        let mut ddl = vec![format!("CREATE TABLE IF NOT EXISTS {} ({})", quote(&self.name), columns.join(", "))];
        for c in self.columns.iter().filter(|c| c.model.is_some()) {
            // IVFFlat learns its lists from the rows there when it is built: made on an empty
            // table it answered with a recall@10 of 0.76. The driver makes it once the table
            // holds rows ([`create_ivfflat`]).
            let method = match self.index {
                PgIndex::Hnsw => "hnsw",
                PgIndex::Ivfflat | PgIndex::None => continue,
            };
            ddl.push(format!(
                "CREATE INDEX IF NOT EXISTS {} ON {} USING {method} ({} {})",
                index_name(&self.name, &c.name, method),
                quote(&self.name),
                quote(&c.name),
                self.ops
            ));
        }
        if self.mode == PgMode::Upsert {
            ddl.push(self.create_tombstones());
        }
        ddl
    }

    /// The tombstones: each deleted key's latest tombstone, where it was in the source, and when
    /// it was written (so that [`prune_tombstones`] can forget it).
    fn create_tombstones(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\"key\" text PRIMARY KEY, \"topic\" text NOT NULL, \
             \"partition\" integer NOT NULL, \"offset\" bigint NOT NULL, {})",
            quote(&self.tombstones()),
            column_definitions(TOMBSTONE_COLUMNS_ADDED)
        )
    }

    /// What a table that exists lacks: the first column missing or of another type, in words.
    pub fn misfit(&self, existing: &[(String, String)]) -> Option<String> {
        for c in &self.columns {
            let found = existing.iter().find(|(name, _)| name == &c.name);
            let what = match &c.model {
                Some(model) => format!("the model `{model}` gives {}", c.sql_type),
                None => format!("the sink writes {}", c.sql_type),
            };
            match found {
                None => return Some(format!("has no column `{}` ({what})", c.name)),
                Some((_, ty)) if ty != &c.sql_type => {
                    return Some(format!("column `{}` is {ty}, but {what}", c.name));
                }
                Some(_) => {}
            }
        }
        None
    }

    /// The staging table of a connection: the table's columns, no constraints, emptied at
    /// each commit.
    pub fn create_stage(&self) -> String {
        let columns: Vec<String> = self.columns.iter().map(|c| format!("{} {}", quote(&c.name), c.sql_type)).collect();
        format!("CREATE TEMP TABLE IF NOT EXISTS {STAGE} ({}) ON COMMIT DELETE ROWS", columns.join(", "))
    }

    /// `COPY` of a window into the stage, in binary.
    pub fn copy_in(&self) -> String {
        format!("COPY {STAGE} ({}) FROM STDIN (FORMAT binary)", self.column_list(""))
    }

    /// Locks the stage's keys for the transaction, in one order (no deadlock between two
    /// writers): a tombstone and a record of one key are applied one after the other. Keys are
    /// locked by hash bucket, [`LOCK_BUCKETS`] at most, so that a window of many keys cannot
    /// fill PostgreSQL's shared lock table (which every other transaction of the server needs).
    pub fn lock_stage_keys(&self, lock_space: i32) -> String {
        lock_buckets(&lock_space.to_string(), "\"key\"", STAGE)
    }

    /// From the stage into the table. Upsert: one row per key, the window's latest (a window
    /// holds one source partition's records), replacing a row only with a record that comes
    /// [`after`] it, and never over a tombstone that comes after the record. Append: rows new by
    /// origin.
    pub fn merge(&self) -> String {
        let (table, cols) = (quote(&self.name), self.column_list(""));
        match self.mode {
            PgMode::Append => {
                format!("INSERT INTO {table} ({cols}) SELECT {cols} FROM {STAGE} ON CONFLICT ({APPEND_KEY}) DO NOTHING")
            }
            PgMode::Upsert => {
                let set: Vec<String> = (self.columns.iter().filter(|c| c.name != "key"))
                    .map(|c| format!("{0} = EXCLUDED.{0}", quote(&c.name)))
                    .collect();
                format!(
                    "INSERT INTO {table} AS t ({cols}) \
                     SELECT DISTINCT ON (s.\"key\") {scols} FROM {STAGE} AS s \
                     WHERE NOT EXISTS (SELECT 1 FROM {tomb} AS d WHERE d.\"key\" = s.\"key\" AND {tomb_after}) \
                     ORDER BY s.\"key\", s.\"offset\" DESC \
                     ON CONFLICT (\"key\") DO UPDATE SET {set} WHERE {record_after}",
                    scols = self.column_list("s."),
                    tomb = quote(&self.tombstones()),
                    tomb_after = after("d", "s"),
                    record_after = after("EXCLUDED", "t"),
                    set = set.join(", "),
                )
            }
        }
    }

    /// The fingerprints of the rows of keys `$1` (`skip_unchanged`): one lookup by the primary key
    /// per window.
    pub fn last_inputs(&self) -> String {
        format!(
            "SELECT \"key\", {INPUT_HASH} FROM {} WHERE \"key\" = ANY($1::text[]) AND {INPUT_HASH} IS NOT NULL",
            quote(&self.name)
        )
    }

    /// Tombstones of one window: their keys locked (`$1` keys, `$2` the lock space), the latest
    /// tombstone per key remembered (`$1` keys, `$2` topics, `$3` topic ids, `$4` partitions,
    /// `$5` offsets, `$6` Kafka timestamps), and rows that come before it deleted (`$1` keys).
    pub fn delete(&self) -> [String; 3] {
        let (table, tomb) = (quote(&self.name), quote(&self.tombstones()));
        [
            lock_buckets("$2", "k", "unnest($1::text[]) AS k"),
            format!(
                "INSERT INTO {tomb} AS d (\"key\", \"topic\", \"topic_id\", \"partition\", \"offset\", \"kafka_timestamp\") \
                 SELECT DISTINCT ON (u.\"key\") u.* \
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[], $5::int8[], $6::timestamptz[]) \
                   AS u(\"key\", \"topic\", \"topic_id\", \"partition\", \"offset\", \"kafka_timestamp\") \
                 ORDER BY u.\"key\", u.\"offset\" DESC \
                 ON CONFLICT (\"key\") DO UPDATE SET \"topic\" = EXCLUDED.\"topic\", \"topic_id\" = EXCLUDED.\"topic_id\", \
                   \"partition\" = EXCLUDED.\"partition\", \"offset\" = EXCLUDED.\"offset\", \
                   \"kafka_timestamp\" = EXCLUDED.\"kafka_timestamp\", \"deleted_at\" = now() \
                 WHERE {tomb_after}",
                tomb_after = after("EXCLUDED", "d"),
            ),
            format!(
                "DELETE FROM {table} AS t USING {tomb} AS d \
                 WHERE t.\"key\" = ANY($1::text[]) AND d.\"key\" = t.\"key\" AND NOT ({row_after})",
                row_after = after("t", "d"),
            ),
        ]
    }
}

/// `columns` (name, SQL definition) as a `CREATE TABLE`'s column list.
pub fn column_definitions(columns: &[(&str, &str)]) -> String {
    columns.iter().map(|(name, def)| format!("{} {def}", quote(name))).collect::<Vec<_>>().join(", ")
}

/// Columns of the tombstones table that earlier versions did not make: added to a table made
/// before them ([`super::add_missing_columns`]).
pub const TOMBSTONE_COLUMNS_ADDED: &[(&str, &str)] = &[
    ("deleted_at", "timestamp with time zone NOT NULL DEFAULT now()"),
    ("topic_id", "text NOT NULL DEFAULT ''"),
    ("kafka_timestamp", "timestamp with time zone"),
];

/// The column of the sink's table that earlier versions did not make (rows there have none:
/// they are ordered against new ones by timestamp, [`after`]).
pub const TABLE_COLUMNS_ADDED: &[(&str, &str)] = &[("topic_id", "text NOT NULL DEFAULT ''")];

/// An append table's unique key: a record's place in the source, in its topic's incarnation
/// (offsets count from 0 again in a topic deleted and created again).
const APPEND_KEY: &str = "\"topic\", \"topic_id\", \"partition\", \"offset\"";

/// SQL that is true when the record or tombstone `a` comes after `b` (two aliases of rows with
/// the sink's origin columns), the order an upsert table keeps:
/// - in one partition of one topic incarnation, the later offset: Kafka's own order, whatever
///   the producers' clocks say;
/// - otherwise (another partition, a topic deleted and created again, another cluster, another
///   topic), the later Kafka timestamp, then topic, topic id, partition and offset, so that
///   every writer picks the same one. A record without a timestamp comes first.
///
/// A key moved to another partition (partitions added) is therefore ordered by its records'
/// timestamps across the move, and a topic created again comes after the old one as long as
/// its records' timestamps are later.
pub fn after(a: &str, b: &str) -> String {
    let origin = |x: &str| {
        format!(
            "(coalesce({x}.\"kafka_timestamp\", '-infinity'), {x}.\"topic\", {x}.\"topic_id\", {x}.\"partition\", {x}.\"offset\")"
        )
    };
    format!(
        "(CASE WHEN {a}.\"topic\" = {b}.\"topic\" AND {a}.\"topic_id\" = {b}.\"topic_id\" \
           AND {a}.\"partition\" = {b}.\"partition\" THEN {a}.\"offset\" > {b}.\"offset\" ELSE {} > {} END)",
        origin(a),
        origin(b)
    )
}

/// Rows a table holds before the driver builds its IVFFlat index (pgvector's advice: build it
/// once there is data, with a list per thousand rows).
pub const IVFFLAT_MIN_ROWS: i64 = 1_000;

/// The IVFFlat index of vector column `column` of `table`, with `lists` lists, built without
/// blocking the writers (`CONCURRENTLY`: outside any transaction).
pub fn create_ivfflat(table: &str, column: &str, ops: &str, lists: i64) -> String {
    format!(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} USING ivfflat ({} {ops}) WITH (lists = {lists})",
        index_name(table, column, "ivfflat"),
        quote(table),
        quote(column)
    )
}

/// The tombstones table of upsert table `table`.
pub fn tombstones_of(table: &str) -> String {
    format!("{table}_tombstones")
}

/// Forgets the tombstones of upsert table `table` written longer than
/// `sink.tombstone_retention` ago (`$1`, in seconds).
pub fn prune_tombstones(table: &str) -> String {
    format!(
        "DELETE FROM {} WHERE \"deleted_at\" < now() - make_interval(secs => $1::float8)",
        quote(&tombstones_of(table))
    )
}

/// Locks, for the transaction, the hash buckets of the keys `key` (an expression over `from`) in
/// the advisory-lock space `space`, in bucket order (two writers never deadlock).
fn lock_buckets(space: &str, key: &str, from: &str) -> String {
    format!(
        "SELECT pg_advisory_xact_lock({space}, h) FROM \
         (SELECT DISTINCT hashtext({key}) & {mask} AS h FROM {from} ORDER BY 1) AS l",
        mask = LOCK_BUCKETS - 1
    )
}

/// The name of the index of `column` of `table` by `method` (`items_embedding_hnsw`): the
/// table's name without its schema, as PostgreSQL puts an index in its table's schema.
fn index_name(table: &str, column: &str, method: &str) -> String {
    let bare = table.rsplit('.').next().unwrap_or(table);
    quote(&format!("{bare}_{column}_{method}"))
}

/// Hash buckets the keys of a table are locked by (a power of two): a window takes at most this
/// many advisory locks, whatever its number of keys.
pub const LOCK_BUCKETS: i32 = 128;

/// The advisory-lock space of a table's keys: its name hashed (FNV-1a), so two tables' locks
/// do not meet.
pub fn lock_space(table: &str) -> i32 {
    let hash = table.bytes().fold(0x811c9dc5u32, |h, b| (h ^ b as u32).wrapping_mul(0x01000193));
    hash as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mode: &str) -> PgvectorSinkSpec {
        toml::from_str(&format!("url = \"postgresql://u@h/d\"\ntable = \"s.items\"\nmode = \"{mode}\"")).unwrap()
    }

    fn price() -> FieldColumn {
        FieldColumn { name: "price".into(), ty: FieldType::Double }
    }

    #[test]
    fn an_existing_table_is_checked_column_by_column() {
        let def = TableDef::new(&spec("upsert"), &[Output::single("minilm", "0123456789ab", 384)], &[price()], false);
        let mut existing: Vec<(String, String)> =
            def.columns.iter().map(|c| (c.name.clone(), c.sql_type.clone())).collect();
        assert_eq!(def.misfit(&existing), None);
        existing.iter_mut().find(|(n, _)| n == "embedding").unwrap().1 = "vector(768)".into();
        assert_eq!(
            def.misfit(&existing).unwrap(),
            "column `embedding` is vector(768), but the model `minilm` gives vector(384)"
        );
        existing.iter_mut().find(|(n, _)| n == "embedding").unwrap().1 = "vector(384)".into();
        existing.iter_mut().find(|(n, _)| n == "price").unwrap().1 = "text".into();
        assert_eq!(def.misfit(&existing).unwrap(), "column `price` is text, but the sink writes double precision");
        existing.retain(|(n, _)| n != "offset");
        assert_eq!(def.misfit(&existing).unwrap(), "has no column `offset` (the sink writes bigint)");
    }

    #[test]
    fn statements_quote_every_name() {
        let def = TableDef::new(&spec("append"), &[Output::single("m", "0123456789ab", 3)], &[price()], false);
        assert!(def.create()[0].starts_with("CREATE TABLE IF NOT EXISTS \"s\".\"items\" (\"key\" text, "));
        assert!(def.create()[0].contains("\"price\" double precision, PRIMARY KEY"), "a field column is nullable");
        assert!(def.create()[1]
            .contains("\"items_embedding_hnsw\" ON \"s\".\"items\" USING hnsw (\"embedding\" vector_cosine_ops)"));
        assert!(def.merge().ends_with("ON CONFLICT (\"topic\", \"topic_id\", \"partition\", \"offset\") DO NOTHING"));
        let upsert = TableDef::new(&spec("upsert"), &[Output::single("m", "0123456789ab", 3)], &[], true);
        assert_eq!(upsert.create().len(), 3, "table, index, tombstones");
        assert!(upsert.merge().contains("\"s\".\"items_tombstones\""));
        assert!(
            upsert.create()[0].contains("\"input_hash\" text,"),
            "a nullable fingerprint: rows written before have none"
        );
        assert!(upsert.merge().contains("\"input_hash\" = EXCLUDED.\"input_hash\""));
    }
}
