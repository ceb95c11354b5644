//! JSON records through several models (issue 16): fields by JSON pointer, two text models over
//! templates of them and a combined vector, against a real Apache Kafka broker and `embedstream
//! run` with executor processes. The vectors are compared with Python onnxruntime's for the same
//! texts, the combined one with numpy's concatenation; every kind of bad record is in the
//! dead-letter topic with a reason that names its field, and the offsets are committed. Long
//! texts in chunks (`long_text = "chunk"`) get the mean of their windows' vectors, as Python
//! computes it from the same tokenizer's windows, or one output each (`chunk_pooling = "none"`)
//! that traces back to its record's offset and its token span. A `combine` entry with an ONNX head over two
//! text towers gives numpy's evaluation of the same head.

mod common;

use std::collections::BTreeMap;

use common::reference::{
    make_onnx_head, max_diff, numpy_concat, numpy_head, onnx_chunked_embeddings, onnx_each_chunk, onnx_embeddings,
    onnx_embeddings_truncated,
};
use common::table::read_vectors;
use common::*;

const MODELS: &str = r#"[input]
format = "json"
fields = { title = "/title", description = "/description", brand = "/details/brand" }
required = ["title"]

[[models]]
name = "title"
kind = "text-onnx"
text = "{title}"
onnx = "MODEL/model.onnx"
tokenizer = "MODEL/tokenizer.json"
batch_size = 4
sort_window = 8

[[models]]
name = "text"
kind = "text-onnx"
text = "{title}. {description}"
onnx = "MODEL/model.onnx"
tokenizer = "MODEL/tokenizer.json"
batch_size = 8
sort_window = 16

[[models]]
name = "product"
kind = "combine"
inputs = ["title", "text"]
normalize = true"#;

fn models() -> String {
    MODELS.replace("MODEL", &model_dir().display().to_string())
}

struct Products {
    /// (title, description) of the good records, record `n` at partition `n % 2`.
    good: Vec<(String, String)>,
    /// The reason each bad record's dead letter must give, by (partition, offset).
    bad: BTreeMap<(i32, i64), &'static str>,
}

/// Good products interleaved with every kind of bad record, produced to `topic` (2 partitions).
fn produce_products(broker: &Broker, topic: &str) -> Products {
    let sentences = texts(24, 16);
    let mut good = Vec::new();
    let mut records = Vec::new();
    let mut bad = BTreeMap::new();
    let bad_values: [(&[u8], &str); 5] = [
        (b"{not json", "value is not valid JSON"),
        (br#"{"description": "no title"}"#, "required field `title` (/title) is missing"),
        (br#"{"title": 42, "description": "x"}"#, "field `title` (/title) is a number, not a string"),
        (br#"{"title": "Mug", "description": ["a", "list"]}"#, "field `description` (/description) is an array"),
        (br#"{"title": "   "}"#, "required field `title` (/title) is empty"),
    ];
    let mut offsets = [0i64, 0];
    let mut push = |records: &mut Vec<RawRecord>, p: i32, value: Vec<u8>| {
        records.push((p, Some(format!("sku-{}-{}", p, offsets[p as usize]).into_bytes()), Some(value)));
        offsets[p as usize] += 1;
        offsets[p as usize] - 1
    };
    for (n, pair) in sentences.chunks(2).enumerate() {
        let p = (n % 2) as i32;
        let (title, description) = (pair[0].clone(), pair[1].clone());
        // Fields other than the template's are ignored; the brand is optional.
        let value = serde_json::json!({ "title": title, "description": description, "price": n, "details": {} });
        push(&mut records, p, value.to_string().into_bytes());
        good.push((title, description));
        if let Some((value, reason)) = bad_values.get(n) {
            let at = push(&mut records, p, value.to_vec());
            bad.insert((p, at), *reason);
        }
    }
    // A null value, too.
    let at = offsets[1];
    records.push((1, Some(b"sku-null".to_vec()), None));
    bad.insert((1, at), "value is null");
    broker.produce(topic, &records);
    Products { good, bad }
}

#[test]
fn json_records_get_every_models_vector_and_bad_ones_their_reason() {
    let broker = Broker::start();
    broker.create_topic("items", 2);
    let products = produce_products(&broker, "items");
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("vectors");
    let job =
        Job::new(&broker, "items", "subscribe = [\"items\"]\nmax_offsets_per_trigger = 10", "available_now = true", "")
            .with_models(&models())
            .with_parquet_sink(&table);
    let summary = run_job(&job, 2);
    assert_eq!(summary["embeddings"], products.good.len(), "{summary}");
    assert_eq!(summary["dead_letters"], products.bad.len(), "{summary}");
    let highs = broker.high_watermarks("items", 2);
    assert_eq!(broker.committed("items-group", "items", 2), highs, "every offset is committed");

    // Every good record once, with each model's vector.
    let (rows, count) = read_vectors(&table, &["embedding_title", "embedding_text", "embedding_product"]);
    assert_eq!(count, products.good.len());
    let titles: Vec<String> = products.good.iter().map(|(t, _)| t.clone()).collect();
    let texts: Vec<String> = products.good.iter().map(|(t, d)| format!("{t}. {d}")).collect();
    let (want_titles, want_texts) = (onnx_embeddings(&titles), onnx_embeddings(&texts));
    let mut worst = 0f32;
    for (value, vectors) in rows.values() {
        let doc: serde_json::Value = serde_json::from_str(value).unwrap();
        let n = titles.iter().position(|t| doc["title"] == *t).expect("a good record");
        let [title, text, product] = &vectors[..] else { panic!("three vector columns") };
        assert_eq!((title.len(), text.len(), product.len()), (DIM, DIM, 2 * DIM));
        worst = worst.max(max_diff(title, &want_titles[n])).max(max_diff(text, &want_texts[n]));
        worst = worst.max(max_diff(product, &numpy_concat(&[title, text])));
    }
    assert!(worst < 1e-4, "max difference from Python: {worst}");
    // The two templates gave two different texts, so two different vectors.
    let (_, first) = rows.values().next().unwrap();
    assert!(max_diff(&first[0], &first[1]) > 1e-2);

    // Every bad record in the dead-letter topic, as it came, with its reason.
    let dead = broker.read_all("items-dlq", 2);
    assert_eq!(dead.len(), products.bad.len());
    for rec in &dead {
        let origin = rec.origin();
        let want = products.bad.get(&origin).unwrap_or_else(|| panic!("{origin:?} is not a bad record"));
        let reason = rec.header("es.error");
        assert!(reason.starts_with(want), "{origin:?}: `{reason}`, want `{want}`");
        assert_eq!(rec.header("es.topic"), "items");
    }
}

#[test]
fn the_kafka_sink_writes_one_record_per_model_tagged_with_its_name() {
    let broker = Broker::start();
    broker.create_topic("goods", 1);
    let records: Vec<RawRecord> = texts(6, 17)
        .iter()
        .enumerate()
        .map(|(i, t)| {
            (0, Some(format!("k{i}").into_bytes()), Some(serde_json::json!({ "title": t }).to_string().into_bytes()))
        })
        .collect();
    // Every record has a `shop` header; the `text` model's description comes from it.
    let shops: Vec<String> = (0..6).map(|i| format!("shop {i}")).collect();
    let headers: Vec<Vec<(&str, &[u8])>> =
        shops.iter().map(|s| vec![("trace", &b"t"[..]), ("shop", s.as_bytes())]).collect();
    broker.produce_with_headers("goods", &records, &headers);
    let job = Job::new(
        &broker,
        "goods",
        "subscribe = [\"goods\"]",
        "available_now = true",
        "models = [\"title\", \"product\"]",
    )
    .with_models(
        &models()
            .replace("required = [\"title\"]", "required = [\"title\"]\nheaders = { shop = \"shop\" }")
            .replace("text = \"{title}. {description}\"", "text = \"{title}. {description}{shop}\""),
    );
    let summary = run_job(&job, 1);
    assert_eq!(summary["embeddings"], 6, "{summary}");
    let out = broker.read_all("goods-out", 1);
    // For each input, in offset order: its `title` vector, then its `product` vector (not `text`).
    let tags: Vec<(i64, String, usize)> =
        out.iter().map(|r| (r.origin().1, r.header("es.model").to_string(), r.vector().len())).collect();
    let want: Vec<(i64, String, usize)> =
        (0..6).flat_map(|o| [(o, "title".to_string(), DIM), (o, "product".to_string(), 2 * DIM)]).collect();
    assert_eq!(tags, want);
    assert!(out.iter().all(|r| r.key.as_deref() == Some(format!("k{}", r.origin().1).as_bytes())));
    // The description is optional: absent, the `text` model read "<title>. <shop header>",
    // and the combined vector holds it, normalised.
    let title = |i: usize| {
        let doc = serde_json::from_slice::<serde_json::Value>(records[i].2.as_ref().unwrap()).unwrap();
        doc["title"].as_str().unwrap().to_string()
    };
    let want = onnx_embeddings(&[title(0), format!("{}. {}", title(0), shops[0])]);
    assert!(max_diff(&out[0].vector(), &want[0]) < 1e-4);
    let product = out[1].vector();
    assert!(max_diff(&product, &numpy_concat(&[&want[0], &want[1]])) < 1e-4, "the shop header is in the text");
}

#[test]
fn long_texts_in_chunks_get_the_mean_of_their_windows() {
    let broker = Broker::start();
    broker.create_topic("docs", 1);
    // Descriptions of one to about eight windows of 30 tokens.
    let mut descriptions: Vec<String> = (0..8).map(|n| texts(1 + n * 3, 40 + n).join(". ")).collect();
    descriptions[0] = "a short wool scarf".to_string();
    let records: Vec<RawRecord> = (descriptions.iter().enumerate())
        .map(|(i, d)| {
            (
                0,
                Some(format!("d{i}").into_bytes()),
                Some(serde_json::json!({ "description": d }).to_string().into_bytes()),
            )
        })
        .collect();
    broker.produce("docs", &records);
    let models = r#"[input]
format = "json"
fields = { description = "/description" }

[[models]]
name = "whole"
kind = "text-onnx"
text = "{description}"
onnx = "MODEL/model.onnx"
tokenizer = "MODEL/tokenizer.json"
max_seq_len = 32
long_text = "chunk"
chunk_overlap = 8
batch_size = 8
sort_window = 64

[[models]]
name = "head"
kind = "text-onnx"
text = "{description}"
onnx = "MODEL/model.onnx"
tokenizer = "MODEL/tokenizer.json"
max_seq_len = 32"#
        .replace("MODEL", &model_dir().display().to_string());
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("vectors");
    let job = Job::new(&broker, "docs", "subscribe = [\"docs\"]", "available_now = true", "")
        .with_models(&models)
        .with_parquet_sink(&table);
    let summary = run_job(&job, 1);
    assert_eq!(summary["embeddings"], descriptions.len(), "{summary}");
    let (rows, count) = read_vectors(&table, &["embedding_whole", "embedding_head"]);
    assert_eq!(count, descriptions.len());
    let want_whole = onnx_chunked_embeddings(&descriptions, 32, 8);
    let want_head = onnx_embeddings_truncated(&descriptions, 32);
    let mut worst = 0f32;
    for (&(_, offset), (_, vectors)) in &rows {
        let n = offset as usize;
        worst = worst.max(max_diff(&vectors[0], &want_whole[n])).max(max_diff(&vectors[1], &want_head[n]));
        // The first description fits one window: chunked, it is embedded whole; the others'
        // vectors hold their later windows too.
        let apart = max_diff(&vectors[0], &vectors[1]);
        match n {
            0 => assert!(apart < 1e-5, "a short text, chunked or truncated: {apart}"),
            _ => assert!(apart > 1e-3, "description {n}: the chunks' mean is its head's vector"),
        }
    }
    eprintln!("chunked and truncated: max difference from Python {worst:e}");
    assert!(worst < 1e-4, "max difference from Python: {worst}");
}

#[test]
fn an_onnx_head_combines_two_towers_as_numpy_computes_it() {
    let broker = Broker::start();
    broker.create_topic("towers", 2);
    let products = produce_products(&broker, "towers");
    let dir = tempfile::tempdir().unwrap();
    let head = dir.path().join("head.onnx");
    make_onnx_head(&head);
    let models = models().replace(
        "inputs = [\"title\", \"text\"]\nnormalize = true",
        &format!("inputs = [\"title\", \"text\"]\nmethod = \"onnx\"\nonnx = \"{}\"\nnormalize = true", head.display()),
    );
    let table = dir.path().join("vectors");
    let job = Job::new(&broker, "towers", "subscribe = [\"towers\"]", "available_now = true", "")
        .with_models(&models)
        .with_parquet_sink(&table);
    let summary = run_job(&job, 1);
    assert_eq!(summary["embeddings"], products.good.len(), "{summary}");
    assert_eq!(summary["dead_letters"], products.bad.len(), "{summary}");
    let (rows, count) = read_vectors(&table, &["embedding_title", "embedding_text", "embedding_product"]);
    assert_eq!(count, products.good.len());
    let pairs: Vec<(&[f32], &[f32])> = rows.values().map(|(_, v)| (&v[0][..], &v[1][..])).collect();
    let want = numpy_head(&head, &pairs);
    let mut worst = 0f32;
    for ((_, vectors), want) in rows.values().zip(&want) {
        assert_eq!(vectors[2].len(), 64);
        worst = worst.max(max_diff(&vectors[2], want));
    }
    eprintln!("ONNX head: max difference from numpy {worst:e}");
    assert!(worst < 1e-4, "max difference from numpy: {worst}");
}

#[test]
fn a_head_that_does_not_take_the_entrys_inputs_stops_the_run_naming_both() {
    let broker = Broker::start();
    broker.create_topic("heads", 1);
    let dir = tempfile::tempdir().unwrap();
    let head = dir.path().join("head.onnx");
    make_onnx_head(&head); // takes `title` and `text`
    let models = models().replace(
        "inputs = [\"title\", \"text\"]\nnormalize = true",
        &format!("inputs = [\"title\"]\nmethod = \"onnx\"\nonnx = \"{}\"", head.display()),
    );
    let job = Job::new(&broker, "heads", "subscribe = [\"heads\"]", "available_now = true", "").with_models(&models);
    let log = run_refused(&job);
    let want = format!(
        "model {}: takes the inputs [\"text\", \"title\"], but the entry's inputs are [\"title\"]",
        head.display()
    );
    assert!(log.contains(&want), "{log}");
    assert!(job.logged_batches(&log).is_empty(), "no batch ran");
}

#[test]
fn each_chunk_is_an_output_that_traces_to_its_offset_and_token_span() {
    let broker = Broker::start();
    broker.create_topic("pages", 2);
    let mut descriptions: Vec<String> = (0..8).map(|n| texts(1 + n * 3, 60 + n).join(". ")).collect();
    descriptions[3] = "a short wool scarf".to_string();
    // Record n at partition n % 2, offset n / 2.
    let records: Vec<RawRecord> = (descriptions.iter().enumerate())
        .map(|(i, d)| ((i % 2) as i32, Some(format!("p{i}").into_bytes()), Some(d.clone().into_bytes())))
        .collect();
    broker.produce("pages", &records);
    let job = Job::new(&broker, "pages", "subscribe = [\"pages\"]", "available_now = true", "").edit_model(
        "max_seq_len = 32\nlong_text = \"chunk\"\nchunk_overlap = 8\nchunk_pooling = \"none\"\nbatch_size = 8\nsort_window = 64",
    );
    let want = onnx_each_chunk(&descriptions, 32, 8);
    let chunks: usize = want.iter().map(Vec::len).sum();
    assert!(want.iter().any(|w| w.len() >= 5), "some descriptions span several windows");
    let summary = run_job(&job, 1);
    assert_eq!(summary["embeddings"], chunks, "one output a chunk: {summary}");
    let out = broker.read_all("pages-out", 2);
    assert_eq!(out.len(), chunks);
    // Each record's chunks, in order, in its partition: index, span and vector as Python's.
    let mut worst = 0f32;
    for (n, windows) in want.iter().enumerate() {
        let (partition, offset) = ((n % 2) as i32, (n / 2) as i64);
        let mine: Vec<&Record> = out.iter().filter(|r| r.origin() == (partition, offset)).collect();
        assert_eq!(mine.len(), windows.len(), "record {n}: one output a window");
        for (i, (rec, w)) in mine.iter().zip(windows).enumerate() {
            let span = (rec.header("es.chunk"), rec.header("es.token_start"), rec.header("es.token_end"));
            assert_eq!(span, (i.to_string().as_str(), w.start.to_string().as_str(), w.end.to_string().as_str()));
            assert_eq!(rec.key.as_deref(), Some(format!("p{n}").as_bytes()));
            worst = worst.max(max_diff(&rec.vector(), &w.vector));
        }
    }
    eprintln!("one output a chunk: {chunks} chunks of 8 records, max difference from Python {worst:e}");
    assert!(worst < 1e-4, "max difference from Python: {worst}");
    assert_eq!(broker.committed("pages-group", "pages", 2), broker.high_watermarks("pages", 2));
}
