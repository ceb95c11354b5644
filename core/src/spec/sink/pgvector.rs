//! `[sink] kind = "pgvector"`: rows in a PostgreSQL table with a `vector(N)` column per model
//! (pgvector), upserted by Kafka key or appended by (topic, partition, offset), with the batch's
//! end offsets in an offsets table of the same database. The keys are checked here; the
//! connection, the table and the writes are the `embedstream-sinks` crate's.

use serde::{Deserialize, Serialize};

use crate::spec::kafka::{PropertyValue, SecretRef};
use crate::spec::units::HumanDuration;
use crate::spec::SpecError;

/// How rows relate to records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PgMode {
    /// One row per Kafka key: a record replaces its key's row only if it is later in the
    /// key's source partition; a tombstone (null value) deletes it.
    Upsert,
    /// One row per input record, unique on (topic, partition, offset).
    Append,
}

/// The index made on each vector column when the sink creates the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PgIndex {
    Hnsw,
    Ivfflat,
    None,
}

/// The distance the index is built for (pgvector's operator class).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PgDistance {
    /// `<=>`, `vector_cosine_ops`
    Cosine,
    /// `<->`, `vector_l2_ops`
    L2,
    /// `<#>`, `vector_ip_ops`
    Ip,
}

impl PgDistance {
    /// pgvector's operator class for this distance.
    pub fn ops(self) -> &'static str {
        match self {
            PgDistance::Cosine => "vector_cosine_ops",
            PgDistance::L2 => "vector_l2_ops",
            PgDistance::Ip => "vector_ip_ops",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgvectorSinkSpec {
    /// libpq's connection string, as a URL (`postgresql://user@host:5432/db`) or as
    /// `host=... user=... dbname=...`, without the password.
    pub url: String,
    /// `{ file = "..." }` or `{ env = "..." }`; never written in the spec itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<PropertyValue>,
    /// The table, `name` or `schema.name` (letters, digits and `_`).
    pub table: String,
    #[serde(default = "default_mode")]
    pub mode: PgMode,
    /// Creates the table (and its index) if it does not exist.
    #[serde(default = "default_true")]
    pub create_table: bool,
    #[serde(default = "default_index")]
    pub index: PgIndex,
    #[serde(default = "default_distance")]
    pub distance: PgDistance,
    /// Input fields written beside the vectors: "value" (the text) and any of `[input]`'s
    /// fields and headers, typed by `[input.types]`.
    #[serde(default)]
    pub columns: Vec<String>,
    /// Where each query's end offsets are written after each batch, in the same database.
    #[serde(default = "default_offsets_table")]
    pub offsets_table: String,
    /// How long an upsert table remembers a deleted key (`<table>_tombstones`), as Kafka's
    /// `delete.retention.ms` keeps a compacted topic's tombstones: a record older than the
    /// tombstone that arrives later than this (a replay of old data) brings the key back.
    #[serde(default = "default_tombstone_retention")]
    pub tombstone_retention: HumanDuration,
    /// The CA (PEM) the server's certificate must chain to: the connection is then TLS, with
    /// the certificate and the host name checked (libpq's `verify-full`). Without it,
    /// `sslmode=require` in `url` asks for TLS checked against the public CAs; otherwise the
    /// connection is plain, as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<std::path::PathBuf>,
}

fn default_tombstone_retention() -> HumanDuration {
    HumanDuration::parse("7d").expect("a duration")
}

fn default_mode() -> PgMode {
    PgMode::Upsert
}

fn default_true() -> bool {
    true
}

fn default_index() -> PgIndex {
    PgIndex::Hnsw
}

fn default_distance() -> PgDistance {
    PgDistance::Cosine
}

fn default_offsets_table() -> String {
    "embedstream_offsets".into()
}

/// A table name the sink writes into SQL: `name` or `schema.name`, each part a plain identifier
/// (quoted in every statement, so its case is kept).
pub fn is_table_name(name: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.len() <= 48
            && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !p.starts_with(|c: char| c.is_ascii_digit())
    };
    match name.split_once('.') {
        Some((schema, table)) => part(schema) && part(table),
        None => part(name),
    }
}

impl PgvectorSinkSpec {
    /// Whether the text goes into the table beside its vectors.
    pub fn with_value(&self) -> bool {
        self.columns.iter().any(|c| c == "value")
    }

    /// The password's source, if the spec names one.
    pub fn password_ref(&self) -> Option<&SecretRef> {
        match &self.password {
            Some(PropertyValue::Secret(r)) => Some(r),
            _ => None,
        }
    }

    pub(super) fn validate(&self) -> Result<(), SpecError> {
        if self.url.trim().is_empty() {
            return Err(SpecError::new("sink.url", "must not be empty (kind = \"pgvector\")"));
        }
        if url_has_password(&self.url) {
            return Err(SpecError::new(
                "sink.url",
                "carries a password: give it as sink.password = { file = \"...\" } or { env = \"...\" }, \
                 so that it never stands in the spec, a log or a command line",
            ));
        }
        if let Some(PropertyValue::Plain(_)) = &self.password {
            return Err(SpecError::new(
                "sink.password",
                "must be { file = \"PATH\" } or { env = \"VARIABLE\" }: a password is never written in the spec",
            ));
        }
        for (key, name) in [("sink.table", &self.table), ("sink.offsets_table", &self.offsets_table)] {
            if !is_table_name(name) {
                return Err(SpecError::new(
                    key,
                    format!("`{name}`: a table is `name` or `schema.name`, of letters, digits and `_`"),
                ));
            }
        }
        if self.table == self.offsets_table {
            return Err(SpecError::new("sink.offsets_table", "must differ from `sink.table`"));
        }
        if self.tombstone_retention.get() < std::time::Duration::from_secs(60) {
            return Err(SpecError::new("sink.tombstone_retention", "must be at least \"1m\""));
        }
        Ok(())
    }
}

/// Whether a libpq connection string holds a password: `scheme://user:password@...` or a
/// `password=` pair.
fn url_has_password(url: &str) -> bool {
    if let Some((_, rest)) = url.split_once("://") {
        // Everything before the last `@`: a password may hold `/` or `?`, which would end the
        // authority if it were cut there first (and let the password reach logs).
        let user_info = rest.rsplit_once('@').map(|(u, _)| u).unwrap_or_default();
        user_info.contains(':')
            || rest.split_once('?').is_some_and(|(_, q)| q.split('&').any(|p| p.starts_with("password=")))
    } else {
        url.split_whitespace().any(|pair| pair.trim_start().starts_with("password"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_connection_strings_are_found() {
        assert!(url_has_password("postgresql://u:secret@h:5432/db"));
        assert!(url_has_password("postgres://h/db?user=u&password=x"));
        assert!(url_has_password("host=h user=u password=x"));
        let spec = |retention: &str| -> PgvectorSinkSpec {
            toml::from_str(&format!(
                "url = \"postgresql://u@h/d\"\ntable = \"t\"\ntombstone_retention = \"{retention}\""
            ))
            .unwrap()
        };
        assert_eq!(spec("10s").validate().unwrap_err().key, "sink.tombstone_retention");
        assert!(spec("1d").validate().is_ok());
        // Issue 31, item 12: a password holding `/` or `?` slipped past the check.
        assert!(url_has_password("postgresql://u:pa/ss@h:5432/db"));
        assert!(url_has_password("postgresql://u:pa?ss@h:5432/db"));
        assert!(url_has_password("postgresql://u:a/b?c@h/db?sslmode=disable"));
        assert!(!url_has_password("postgresql://u@h:5432/db"));
        assert!(!url_has_password("postgresql://u@[::1]:5432/db?sslmode=disable"));
        assert!(!url_has_password("host=h user=u dbname=d"));
    }

    #[test]
    fn table_names_are_plain_identifiers() {
        assert!(is_table_name("products_embeddings"));
        assert!(is_table_name("search.products"));
        for bad in ["", "a;drop", "a.b.c", "1abc", "x\"y", "a b"] {
            assert!(!is_table_name(bad), "{bad}");
        }
    }
}
