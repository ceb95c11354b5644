//! A real Confluent-compatible Schema Registry for the schema'd-topic tests: Apicurio Registry
//! 3.0.9 (deploy/setup.sh's, from Maven Central) on a free loopback port, its schemas in an H2
//! database file of its own (as a production registry keeps them in storage that outlives it),
//! serving Confluent's API under `/apis/ccompat/v7`. [`Registry::stop`] shuts it down (SIGTERM)
//! and [`Registry::restart`] starts it again on the same port with the same schemas. Killed when
//! dropped. [`produce`] writes records with confluent-kafka's own `AvroSerializer` (PyPI),
//! which registers their schemas.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{cache, free_port, Broker};

pub struct Registry {
    child: Child,
    /// Its `java` arguments, to start it again.
    args: Vec<String>,
    /// Where its database file is.
    _data: tempfile::TempDir,
    /// The Confluent-compatible base URL, `http://127.0.0.1:PORT/apis/ccompat/v7` (`https` for
    /// [`Registry::start_tls`]).
    pub url: String,
    /// The CA that signed its certificate, when it serves HTTPS.
    pub ca: Option<PathBuf>,
    log: tempfile::NamedTempFile,
    _certificates: Option<tempfile::TempDir>,
}

impl Registry {
    pub fn start() -> Registry {
        Self::launch(None)
    }

    /// A registry that serves HTTPS only, with a certificate for 127.0.0.1 from a CA of its own.
    pub fn start_tls() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = super::tls::certificates(dir.path(), "registry-ca");
        Self::launch(Some((dir, ca)))
    }

    fn launch(tls: Option<(tempfile::TempDir, PathBuf)>) -> Registry {
        let dir = cache().join("registry");
        let jar = dir.join("apicurio-registry-app-3.0.9-runner.jar");
        assert!(jar.is_file(), "no Apicurio Registry at {}: run deploy/setup.sh", jar.display());
        let port = free_port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let data = tempfile::tempdir().unwrap();
        let mut args: Vec<String> =
            ["-Xmx384m", "-XX:TieredStopAtLevel=1", "-Dquarkus.http.host=127.0.0.1"].map(String::from).into();
        args.push(format!("-Dapicurio.datasource.url=jdbc:h2:file:{}/registry", data.path().display()));
        let scheme = match &tls {
            None => {
                args.push(format!("-Dquarkus.http.port={port}"));
                "http"
            }
            Some((certs, _)) => {
                let file = |name: &str| certs.path().join(name).display().to_string();
                args.push(format!("-Dquarkus.http.port={}", free_port()));
                args.push(format!("-Dquarkus.http.ssl-port={port}"));
                args.push(format!("-Dquarkus.http.ssl.certificate.files={}", file("registry-ca-server.crt")));
                args.push(format!("-Dquarkus.http.ssl.certificate.key-files={}", file("registry-ca-server.key")));
                args.push("-Dquarkus.http.insecure-requests=disabled".into());
                "https"
            }
        };
        args.extend(["-jar".to_string(), jar.display().to_string()]);
        let child = Self::spawn(&args, &log);
        let (certificates, ca) = tls.unzip();
        let url = format!("{scheme}://127.0.0.1:{port}/apis/ccompat/v7");
        let mut registry = Registry { child, args, _data: data, url, ca, log, _certificates: certificates };
        registry.wait_until_answering();
        registry
    }

    fn spawn(args: &[String], log: &tempfile::NamedTempFile) -> Child {
        Command::new("java")
            .args(args)
            .current_dir(cache().join("registry"))
            .stdout(log.reopen().unwrap())
            .stderr(Stdio::from(log.reopen().unwrap()))
            .spawn()
            .expect("java")
    }

    fn wait_until_answering(&mut self) {
        let registry = self;
        let deadline = Instant::now() + Duration::from_secs(90);
        while !registry.answers() {
            if let Some(status) = registry.child.try_wait().unwrap() {
                panic!("the registry exited ({status}):\n{}", registry.log());
            }
            assert!(Instant::now() < deadline, "the registry did not answer within 90 s:\n{}", registry.log());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Whether it answers: `GET /subjects` over HTTP, or a TCP connection to its HTTPS port
    /// (Quarkus listens once the registry is ready).
    fn answers(&self) -> bool {
        match &self.ca {
            None => self.get("/subjects").0 == 200,
            Some(_) => std::net::TcpStream::connect(self.address()).is_ok(),
        }
    }

    fn address(&self) -> String {
        self.url.split("://").nth(1).unwrap().split('/').next().unwrap().to_string()
    }

    /// GET `path` under the Confluent API: the status (0 when nothing answered) and the body.
    pub fn get(&self, path: &str) -> (u16, String) {
        let address = self.address();
        let path = format!("/apis/ccompat/v7{path}");
        // Quarkus listens once the registry is ready: before that, nothing answers.
        if std::net::TcpStream::connect(&address).is_err() {
            return (0, String::new());
        }
        super::http_get(&address, &path)
    }

    /// Shuts the registry down (SIGTERM, as a service manager stops it) and waits until it has
    /// exited: connections to its port are refused.
    pub fn stop(&mut self) {
        let ok = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(ok.success());
        self.child.wait().unwrap();
    }

    /// Starts it again on the same port, with every schema it had (its database file), and
    /// waits until it answers.
    pub fn restart(&mut self) {
        self.child = Self::spawn(&self.args, &self.log);
        self.wait_until_answering();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Produces `plan` (its `schemas` and `records`, see [`PRODUCER`]) to `topic`: the schema ids
/// the serializer registered, by the plan's schema name.
pub fn produce(broker: &Broker, registry: &Registry, topic: &str, plan: &serde_json::Value) -> serde_json::Value {
    produce_with(PRODUCER, broker, registry, topic, plan)
}

/// Runs the producer `script` over `plan` (on its standard input); its JSON output.
pub fn produce_with(
    script: &str,
    broker: &Broker,
    registry: &Registry,
    topic: &str,
    plan: &serde_json::Value,
) -> serde_json::Value {
    let ca = registry.ca.as_ref().map(|c| c.display().to_string()).unwrap_or_default();
    let mut child = Command::new(cache().join("pyenv/bin/python"))
        .args(["-c", script, &broker.addr, &registry.url, topic, &ca])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pyenv python");
    child.stdin.take().unwrap().write_all(plan.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Serialises each record with confluent-kafka's AvroSerializer (which registers its schema
/// under `<topic>-value`), or makes a bad value of the record's kind.
const PRODUCER: &str = r#"
import json, sys
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
bootstrap, url, topic, ca = sys.argv[1:5]
plan = json.load(sys.stdin)
client = SchemaRegistryClient({"url": url, **({"ssl.ca.location": ca} if ca else {})})
serializers = {n: AvroSerializer(client, json.dumps(s)) for n, s in plan["schemas"].items()}
ctx = SerializationContext(topic, MessageField.VALUE)
producer = Producer({"bootstrap.servers": bootstrap})
ids = {}
for r in plan["records"]:
    kind = r["kind"]
    if kind in serializers:
        value = serializers[kind](r["value"], ctx)
        ids[kind] = int.from_bytes(value[1:5], "big")
    elif kind == "trailing":
        value = serializers["v1"](r["value"], ctx) + b"\x00"
    elif kind == "truncated":
        value = serializers["v1"](r["value"], ctx)[:7]
    elif kind == "unknown_id":
        value = b"\0" + (987654).to_bytes(4, "big") + b"\x02a"
    elif kind == "no_magic":
        value = json.dumps(r["value"]).encode()
    else:
        raise SystemExit("unknown kind " + kind)
    producer.produce(topic, value=value, key=r["key"].encode(), partition=r["partition"])
producer.flush(30)
print(json.dumps({"ids": ids}))
"#;

/// An Avro product: a title, an optional description, an optional nested `Details` record, a
/// map of attributes and an array of tags (the second version of the tests' subject).
pub fn product_schema() -> serde_json::Value {
    serde_json::json!({
        "type": "record", "name": "Product", "namespace": "shop",
        "fields": [
            {"name": "title", "type": "string"},
            {"name": "description", "type": ["null", "string"], "default": null},
            {"name": "details", "type": ["null", {"type": "record", "name": "Details", "fields": [
                {"name": "brand", "type": ["null", "string"], "default": null},
                {"name": "price", "type": "double"}
            ]}], "default": null},
            {"name": "attributes", "type": {"type": "map", "values": "string"}, "default": {}},
            {"name": "tags", "type": {"type": "array", "items": "string"}, "default": []}
        ]
    })
}
