//! A Confluent-compatible Schema Registry, as a reader of schemas by id
//! (`GET {url}/schemas/ids/{id}`) for the executors' decoders, and as where the Kafka sink's
//! Avro output schema is registered (`POST {url}/subjects/{subject}/versions`), over HTTP or
//! HTTPS with optional basic authentication.
//!
//! What the registry answers decides what happens to the records that name an id:
//! - the schema: they are decoded with it;
//! - "no such schema" (HTTP 404 with Confluent's `error_code` 40403): they are bad records, and
//!   go to the dead-letter topic with that reason;
//! - nothing (refused connection, timeout, HTTP 5xx, 408 or 429): an outage, retried with
//!   backoff for `input.schema_registry.retry_for`, then the task fails retryably. Good records
//!   are never dead-lettered because the registry was down;
//! - anything else (401, 403, a 404 that is not Confluent's, a body that is not a schema): the
//!   registry cannot serve this query as configured, and the task fails with that answer.

use std::time::{Duration, Instant};

use embedstream_core::spec::input::SchemaRegistrySpec;
use embedstream_core::spec::{FieldType, Secret};
use serde::Deserialize;

/// How long one request may take before it counts as unanswered.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Confluent's error code for a schema id the registry does not have.
const SCHEMA_NOT_FOUND: u64 = 40403;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("input.schema_registry.ca: cannot read {path}: {reason}")]
    Ca { path: String, reason: String },
    #[error("input.schema_registry: {0}")]
    Client(String),
    #[error("the schema registry at {url} did not answer for {waited:?} (schema id {id}): {reason}")]
    Unavailable { url: String, id: u32, waited: Duration, reason: String },
    #[error("the schema registry at {url} refused schema id {id}: {reason}")]
    Refused { url: String, id: u32, reason: String },
    /// The output schema could not be registered under `subject` (incompatible with the
    /// subject's versions under its compatibility level, invalid, or the registry unreachable).
    #[error("the schema registry at {url} did not register the output schema under subject {subject}: {reason}")]
    Register { url: String, subject: String, reason: String },
}

/// A schema as the registry serves it.
#[derive(Debug, Clone, Deserialize)]
pub struct RegisteredSchema {
    pub schema: String,
    /// `AVRO` (Confluent leaves it out for Avro), `PROTOBUF` or `JSON`.
    #[serde(rename = "schemaType", default = "avro")]
    pub kind: String,
    #[serde(default)]
    pub references: Vec<Reference>,
    /// Set in a subject's version (`/subjects/{subject}/versions/latest`), not by id.
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub version: Option<i64>,
    #[serde(default)]
    pub id: Option<u32>,
}

fn avro() -> String {
    "AVRO".into()
}

/// Another subject's schema that a schema imports (a Protobuf `import`, an Avro named type).
#[derive(Debug, Clone, Deserialize)]
pub struct Reference {
    pub name: String,
    pub subject: String,
    pub version: i64,
}

/// What the registry said about one id.
#[derive(Debug, Clone)]
pub enum Lookup {
    Found(RegisteredSchema),
    /// The registry has no schema of this id: the reason a record naming it is dead-lettered.
    Unknown(String),
}

pub struct Registry {
    base: String,
    client: reqwest::Client,
    auth: Option<(String, Secret)>,
    retry_for: Duration,
}

impl Registry {
    pub fn new(spec: &SchemaRegistrySpec, password: Option<&Secret>) -> Result<Registry, RegistryError> {
        let mut builder = reqwest::Client::builder().use_rustls_tls().timeout(REQUEST_TIMEOUT);
        if let Some(ca) = &spec.ca {
            let fail = |reason: String| RegistryError::Ca { path: ca.display().to_string(), reason };
            let pem = std::fs::read(ca).map_err(|e| fail(e.to_string()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| fail(e.to_string()))? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().map_err(|e| RegistryError::Client(e.to_string()))?;
        let auth = spec.username.clone().zip(password.cloned());
        Ok(Registry { base: spec.url.trim_end_matches('/').to_string(), client, auth, retry_for: spec.retry_for.get() })
    }

    /// The schema of `id`, retrying an outage for `retry_for`.
    pub async fn schema(&self, id: u32) -> Result<Lookup, RegistryError> {
        self.ask_until_answered(&format!("{}/schemas/ids/{id}", self.base), id).await
    }

    /// The schema a reference names (`/subjects/{subject}/versions/{version}`), retried as
    /// [`Registry::schema`]; `id` is the schema that refers to it, for messages.
    pub async fn referenced(&self, reference: &Reference, id: u32) -> Result<Lookup, RegistryError> {
        let url = format!("{}/subjects/{}/versions/{}", self.base, encode(&reference.subject), reference.version);
        Ok(match self.ask_until_answered(&url, id).await? {
            Lookup::Unknown(reason) => Lookup::Unknown(format!(
                "schema id {id} refers to {} version {}, which the registry does not have: {reason}",
                reference.subject, reference.version
            )),
            found => found,
        })
    }

    /// The latest version of `subject` (`None` if the registry has no such subject), asked
    /// once: for `validate --check-broker`, which reports rather than waits.
    pub async fn latest(&self, subject: &str) -> Result<Option<RegisteredSchema>, RegistryError> {
        let url = format!("{}/subjects/{}/versions/latest", self.base, encode(subject));
        match self.ask(&url, 0).await? {
            Answer::Schema(s) => Ok(Some(s)),
            Answer::NotFound(_) => Ok(None),
            Answer::Silent(reason) => {
                Err(RegistryError::Unavailable { url: self.base.clone(), id: 0, waited: Duration::ZERO, reason })
            }
        }
    }

    /// Registers the Avro schema `schema` under `subject` (or finds it there: registering a
    /// schema the subject has is idempotent) and gives its id. The subject's compatibility
    /// level decides: an incompatible schema is refused (HTTP 409) and named in the error. A
    /// registry that does not answer is retried for `retry_for`.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let url = format!("{}/subjects/{}/versions", self.base, encode(subject));
        let fail = |reason: String| RegistryError::Register { url: self.base.clone(), subject: subject.into(), reason };
        let started = Instant::now();
        let mut pause = Duration::from_millis(200);
        loop {
            let mut request = (self.client.post(&url))
                .header("Content-Type", "application/vnd.schemaregistry.v1+json")
                .body(serde_json::json!({ "schema": schema, "schemaType": "AVRO" }).to_string());
            if let Some((user, password)) = &self.auth {
                request = request.basic_auth(user, Some(password.expose()));
            }
            let silent = match request.send().await {
                Err(e) => error_chain(&e),
                Ok(response) => {
                    let status = response.status();
                    let body = response.bytes().await.map_err(|e| fail(error_chain(&e)))?;
                    let text = String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned();
                    if status.is_success() {
                        let id = serde_json::from_slice::<serde_json::Value>(&body).ok().and_then(|v| v["id"].as_u64());
                        return id.map(|id| id as u32).ok_or_else(|| fail(format!("its answer has no id: {text}")));
                    }
                    if !(status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429) {
                        let why = match status.as_u16() {
                            409 => {
                                "the schema is incompatible with the subject's versions under its compatibility level"
                            }
                            422 => "the registry finds the schema invalid",
                            _ => "the registry refused it",
                        };
                        return Err(fail(format!("{why} (HTTP {status}: {text})")));
                    }
                    format!("HTTP {status}: {text}")
                }
            };
            let waited = started.elapsed();
            if waited >= self.retry_for {
                return Err(fail(format!("no answer for {waited:?}: {silent}")));
            }
            tracing::warn!(url = %self.base, subject, reason = %silent, "the schema registry did not answer; retrying");
            tokio::time::sleep(pause.min(self.retry_for.saturating_sub(waited))).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    /// The latest version of `subject`, `None` if it has none, retrying an outage for
    /// `retry_for` (the driver types columns with it before anything starts).
    pub async fn latest_until_answered(&self, subject: &str) -> Result<Option<RegisteredSchema>, RegistryError> {
        let url = format!("{}/subjects/{}/versions/latest", self.base, encode(subject));
        Ok(match self.ask_until_answered(&url, 0).await? {
            Lookup::Found(s) => Some(s),
            Lookup::Unknown(_) => None,
        })
    }

    /// GET `url` until the registry answers, backing off, for at most `retry_for`.
    async fn ask_until_answered(&self, url: &str, id: u32) -> Result<Lookup, RegistryError> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(200);
        loop {
            match self.ask(url, id).await? {
                Answer::Schema(s) => return Ok(Lookup::Found(s)),
                Answer::NotFound(reason) => return Ok(Lookup::Unknown(reason)),
                Answer::Silent(reason) => {
                    let waited = started.elapsed();
                    if waited >= self.retry_for {
                        return Err(RegistryError::Unavailable { url: self.base.clone(), id, waited, reason });
                    }
                    tracing::warn!(url = %self.base, id, %reason, "the schema registry did not answer; retrying");
                    tokio::time::sleep(pause.min(self.retry_for.saturating_sub(waited))).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn ask(&self, url: &str, id: u32) -> Result<Answer, RegistryError> {
        let mut request =
            self.client.get(url).header("Accept", "application/vnd.schemaregistry.v1+json, application/json");
        if let Some((user, password)) = &self.auth {
            request = request.basic_auth(user, Some(password.expose()));
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return Ok(Answer::Silent(error_chain(&e))),
        };
        let status = response.status();
        let body = match response.bytes().await {
            Ok(b) => b,
            Err(e) => return Ok(Answer::Silent(error_chain(&e))),
        };
        let text = || String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        if status.is_success() {
            return serde_json::from_slice(&body).map(Answer::Schema).map_err(|e| RegistryError::Refused {
                url: self.base.clone(),
                id,
                reason: format!("its answer is not a schema ({e}): {}", text()),
            });
        }
        if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
            return Ok(Answer::Silent(format!("HTTP {status}: {}", text())));
        }
        let code = serde_json::from_slice::<serde_json::Value>(&body).ok().and_then(|v| v["error_code"].as_u64());
        if status.as_u16() == 404 && code.is_some_and(|c| c == SCHEMA_NOT_FOUND || c == 40401 || c == 40402) {
            return Ok(Answer::NotFound(format!("schema id {id} is not in the registry ({})", text())));
        }
        Err(RegistryError::Refused { url: self.base.clone(), id, reason: format!("HTTP {status}: {}", text()) })
    }
}

enum Answer {
    Schema(RegisteredSchema),
    NotFound(String),
    Silent(String),
}

/// An error with its causes, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A subject name in a URL path (subjects may hold `/`, `:` and spaces).
fn encode(subject: &str) -> String {
    subject
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The column type (`[input.types]`) of the field at JSON `pointer` in records of the Avro
/// schema `schema` (its JSON): string and enum are text; int and long bigint (a long with
/// `timestamp-millis` a timestamp); float and double double; boolean boolean. A union of null
/// and one type is that type. `None` for anything else (records, arrays, maps, bytes, unions
/// of several types, a pointer the schema does not have): the column is then text.
pub fn avro_field_type(schema: &serde_json::Value, pointer: &str) -> Option<FieldType> {
    let mut named = std::collections::HashMap::new();
    collect_named(schema, None, &mut named);
    let mut at = schema;
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        at = resolve(at, &named)?;
        at = match at.get("type").and_then(|t| t.as_str()) {
            Some("record") => {
                let fields = at.get("fields")?.as_array()?;
                &fields.iter().find(|f| f.get("name").and_then(|n| n.as_str()) == Some(segment.as_str()))?["type"]
            }
            Some("array") if segment.parse::<usize>().is_ok() => at.get("items")?,
            Some("map") => at.get("values")?,
            _ => return None,
        };
    }
    let leaf = resolve(at, &named)?;
    let logical = leaf.get("logicalType").and_then(|l| l.as_str());
    let primitive = leaf.as_str().or_else(|| leaf.get("type").and_then(|t| t.as_str()))?;
    Some(match (primitive, logical) {
        ("long", Some("timestamp-millis")) => FieldType::Timestamp,
        ("long" | "int", Some(_)) => return None,
        ("string" | "enum", _) => FieldType::Text,
        ("int" | "long", None) => FieldType::Bigint,
        ("float" | "double", _) => FieldType::Double,
        ("boolean", _) => FieldType::Boolean,
        _ => return None,
    })
}

/// `schema` with a union of null and one type taken as that type, and a named type's name as
/// its definition.
fn resolve<'s>(
    schema: &'s serde_json::Value,
    named: &std::collections::HashMap<String, &'s serde_json::Value>,
) -> Option<&'s serde_json::Value> {
    match schema {
        serde_json::Value::Array(union) => {
            let mut types = union.iter().filter(|t| t.as_str() != Some("null"));
            match (types.next(), types.next()) {
                (Some(one), None) => resolve(one, named),
                _ => None,
            }
        }
        serde_json::Value::String(name) if !PRIMITIVES.contains(&name.as_str()) => named.get(name.as_str()).copied(),
        serde_json::Value::Object(o) if o.get("type").is_some_and(|t| !t.is_string()) => resolve(&o["type"], named),
        other => Some(other),
    }
}

const PRIMITIVES: [&str; 8] = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"];

/// Every record, enum and fixed defined in `schema`, by its name and its full name.
fn collect_named<'s>(
    schema: &'s serde_json::Value,
    namespace: Option<&'s str>,
    named: &mut std::collections::HashMap<String, &'s serde_json::Value>,
) {
    match schema {
        serde_json::Value::Array(union) => union.iter().for_each(|t| collect_named(t, namespace, named)),
        serde_json::Value::Object(o) => {
            let namespace = o.get("namespace").and_then(|n| n.as_str()).or(namespace);
            if let (Some(name), Some("record" | "enum" | "fixed")) =
                (o.get("name").and_then(|n| n.as_str()), o.get("type").and_then(|t| t.as_str()))
            {
                named.insert(name.to_string(), schema);
                if let Some(ns) = namespace {
                    named.insert(format!("{ns}.{name}"), schema);
                }
            }
            for key in ["type", "items", "values"] {
                if let Some(inner) = o.get(key) {
                    collect_named(inner, namespace, named);
                }
            }
            for field in o.get("fields").and_then(|f| f.as_array()).into_iter().flatten() {
                collect_named(&field["type"], namespace, named);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avro_schemas_type_the_fields_they_hold() {
        let schema = serde_json::json!({
            "type": "record", "name": "Product", "namespace": "shop",
            "fields": [
                {"name": "title", "type": "string"},
                {"name": "details", "type": ["null", {"type": "record", "name": "Details", "fields": [
                    {"name": "price", "type": "double"},
                    {"name": "stock", "type": ["null", "int"]}
                ]}]},
                {"name": "listed", "type": {"type": "long", "logicalType": "timestamp-millis"}},
                {"name": "seen", "type": {"type": "long", "logicalType": "timestamp-micros"}},
                {"name": "attributes", "type": {"type": "map", "values": "boolean"}},
                {"name": "tags", "type": {"type": "array", "items": {"type": "enum", "name": "Tag", "symbols": ["A"]}}},
                {"name": "previous", "type": ["null", "shop.Details"]},
                {"name": "either", "type": ["string", "long"]}
            ]
        });
        let ty = |p: &str| avro_field_type(&schema, p);
        assert_eq!(ty("/title"), Some(FieldType::Text));
        assert_eq!(ty("/details/price"), Some(FieldType::Double));
        assert_eq!(ty("/details/stock"), Some(FieldType::Bigint));
        assert_eq!(ty("/listed"), Some(FieldType::Timestamp));
        assert_eq!(ty("/seen"), None, "microseconds are not the timestamp column's milliseconds");
        assert_eq!(ty("/attributes/new"), Some(FieldType::Boolean));
        assert_eq!(ty("/tags/0"), Some(FieldType::Text));
        assert_eq!(ty("/previous/price"), Some(FieldType::Double), "a named type by its full name");
        assert_eq!(ty("/details"), None, "a record is its JSON text");
        assert_eq!(ty("/either"), None);
        assert_eq!(ty("/missing"), None);
        assert_eq!(ty("/tags/x"), None);
    }
}
