//! `[input]`: what a record's value is (plain text, JSON, or Avro or Protobuf in the Confluent
//! wire format with their schemas in a Schema Registry, `[input.schema_registry]`) and the
//! named fields that models take their input from: JSON pointers into the value (the decoded
//! record, for Avro and Protobuf), which ones are required, and the fields every record has
//! (`key`, `value`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::kafka::{PropertyValue, SecretRef};
use super::units::HumanDuration;
use super::SpecError;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    /// The value is the text (UTF-8).
    #[default]
    Text,
    /// The value is a JSON document; `fields` name the parts of it that models read.
    Json,
    /// Avro in the Confluent wire format (a zero byte, the writer schema's id in 4 bytes
    /// big-endian, the Avro binary body); `fields` point into the record as JSON.
    Avro,
    /// Protobuf in the Confluent wire format (a zero byte, the schema id, the message indexes,
    /// the message); `fields` point into the message as JSON.
    Protobuf,
}

impl InputFormat {
    /// Whether values carry a schema id that the registry resolves.
    pub fn uses_registry(self) -> bool {
        matches!(self, InputFormat::Avro | InputFormat::Protobuf)
    }

    /// Whether `fields` can point into the value.
    pub fn has_fields(self) -> bool {
        self != InputFormat::Text
    }
}

/// The type of a field written as a column beside the vectors (`[sink] columns`), from
/// `[input.types]`: the Parquet/Delta column's type, the pgvector column's SQL type, the JSON
/// output's value. A record whose field is not of its type (a `price` of `"cheap"`) goes to the
/// dead-letter topic, naming the field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    /// A string as it is; a number, boolean, object or array as its JSON text.
    #[default]
    Text,
    /// A 64-bit integer: a JSON integer, or a string that is one.
    Bigint,
    /// A 64-bit float: a JSON number, or a string that is one.
    Double,
    /// `true` or `false` (or the strings).
    Boolean,
    /// An instant, UTC: a number of milliseconds since the epoch (Avro's `timestamp-millis`),
    /// or an RFC 3339 string (`2026-12-07T10:00:00Z`, Protobuf's `Timestamp`).
    Timestamp,
}

impl FieldType {
    /// Its name in the spec.
    pub fn name(self) -> &'static str {
        match self {
            FieldType::Text => "text",
            FieldType::Bigint => "bigint",
            FieldType::Double => "double",
            FieldType::Boolean => "boolean",
            FieldType::Timestamp => "timestamp",
        }
    }
}

/// A field the sink writes as a column of its own, with its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldColumn {
    pub name: String,
    pub ty: FieldType,
}

/// Names the sinks give their own columns: a field written beside the vectors takes none of
/// them (nor `embedding_*`, the vector columns of several models).
pub const SINK_COLUMN_NAMES: [&str; 11] = [
    "key",
    "value",
    "topic",
    "topic_id",
    "partition",
    "offset",
    "timestamp_ms",
    "kafka_timestamp",
    "model",
    "embedding",
    "origin",
];

/// `[input.schema_registry]`: a Confluent-compatible Schema Registry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRegistrySpec {
    /// Its base URL, which may have a path (`http://registry:8081`,
    /// `https://apicurio/apis/ccompat/v7`); `/schemas/ids/{id}` is appended.
    pub url: String,
    /// HTTP basic authentication: the user, with `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// `{ file = "..." }` or `{ env = "..." }`, never written in the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<PropertyValue>,
    /// A PEM file of the CA that signed an `https` registry's certificate (else the system's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// How long an executor retries a registry that does not answer before the task fails (and
    /// is retried by the driver, as any failed task). Default "30s".
    #[serde(default = "default_registry_retry")]
    pub retry_for: HumanDuration,
}

fn default_registry_retry() -> HumanDuration {
    HumanDuration::parse("30s").expect("a valid duration")
}

impl SchemaRegistrySpec {
    /// The password's source, if the spec names one.
    pub fn password_ref(&self) -> Option<&SecretRef> {
        match &self.password {
            Some(PropertyValue::Secret(r)) => Some(r),
            _ => None,
        }
    }

    pub(crate) fn password_mut(&mut self) -> Option<&mut SecretRef> {
        match &mut self.password {
            Some(PropertyValue::Secret(r)) => Some(r),
            _ => None,
        }
    }

    fn validate(&self) -> Result<(), SpecError> {
        let (scheme, rest) = self.url.split_once("://").unwrap_or(("", ""));
        if !matches!(scheme, "http" | "https") || rest.is_empty() {
            return Err(SpecError::new(
                "input.schema_registry.url",
                format!("`{}` is not an http:// or https:// URL", self.url),
            ));
        }
        if rest.split('/').next().is_some_and(|authority| authority.contains('@')) {
            return Err(SpecError::new(
                "input.schema_registry.url",
                "carries a user or password: set input.schema_registry.username and password = { file = \"...\" }",
            ));
        }
        if let Some(PropertyValue::Plain(_)) = &self.password {
            return Err(SpecError::new(
                "input.schema_registry.password",
                "must be { file = \"PATH\" } or { env = \"VARIABLE\" }: a password is never written in the spec",
            ));
        }
        if self.username.is_some() != self.password.is_some() {
            return Err(SpecError::new(
                "input.schema_registry.username",
                "basic authentication takes both username and password",
            ));
        }
        if self.ca.is_some() && scheme != "https" {
            return Err(SpecError::new("input.schema_registry.ca", "is for an https:// registry"));
        }
        Ok(())
    }
}

/// The fields every record has, whatever `[input]` says: its Kafka key and its whole value, as
/// UTF-8 text.
pub const BUILTIN_FIELDS: [&str; 2] = ["key", "value"];

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    #[serde(default)]
    pub format: InputFormat,
    /// Field name to JSON pointer (RFC 6901: `/title`, `/images/0/url`), for JSON, Avro and
    /// Protobuf values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
    /// Field name to Kafka header name (`source = "x-source"`): the header's value as UTF-8
    /// text, absent if the record has no such header (the first, if it has several). Any
    /// format.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Fields a record must have (present, not null, a string): a record without one goes to
    /// the dead-letter topic. Other fields may be absent and are then empty in a template.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required: Vec<String>,
    /// Where Avro and Protobuf values' schemas are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_registry: Option<SchemaRegistrySpec>,
    /// Field name to its type where `[sink] columns` writes it (default text).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub types: BTreeMap<String, FieldType>,
}

/// A field name: what a template writes between braces.
pub(crate) fn is_field_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl InputSpec {
    /// Whether `name` is a field records of this input have.
    pub fn has_field(&self, name: &str) -> bool {
        BUILTIN_FIELDS.contains(&name) || self.fields.contains_key(name) || self.headers.contains_key(name)
    }

    /// `names` (the sink's `columns` but `value`) with their types.
    pub fn field_columns<'a>(&self, names: impl IntoIterator<Item = &'a String>) -> Vec<FieldColumn> {
        (names.into_iter().filter(|n| n.as_str() != "value"))
            .map(|n| FieldColumn { name: n.clone(), ty: self.types.get(n).copied().unwrap_or_default() })
            .collect()
    }

    /// Checks `[sink] columns` (`key` the error's key) against the fields records have.
    pub(super) fn validate_columns(&self, columns: &[String], key: &str) -> Result<(), SpecError> {
        let mut seen = std::collections::BTreeSet::new();
        for c in columns {
            if !seen.insert(c) {
                return Err(SpecError::new(key, format!("`{c}` is named twice")));
            }
            if c == "value" {
                continue;
            }
            if c == "key" {
                return Err(SpecError::new(key, "`key` is a column of every sink already"));
            }
            if !self.has_field(c) {
                return Err(SpecError::new(
                    key,
                    format!("`{c}` is not a field: name one of input.fields or input.headers, or \"value\""),
                ));
            }
            if SINK_COLUMN_NAMES.contains(&c.as_str())
                || c.starts_with("embedding_")
                || ["chunk", "token_start", "token_end"].contains(&c.as_str())
            {
                return Err(SpecError::new(
                    key,
                    format!("field `{c}` has the name of a column the sink writes itself: rename the field"),
                ));
            }
        }
        Ok(())
    }

    /// The Kafka headers read as fields, in the order of [`InputSpec::headers`].
    pub fn header_names(&self) -> Vec<String> {
        self.headers.values().cloned().collect()
    }

    /// `registers_output`: the sink registers its output schema in this registry (a Kafka sink
    /// with `format = "avro"`), so a registry is allowed whatever the input's format.
    pub(super) fn validate(&self, registers_output: bool) -> Result<(), SpecError> {
        if !self.format.has_fields() && !self.fields.is_empty() {
            return Err(SpecError::new(
                "input.fields",
                "fields are JSON pointers: they need input.format = \"json\", \"avro\" or \"protobuf\" (a text record has `key` and `value`)",
            ));
        }
        match (&self.schema_registry, self.format.uses_registry()) {
            (None, true) => {
                return Err(SpecError::new(
                    "input.schema_registry",
                    "Avro and Protobuf values name their schema by id: set input.schema_registry.url",
                ))
            }
            (Some(_), false) if !registers_output => {
                return Err(SpecError::new(
                    "input.schema_registry",
                    "is for input.format = \"avro\" or \"protobuf\", or a Kafka sink's format = \"avro\"",
                ))
            }
            (Some(r), _) => r.validate()?,
            (None, false) => {}
        }
        for (name, pointer) in &self.fields {
            let key = format!("input.fields.{name}");
            if !is_field_name(name) {
                return Err(SpecError::new(&key, "a field name is letters, digits and '_', not starting with a digit"));
            }
            if BUILTIN_FIELDS.contains(&name.as_str()) {
                return Err(SpecError::new(&key, format!("`{name}` is a field of every record already")));
            }
            if !pointer.is_empty() && !pointer.starts_with('/') {
                return Err(SpecError::new(
                    &key,
                    format!("`{pointer}` is not a JSON pointer: it starts with '/', as in \"/title\""),
                ));
            }
        }
        for (name, header) in &self.headers {
            let key = format!("input.headers.{name}");
            if !is_field_name(name) {
                return Err(SpecError::new(&key, "a field name is letters, digits and '_', not starting with a digit"));
            }
            if BUILTIN_FIELDS.contains(&name.as_str()) || self.fields.contains_key(name) {
                return Err(SpecError::new(&key, format!("`{name}` is a field already")));
            }
            if header.is_empty() {
                return Err(SpecError::new(&key, "must name a Kafka header"));
            }
        }
        for name in self.types.keys() {
            if !self.has_field(name) || BUILTIN_FIELDS.contains(&name.as_str()) {
                return Err(SpecError::new(
                    &format!("input.types.{name}"),
                    format!("`{name}` is not a field of input.fields or input.headers"),
                ));
            }
        }
        for name in &self.required {
            if !self.has_field(name) {
                return Err(SpecError::new(
                    "input.required",
                    format!("`{name}` is not a field: name one of input.fields or input.headers (or key, value)"),
                ));
            }
        }
        Ok(())
    }
}
