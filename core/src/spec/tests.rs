//! The job spec's own tests: defaults, keys named in errors, typed values.

use std::path::PathBuf;
use std::time::Duration;

use super::*;

struct Files {
    _dir: tempfile::TempDir,
    onnx: PathBuf,
    tok: PathBuf,
}

fn files() -> Files {
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("m").join("model.onnx");
    std::fs::create_dir_all(onnx.parent().unwrap()).unwrap();
    std::fs::write(&onnx, b"x").unwrap();
    let tok = dir.path().join("tokenizer.json");
    std::fs::write(&tok, b"{}").unwrap();
    Files { _dir: dir, onnx, tok }
}

fn spec(f: &Files, extra_source: &str, rest: &str) -> String {
    format!(
        r#"
name = "products"
checkpoint_location = "/tmp/cp"
[source]
bootstrap_servers = "127.0.0.1:9092"
subscribe = ["products"]
{extra_source}
[model]
onnx = "{}"
tokenizer = "{}"
[sink]
kind = "kafka"
topic = "out"
{rest}
"#,
        f.onnx.display(),
        f.tok.display()
    )
}

/// Parses `text` and checks its files, as the driver does before it starts anything.
fn load(text: &str) -> Result<JobSpec, SpecError> {
    let spec = JobSpec::from_toml(text)?;
    spec.check_files()?;
    Ok(spec)
}

fn key_of(text: &str) -> String {
    load(text).unwrap_err().key
}

#[test]
fn minimal_spec_gets_defaults() {
    let f = files();
    let s = load(&spec(&f, "", "")).unwrap();
    assert_eq!(s.group_id(), "embedstream-products");
    assert_eq!(s.dead_letter_topic(), "out-dlq");
    assert_eq!(s.first_text_model().batch_size, 32);
    assert_eq!(s.min_batches_to_retain, 100);
    assert_eq!(s.first_text_model().model_id(), "m");
    assert_eq!(s.written_models(), ["m"]);
    assert_eq!(s.output_column("m"), "embedding");
    assert_eq!(s.source.starting_offsets, StartingOffsets::Named("latest".into()));
    assert!(s.source.fail_on_data_loss);
    // What executors receive parses back to the same spec.
    let again = JobSpec::from_toml(&s.to_toml()).unwrap();
    assert_eq!(again.to_toml(), s.to_toml());
}

#[test]
fn unknown_key_is_named() {
    let f = files();
    let e = JobSpec::from_toml(&spec(&f, "max_offset_per_trigger = 5", "")).unwrap_err();
    assert_eq!(e.key, "source.max_offset_per_trigger");
    assert!(e.to_string().contains("unknown field"), "{e}");
}

#[test]
fn wrong_type_is_named() {
    let f = files();
    assert_eq!(key_of(&spec(&f, "max_offsets_per_trigger = \"lots\"", "")), "source.max_offsets_per_trigger");
    assert_eq!(key_of(&spec(&f, "", "format = \"f64\"")), "sink.format");
}

#[test]
fn impossible_values_are_named() {
    let f = files();
    assert_eq!(key_of(&spec(&f, "max_offsets_per_trigger = 0", "")), "source.max_offsets_per_trigger");
    assert_eq!(key_of(&spec(&f, "min_partitions = 0", "")), "source.min_partitions");
    assert_eq!(key_of(&spec(&f, "subscribe_pattern = \"p.*\"", "")), "source");
    assert_eq!(key_of(&spec(&f, "starting_offsets = \"newest\"", "")), "source.starting_offsets");
    assert_eq!(
        key_of(&spec(&f, "starting_offsets = { products = { \"0\" = -3 } }", "")),
        "source.starting_offsets.products.0"
    );
    assert_eq!(key_of(&spec(&f, "starting_offsets = { other = { \"0\" = 1 } }", "")), "source.starting_offsets.other");
    assert_eq!(key_of(&spec(&f, "", "dead_letter_topic = \"out\"")), "sink.dead_letter_topic");
    let retain = spec(&f, "", "").replace("[source]", "min_batches_to_retain = 0\n[source]");
    assert_eq!(key_of(&retain), "min_batches_to_retain");
    let parquet = |rest: &str| spec(&f, "", rest).replace("kind = \"kafka\"\ntopic = \"out\"", "kind = \"parquet\"");
    assert_eq!(key_of(&parquet("")), "sink.path");
    assert_eq!(key_of(&parquet("path = \"relative/dir\"")), "sink.path");
    assert_eq!(key_of(&parquet("path = \"/data/t\"\ncolumns = [\"headers\"]")), "sink.columns");
    assert_eq!(key_of(&parquet("path = \"/data/t\"\npartition_by = \"week\"")), "sink.partition_by");
    assert_eq!(JobSpec::from_toml(&parquet("path = \"/data/t\"")).unwrap().dead_letter_topic(), "products-dlq");
    assert_eq!(key_of(&parquet("path = \"/data/t\"\nbootstrap_servers = 5")), "sink.bootstrap_servers");
    assert_eq!(key_of(&parquet("path = \"/data/t\"\nbootstrap_servers = \" \"")), "sink.bootstrap_servers");
    let own =
        JobSpec::from_toml(&parquet("path = \"/data/t\"\ndead_letter_topic = \"bad\"\nbootstrap_servers = \"b:9\""));
    let again = JobSpec::from_toml(&own.unwrap().to_toml()).unwrap();
    assert_eq!((again.dead_letter_topic(), again.sink.bootstrap_servers()), ("bad".to_string(), Some("b:9")));
    let delta = |rest: &str| spec(&f, "", rest).replace("kind = \"kafka\"\ntopic = \"out\"", "kind = \"delta\"");
    assert_eq!(key_of(&delta("")), "sink.path");
    assert_eq!(key_of(&delta("path = \"relative/dir\"")), "sink.path");
    assert_eq!(key_of(&delta("path = \"hdfs:///t\"")), "sink.path");
    assert!(JobSpec::from_toml(&delta("path = \"hdfs://nn1.example.com:8020/t\"")).is_ok());
    assert_eq!(key_of(&delta("path = \"/data/t\"\ncheckpoint_interval = 0")), "sink.checkpoint_interval");
    assert_eq!(key_of(&delta("path = \"/data/t\"\ncolumns = [\"headers\"]")), "sink.columns");
    assert_eq!(key_of(&delta("path = \"/data/t\"\nmanifests = true")), "sink.manifests");
    let table = JobSpec::from_toml(&delta("path = \"/data/t\"\npartition_by = \"hour\"")).unwrap();
    let SinkKind::Delta(d) = &table.sink.kind else { panic!("a Delta sink") };
    assert_eq!((d.partition_by, d.checkpoint_interval), (PartitionBy::Hour, 10));
    assert!(matches!(JobSpec::from_toml(&table.to_toml()).unwrap().sink.kind, SinkKind::Delta(_)), "round trip");
    assert_eq!(key_of(&spec(&f, "", "path = \"/data/t\"")), "sink.path");
    assert_eq!(key_of(&spec(&f, "", "[trigger]\nprocessing_time = \"soon\"")), "trigger.processing_time");
    assert_eq!(key_of(&spec(&f, "", "[executors]\ncount = 0")), "executors.count");
    assert_eq!(key_of(&spec(&f, "", "[monitoring]\nmetrics_listen = \"localhost\"")), "monitoring.metrics_listen");
    assert_eq!(key_of(&spec(&f, "", "[monitoring]\nlag_refresh_interval = \"0s\"")), "monitoring.lag_refresh_interval");
    assert_eq!(key_of(&spec(&f, "", "[flight]\nmax_rows_per_call = 0")), "flight.max_rows_per_call");
    assert_eq!(key_of(&spec(&f, "", "[flight]\nidle_timeout = \"never\"")), "flight.idle_timeout");
    assert_eq!(key_of(&spec(&f, "", "[executors]\nmemory = \"lots\"")), "executors.memory");
    assert_eq!(key_of(&spec(&f, "", "[flight]\nmax_bytes = 10")), "flight.max_bytes");
    assert_eq!(key_of(&spec(&f, "", "[security]\ntoken_file = \"/nonexistent/token\"")), "security.token_file");
    let looped = spec(&f, "", "").replace("topic = \"out\"", "topic = \"products\"");
    assert_eq!(key_of(&looped), "sink.topic");
    let missing = spec(&f, "", "").replace(&f.onnx.display().to_string(), "/nonexistent/model.onnx");
    let e = load(&missing).unwrap_err();
    assert_eq!(e.key, "model.onnx");
    assert!(e.to_string().contains("/nonexistent/model.onnx"));
    // Parsing alone reads no file: the resource manager accepts a spec whose model is only on
    // the nodes.
    assert!(JobSpec::from_toml(&missing).is_ok());
}

#[test]
fn starting_offsets_per_partition() {
    let f = files();
    let s =
        JobSpec::from_toml(&spec(&f, "starting_offsets = { products = { \"0\" = 42, \"1\" = -2, \"2\" = -1 } }", ""))
            .unwrap();
    let so = &s.source.starting_offsets;
    assert_eq!(so.for_partition("products", 0), Some(StartAt::Offset(42)));
    assert_eq!(so.for_partition("products", 1), Some(StartAt::Earliest));
    assert_eq!(so.for_partition("products", 2), Some(StartAt::Latest));
    assert_eq!(so.for_partition("products", 3), None);
}

#[test]
fn memory_sizes() {
    assert_eq!(parse_memory_mb("512m"), Some(512));
    assert_eq!(parse_memory_mb("2g"), Some(2048));
    assert_eq!(parse_memory_mb("1.5G"), Some(1536));
    assert_eq!(parse_memory_mb("300"), Some(300));
    assert_eq!(parse_memory_mb("2gb"), Some(2048));
    assert_eq!(parse_memory_mb("lots"), None);
    assert_eq!(parse_memory_mb("0m"), None);
}

#[test]
fn trigger_interval() {
    let f = files();
    let s = JobSpec::from_toml(&spec(&f, "", "[trigger]\nprocessing_time = \"1500ms\"")).unwrap();
    assert_eq!(s.trigger.interval(), Duration::from_millis(1500));
    assert_eq!(key_of(&spec(&f, "", "[trigger]\nprocessing_time = \"1s\"\navailable_now = true")), "trigger");
}

#[test]
fn kafka_properties_reach_the_client_configs_with_secrets_read_once() {
    let f = files();
    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("kafka.pass");
    std::fs::write(&pass, "s3cret-value\n").unwrap();
    let text = spec(
        &f,
        &format!(
            "[source.kafka]\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\
             \"sasl.username\" = \"alice\"\n\"sasl.password\" = {{ file = \"{}\" }}\n\"fetch.max.bytes\" = 1048576\n",
            pass.display()
        ),
        "[sink.kafka]\n\"linger.ms\" = 20\n\"sasl.password\" = { env = \"EMBEDSTREAM_TEST_SINK_PASSWORD\" }\n",
    );
    let s = load(&text).unwrap();
    // The spec keeps the references: its TOML (what `validate` prints and executors receive)
    // and its Debug never hold the value.
    let toml = s.to_toml();
    assert!(toml.contains("file = ") && toml.contains("EMBEDSTREAM_TEST_SINK_PASSWORD"), "{toml}");
    assert!(!toml.contains("s3cret") && !format!("{s:?}").contains("s3cret"));
    let again = JobSpec::from_toml(&toml).unwrap();
    assert_eq!(again.source.kafka, s.source.kafka);
    // The sink's common keys travel in the same flat `[sink]` table they were written in.
    assert_eq!(again.sink.kafka(), s.sink.kafka());
    assert_eq!(again.sink.dead_letter_topic("q"), s.sink.dead_letter_topic("q"));

    // The variable is unset: the error names the key and where it was looked for.
    let err = s.read_secrets().unwrap_err().to_string();
    assert!(err.contains("sink.kafka.\"sasl.password\"") && err.contains("EMBEDSTREAM_TEST_SINK_PASSWORD"), "{err}");
    std::env::set_var("EMBEDSTREAM_TEST_SINK_PASSWORD", "sink-pass");
    let secrets = s.read_secrets().unwrap();
    assert!(!format!("{secrets:?}").contains("sink-pass") && !format!("{secrets:?}").contains("s3cret"));

    let source = s.source_client(&secrets).unwrap();
    assert_eq!(source.get("sasl.password"), Some("s3cret-value"), "one trailing newline is dropped");
    assert_eq!(source.get("fetch.max.bytes"), Some("1048576"));
    assert_eq!(source.get("bootstrap.servers"), Some("127.0.0.1:9092"));
    let sink = s.sink_client(&secrets).unwrap();
    assert_eq!((sink.get("sasl.password"), sink.get("linger.ms")), (Some("sink-pass"), Some("20")));
    assert_eq!(sink.get("security.protocol"), None, "the sink names its own properties");
    // Dead letters follow the sink's unless they have their own.
    assert_eq!(s.dead_letter_client(&secrets).unwrap().get("sasl.password"), Some("sink-pass"));
    assert!(!s.dead_letters_have_own_client());
    assert_eq!(s.secret_env_vars(), vec!["EMBEDSTREAM_TEST_SINK_PASSWORD".to_string()]);

    // For YARN, every secret read here and pointed at a file of its own that travels with the
    // application: the spec then names the files only.
    let mut moved = s.clone();
    let staged = moved.secrets_into_files(|i| format!("kafka-secret-{i}")).unwrap();
    let staged: Vec<(&str, &str)> = staged.iter().map(|(n, v)| (n.as_str(), v.expose())).collect();
    assert_eq!(staged, vec![("kafka-secret-0", "s3cret-value"), ("kafka-secret-1", "sink-pass")]);
    let toml = moved.to_toml();
    assert!(toml.contains("kafka-secret-0") && toml.contains("kafka-secret-1"), "{toml}");
    assert!(
        !toml.contains("EMBEDSTREAM_TEST_SINK_PASSWORD") && !toml.contains("s3cret") && !toml.contains("sink-pass")
    );
    assert!(moved.secret_env_vars().is_empty());

    // Without [sink.kafka] or its own servers, the sink writes to the source's cluster as the
    // same principal.
    let same = load(&spec(&f, "[source.kafka]\n\"client.id\" = \"q\"\n", "")).unwrap();
    assert_eq!(same.sink_client(&Secrets::default()).unwrap().get("client.id"), Some("q"));
}

#[test]
fn owned_unknown_and_malformed_kafka_properties_are_refused_naming_the_key() {
    let f = files();
    let refused = |source: &str, sink: &str| load(&spec(&f, source, sink)).unwrap_err();

    let e = refused("[source.kafka]\n\"group.id\" = \"mine\"\n", "");
    assert_eq!(e.key, "source.kafka.\"group.id\"");
    assert!(e.message.contains("source.group_id"), "{e}");
    let e = refused("", "[sink.kafka]\n\"enable.idempotence\" = false\n");
    assert_eq!(e.key, "sink.kafka.\"enable.idempotence\"");
    let e = refused("", "[sink.kafka]\n\"bootstrap.servers\" = \"elsewhere:9092\"\n");
    assert!(e.message.contains("bootstrap_servers"), "{e}");
    let e = refused("", "[sink.dead_letter_kafka]\n\"transactional.id\" = \"t\"\n");
    assert_eq!(e.key, "sink.dead_letter_kafka.\"transactional.id\"");

    // librdkafka's own words for a name or a value it does not take.
    let e = refused("[source.kafka]\n\"fetch.max.bytez\" = 1\n", "");
    assert_eq!(e.key, "source.kafka.\"fetch.max.bytez\"");
    assert!(e.message.contains("No such configuration property"), "{e}");
    let e = refused("[source.kafka]\n\"security.protocol\" = \"SASL_PLAINTEX\"\n", "");
    assert!(e.message.contains("Invalid value"), "{e}");

    // A secret is one table key, `file` or `env`, never empty.
    let e = refused("[source.kafka]\n\"sasl.password\" = { vault = \"x\" }\n", "");
    assert!(e.key.starts_with("source.kafka") && e.message.contains("vault"), "{e}");
    let e = refused("[source.kafka]\n\"sasl.password\" = { env = \"\" }\n", "");
    assert!(e.message.contains("must not be empty"), "{e}");
    let e = refused("[source.kafka]\n\"sasl.password\" = [1, 2]\n", "");
    assert!(e.message.contains("a secret"), "{e}");

    // A missing secret file is refused when secrets are read, naming the key and the file.
    let s =
        load(&spec(&f, "[source.kafka]\n\"sasl.password\" = { file = \"/nonexistent/kafka.pass\" }\n", "")).unwrap();
    let e = s.read_secrets().unwrap_err().to_string();
    assert!(e.contains("source.kafka.\"sasl.password\"") && e.contains("/nonexistent/kafka.pass"), "{e}");
}

/// Issue 31, item 13: librdkafka runs `sasl.kerberos.kinit.cmd` with `system()` and loads
/// `plugin.library.paths`, so a spec that set them ran code on every host of the query.
#[test]
fn a_job_spec_must_not_run_commands_or_load_code() {
    let f = files();
    for (section, name, value) in [
        ("source.kafka", "sasl.kerberos.kinit.cmd", "touch /tmp/owned"),
        ("sink.kafka", "plugin.library.paths", "/tmp/evil.so"),
        ("source.kafka", "ssl.engine.location", "/tmp/engine.so"),
        ("sink.dead_letter_kafka", "ssl.providers", "evil"),
    ] {
        let table = format!("[{section}]\n\"{name}\" = \"{value}\"\n");
        let (source, sink) =
            if section.starts_with("source") { (table, String::new()) } else { (String::new(), table) };
        let e = load(&spec(&f, &source, &sink)).unwrap_err();
        assert_eq!(e.key, format!("{section}.\"{name}\""), "{e}");
        assert!(
            e.message.contains("a job spec may not") && e.message.contains(super::kafka::OPERATOR_ALLOW_ENV),
            "{e}"
        );
    }
    // Files the clients read (a CA, a keytab) stay the spec's to name.
    assert!(load(&spec(&f, "[source.kafka]\n\"ssl.ca.location\" = \"/etc/ssl/ca.pem\"\n", "")).is_ok());
}

/// Issue 31, item 13: on a cluster node, a job spec's `{ file = ... }` secret could name any
/// file the node agent's user reads (and `{ env = ... }` the cluster token), and the driver
/// sent it as a password to a broker the spec's author chose.
#[test]
fn secret_files_on_a_cluster_are_confined_to_the_operators_directories() {
    let f = files();
    let allowed = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(allowed.path().join("kafka.pass"), "inside\n").unwrap();
    std::fs::write(outside.path().join("node.key"), "the node's own\n").unwrap();
    std::os::unix::fs::symlink(outside.path().join("node.key"), allowed.path().join("link.pass")).unwrap();
    let dirs = SecretDirs::new(vec![allowed.path().to_path_buf()]);
    let with = |value: String| load(&spec(&f, &format!("[source.kafka]\n\"sasl.password\" = {value}\n"), "")).unwrap();

    let inside = with(format!("{{ file = \"{}\" }}", allowed.path().join("kafka.pass").display()));
    let secrets = inside.read_secrets_within(Some(&dirs)).unwrap();
    assert_eq!(inside.source_client(&secrets).unwrap().get("sasl.password"), Some("inside"));
    for (value, why) in [
        (format!("{{ file = \"{}\" }}", outside.path().join("node.key").display()), "outside the directories"),
        (format!("{{ file = \"{}\" }}", allowed.path().join("link.pass").display()), "outside the directories"),
        ("{ env = \"EMBEDSTREAM_TOKEN\" }".to_string(), "embedstream's own variables"),
    ] {
        let e = with(value.clone()).read_secrets_within(Some(&dirs)).unwrap_err().to_string();
        assert!(e.contains("source.kafka.\"sasl.password\"") && e.contains(why), "{value}: {e}");
    }
    let none = SecretDirs::new(Vec::new());
    let e = inside.read_secrets_within(Some(&none)).unwrap_err().to_string();
    assert!(e.contains("--secret-dir: none"), "{e}");
    // A node's work directory (the containers' `app-secret` files) may not be, hold or lie in
    // a secret directory.
    let work = allowed.path().join("work");
    std::fs::create_dir(&work).unwrap();
    assert_eq!(dirs.overlapping(&work), Some(allowed.path()));
    assert_eq!(dirs.overlapping(allowed.path().parent().unwrap()), Some(allowed.path()));
    assert_eq!(dirs.overlapping(outside.path()), None);
    // Not on a cluster node: a local query reads its user's files.
    assert!(with(format!("{{ file = \"{}\" }}", outside.path().join("node.key").display()))
        .read_secrets_within(None)
        .is_ok());
}

#[test]
fn librdkafka_is_built_with_tls_scram_and_kerberos() {
    // A client is made without connecting; librdkafka refuses a mechanism it was built without
    // ("No provider for SASL mechanism GSSAPI: recompile librdkafka with libsasl2 or openssl").
    let secured =
        [("SSL", ""), ("SASL_SSL", "SCRAM-SHA-512"), ("SASL_PLAINTEXT", "PLAIN"), ("SASL_PLAINTEXT", "GSSAPI")];
    for (protocol, mechanism) in secured {
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", "127.0.0.1:9").set("security.protocol", protocol);
        if !mechanism.is_empty() {
            // No kinit at start: only the build is under test.
            config
                .set("sasl.mechanism", mechanism)
                .set("sasl.username", "u")
                .set("sasl.password", "p")
                .set("sasl.kerberos.min.time.before.relogin", "0");
        }
        let made = config.create::<rdkafka::consumer::BaseConsumer>();
        assert!(made.is_ok(), "{protocol} {mechanism}: {:?}", made.err());
    }
}

/// A product-shaped spec: JSON records, two text models over their fields, a combined vector.
fn models_spec(f: &Files, input: &str, models: &str, sink: &str) -> String {
    let (onnx, tok) = (f.onnx.display(), f.tok.display());
    format!(
        r#"
name = "products"
checkpoint_location = "models"
[source]
bootstrap_servers = "127.0.0.1:9092"
subscribe = ["products"]
[input]
format = "json"
fields = {{ title = "/title", description = "/description" }}
required = ["title"]
{input}
[[models]]
name = "title"
kind = "text-onnx"
text = "{{title}}"
onnx = "{onnx}"
tokenizer = "{tok}"
[[models]]
name = "text"
kind = "text-onnx"
text = "{{title}}. {{description}}"
onnx = "{onnx}"
tokenizer = "{tok}"
batch_size = 8
{models}
[sink]
kind = "kafka"
topic = "out"
{sink}
"#
    )
}

const COMBINE: &str =
    "[[models]]\nname = \"product\"\nkind = \"combine\"\ninputs = [\"title\", \"text\"]\nnormalize = true";

#[test]
fn several_models_over_json_fields() {
    let f = files();
    let s = load(&models_spec(&f, "", COMBINE, "")).unwrap();
    assert_eq!(s.input.format, InputFormat::Json);
    assert_eq!(s.text_models().len(), 2);
    assert_eq!(s.text_models()[1].batch_size, 8);
    assert_eq!(s.text_models()[1].template().fields().collect::<Vec<_>>(), ["title", "description"]);
    assert_eq!(s.written_models(), ["title", "text", "product"]);
    assert_eq!(s.output_column("product"), "embedding_product");
    assert!(matches!(&s.models[2], ModelEntry::Combine(c) if c.normalize && c.inputs == ["title", "text"]));
    // What executors receive parses back to the same spec.
    assert_eq!(JobSpec::from_toml(&s.to_toml()).unwrap().to_toml(), s.to_toml());
    // The sink writes the models it names.
    let s = load(&models_spec(&f, "", COMBINE, "models = [\"product\"]")).unwrap();
    assert_eq!(s.written_models(), ["product"]);
}

#[test]
fn model_and_input_errors_name_their_key() {
    let f = files();
    let refused = |input: &str, models: &str, sink: &str| load(&models_spec(&f, input, models, sink)).unwrap_err();
    let e = refused("", "[[models]]\nname = \"x\"\nkind = \"combine\"\ninputs = [\"nope\"]", "");
    assert_eq!(e.key, "models[2].inputs");
    assert!(e.message.contains("`nope`"), "{e}");
    let e = refused("", "[[models]]\nname = \"title\"\nkind = \"combine\"\ninputs = [\"text\"]", "");
    assert_eq!((e.key.as_str(), e.message.contains("earlier")), ("models[2].name", true), "{e}");
    let e = refused("", "[[models]]\nname = \"img\"\nkind = \"resnet\"", "");
    assert_eq!(e.key, "models[2].kind");
    assert!(e.message.contains("text-onnx"), "{e}");
    let e = refused("", "[[models]]\nname = \"p\"\nkind = \"combine\"\ninputs = [\"text\"]\nnormalise = true", "");
    assert_eq!(e.key, "models[2].normalise");
    assert!(e.message.contains("normalise"), "{e}");
    let head = |extra: &str| format!("[[models]]\nname = \"p\"\nkind = \"combine\"\ninputs = [\"text\"]\n{extra}");
    let e = refused("", &head("method = \"onnx\""), "");
    assert_eq!(e.key, "models[2].onnx");
    let e = refused("", &head(&format!("onnx = \"{}\"", f.onnx.display())), "");
    assert_eq!((e.key.as_str(), e.message.contains("method = \"onnx\"")), ("models[2].onnx", true), "{e}");
    let e = refused("", &head("method = \"onnx\"\nonnx = \"/nonexistent/head.onnx\""), "");
    assert_eq!(e.key, "models[2].onnx");
    assert!(e.message.contains("no such file"), "{e}");
    let e = refused("", &head("method = \"mean\""), "");
    assert_eq!(e.key, "models[2].method");
    let e = refused("", "", "models = [\"image\"]");
    assert_eq!(e.key, "sink.models");
    // A template's field must be one of the input's.
    let text = models_spec(&f, "", "", "").replace("{title}. {description}", "{title} {colour}");
    let e = load(&text).unwrap_err();
    assert_eq!(e.key, "models[1].text");
    assert!(e.message.contains("`{colour}`"), "{e}");
    let e = load(&models_spec(&f, "", "", "").replace("batch_size = 8", "batch_size = 0")).unwrap_err();
    assert_eq!(e.key, "models[1].batch_size");
    // Chunks: neighbours share at most half a window; the kinds of long_text are named.
    let chunked =
        |extra: &str| models_spec(&f, "", "", "").replace("batch_size = 8", &format!("batch_size = 8\n{extra}"));
    let s = load(&chunked("long_text = \"chunk\"\nmax_seq_len = 64\nchunk_overlap = 31")).unwrap();
    assert!(matches!(&s.models[1], ModelEntry::TextOnnx(m) if m.long_text == LongText::Chunk && m.chunk_overlap == 31));
    let e = load(&chunked("long_text = \"chunk\"\nmax_seq_len = 64\nchunk_overlap = 32")).unwrap_err();
    assert_eq!(e.key, "models[1].chunk_overlap");
    assert!(e.message.contains("31"), "{e}");
    // One output per chunk: the query's one model, and only with chunks.
    let e = load(&chunked("long_text = \"chunk\"\nchunk_pooling = \"none\"")).unwrap_err();
    assert_eq!(e.key, "models[1].chunk_pooling");
    assert!(e.message.contains("one model"), "{e}");
    assert_eq!(load(&chunked("chunk_pooling = \"none\"")).unwrap_err().key, "models[1].chunk_pooling");
    let e = load(&chunked("long_text = \"split\"")).unwrap_err();
    assert_eq!(e.key, "models[1].long_text");
    assert!(e.message.contains("chunk"), "{e}");
    let e = load(&models_spec(&f, "", "", "").replace("\"/title\"", "\"title\"")).unwrap_err();
    assert_eq!(e.key, "input.fields.title");
    let e = load(&models_spec(&f, "", "", "").replace("required = [\"title\"]", "required = [\"price\"]")).unwrap_err();
    assert_eq!(e.key, "input.required");
    // Headers are fields: a name of their own, a header to read.
    let with_headers = |h: &str| {
        models_spec(&f, "", "", "").replace("required = [\"title\"]", &format!("required = [\"title\"]\nheaders = {h}"))
    };
    let s = load(&with_headers("{ shop = \"x-shop\" }")).unwrap();
    assert!(s.input.has_field("shop") && s.input.header_names() == ["x-shop"]);
    assert_eq!(load(&with_headers("{ title = \"x-title\" }")).unwrap_err().key, "input.headers.title");
    assert_eq!(load(&with_headers("{ shop = \"\" }")).unwrap_err().key, "input.headers.shop");
    // Fields are JSON pointers: a text input has none.
    let e = load(&models_spec(&f, "", "", "").replace("format = \"json\"", "format = \"text\"")).unwrap_err();
    assert_eq!(e.key, "input.fields");
    // A missing model file names its entry.
    let e = load(&models_spec(&f, "", "", "").replacen(&f.onnx.display().to_string(), "/nonexistent/m.onnx", 1))
        .unwrap_err();
    assert_eq!(e.key, "models[0].onnx");
}

#[test]
fn a_spec_has_model_or_models() {
    let f = files();
    let both = spec(&f, "", "").replace(
        "[sink]",
        &format!(
            "[[models]]\nname = \"a\"\nkind = \"text-onnx\"\nonnx = \"{}\"\ntokenizer = \"{}\"\n[sink]",
            f.onnx.display(),
            f.tok.display()
        ),
    );
    assert_eq!(load(&both).unwrap_err().key, "models");
    let model = format!("[model]\nonnx = \"{}\"\ntokenizer = \"{}\"\n", f.onnx.display(), f.tok.display());
    let neither = spec(&f, "", "").replace(&model, "");
    assert_ne!(neither, spec(&f, "", ""));
    let e = load(&neither).unwrap_err();
    assert_eq!(e.key, "model", "{e}");
    // One output per chunk, the query's one model.
    let each = spec(&f, "", "").replace("[model]\n", "[model]\nlong_text = \"chunk\"\nchunk_pooling = \"none\"\n");
    assert!(load(&each).unwrap().chunk_outputs());
    assert!(!load(&spec(&f, "", "")).unwrap().chunk_outputs());
    // `[model]` is named by its id.
    let named = spec(&f, "", "").replace("[model]\n", "[model]\nname = \"x\"\n");
    assert_eq!(load(&named).unwrap_err().key, "model.name");
}

/// Relative model files in `[[models]]` are resolved against the spec file's directory.
#[test]
fn relative_model_paths_resolve_against_the_spec_file() {
    let f = files();
    let dir = f.onnx.parent().unwrap().parent().unwrap();
    let text = models_spec(&f, "", "", "").replace(&f.onnx.display().to_string(), "m/model.onnx");
    let path = dir.join("job.toml");
    std::fs::write(&path, text).unwrap();
    let s = JobSpec::from_file(&path).unwrap();
    s.check_files().unwrap();
    assert_eq!(s.text_models()[0].onnx, f.onnx);
    assert_eq!(s.checkpoint_location, dir.join("models"));
}

/// An image model: its URL a template over the fields, its preprocessing and `[fetch]` typed
/// once; their errors name the key.
#[test]
fn image_models_and_fetch_settings() {
    let f = files();
    let image = |extra: &str| {
        format!(
            "[[models]]\nname = \"image\"\nkind = \"image-onnx\"\nimage_url = \"{{image}}\"\nonnx = \"{}\"\n\
             output = \"embedding\"\n\
             preprocess = {{ resize = 256, crop = 224, mean = [127.0, 127.0, 127.0], scale = [128.0, 128.0, 128.0] }}\n{extra}",
            f.onnx.display()
        )
    };
    let with_image = |models: &str, fetch: &str| {
        models_spec(&f, "", models, "")
            .replace("description = \"/description\" }", "description = \"/description\", image = \"/image_url\" }")
            .replace("[sink]", &format!("{fetch}\n[sink]"))
    };
    let fetch = "[fetch]\nconcurrency = 8\ntimeout = \"5s\"\nmax_bytes = 1048576\nallow = [\"127.0.0.1/32\"]";
    let s = load(&with_image(&image(""), fetch)).unwrap();
    let m = s.image_models()[0];
    assert_eq!((m.preprocess.crop, m.batch_size, m.output.as_deref()), (224, 16, Some("embedding")));
    assert_eq!(m.template().fields().collect::<Vec<_>>(), ["image"]);
    assert_eq!((s.fetch.concurrency, s.fetch.max_bytes, s.fetch.timeout.get().as_secs()), (8, 1 << 20, 5));
    assert!(s.fetch.may_fetch_from("127.0.0.1".parse().unwrap()));
    assert_eq!(s.written_models(), ["title", "text", "image"]);
    assert_eq!(JobSpec::from_toml(&s.to_toml()).unwrap().to_toml(), s.to_toml());
    // A combine entry takes the image model's vector as any other's.
    let both = format!("{}\n[[models]]\nname = \"p\"\nkind = \"combine\"\ninputs = [\"text\", \"image\"]", image(""));
    assert_eq!(load(&with_image(&both, "")).unwrap().written_models(), ["title", "text", "image", "p"]);

    let refused = |models: &str, fetch: &str| load(&with_image(models, fetch)).unwrap_err();
    let e = refused(&image("").replace("resize = 256", "resize = 100"), "");
    assert_eq!(e.key, "models[2].preprocess.resize");
    let e = refused(&image("").replace("{image}", "{photo}"), "");
    assert_eq!(e.key, "models[2].image_url");
    assert!(e.message.contains("`{photo}`"), "{e}");
    assert_eq!(refused(&image("batch_size = 0"), "").key, "models[2].batch_size");
    assert_eq!(refused(&image("crop = 224"), "").key, "models[2].crop");
    assert_eq!(refused(&image(""), "[fetch]\nconcurrency = 0").key, "fetch.concurrency");
    let e = refused(&image(""), "[fetch]\nallow = [\"localhost\"]");
    assert_eq!(e.key, "fetch.allow[0]");
    assert!(e.message.contains("address block"), "{e}");
    let e =
        load(&with_image(&image("").replace(&f.onnx.display().to_string(), "/nonexistent/i.onnx"), "")).unwrap_err();
    assert_eq!(e.key, "models[2].onnx");
}

#[test]
fn a_pgvector_sink_gets_defaults_and_its_secrets_stay_out_of_the_spec() {
    let f = files();
    let pg = |rest: &str| spec(&f, "", rest).replace("kind = \"kafka\"\ntopic = \"out\"", "kind = \"pgvector\"");
    let ok = "url = \"postgresql://es@db:5432/search\"\ntable = \"items\"\npassword = { env = \"ES_PG_PASSWORD\" }";
    let s = load(&pg(ok)).unwrap();
    let SinkKind::Pgvector(p) = &s.sink.kind else { panic!("a pgvector sink") };
    assert_eq!(
        (p.mode, p.index, p.distance, p.create_table),
        (PgMode::Upsert, PgIndex::Hnsw, PgDistance::Cosine, true)
    );
    assert_eq!(p.offsets_table, "embedstream_offsets");
    assert_eq!(s.dead_letter_topic(), "products-dlq");
    assert_eq!(s.secret_env_vars(), vec!["ES_PG_PASSWORD".to_string()]);
    // The password is read with the other secrets, under its key, and written back as a reference.
    std::env::set_var("ES_PG_PASSWORD", "hunter2");
    let secrets = s.read_secrets().unwrap();
    assert_eq!(s.sink_password_value(&secrets).unwrap().unwrap().expose(), "hunter2");
    assert!(!s.to_toml().contains("hunter2"));
    assert_eq!(JobSpec::from_toml(&s.to_toml()).unwrap().sink_password(), s.sink_password());

    assert_eq!(key_of(&pg("table = \"items\"")), "sink.url");
    assert_eq!(key_of(&pg("url = \"postgresql://es@db/search\"")), "sink.table");
    assert_eq!(key_of(&pg("url = \"postgresql://es:pw@db/search\"\ntable = \"items\"")), "sink.url");
    assert_eq!(
        key_of(&pg("url = \"postgresql://es@db/search\"\ntable = \"items\"\npassword = \"pw\"")),
        "sink.password"
    );
    assert_eq!(key_of(&pg("url = \"postgresql://es@db/search\"\ntable = \"it;ems\"")), "sink.table");
    assert_eq!(key_of(&pg("url = \"postgresql://es@db/search\"\ntable = \"items\"\nmode = \"merge\"")), "sink.mode");
    assert_eq!(key_of(&pg("url = \"postgresql://es@db/search\"\ntable = \"items\"\nindex = \"flat\"")), "sink.index");
    assert_eq!(
        key_of(&pg("url = \"postgresql://es@db/search\"\ntable = \"items\"\ncolumns = [\"key\"]")),
        "sink.columns"
    );
    let chunks = pg("url = \"postgresql://es@db/search\"\ntable = \"items\"")
        .replace("[sink]", "long_text = \"chunk\"\nchunk_pooling = \"none\"\n[sink]");
    assert_eq!(key_of(&chunks), "sink.kind");
}

#[test]
fn a_token_budget_must_hold_one_text_of_max_seq_len() {
    let f = files();
    let with = |keys: &str| spec(&f, "", "").replace("[sink]", &format!("{keys}\n[sink]"));
    assert_eq!(key_of(&with("max_batch_tokens = 64")), "model.max_batch_tokens");
    let s = load(&with("max_batch_tokens = 4096\nbatch_size = 256\nsort_window = 1024")).unwrap();
    assert_eq!(s.first_text_model().max_batch_tokens, Some(4096));
    assert!(s.to_toml().contains("max_batch_tokens = 4096"));
}

#[test]
fn the_embedding_cache_is_a_size_and_needs_one_vector_a_text() {
    let f = files();
    let with = |keys: &str| spec(&f, "", "").replace("[sink]", &format!("{keys}\n[sink]"));
    let s = load(&with("cache_bytes = \"256m\"")).unwrap();
    assert_eq!(s.first_text_model().cache_bytes.as_ref().map(|c| c.get().0), Some(256));
    // A task waits for the executor with its partition's cache (Spark's 3 s) only where there
    // is a cache, unless executors.locality_wait says otherwise.
    assert_eq!(s.locality_wait(), std::time::Duration::from_secs(3));
    assert_eq!(load(&with("")).unwrap().locality_wait(), std::time::Duration::ZERO);
    assert!(s.to_toml().contains("cache_bytes = \"256m\""));
    assert_eq!(key_of(&with("cache_bytes = \"lots\"")), "model.cache_bytes");
    assert_eq!(
        key_of(&with("cache_bytes = \"64m\"\nlong_text = \"chunk\"\nchunk_pooling = \"none\"")),
        "model.cache_bytes"
    );
}

/// Issue 39, item 6: HDFS locations as Hadoop users write them: a NameNode, an HA name service
/// (hdfs-site.xml's), and the default file system (`hdfs:///`, core-site.xml's `fs.defaultFS`);
/// a URL without a path is refused naming the key.
#[test]
fn hdfs_locations_as_hadoop_users_write_them() {
    let f = files();
    let with = |cp: &str| {
        JobSpec::from_toml(
            &spec(&f, "", "").replace("checkpoint_location = \"/tmp/cp\"", &format!("checkpoint_location = \"{cp}\"")),
        )
    };
    for ok in ["hdfs://nn1.example.com:8020/cp", "hdfs://nameservice1/cp", "hdfs:///user/etl/cp"] {
        assert!(with(ok).is_ok(), "{ok}: {:?}", with(ok).err());
    }
    for bad in ["hdfs://nn1.example.com:8020", "hdfs://", "hdfs://nameservice1//"] {
        let e = with(bad).expect_err(bad);
        assert_eq!(e.key, "checkpoint_location", "{bad}");
        assert!(e.message.contains("hdfs:///path (the default file system)"), "{bad}: {}", e.message);
    }
    // Where no Hadoop configuration is found, `hdfs:///` has no default file system: refused by
    // check_files, naming the key and where fs.defaultFS comes from.
    if std::env::var_os("HADOOP_CONF_DIR").is_none() && std::env::var_os("HADOOP_HOME").is_none() {
        let e = with("hdfs:///user/etl/cp").unwrap().check_files().expect_err("no fs.defaultFS");
        assert_eq!(e.key, "checkpoint_location");
        assert!(e.message.contains("fs.defaultFS"), "{}", e.message);
    }
}

#[test]
fn avro_input_needs_a_registry_and_keeps_its_password_out_of_the_spec() {
    let f = files();
    let avro = |input: &str| models_spec(&f, input, "", "").replace("format = \"json\"", "format = \"avro\"");
    assert_eq!(key_of(&avro("")), "input.schema_registry");
    let s = load(&avro(
        "schema_registry = { url = \"https://registry:8081/apis/ccompat/v7\", username = \"u\", password = { env = \"EMBEDSTREAM_TEST_REGISTRY_PASSWORD\" } }",
    ))
    .unwrap();
    assert_eq!(s.input.format, InputFormat::Avro);
    let registry = s.input.schema_registry.as_ref().unwrap();
    assert_eq!(registry.retry_for.get(), std::time::Duration::from_secs(30));
    assert_eq!(s.secret_env_vars(), vec!["EMBEDSTREAM_TEST_REGISTRY_PASSWORD".to_string()]);
    assert!(!s.to_toml().contains("hunter2"));
    std::env::set_var("EMBEDSTREAM_TEST_REGISTRY_PASSWORD", "hunter2");
    let secrets = s.read_secrets().unwrap();
    assert_eq!(s.registry_password_value(&secrets).unwrap().unwrap().expose(), "hunter2");
    for (input, key) in [
        ("schema_registry = { url = \"registry:8081\" }", "input.schema_registry.url"),
        ("schema_registry = { url = \"http://u:p@registry:8081\" }", "input.schema_registry.url"),
        (
            "schema_registry = { url = \"http://r\", username = \"u\", password = \"p\" }",
            "input.schema_registry.password",
        ),
        ("schema_registry = { url = \"http://r\", username = \"u\" }", "input.schema_registry.username"),
        ("schema_registry = { url = \"http://r\", ca = \"/etc/ca.pem\" }", "input.schema_registry.ca"),
    ] {
        assert_eq!(key_of(&avro(input)), key, "{input}");
    }
    // A registry is for schema'd values only.
    assert_eq!(key_of(&models_spec(&f, "schema_registry = { url = \"http://r\" }", "", "")), "input.schema_registry");
}

#[test]
fn sink_columns_are_input_fields_typed_by_input_types() {
    let f = files();
    let json =
        |input: &str, sink: &str| load(&spec(&f, &format!("[input]\n{input}"), &format!("format = \"json\"\n{sink}")));
    let fields = "format = \"json\"\nfields = { sku = \"/sku\", price = \"/price\", text = \"/title\" }\n\
                  headers = { shop = \"x-shop\" }";
    let ok = json(
        &format!("{fields}\ntypes = {{ price = \"double\" }}"),
        "columns = [\"value\", \"sku\", \"price\", \"shop\"]",
    )
    .unwrap();
    assert_eq!(
        ok.field_columns(),
        [
            FieldColumn { name: "sku".into(), ty: FieldType::Text },
            FieldColumn { name: "price".into(), ty: FieldType::Double },
            FieldColumn { name: "shop".into(), ty: FieldType::Text },
        ]
    );
    let err = |input: &str, sink: &str| json(input, sink).unwrap_err();
    let e = err(fields, "columns = [\"colour\"]");
    assert_eq!(e.key, "sink.columns");
    assert!(e.message.contains("`colour` is not a field"), "{e}");
    assert_eq!(err(fields, "columns = [\"key\"]").key, "sink.columns");
    assert!(err(fields, "columns = [\"sku\", \"sku\"]").message.contains("named twice"));
    let e = err("format = \"json\"\nfields = { offset = \"/o\" }", "columns = [\"offset\"]");
    assert!(e.message.contains("a column the sink writes itself"), "{e}");
    let e = err(&format!("{fields}\ntypes = {{ colour = \"text\" }}"), "");
    assert_eq!(e.key, "input.types.colour");
    assert!(err(&format!("{fields}\ntypes = {{ price = \"money\" }}"), "").key.starts_with("input.types"));
    // Avro output registers its schema in the query's registry, which JSON input may name.
    let e = load(&spec(&f, &format!("[input]\n{fields}"), "format = \"avro\"")).unwrap_err();
    assert_eq!(e.key, "sink.format");
    let registry = "schema_registry = { url = \"http://registry:8081\" }";
    load(&spec(&f, &format!("[input]\n{fields}\n{registry}"), "format = \"avro\"\ncolumns = [\"sku\"]")).unwrap();
    let e = load(&spec(&f, &format!("[input]\n{fields}\n{registry}"), "")).unwrap_err();
    assert_eq!(e.key, "input.schema_registry");
    // A Kafka sink writes fields into JSON and Avro values only.
    let e = load(&spec(&f, &format!("[input]\n{fields}"), "columns = [\"sku\"]")).unwrap_err();
    assert_eq!(e.key, "sink.columns");
    assert!(e.message.contains("f32le"), "{e}");
}

#[test]
fn exactly_once_kafka_output_is_refused_where_transactions_cannot_hold() {
    let f = files();
    let eos = |source: &str, sink: &str| load(&spec(&f, source, &format!("guarantee = \"exactly_once\"\n{sink}")));
    let ok = eos("", "").unwrap();
    assert!(ok.sink.exactly_once_kafka());
    assert!(ok.transaction_timeout() <= Duration::from_secs(900));
    assert_eq!(eos("min_partitions = 4", "").unwrap_err().key, "source.min_partitions");
    assert_eq!(eos("", "bootstrap_servers = \"other:9092\"").unwrap_err().key, "sink.bootstrap_servers");
    eos("", "bootstrap_servers = \"127.0.0.1:9092\"").unwrap();
    let e = eos("", "[sink.dead_letter_kafka]\n\"acks\" = \"all\"").unwrap_err();
    assert_eq!(e.key, "sink.dead_letter_kafka");
    assert!(key_of(&spec(&f, "", "guarantee = \"twice\"")).starts_with("sink.guarantee"));
}

/// Issue 35, item 2: `skip_unchanged` is on every model that reads records or none, and needs a
/// sink that keeps each key's last input.
#[test]
fn skip_unchanged_needs_a_keyed_sink_and_agreeing_models() {
    let f = files();
    let with = |keys: &str, sink: &str| spec(&f, "", sink).replace("[sink]", &format!("{keys}\n[sink]"));
    let s = load(&with("skip_unchanged = true", "")).unwrap();
    assert!(s.skip_unchanged());
    assert!(s.to_toml().contains("skip_unchanged = true"));
    assert!(!load(&with("", "")).unwrap().skip_unchanged());
    assert!(!load(&with("", "")).unwrap().to_toml().contains("skip_unchanged"));
    let parquet = with("skip_unchanged = true", "")
        .replace("kind = \"kafka\"\ntopic = \"out\"", "kind = \"parquet\"\npath = \"/tmp/t\"");
    let e = load(&parquet).unwrap_err();
    assert_eq!(e.key, "model.skip_unchanged");
    assert!(e.to_string().contains("pgvector"), "{e}");
    let append =
        with("skip_unchanged = true", "url = \"postgresql://es@db/search\"\ntable = \"items\"\nmode = \"append\"")
            .replace("kind = \"kafka\"\ntopic = \"out\"", "kind = \"pgvector\"");
    assert_eq!(key_of(&append), "model.skip_unchanged");
    // Two models that disagree: the one that says false is named.
    let models = models_spec(&f, "", "", "").replacen("batch_size = 8", "batch_size = 8\nskip_unchanged = true", 1);
    let e = load(&models).unwrap_err();
    assert_eq!(e.key, "models[0].skip_unchanged");
    assert!(e.to_string().contains("models[1].skip_unchanged is true"), "{e}");
    let both = models.replacen("tokenizer = ", "skip_unchanged = true\ntokenizer = ", 1);
    assert!(load(&both).unwrap().skip_unchanged());
}

/// Issue 35, item 3: a backfill names the live query's group to give way to, never its own.
#[test]
fn a_backfill_gives_way_to_another_group() {
    let f = files();
    let with = |trigger: &str| spec(&f, "", "").replace("[model]", &format!("[trigger.yield_to]\n{trigger}\n[model]"));
    let s = load(&with("group = \"live\"")).unwrap();
    let y = s.trigger.yield_to.as_ref().unwrap();
    assert_eq!((y.group.as_str(), y.max_lag), ("live", 1000));
    assert!(s.to_toml().contains("[trigger.yield_to]"));
    assert_eq!(key_of(&with("group = \"embedstream-products\"")), "trigger.yield_to.group");
    assert_eq!(key_of(&with("group = \" \"")), "trigger.yield_to.group");
    assert_eq!(key_of(&with("group = \"live\"\nmax_lags = 5")), "trigger.yield_to.max_lags");
}
