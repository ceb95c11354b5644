//! Schema'd topics (issue 33): Avro values in the Confluent wire format, written by
//! confluent-kafka's own `AvroSerializer` (PyPI) against a real Schema Registry (Apicurio
//! Registry, Confluent's API), read by `embedstream run` with executor processes. Records of two
//! versions of a subject in one topic decode with each record's own writer schema (nested
//! records, unions, maps and arrays by JSON pointer); the vectors equal Python onnxruntime's for
//! the same texts; every kind of bad value is in the dead-letter topic with its reason; a
//! registry stopped mid-run delays the query and dead-letters nothing, and once it is restarted
//! every good record is written once. Protobuf values
//! written by confluent-kafka's `ProtobufSerializer` (a message at index 1 with a nested
//! message, a map and a repeated field) decode with their message indexes. A registry that
//! serves HTTPS only is read with `ca` (and refused without it, by `validate --check-broker`).
//! The records' fields go beside the vector (`[sink] columns`, typed by `[input.types]`): in
//! Avro output values registered under `<topic>-value` and read back by confluent-kafka's
//! `AvroDeserializer`, in JSON output values, and in Delta columns that `deltalake` reads; an
//! output subject whose compatibility refuses the schema stops the query before it starts.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::reference::{max_diff, onnx_embeddings};
use common::registry::{produce, produce_with, product_schema as v2, Registry};
use common::*;

fn v1() -> serde_json::Value {
    serde_json::json!({
        "type": "record", "name": "Product", "namespace": "shop",
        "fields": [
            {"name": "title", "type": "string"},
            {"name": "description", "type": ["null", "string"], "default": null}
        ]
    })
}

const INPUT: &str = r#"[input]
format = "avro"
fields = { title = "/title", brand = "/details/brand", color = "/attributes/color", tag = "/tags/0" }
required = ["title"]
schema_registry = { url = "URL" }

[[models]]
name = "product"
kind = "text-onnx"
text = "{title} | {brand} {color} {tag}"
onnx = "MODEL/model.onnx"
tokenizer = "MODEL/tokenizer.json"
batch_size = 8
sort_window = 16"#;

fn input(registry: &Registry) -> String {
    INPUT.replace("URL", &registry.url).replace("MODEL", &model_dir().display().to_string())
}

/// Good records of both versions, interleaved, with every kind of bad value; the text each
/// good record's template gives, and each bad one's reason, by (partition, offset).
struct Plan {
    json: serde_json::Value,
    texts: BTreeMap<(i32, i64), String>,
    /// Each good record's value as produced.
    values: BTreeMap<(i32, i64), serde_json::Value>,
    bad: BTreeMap<(i32, i64), &'static str>,
}

fn plan(n: usize) -> Plan {
    let titles = texts(n, 33);
    let mut records = Vec::new();
    let mut texts = BTreeMap::new();
    let mut values = BTreeMap::new();
    let mut bad = BTreeMap::new();
    let mut offsets = [0i64, 0];
    let mut push = |records: &mut Vec<serde_json::Value>, p: i32, kind: &str, value: serde_json::Value| {
        let key = format!("sku-{p}-{}", offsets[p as usize]);
        records.push(serde_json::json!({"partition": p, "key": key, "kind": kind, "value": value}));
        offsets[p as usize] += 1;
        (p, offsets[p as usize] - 1)
    };
    let bad_kinds: [(&str, &str); 3] = [
        ("no_magic", "value does not start with the Confluent wire format's magic byte 0"),
        ("unknown_id", "schema id 987654 is not in the registry"),
        ("truncated", "value does not decode with its Avro schema"),
    ];
    for (i, title) in titles.iter().enumerate() {
        let p = (i % 2) as i32;
        let (kind, value, text) = if i % 3 == 0 {
            ("v1", serde_json::json!({"title": title, "description": "old"}), format!("{title} |   "))
        } else {
            let brand = format!("brand{i}");
            let value = serde_json::json!({
                "title": title, "description": null,
                "details": {"brand": brand, "price": i as f64 + 0.5},
                "attributes": {"color": "red", "size": "M"}, "tags": [format!("tag{i}"), "other"]
            });
            ("v2", value, format!("{title} | {brand} red tag{i}"))
        };
        let at = push(&mut records, p, kind, value.clone());
        texts.insert(at, text);
        values.insert(at, value);
        if let Some((kind, reason)) = bad_kinds.get(i) {
            let at = push(&mut records, p, kind, serde_json::json!({"title": "bad", "description": null}));
            bad.insert(at, *reason);
        }
    }
    // A whole v1 record with a byte after it.
    let at = push(&mut records, 0, "trailing", serde_json::json!({"title": "bad", "description": null}));
    bad.insert(at, "value has 1 bytes after the record its Avro schema");
    let json = serde_json::json!({"schemas": {"v1": v1(), "v2": v2()}, "records": records});
    Plan { json, texts, values, bad }
}

/// The fields `sink.columns` writes beside the vectors in these tests, as the record `value`
/// (as produced) has them: brand, price, color and tag; null where it has none.
fn field_values(value: &serde_json::Value) -> [serde_json::Value; 4] {
    let at = |p: &str| value.pointer(p).cloned().unwrap_or(serde_json::Value::Null);
    [at("/details/brand"), at("/details/price"), at("/attributes/color"), at("/tags/0")]
}

const COLUMNS: &str = "columns = [\"value\", \"brand\", \"price\", \"color\", \"tag\"]";

/// The input of [`input`] with `price` a field too. Its column's type: a double, from
/// `[input.types]` when `typed`, else from the registry's latest Avro schema of the topic.
fn input_with_price(registry: &Registry, typed: bool) -> String {
    let types = if typed { "\ntypes = { price = \"double\" }" } else { "" };
    input(registry).replace("tag = \"/tags/0\" }", &format!("tag = \"/tags/0\", price = \"/details/price\" }}{types}"))
}

/// How a test's output values are written.
enum Values<'r> {
    /// JSON, with the fields of [`COLUMNS`] beside the vector.
    Json,
    /// Avro in the Confluent wire format, with the fields of [`COLUMNS`], read back by
    /// confluent-kafka's `AvroDeserializer` through this registry.
    Avro(&'r Registry),
}

/// The query `name`'s output: every good record of `plan` once in `{name}-out`, with Python
/// onnxruntime's vector of its template's text and the fields of [`COLUMNS`] beside it; every
/// bad value in `{name}-dlq`, as it came, with its reason.
fn assert_output(broker: &Broker, name: &str, plan: &Plan, values: Values) {
    let out = broker.read_all(&format!("{name}-out"), 2);
    assert_eq!(out.len(), plan.texts.len());
    let texts: Vec<String> = plan.texts.values().cloned().collect();
    let want = onnx_embeddings(&texts);
    // Avro values as confluent-kafka reads them, by (partition, offset) of their origin.
    let decoded: BTreeMap<(i32, i64), serde_json::Value> = match values {
        Values::Json => BTreeMap::new(),
        Values::Avro(registry) => {
            let topic = format!("{name}-out");
            let read = produce_with(AVRO_READER, broker, registry, &topic, &serde_json::json!({"n": out.len()}));
            let records = read.as_array().unwrap();
            assert_eq!(records.len(), out.len());
            (records.iter())
                .map(|r| {
                    (
                        (r["origin"]["partition"].as_i64().unwrap() as i32, r["origin"]["offset"].as_i64().unwrap()),
                        r.clone(),
                    )
                })
                .collect()
        }
    };
    let mut worst = 0f32;
    for rec in &out {
        let n = plan.texts.keys().position(|o| *o == rec.origin()).unwrap_or_else(|| panic!("{:?}", rec.origin()));
        let v: serde_json::Value = match values {
            Values::Json => serde_json::from_slice(rec.value.as_ref().unwrap()).unwrap(),
            Values::Avro(_) => decoded[&rec.origin()].clone(),
        };
        let record = &plan.values[&rec.origin()];
        let got = [&v["brand"], &v["price"], &v["color"], &v["tag"]].map(|x| x.clone());
        assert_eq!(got, field_values(record), "{:?}: {v}", rec.origin());
        let value: serde_json::Value = serde_json::from_str(v["value"].as_str().unwrap()).unwrap();
        assert_eq!(value["title"], record["title"]);
        if let Values::Avro(_) = values {
            assert_eq!(v["model"], rec.header("es.model"), "{v}");
            assert_eq!(v["origin"]["topic"], "items");
        }
        let vector: Vec<f32> = v["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        assert_eq!(vector.len(), DIM);
        worst = worst.max(max_diff(&vector, &want[n]));
    }
    assert!(worst < 1e-4, "max difference from Python: {worst}");
    let dead = broker.read_all(&format!("{name}-dlq"), 2);
    assert_eq!(dead.len(), plan.bad.len());
    for rec in &dead {
        let origin = rec.origin();
        let want = plan.bad.get(&origin).unwrap_or_else(|| panic!("{origin:?} is not a bad record"));
        let reason = rec.header("es.error");
        assert!(reason.contains(want), "{origin:?}: `{reason}`, want `{want}`");
    }
}

#[test]
fn avro_records_of_two_schema_versions_are_embedded_and_bad_values_dead_lettered() {
    let registry = Registry::start();
    let broker = Broker::start();
    broker.create_topic("items", 2);
    let plan = plan(24);
    let ids = produce(&broker, &registry, "items", &plan.json);
    assert_ne!(ids["ids"]["v1"], ids["ids"]["v2"], "two versions, two ids: {ids}");

    // Avro output values, registered under `avro-out-value`, with the record's fields.
    let job = Job::new(
        &broker,
        "avro",
        "subscribe = [\"items\"]\nmax_offsets_per_trigger = 10",
        "available_now = true",
        &format!("format = \"avro\"\n{COLUMNS}"),
    )
    .with_models(&input_with_price(&registry, false));
    // `validate --check-broker` shows the topic's subject and its latest schema.
    let mut validate = embedstream();
    validate.args(["validate", job.path.to_str().unwrap(), "--check-broker", "--json"]);
    let out = run_to_end(validate, Duration::from_secs(60));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let subject = &shown["subjects"][0];
    assert_eq!(
        (&subject["subject"], &subject["version"], &subject["id"]),
        (&"items-value".into(), &2.into(), &ids["ids"]["v2"])
    );
    let latest: serde_json::Value = serde_json::from_str(subject["schema"].as_str().unwrap()).unwrap();
    assert_eq!(latest["fields"].as_array().unwrap().len(), 5, "v2: {latest}");

    let summary = run_job(&job, 2);
    assert_eq!(summary["embeddings"], plan.texts.len(), "{summary}");
    assert_eq!(summary["dead_letters"], plan.bad.len(), "{summary}");
    let highs = broker.high_watermarks("items", 2);
    assert_eq!(broker.committed("avro-group", "items", 2), highs, "every offset is committed");

    assert_output(&broker, "avro", &plan, Values::Avro(&registry));

    // An output subject whose compatibility (BACKWARD) refuses the output schema: the query
    // stops before it reads anything, naming the subject.
    produce_with(INCOMPATIBLE, &broker, &registry, "refused-out", &serde_json::json!({}));
    let refused = Job::new(&broker, "refused", "subscribe = [\"items\"]", "available_now = true", "format = \"avro\"")
        .with_models(&input(&registry));
    let mut run = embedstream();
    run.args(["run", refused.path.to_str().unwrap(), "--local", "1"]);
    let out = run_to_end(run, Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("refused-out-value") && stderr.contains("incompatible"), "{stderr}");
    assert_eq!(broker.committed("refused-group", "items", 2), [-1, -1], "nothing read");
}

#[test]
fn a_registry_that_does_not_answer_delays_the_query_and_dead_letters_nothing() {
    let mut registry = Registry::start();
    let broker = Broker::start();
    broker.create_topic("items", 2);
    let plan = plan(12);
    produce(&broker, &registry, "items", &plan.json);

    // The registry is stopped before the executors have fetched any schema.
    registry.stop();
    let job = Job::new(&broker, "outage", "subscribe = [\"items\"]\nmax_offsets_per_trigger = 10", "", "")
        .with_models(&input(&registry).replace("{ url = ", "{ retry_for = \"2m\", url = "));
    let mut q = Running::start(&job, 1);
    q.wait_until("an executor retrying the registry", Duration::from_secs(120), |q| {
        q.log().contains("the schema registry did not answer; retrying")
    });
    assert_eq!(broker.committed("outage-group", "items", 2).iter().filter(|&&o| o > 0).count(), 0);
    // Restarted, with the schemas it had: the query goes on.
    registry.restart();
    let highs = broker.high_watermarks("items", 2);
    q.wait_until("every offset committed", Duration::from_secs(120), |_| {
        broker.committed("outage-group", "items", 2) == highs
    });
    let summary = q.stop();
    assert_eq!(summary["dead_letters"], plan.bad.len(), "only the bad values: {summary}");
    let out = broker.read_all("outage-out", 2);
    let origins: std::collections::BTreeSet<(i32, i64)> = out.iter().map(|r| r.origin()).collect();
    assert_eq!(origins.len(), out.len(), "no record twice");
    assert_eq!(origins, plan.texts.keys().copied().collect(), "every good record once");
}

/// Serialises products with confluent-kafka's ProtobufSerializer for a message made here from
/// a descriptor (no protoc): `shop.Product`, the second message of its file (index [1]), with a
/// nested `Details`, a repeated `tags` and a map `attributes`; or makes a bad value.
const PROTO_PRODUCER: &str = r#"
import json, sys
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
F = descriptor_pb2.FieldDescriptorProto
bootstrap, url, topic = sys.argv[1:4]
fd = descriptor_pb2.FileDescriptorProto(name="shop/product.proto", package="shop", syntax="proto3")
fd.message_type.add(name="Other").field.add(name="x", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
p = fd.message_type.add(name="Product")
d = p.nested_type.add(name="Details")
d.field.add(name="brand", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
d.field.add(name="price", number=2, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
e = p.nested_type.add(name="AttributesEntry")
e.options.map_entry = True
e.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
e.field.add(name="value", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
p.field.add(name="title", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
p.field.add(name="details", number=2, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL, type_name=".shop.Product.Details")
p.field.add(name="tags", number=3, type=F.TYPE_STRING, label=F.LABEL_REPEATED)
p.field.add(name="attributes", number=4, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED, type_name=".shop.Product.AttributesEntry")
pool = descriptor_pool.DescriptorPool()
pool.Add(fd)
Product = message_factory.GetMessageClass(pool.FindMessageTypeByName("shop.Product"))
serializer = ProtobufSerializer(Product, SchemaRegistryClient({"url": url}), {"use.deprecated.format": False})
ctx = SerializationContext(topic, MessageField.VALUE)
producer = Producer({"bootstrap.servers": bootstrap})
for r in json.load(sys.stdin)["records"]:
    kind, v = r["kind"], r["value"]
    if kind in ("v1", "v2", "bad_index", "garbage"):
        m = Product(title=v["title"], tags=v.get("tags", []))
        if v.get("details"):
            m.details.brand = v["details"].get("brand") or ""
            m.details.price = v["details"]["price"]
        m.attributes.update(v.get("attributes", {}))
        value = serializer(m, ctx)
        if kind == "bad_index":
            value = value[:5] + b"\x02\x0a" + value[7:]
        elif kind == "garbage":
            value = value[:7] + b"\x0a\x20x"
    elif kind == "no_magic":
        value = json.dumps(v).encode()
    else:
        raise SystemExit("unknown kind " + kind)
    producer.produce(topic, value=value, key=r["key"].encode(), partition=r["partition"])
producer.flush(30)
print(json.dumps({}))
"#;

#[test]
fn protobuf_messages_decode_by_their_message_index_and_bad_ones_are_dead_lettered() {
    let registry = Registry::start();
    let broker = Broker::start();
    broker.create_topic("items", 2);
    // The products of the Avro test, with Protobuf's bad values in place of Avro's.
    let mut plan = plan(12);
    let reasons = [
        ("unknown_id", "no_magic", "value does not start with the Confluent wire format's magic byte 0"),
        ("truncated", "bad_index", "has no message at indexes [5]"),
        ("trailing", "garbage", "value does not decode as shop.Product"),
    ];
    for r in plan.json["records"].as_array_mut().unwrap() {
        let origin = (
            r["partition"].as_i64().unwrap() as i32,
            r["key"].as_str().unwrap().rsplit('-').next().unwrap().parse().unwrap(),
        );
        for (avro, proto, reason) in reasons {
            if r["kind"] == avro {
                r["kind"] = proto.into();
                plan.bad.insert(origin, reason);
            }
        }
    }
    produce_with(PROTO_PRODUCER, &broker, &registry, "items", &plan.json);

    // Protobuf fields are typed by [input.types] only.
    let input = input_with_price(&registry, true).replace("format = \"avro\"", "format = \"protobuf\"");
    // JSON output values, with the record's fields beside the vector.
    let job = Job::new(
        &broker,
        "proto",
        "subscribe = [\"items\"]\nmax_offsets_per_trigger = 10",
        "available_now = true",
        &format!("format = \"json\"\n{COLUMNS}"),
    )
    .with_models(&input);
    let summary = run_job(&job, 1);
    assert_eq!(summary["embeddings"], plan.texts.len(), "{summary}");
    assert_eq!(summary["dead_letters"], plan.bad.len(), "{summary}");
    assert_output(&broker, "proto", &plan, Values::Json);
}

#[test]
fn a_registry_over_https_is_trusted_through_its_ca() {
    let registry = Registry::start_tls();
    let ca = registry.ca.clone().unwrap();
    let broker = Broker::start();
    broker.create_topic("items", 2);
    let plan = plan(6);
    produce(&broker, &registry, "items", &plan.json);
    // One `[model]`, whose column the Delta reader reads (`embedding`).
    let with_ca = input_with_price(&registry, false)
        .replace("{ url = ", &format!("{{ ca = \"{}\", url = ", ca.display()))
        .replace("[[models]]\nname = \"product\"\nkind = \"text-onnx\"\n", "[model]\n");
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("products");
    let job = Job::new(&broker, "tls", "subscribe = [\"items\"]", "available_now = true", "")
        .with_models(&with_ca)
        .with_delta_sink(&table, COLUMNS);

    // Without the CA, the registry's certificate is not trusted: validate says so.
    let without = Job::new(&broker, "notls", "subscribe = [\"items\"]", "available_now = true", "")
        .with_models(&input(&registry));
    let mut validate = embedstream();
    validate.args(["validate", without.path.to_str().unwrap(), "--check-broker"]);
    let out = run_to_end(validate, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("certificate"), "{stderr}");

    let summary = run_job(&job, 1);
    assert_eq!(summary["embeddings"], plan.texts.len(), "{summary}");
    assert_eq!(summary["dead_letters"], plan.bad.len(), "{summary}");
    // A Delta reader (deltalake, PyPI) sees each good record once, its `value` the decoded
    // record as JSON, and its fields in columns of their types.
    let read = common::delta::python(TYPED_READER, &[table.to_str().unwrap()]);
    let types = &read["types"];
    assert_eq!(
        [&types["brand"], &types["price"], &types["color"], &types["tag"], &types["value"]],
        ["string", "double", "string", "string", "string"],
        "{types}"
    );
    let rows = read["rows"].as_array().unwrap();
    assert_eq!(rows.len(), plan.texts.len());
    for row in rows {
        let origin = (row["partition"].as_i64().unwrap() as i32, row["offset"].as_i64().unwrap());
        let record: serde_json::Value = serde_json::from_str(row["value"].as_str().unwrap()).unwrap();
        let produced = &plan.values[&origin];
        assert_eq!(record["title"], produced["title"], "{origin:?}");
        let got = [&row["brand"], &row["price"], &row["color"], &row["tag"]].map(|x| x.clone());
        assert_eq!(got, field_values(produced), "{origin:?}: {row}");
    }
}

/// Reads `n` records of the topic with confluent-kafka's `AvroDeserializer` (the schema from
/// the registry by the id each value names): the records as JSON, in the order read.
const AVRO_READER: &str = r#"
import json, sys, time
from confluent_kafka import Consumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import SerializationContext, MessageField
bootstrap, url, topic, ca = sys.argv[1:5]
n = json.load(sys.stdin)["n"]
deserializer = AvroDeserializer(SchemaRegistryClient({"url": url}))
consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "avro-reader", "auto.offset.reset": "earliest"})
consumer.subscribe([topic])
records, deadline = [], time.time() + 60
while len(records) < n and time.time() < deadline:
    m = consumer.poll(1.0)
    if m is None or m.error():
        continue
    records.append(deserializer(m.value(), SerializationContext(topic, MessageField.VALUE)))
consumer.close()
print(json.dumps(records, default=str))
"#;

/// Makes `<topic>-value` a subject whose compatibility (BACKWARD) no embedstream output schema
/// meets: its one version has a single field, `sku`, that the output schema lacks.
const INCOMPATIBLE: &str = r#"
import json, sys
from confluent_kafka.schema_registry import SchemaRegistryClient, Schema
url, topic = sys.argv[2], sys.argv[3]
client = SchemaRegistryClient({"url": url})
subject = topic + "-value"
client.set_compatibility(subject_name=subject, level="BACKWARD")
schema = {"type": "record", "name": "Embedding", "namespace": "embedstream", "fields": [{"name": "sku", "type": "string"}]}
client.register_schema(subject, Schema(json.dumps(schema), "AVRO"))
print(json.dumps({}))
"#;

/// The Delta table's rows (deltalake, PyPI, through pyarrow) as JSON objects, and its columns'
/// Arrow types.
const TYPED_READER: &str = r#"
import json, os, sys
from deltalake import DeltaTable
t = DeltaTable(sys.argv[1]).to_pyarrow_table()
types = {f.name: str(f.type) for f in t.schema}
rows = [{k: v for k, v in r.items() if k != "embedding" and k != "key" and k != "kafka_timestamp"} for r in t.to_pylist()]
print(json.dumps({"types": types, "rows": rows}), flush=True)
# deltalake 1.6's runtime threads sometimes abort the interpreter's teardown ("terminate called
# without an active exception", one run in two here): the answer is out, so leave at once.
os._exit(0)
"#;
