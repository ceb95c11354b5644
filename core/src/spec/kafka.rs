//! Kafka client properties: `[source.kafka]`, `[sink.kafka]` and `[sink.dead_letter_kafka]` pass
//! librdkafka properties by their own names to the clients embedstream makes, as Spark passes
//! its `kafka.`-prefixed options through (`"security.protocol" = "SASL_SSL"`,
//! `"fetch.max.bytes" = 52428800`).
//!
//! A value is a string, an integer or a boolean, or a secret read where a client is made:
//! `{ file = "/etc/embedstream/kafka.pass" }` (the file's text, less one trailing newline) or
//! `{ env = "KAFKA_PASSWORD" }`. The spec keeps the reference, never the value: its TOML, its
//! `Debug` and its errors show `{ file = ... }`, and a read value lives in a [`Secret`] that
//! prints as `<redacted>`. The driver reads the secrets once ([`JobSpec::read_secrets`]) and
//! hands them to its executors over the authenticated gRPC call that hands out the job, so no
//! child needs them in its environment, its argv or a file.
//!
//! Parsing checks each name and plain value with librdkafka itself (no client is made), and
//! refuses the properties embedstream must own, naming the spec key to use instead.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use rdkafka::error::KafkaError;
use rdkafka::ClientConfig;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{JobSpec, SinkKind, SpecError};

/// librdkafka properties by name, in a spec section (`source.kafka`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KafkaProperties(BTreeMap<String, PropertyValue>);

/// One property's value as the spec writes it.
#[derive(Debug, Clone, PartialEq)]
pub enum PropertyValue {
    Plain(String),
    Secret(SecretRef),
}

/// Where a secret value is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    File(PathBuf),
    Env(String),
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::File(p) => write!(f, "file {}", p.display()),
            SecretRef::Env(v) => write!(f, "environment variable {v}"),
        }
    }
}

/// Properties embedstream sets itself, with what to use instead.
const OWNED: &[(&str, &str)] = &[
    ("bootstrap.servers", "set `bootstrap_servers` in the section instead"),
    ("metadata.broker.list", "set `bootstrap_servers` in the section instead"),
    ("group.id", "set `source.group_id` instead"),
    ("enable.auto.commit", "embedstream commits the group's offsets after each batch; the checkpoint decides"),
    ("enable.auto.offset.store", "embedstream commits the group's offsets after each batch; the checkpoint decides"),
    ("auto.offset.reset", "set `source.starting_offsets` and `source.fail_on_data_loss` instead"),
    ("enable.partition.eof", "a task reads exactly its planned offset range"),
    ("isolation.level", "embedstream reads committed records only (read_committed)"),
    ("enable.idempotence", "the sink's producer is always idempotent"),
    ("transactional.id", "set sink.guarantee = \"exactly_once\": embedstream then names each partition's transactions"),
];

/// Properties that make librdkafka run a command (`system()`) or load code into the process:
/// a job spec must not run anything on the hosts that run it. A site that needs one lists it
/// in the operator's allow list ([`OPERATOR_ALLOW_ENV`]), never in the job spec.
const RUNS_CODE: &[(&str, &str)] = &[
    ("sasl.kerberos.kinit.cmd", "runs a shell command"),
    ("plugin.library.paths", "loads a shared library"),
    ("ssl.engine.location", "loads an OpenSSL engine (a shared library)"),
    ("ssl.engine.id", "selects an OpenSSL engine (code loaded into the process)"),
    ("ssl.providers", "loads OpenSSL providers (shared libraries)"),
];

/// Properties that name a file librdkafka reads, and whether the file is a secret.
pub const KAFKA_FILES: &[(&str, bool)] = &[
    ("sasl.kerberos.keytab", true),
    ("ssl.key.location", true),
    ("ssl.keystore.location", true),
    ("ssl.certificate.location", false),
    ("ssl.ca.location", false),
    ("ssl.crl.location", false),
];

/// The operator's allow list of [`RUNS_CODE`] properties, comma-separated, in the environment
/// of the process that checks job specs (the resource manager's or node agent's service, or
/// the user's own shell in local mode): `EMBEDSTREAM_ALLOW_KAFKA_PROPERTIES=ssl.providers`.
pub const OPERATOR_ALLOW_ENV: &str = "EMBEDSTREAM_ALLOW_KAFKA_PROPERTIES";

fn operator_allows(name: &str) -> bool {
    std::env::var(OPERATOR_ALLOW_ENV).is_ok_and(|list| list.split(',').any(|p| p.trim() == name))
}

/// A value placed where a secret goes while names are checked, so librdkafka never sees it.
const SECRET_PLACEHOLDER: &str = "secret";

impl KafkaProperties {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A property's value, if it is set and not a secret.
    pub fn plain(&self, name: &str) -> Option<&str> {
        match self.0.get(name)? {
            PropertyValue::Plain(v) => Some(v),
            PropertyValue::Secret(_) => None,
        }
    }

    /// Refuses owned properties, and names or values librdkafka does not take, with its own
    /// message. `section` is the spec key of the table (`source.kafka`).
    pub(crate) fn validate(&self, section: &str) -> Result<(), SpecError> {
        for (name, value) in &self.0 {
            let key = format!("{section}.\"{name}\"");
            if let Some((_, instead)) = OWNED.iter().find(|(owned, _)| owned == name) {
                return Err(SpecError::new(&key, format!("is set by embedstream: {instead}")));
            }
            if let Some((_, what)) = RUNS_CODE.iter().find(|(p, _)| p.eq_ignore_ascii_case(name)) {
                if !operator_allows(name) {
                    return Err(SpecError::new(
                        &key,
                        format!(
                            "{what}, which a job spec may not do; an operator who needs it lists it in {OPERATOR_ALLOW_ENV} of the service that checks specs"
                        ),
                    ));
                }
            }
            let plain = match value {
                PropertyValue::Plain(v) => v.as_str(),
                PropertyValue::Secret(_) => SECRET_PLACEHOLDER,
            };
            let mut config = ClientConfig::new();
            config.set(name, plain);
            if let Err(e) = config.create_native_config() {
                let message = match e {
                    KafkaError::ClientConfig(_, desc, _, _) if matches!(value, PropertyValue::Plain(_)) => desc,
                    KafkaError::ClientConfig(_, desc, _, _) => desc.replace(SECRET_PLACEHOLDER, "<secret>"),
                    other => other.to_string(),
                };
                return Err(SpecError::new(&key, format!("librdkafka refuses it: {message}")));
            }
        }
        Ok(())
    }

    /// Sets every property on `config`, secrets from `secrets` (by their spec key under
    /// `section`). A secret missing from `secrets` is an error that names its key.
    pub fn apply(&self, section: &str, secrets: &Secrets, config: &mut ClientConfig) -> Result<(), SecretError> {
        for (name, value) in &self.0 {
            match value {
                PropertyValue::Plain(v) => config.set(name, v),
                PropertyValue::Secret(r) => {
                    let key = format!("{section}.\"{name}\"");
                    let secret = secrets.0.get(&key).ok_or_else(|| SecretError::NotHanded { key, from: r.clone() })?;
                    config.set(name, secret.expose())
                }
            };
        }
        Ok(())
    }

    fn secrets<'a>(&'a self, section: &'a str) -> impl Iterator<Item = (String, &'a SecretRef)> + 'a {
        self.0.iter().filter_map(move |(name, v)| match v {
            PropertyValue::Secret(r) => Some((format!("{section}.\"{name}\""), r)),
            PropertyValue::Plain(_) => None,
        })
    }
}

impl JobSpec {
    /// A client configuration for the source's cluster: its bootstrap servers and
    /// `[source.kafka]`, with `secrets`.
    pub fn source_client(&self, secrets: &Secrets) -> Result<ClientConfig, SecretError> {
        client(self.source_kafka(), &self.source.bootstrap_servers, secrets)
    }

    /// A client configuration for the sink's cluster (see [`JobSpec::sink_kafka`]).
    pub fn sink_client(&self, secrets: &Secrets) -> Result<ClientConfig, SecretError> {
        client(self.sink_kafka(), self.sink_bootstrap_servers(), secrets)
    }

    /// A client configuration for the dead-letter producer, on the sink's cluster.
    pub fn dead_letter_client(&self, secrets: &Secrets) -> Result<ClientConfig, SecretError> {
        client(self.dead_letter_kafka(), self.sink_bootstrap_servers(), secrets)
    }

    /// Whether dead letters need a producer of their own (`[sink.dead_letter_kafka]` is given).
    pub fn dead_letters_have_own_client(&self) -> bool {
        self.sink.dead_letter_kafka().is_some()
    }

    /// The properties of the clients that talk to the source's cluster.
    pub fn source_kafka(&self) -> (&'static str, &KafkaProperties) {
        ("source.kafka", &self.source.kafka)
    }

    /// The properties of the sink's producer and of the admin client that creates its topics:
    /// `[sink.kafka]`, or the source's when the sink names neither its own cluster nor
    /// properties (then it writes to the source's cluster, as the same principal).
    pub fn sink_kafka(&self) -> (&'static str, &KafkaProperties) {
        let own = self.sink.kafka();
        if own.is_empty() && self.sink.bootstrap_servers().is_none() {
            return self.source_kafka();
        }
        ("sink.kafka", own)
    }

    /// The dead-letter producer's properties: `[sink.dead_letter_kafka]`, else the sink's.
    pub fn dead_letter_kafka(&self) -> (&'static str, &KafkaProperties) {
        match self.sink.dead_letter_kafka() {
            Some(own) => ("sink.dead_letter_kafka", own),
            None => self.sink_kafka(),
        }
    }

    /// Reads every secret the spec refers to. Run once by the driver (and by `validate`, which
    /// prints none of them), before anything starts.
    pub fn read_secrets(&self) -> Result<Secrets, SecretError> {
        self.read_secrets_within(SecretDirs::of_environment().as_ref())
    }

    /// [`JobSpec::read_secrets`], confined to `confined` when given (a cluster node's
    /// `--secret-dir` list, [`SECRET_DIRS_ENV`]).
    pub fn read_secrets_within(&self, confined: Option<&SecretDirs>) -> Result<Secrets, SecretError> {
        let read_secret = |key: &str, r: &SecretRef| {
            if let Some(dirs) = confined {
                dirs.check(key, r)?;
            }
            read_secret(key, r)
        };
        let mut out = BTreeMap::new();
        let none = KafkaProperties::default();
        let sections = [
            ("source.kafka", &self.source.kafka),
            ("sink.kafka", self.sink.kafka()),
            ("sink.dead_letter_kafka", self.sink.dead_letter_kafka().unwrap_or(&none)),
        ];
        for (section, props) in sections {
            for (key, r) in props.secrets(section) {
                let value = read_secret(&key, r)?;
                out.insert(key, value);
            }
        }
        if let Some(r) = self.sink_password() {
            out.insert(SINK_PASSWORD.to_string(), read_secret(SINK_PASSWORD, r)?);
        }
        if let Some(r) = self.registry_password() {
            out.insert(REGISTRY_PASSWORD.to_string(), read_secret(REGISTRY_PASSWORD, r)?);
        }
        Ok(Secrets(out))
    }

    /// For a cluster whose nodes have neither this machine's files nor its environment (YARN):
    /// reads every secret here and points its property at `{ file = "<name>" }`, `name` made
    /// from the secret's index. Returns each file's name with the value to write there
    /// (privately: the caller stages them as the owner's only).
    pub fn secrets_into_files(&mut self, name: impl Fn(usize) -> String) -> Result<Vec<(String, Secret)>, SecretError> {
        let mut staged = Vec::new();
        let sections = [
            ("source.kafka", Some(&mut self.source.kafka)),
            ("sink.kafka", Some(&mut self.sink.common.kafka)),
            ("sink.dead_letter_kafka", self.sink.common.dead_letter_kafka.as_mut()),
        ];
        for (section, props) in sections {
            let Some(props) = props else { continue };
            for (property, value) in props.0.iter_mut() {
                if let PropertyValue::Secret(r) = value {
                    let secret = read_secret(&format!("{section}.\"{property}\""), r)?;
                    let file = name(staged.len());
                    *r = SecretRef::File(PathBuf::from(&file));
                    staged.push((file, secret));
                }
            }
        }
        if let SinkKind::Pgvector(pg) = &mut self.sink.kind {
            if let Some(PropertyValue::Secret(r)) = &mut pg.password {
                let secret = read_secret(SINK_PASSWORD, r)?;
                let file = name(staged.len());
                *r = SecretRef::File(PathBuf::from(&file));
                staged.push((file, secret));
            }
        }
        if let Some(r) = self.input.schema_registry.as_mut().and_then(|g| g.password_mut()) {
            let secret = read_secret(REGISTRY_PASSWORD, r)?;
            let file = name(staged.len());
            *r = SecretRef::File(PathBuf::from(&file));
            staged.push((file, secret));
        }
        Ok(staged)
    }

    /// For a cluster whose nodes do not have this machine's files (YARN): the files librdkafka
    /// reads that the Kafka sections name ([`KAFKA_FILES`]: a keytab, TLS certificates and
    /// keys), each as (its property, whether it is private, its value to point elsewhere).
    pub fn kafka_files_mut(&mut self) -> Vec<(String, bool, &mut String)> {
        let sections = [
            ("source.kafka", Some(&mut self.source.kafka)),
            ("sink.kafka", Some(&mut self.sink.common.kafka)),
            ("sink.dead_letter_kafka", self.sink.common.dead_letter_kafka.as_mut()),
        ];
        let mut files = Vec::new();
        for (section, props) in sections {
            let Some(props) = props else { continue };
            for (property, value) in props.0.iter_mut() {
                if let (Some((_, private)), PropertyValue::Plain(path)) =
                    (KAFKA_FILES.iter().find(|(name, _)| name == property), value)
                {
                    files.push((format!("{section}.\"{property}\""), *private, path));
                }
            }
        }
        files
    }

    /// The environment variables the spec's secrets are read from, which a launcher removes
    /// from the environment of the processes it starts.
    pub fn secret_env_vars(&self) -> Vec<String> {
        let props = [&self.source.kafka, self.sink.kafka()];
        let dead = self.sink.dead_letter_kafka();
        props
            .into_iter()
            .chain(dead)
            .flat_map(|p| p.0.values())
            .filter_map(|v| match v {
                PropertyValue::Secret(r) => Some(r),
                PropertyValue::Plain(_) => None,
            })
            .chain(self.sink_password())
            .chain(self.registry_password())
            .filter_map(|r| match r {
                SecretRef::Env(var) => Some(var.clone()),
                SecretRef::File(_) => None,
            })
            .collect()
    }

    /// `sink.password`'s source (a pgvector sink's).
    pub fn sink_password(&self) -> Option<&SecretRef> {
        match &self.sink.kind {
            SinkKind::Pgvector(pg) => pg.password_ref(),
            _ => None,
        }
    }

    /// The Schema Registry's password's source, if the spec names one.
    pub fn registry_password(&self) -> Option<&SecretRef> {
        self.input.schema_registry.as_ref()?.password_ref()
    }

    /// The Schema Registry's password, as read by [`JobSpec::read_secrets`] and handed over.
    pub fn registry_password_value<'a>(&self, secrets: &'a Secrets) -> Result<Option<&'a Secret>, SecretError> {
        match self.registry_password() {
            None => Ok(None),
            Some(r) => secrets
                .0
                .get(REGISTRY_PASSWORD)
                .map(Some)
                .ok_or_else(|| SecretError::NotHanded { key: REGISTRY_PASSWORD.into(), from: r.clone() }),
        }
    }

    /// The pgvector sink's password, as read by [`JobSpec::read_secrets`] and handed over.
    pub fn sink_password_value<'a>(&self, secrets: &'a Secrets) -> Result<Option<&'a Secret>, SecretError> {
        match self.sink_password() {
            None => Ok(None),
            Some(r) => secrets
                .0
                .get(SINK_PASSWORD)
                .map(Some)
                .ok_or_else(|| SecretError::NotHanded { key: SINK_PASSWORD.into(), from: r.clone() }),
        }
    }
}

/// The spec key of the pgvector sink's password, and its key among [`Secrets`].
const SINK_PASSWORD: &str = "sink.password";

/// The spec key of the Schema Registry's password, and its key among [`Secrets`].
const REGISTRY_PASSWORD: &str = "input.schema_registry.password";

fn client(
    (section, props): (&str, &KafkaProperties),
    bootstrap: &str,
    secrets: &Secrets,
) -> Result<ClientConfig, SecretError> {
    let mut config = ClientConfig::new();
    props.apply(section, secrets, &mut config)?;
    config.set("bootstrap.servers", bootstrap);
    Ok(config)
}

/// Set by a cluster's node agent in every container's environment: the directories (separated
/// by `:`) whose files job specs may name as secrets there, empty for none. Unset (a local query,
/// YARN's staged files), secrets are not confined.
pub const SECRET_DIRS_ENV: &str = "EMBEDSTREAM_SECRET_DIRS";

/// Where a cluster node lets job specs read secrets from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretDirs(Vec<PathBuf>);

impl SecretDirs {
    pub fn new(dirs: Vec<PathBuf>) -> SecretDirs {
        SecretDirs(dirs)
    }

    /// The node agent's list, from [`SECRET_DIRS_ENV`], if this process runs in a container.
    pub fn of_environment() -> Option<SecretDirs> {
        let list = std::env::var_os(SECRET_DIRS_ENV)?;
        Some(SecretDirs(std::env::split_paths(&list).filter(|p| !p.as_os_str().is_empty()).collect()))
    }

    /// The first of these directories that holds `dir` or lies inside it (after following
    /// links): a node agent's work directory, where every container's `app-secret` is, must not
    /// be one a job spec may read secrets from.
    pub fn overlapping(&self, dir: &Path) -> Option<&Path> {
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        self.0.iter().map(PathBuf::as_path).find(|d| {
            let d = std::fs::canonicalize(d).unwrap_or_else(|_| d.to_path_buf());
            dir.starts_with(&d) || d.starts_with(&dir)
        })
    }

    /// The value of [`SECRET_DIRS_ENV`] for these directories.
    pub fn to_env(&self) -> std::ffi::OsString {
        std::env::join_paths(&self.0).unwrap_or_default()
    }

    /// Refuses a secret file outside the directories (after following links: a link inside
    /// may not point out) and a secret from one of embedstream's own variables (the cluster
    /// token is one).
    fn check(&self, key: &str, from: &SecretRef) -> Result<(), SecretError> {
        let refuse = |reason: String| SecretError::Unreadable { key: key.to_string(), from: from.clone(), reason };
        match from {
            SecretRef::Env(var) if var.starts_with("EMBEDSTREAM_") => {
                Err(refuse("embedstream's own variables are not job secrets on a cluster node".into()))
            }
            SecretRef::Env(_) => Ok(()),
            SecretRef::File(path) => {
                let real = std::fs::canonicalize(path).map_err(|e| refuse(e.to_string()))?;
                let inside = self.0.iter().filter_map(|d| std::fs::canonicalize(d).ok()).any(|d| real.starts_with(d));
                if inside {
                    return Ok(());
                }
                let allowed: Vec<String> = self.0.iter().map(|d| d.display().to_string()).collect();
                Err(refuse(format!(
                    "it is outside the directories this cluster's nodes allow for secret files (node-agent --secret-dir: {})",
                    if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") }
                )))
            }
        }
    }
}

fn read_secret(key: &str, from: &SecretRef) -> Result<Secret, SecretError> {
    let fail = |reason: String| SecretError::Unreadable { key: key.to_string(), from: from.clone(), reason };
    let text = match from {
        SecretRef::File(path) => std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?,
        SecretRef::Env(var) => std::env::var(var).map_err(|e| fail(e.to_string()))?,
    };
    let text = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
    if text.is_empty() {
        return Err(fail("it is empty".into()));
    }
    Ok(Secret(text.to_string()))
}

/// A secret value: never printed, never serialised by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The value, for the one place that needs it (a client's configuration, the wire).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The secrets a spec refers to, read, by their spec key (`source.kafka."sasl.password"`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Secrets(BTreeMap<String, Secret>);

impl Secrets {
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, Secret)>) -> Secrets {
        Secrets(pairs.into_iter().collect())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Secret)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("job spec: `{key}`: cannot read the secret from {from}: {reason}")]
    Unreadable { key: String, from: SecretRef, reason: String },
    #[error("job spec: `{key}`: the driver did not hand over the secret from {from}")]
    NotHanded { key: String, from: SecretRef },
}

impl Serialize for PropertyValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            PropertyValue::Plain(v) => s.serialize_str(v),
            PropertyValue::Secret(r) => {
                let mut m = s.serialize_map(Some(1))?;
                match r {
                    SecretRef::File(p) => m.serialize_entry("file", p)?,
                    SecretRef::Env(v) => m.serialize_entry("env", v)?,
                }
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for PropertyValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PropertyVisitor)
    }
}

struct PropertyVisitor;

impl<'de> Visitor<'de> for PropertyVisitor {
    type Value = PropertyValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string, an integer, a boolean, or a secret: { file = \"PATH\" } or { env = \"VARIABLE\" }")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<PropertyValue, E> {
        Ok(PropertyValue::Plain(v.to_string()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<PropertyValue, E> {
        Ok(PropertyValue::Plain(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<PropertyValue, E> {
        Ok(PropertyValue::Plain(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<PropertyValue, E> {
        Ok(PropertyValue::Plain(v.to_string()))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<PropertyValue, E> {
        Ok(PropertyValue::Plain(v.to_string()))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PropertyValue, A::Error> {
        let (Some((kind, value)), None) = (map.next_entry::<String, String>()?, map.next_key::<String>()?) else {
            return Err(de::Error::custom("a secret has exactly one key: `file` or `env`"));
        };
        match kind.as_str() {
            "file" if !value.is_empty() => Ok(PropertyValue::Secret(SecretRef::File(value.into()))),
            "env" if !value.is_empty() => Ok(PropertyValue::Secret(SecretRef::Env(value))),
            "file" | "env" => Err(de::Error::custom(format!("`{kind}` must not be empty"))),
            other => Err(de::Error::custom(format!("a secret is {{ file = ... }} or {{ env = ... }}, not `{other}`"))),
        }
    }
}
