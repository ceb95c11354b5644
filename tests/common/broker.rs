//! The Kafka side of the harness: a real Apache Kafka broker (KRaft) on a free loopback port,
//! run by deploy/broker.sh, the helpers tests read and write it with (rdkafka), and a cluster of
//! several brokers on 127.0.0.x.

use std::collections::HashMap;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::*;

/// A consumer error librdkafka recovers from (a broker of a cluster down).
fn transient(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    matches!(
        e,
        KafkaError::MessageConsumption(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown)
    )
}

/// Reads `topic` to its end with `isolation.level = read_committed`: each record's
/// (`es.partition`, `es.offset`) headers, as JSON pairs.
const COMMITTED_READER: &str = r#"
import json, sys, time
from confluent_kafka import Consumer, TopicPartition
bootstrap, topic, partitions = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = Consumer({"bootstrap.servers": bootstrap, "group.id": "committed-reader", "isolation.level": "read_committed",
              "auto.offset.reset": "earliest", "enable.partition.eof": True, "enable.auto.commit": False})
c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
at_end, out, deadline = set(), [], time.time() + 60
while len(at_end) < partitions and time.time() < deadline:
    m = c.poll(1.0)
    if m is None:
        continue
    if m.error():
        if m.error().code() == -191:  # _PARTITION_EOF: the last stable offset is reached
            at_end.add(m.partition())
        continue
    h = {k: v.decode() for k, v in (m.headers() or [])}
    out.append([int(h["es.partition"]), int(h["es.offset"])])
c.close()
assert len(at_end) == partitions, "the end of every partition was not reached"
print(json.dumps(out))
"#;

/// A record to produce: partition, key, value.
pub type RawRecord = (i32, Option<Vec<u8>>, Option<Vec<u8>>);

/// An Apache Kafka broker (KRaft, one node) on a free loopback port, run by deploy/broker.sh
/// from the Kafka that deploy/setup.sh installed, with its data in a temporary directory; killed
/// on drop.
pub struct Broker {
    /// None for a handle on brokers this one did not start (a [`KafkaCluster`]'s).
    child: Option<Child>,
    /// The PLAINTEXT listener.
    pub addr: String,
    /// Other listeners: (protocol, address).
    listeners: Vec<(String, String)>,
    /// Added to the broker's environment (KAFKA_OPTS).
    env: Vec<(String, String)>,
    /// "Kafka Server started" lines in the log (appended across restarts) before the last start.
    started_before: usize,
    dir: tempfile::TempDir,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Broker {
    pub fn start() -> Broker {
        Self::start_with(&[], "")
    }

    /// A broker with a listener for each of `protocols` beside PLAINTEXT (each named for its
    /// protocol), and `properties` added to its server.properties.
    pub fn start_with(protocols: &[&str], properties: &str) -> Broker {
        Self::start_with_env(protocols, properties, &[])
    }

    /// As [`Broker::start_with`], with `env` added to the broker's environment.
    /// A broker whose SASL_PLAINTEXT listener takes GSSAPI on `kdc`'s realm, as
    /// `kafka/127.0.0.1` (a principal it adds).
    pub fn start_kerberized(kdc: &super::kdc::Kdc) -> Broker {
        let keytab = kdc.add_principal("kafka/127.0.0.1");
        let gssapi = format!(
            "sasl.enabled.mechanisms=GSSAPI\nsasl.kerberos.service.name=kafka\n\
             listener.name.sasl_plaintext.gssapi.sasl.jaas.config=com.sun.security.auth.module.Krb5LoginModule required \
             useKeyTab=true storeKey=true keyTab=\"{}\" principal=\"kafka/127.0.0.1@{}\";\n",
            keytab.display(),
            super::kdc::REALM
        );
        let java = format!("-Djava.security.krb5.conf={}", kdc.krb5_conf().display());
        Broker::start_with_env(&["SASL_PLAINTEXT"], &gssapi, &[("KAFKA_OPTS", &java)])
    }

    pub fn start_with_env(protocols: &[&str], properties: &str, env: &[(&str, &str)]) -> Broker {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        // A free port may be taken by another test's server between `free_port` and the
        // broker's bind: then the broker is started again on other ports.
        let mut attempt = 0;
        loop {
            let addr = format!("127.0.0.1:{}", free_port());
            let listeners = protocols.iter().map(|p| (p.to_string(), format!("127.0.0.1:{}", free_port()))).collect();
            let mut broker = Self::launch(addr, listeners, properties, env.clone());
            match broker.serving() {
                Ok(()) => return broker,
                Err(why) if attempt < 3 && broker.log().contains("Address already in use") => {
                    eprintln!("a port of the broker was taken meanwhile; starting it on others: {why:.200}");
                    broker.kill();
                    attempt += 1;
                }
                Err(why) => panic!("{why}"),
            }
        }
    }

    /// Starts a broker on `addr` without waiting for it to serve.
    fn launch(addr: String, listeners: Vec<(String, String)>, properties: &str, env: Vec<(String, String)>) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("extra.properties"), properties).unwrap();
        let child = Some(Self::spawn(&addr, &listeners, &env, dir.path()));
        Broker { child, addr, listeners, env, started_before: 0, dir }
    }

    /// The test helpers on brokers that something else started (`addr`: bootstrap servers).
    pub fn client_of(addr: &str) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        Broker { child: None, addr: addr.to_string(), listeners: Vec::new(), env: Vec::new(), started_before: 0, dir }
    }

    /// The address of the listener for `protocol`.
    pub fn listener(&self, protocol: &str) -> &str {
        &self.listeners.iter().find(|(p, _)| p == protocol).expect("a listener started for it").1
    }

    fn spawn(addr: &str, listeners: &[(String, String)], env: &[(String, String)], dir: &Path) -> Child {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/broker.sh");
        let port = addr.rsplit(':').next().unwrap();
        let extra: Vec<String> =
            listeners.iter().map(|(p, a)| format!("{p}:{}", a.rsplit(':').next().unwrap())).collect();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("broker.log")).unwrap();
        // `run` ends in exec: the child is the broker's JVM itself, so a kill stops the broker.
        Command::new("bash")
            .arg(&script)
            .args(["run", port])
            .arg(dir.join("kafka"))
            .arg(dir.join("extra.properties"))
            .env("BROKER_LISTENERS", extra.join(" "))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// Waits for the line a broker logs once it serves clients (the log is appended across
    /// restarts, so this counts the lines).
    fn wait_serving(&mut self) {
        if let Err(why) = self.serving() {
            panic!("{why}");
        }
    }

    /// [`Broker::wait_serving`], saying why it does not serve instead of failing the test.
    fn serving(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(90);
        while self.log().matches("Kafka Server started").count() == self.started_before {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!("the Kafka broker exited with {status}: {}", self.log()));
            }
            if Instant::now() >= deadline {
                return Err(format!("the Kafka broker did not serve on {} within 90 s: {}", self.addr, self.log()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if TcpStream::connect(&self.addr).is_err() {
            return Err(format!("the broker logged it started but {} refuses", self.addr));
        }
        Ok(())
    }

    /// Kills the broker (no clean shutdown) and starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.kill();
        self.started_before = self.log().matches("Kafka Server started").count();
        self.child = Some(Self::spawn(&self.addr, &self.listeners, &self.env, self.dir.path()));
        self.wait_serving();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }

    /// Runs one of Kafka's own tools (deploy/kafka/bin/SCRIPT) against the PLAINTEXT listener
    /// and returns its stdout, failing the test if it fails.
    pub fn tool(&self, script: &str, args: &[&str]) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kafka/bin").join(script);
        let mut cmd = Command::new("bash");
        cmd.arg(path).args(["--bootstrap-server", &self.addr]).args(args).env("EMBEDSTREAM_CACHE", cache());
        let out = run_to_end(cmd, TIMEOUT);
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{script} {args:?} failed ({}):\n{stdout}\n{stderr}", out.status);
        stdout.into_owned()
    }

    /// Creates a SCRAM-SHA-512 user with Kafka's kafka-configs, then waits until the
    /// SASL_PLAINTEXT listener takes its password.
    /// `kafka-consumer-groups --describe`'s rows for `group` on `topic`: (partition, current
    /// offset, log-end offset, lag), by partition; and the tool's whole output, for messages.
    pub fn consumer_group(&self, group: &str, topic: &str) -> (Vec<(i32, i64, i64, i64)>, String) {
        let out = self.tool("kafka-consumer-groups.sh", &["--describe", "--group", group]);
        // GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG CONSUMER-ID HOST CLIENT-ID
        let mut rows: Vec<(i32, i64, i64, i64)> = (out.lines())
            .filter_map(|l| {
                let c: Vec<&str> = l.split_whitespace().collect();
                (c.len() >= 6 && c[0] == group && c[1] == topic)
                    .then(|| Some((c[2].parse().ok()?, c[3].parse().ok()?, c[4].parse().ok()?, c[5].parse().ok()?)))
                    .flatten()
            })
            .collect();
        rows.sort();
        (rows, out)
    }

    pub fn add_scram_user(&self, user: &str, password: &str) {
        self.add_scram_user_on("SASL_PLAINTEXT", user, password, &[]);
    }

    /// As [`Broker::add_scram_user`], waiting on the listener for `protocol`, whose clients
    /// also need `client` properties (a CA to trust).
    pub fn add_scram_user_on(&self, protocol: &str, user: &str, password: &str, client: &[(&str, &str)]) {
        let config = format!("SCRAM-SHA-512=[password={password}]");
        self.tool(
            "kafka-configs.sh",
            &["--alter", "--add-config", &config, "--entity-type", "users", "--entity-name", user],
        );
        let mut config = ClientConfig::new();
        for (k, v) in client {
            config.set(*k, *v);
        }
        let client: BaseConsumer = config
            .set("bootstrap.servers", self.listener(protocol))
            .set("security.protocol", protocol)
            .set("sasl.mechanism", "SCRAM-SHA-512")
            .set("sasl.username", user)
            .set("sasl.password", password)
            .create()
            .unwrap();
        let deadline = Instant::now() + TIMEOUT;
        while client.fetch_metadata(None, Duration::from_secs(2)).is_err() {
            assert!(Instant::now() < deadline, "the SASL listener never took {user}'s password");
        }
    }

    pub fn topic_exists(&self, topic: &str) -> bool {
        let md = self.consumer().fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
        md.topics().first().is_some_and(|t| t.error().is_none() && !t.partitions().is_empty())
    }

    /// Produces `values` to partition 0 in one transaction, committed or aborted (the records
    /// are in the log either way).
    pub fn produce_transaction(&self, topic: &str, values: &[String], commit: bool) {
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .set("transactional.id", format!("tests-{topic}"))
            .create()
            .unwrap();
        producer.init_transactions(TIMEOUT).unwrap();
        producer.begin_transaction().unwrap();
        for v in values {
            producer
                .send(BaseRecord::<[u8], [u8]>::to(topic).partition(0).payload(v.as_bytes()))
                .map_err(|(e, _)| e)
                .unwrap();
        }
        producer.flush(TIMEOUT).unwrap();
        if commit {
            producer.commit_transaction(TIMEOUT).unwrap();
        } else {
            producer.abort_transaction(TIMEOUT).unwrap();
        }
    }

    /// The committed records of `topic` (read_committed), to the end of each partition.
    pub fn read_committed(&self, topic: &str, partitions: i32) -> Vec<Record> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .set("group.id", "embedstream-tests")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
        }
        c.assign(&tpl).unwrap();
        let (mut out, mut at_end) = (Vec::new(), std::collections::BTreeSet::new());
        let deadline = Instant::now() + TIMEOUT;
        while at_end.len() < partitions as usize {
            assert!(Instant::now() < deadline, "{topic} did not reach its end");
            match c.poll(Duration::from_millis(100)) {
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p);
                }
                Some(m) => out.push(Record::of(&m.unwrap())),
                None => {}
            }
        }
        out
    }

    /// How many times a `read_committed` consumer that is not the project's (confluent-kafka:
    /// librdkafka through Python) sees each input (`es.partition`, `es.offset`) in `topic`, read
    /// to each partition's last stable offset.
    pub fn committed_origins(&self, topic: &str, partitions: i32) -> std::collections::BTreeMap<(i32, i64), usize> {
        let out = Command::new(cache().join("pyenv/bin/python"))
            .args(["-c", COMMITTED_READER, &self.addr, topic, &partitions.to_string()])
            .output()
            .expect("pyenv python");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let pairs: Vec<(i32, i64)> = serde_json::from_slice(&out.stdout).unwrap();
        let mut seen = std::collections::BTreeMap::new();
        for pair in pairs {
            *seen.entry(pair).or_default() += 1;
        }
        seen
    }

    /// Deletes `topic` and waits until metadata no longer lists it, so that it can be created
    /// again (a new incarnation: a new topic id, offsets from 0).
    pub fn delete_topic(&self, topic: &str) {
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", &self.addr).create().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        for r in rt.block_on(admin.delete_topics(&[topic], &AdminOptions::new())).unwrap() {
            r.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.topic_exists(topic) {
            assert!(Instant::now() < deadline, "topic {topic} was not deleted");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `topic`'s id, as `kafka-topics.sh --describe` prints it.
    pub fn topic_id(&self, topic: &str) -> String {
        let out = self.tool("kafka-topics.sh", &["--describe", "--topic", topic]);
        let id = out.split("TopicId:").nth(1).unwrap_or_else(|| panic!("no TopicId in {out}"));
        id.split_whitespace().next().unwrap().to_string()
    }

    pub fn create_topic(&self, topic: &str, partitions: i32) {
        self.create_topic_with(topic, partitions, &[]);
    }

    /// [`Broker::create_topic`] with topic-level `configs` (name, value).
    pub fn create_topic_with(&self, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", &self.addr).create().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let res = rt
            .block_on(
                admin.create_topics(
                    // -1: the cluster's default.replication.factor.
                    &[configs
                        .iter()
                        .fold(NewTopic::new(topic, partitions, TopicReplication::Fixed(-1)), |t, (k, v)| t.set(k, v))],
                    &AdminOptions::new(),
                ),
            )
            .unwrap();
        for r in res {
            r.unwrap();
        }
        // Wait until metadata lists the topic with all its partitions.
        let consumer = self.consumer();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)).unwrap();
            if md.topics().first().is_some_and(|t| t.error().is_none() && t.partitions().len() == partitions as usize) {
                return;
            }
            assert!(Instant::now() < deadline, "topic {topic} did not appear");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn consumer(&self) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .set("group.id", "embedstream-tests")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()
            .unwrap()
    }

    /// Produces `records` (partition, key, value) and waits for every acknowledgement.
    pub fn produce(&self, topic: &str, records: &[RawRecord]) {
        let none: Vec<Vec<(&str, &[u8])>> = vec![Vec::new(); records.len()];
        self.produce_with_headers(topic, records, &none);
    }

    /// [`Broker::produce`], record `i` with the headers `headers[i]`.
    pub fn produce_with_headers(&self, topic: &str, records: &[RawRecord], headers: &[Vec<(&str, &[u8])>]) {
        self.produce_full(topic, records, headers, &vec![None; records.len()]);
    }

    /// [`Broker::produce`], record `i` with the Kafka timestamp `timestamps[i]` (ms) if given.
    pub fn produce_at(&self, topic: &str, records: &[RawRecord], timestamps: &[Option<i64>]) {
        let none: Vec<Vec<(&str, &[u8])>> = vec![Vec::new(); records.len()];
        self.produce_full(topic, records, &none, timestamps);
    }

    fn produce_full(
        &self,
        topic: &str,
        records: &[RawRecord],
        headers: &[Vec<(&str, &[u8])>],
        timestamps: &[Option<i64>],
    ) {
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            // Records over 1 MB, for a topic made to take them.
            .set("message.max.bytes", "8000000")
            .create()
            .unwrap();
        for (((p, k, v), headers), at) in records.iter().zip(headers).zip(timestamps) {
            let mut r = BaseRecord::<[u8], [u8]>::to(topic).partition(*p);
            if let Some(at) = at {
                r = r.timestamp(*at);
            }
            if !headers.is_empty() {
                let owned = (headers.iter())
                    .fold(OwnedHeaders::new(), |h, (key, value)| h.insert(Header { key, value: Some(*value) }));
                r = r.headers(owned);
            }
            if let Some(k) = k {
                r = r.key(k.as_slice());
            }
            if let Some(v) = v {
                r = r.payload(v.as_slice());
            }
            producer.send(r).map_err(|(e, _)| e).unwrap();
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    }

    /// Produces texts keyed `key-<i>`, text `i` to partition `i % partitions`.
    pub fn produce_texts(&self, topic: &str, partitions: i32, first_key: usize, texts: &[String]) {
        let records: Vec<_> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let n = first_key + i;
                (n as i32 % partitions, Some(format!("key-{n}").into_bytes()), Some(t.clone().into_bytes()))
            })
            .collect();
        self.produce(topic, &records);
    }

    pub fn high_watermarks(&self, topic: &str, partitions: i32) -> Vec<i64> {
        let c = self.consumer();
        (0..partitions).map(|p| c.fetch_watermarks(topic, p, Duration::from_secs(5)).unwrap().1).collect()
    }

    /// Every record of `topic`, read up to the high watermark of each partition.
    pub fn read_all(&self, topic: &str, partitions: i32) -> Vec<Record> {
        let highs = self.high_watermarks(topic, partitions);
        let c = self.consumer();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
        }
        c.assign(&tpl).unwrap();
        let total: i64 = highs.iter().sum();
        let mut out = Vec::new();
        let deadline = Instant::now() + TIMEOUT;
        while (out.len() as i64) < total {
            assert!(Instant::now() < deadline, "read {} of {total} records of {topic}", out.len());
            match c.poll(Duration::from_millis(100)) {
                Some(Err(e)) if transient(&e) => {}
                Some(m) => out.push(Record::of(&m.unwrap())),
                None => {}
            }
        }
        out
    }

    /// The offsets `group` has committed for the partitions of `topic` (-1 where none).
    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
        self.try_committed(group, topic, partitions).unwrap()
    }

    /// As [`Broker::committed`], None while the group's coordinator does not answer (a broker
    /// of a cluster down, its partitions moving).
    pub fn try_committed(&self, group: &str, topic: &str, partitions: i32) -> Option<Vec<i64>> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let got = c.committed_offsets(tpl, Duration::from_secs(10)).ok()?;
        Some(
            (0..partitions)
                .map(|p| match got.find_partition(topic, p).unwrap().offset() {
                    Offset::Offset(o) => o,
                    _ => -1,
                })
                .collect(),
        )
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Debug, Clone)]
pub struct Record {
    /// The Kafka timestamp (the producer's create time).
    pub timestamp_ms: Option<i64>,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
}

impl Record {
    fn of(m: &rdkafka::message::BorrowedMessage) -> Record {
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Record {
            timestamp_ms: m.timestamp().to_millis(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers,
        }
    }

    pub fn header(&self, k: &str) -> &str {
        self.headers.get(k).map(String::as_str).unwrap_or_else(|| panic!("no header {k} in {:?}", self.headers))
    }

    pub fn vector(&self) -> Vec<f32> {
        self.value.as_ref().unwrap().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    }

    /// (source partition, source offset) from the headers.
    pub fn origin(&self) -> (i32, i64) {
        (self.header("es.partition").parse().unwrap(), self.header("es.offset").parse().unwrap())
    }
}

/// A cluster of Apache Kafka brokers, node i (1-based) on 127.0.0.i, each broker and controller
/// (a quorum of all nodes), with `default.replication.factor` and the internal topics' replicas
/// equal to the node count. Each node is a [`Broker`], killed on drop.
pub struct KafkaCluster {
    nodes: Vec<Broker>,
}

impl KafkaCluster {
    pub fn start(n: usize) -> KafkaCluster {
        let free_on = |host: &str| std::net::TcpListener::bind((host, 0)).unwrap().local_addr().unwrap().port();
        let hosts: Vec<String> = (1..=n).map(|id| format!("127.0.0.{id}")).collect();
        let controller_ports: Vec<u16> = hosts.iter().map(|h| free_on(h)).collect();
        let voters: Vec<String> =
            hosts.iter().zip(&controller_ports).enumerate().map(|(i, (h, p))| format!("{}@{h}:{p}", i + 1)).collect();
        let mut nodes: Vec<Broker> = hosts
            .iter()
            .zip(&controller_ports)
            .enumerate()
            .map(|(i, (host, controller_port))| {
                let env = [
                    ("BROKER_NODE_ID", (i + 1).to_string()),
                    ("BROKER_HOST", host.clone()),
                    ("BROKER_CONTROLLER_PORT", controller_port.to_string()),
                    ("BROKER_VOTERS", voters.join(",")),
                    // 16 bytes, base64url without padding, not starting with '-': what kafka-storage wants.
                    ("BROKER_CLUSTER_ID", "ZW1iZWRzdHJlYW0tdGVzdA".to_string()),
                    ("BROKER_REPLICATION", n.to_string()),
                    ("KAFKA_HEAP_OPTS", "-Xmx384m".to_string()),
                ];
                let env = env.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                Broker::launch(format!("{host}:{}", free_on(host)), Vec::new(), "", env)
            })
            .collect();
        for node in &mut nodes {
            node.wait_serving();
        }
        KafkaCluster { nodes }
    }

    /// Every node's client address, as bootstrap servers.
    pub fn bootstrap(&self) -> String {
        self.nodes.iter().map(|n| n.addr.as_str()).collect::<Vec<_>>().join(",")
    }

    /// The 1-based id of the node that leads `topic`'s `partition` now.
    pub fn leader(&self, topic: &str, partition: i32) -> usize {
        let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", self.bootstrap()).create().unwrap();
        let md = c.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
        let t = md.topics().first().unwrap();
        t.partitions().iter().find(|p| p.id() == partition).unwrap().leader() as usize
    }

    /// SIGKILL to node `id` (1-based).
    pub fn kill(&mut self, id: usize) {
        self.nodes[id - 1].kill();
    }

    /// A broker handle on the cluster, for the test helpers (topics, produce, read).
    pub fn client(&self) -> Broker {
        Broker::client_of(&self.bootstrap())
    }
}
