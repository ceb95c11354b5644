//! The `fasttext` model kind (issue 16): JSON records through two fastText models, the project's
//! trained `.bin` and fastText's quantised language identifier `.ftz`, beside an ONNX text model
//! and a combined vector of fastText's and ONNX's, against a real Apache Kafka broker and
//! `embedstream run` with executor processes. The fastText vectors, read in Rust, equal the
//! Python fastText package's `get_sentence_vector` to 6 decimals.

mod common;

use common::reference::{fasttext_vectors, max_diff, numpy_concat, onnx_embeddings};
use common::table::read_vectors;
use common::*;

/// 6 decimals.
const FASTTEXT_TOLERANCE: f32 = 1e-6;

fn products_model() -> std::path::PathBuf {
    let model = cache().join("models/fasttext-products/model.bin");
    assert!(model.is_file(), "{} is missing: run deploy/setup.sh --python", model.display());
    model
}

fn language_model() -> std::path::PathBuf {
    let model = cache().join("models/lid.176/lid.176.ftz");
    assert!(model.is_file(), "{} is missing: run deploy/setup.sh --python", model.display());
    model
}

fn models() -> String {
    format!(
        r#"[input]
format = "json"
fields = {{ title = "/title", description = "/description" }}
required = ["title"]

[[models]]
name = "words"
kind = "fasttext"
text = "{{title}} {{description}}"
model = "{words}"

[[models]]
name = "language"
kind = "fasttext"
text = "{{description}}"
model = "{language}"

[[models]]
name = "title"
kind = "text-onnx"
text = "{{title}}"
onnx = "{onnx}/model.onnx"
tokenizer = "{onnx}/tokenizer.json"

[[models]]
name = "product"
kind = "combine"
inputs = ["words", "title"]
normalize = true"#,
        words = products_model().display(),
        language = language_model().display(),
        onnx = model_dir().display(),
    )
}

/// Titles and descriptions in the model's words and outside them, with accents, punctuation
/// and runs of spaces (fastText splits on white space and hashes the character n-grams of
/// words it does not know); the last has no description, which the `language` model reads
/// alone: it is a dead letter.
fn products() -> Vec<(String, Option<String>)> {
    let descriptions = [
        "leather upper rubber sole arch support",
        "stainless steel  non-stick coating, dishwasher safe",
        "Ünïcödé: naïve café owners serve crème brûlée in Zürich.",
        "noise cancelling\tbluetooth deep bass",
        "ein wasserdichter Rucksack für Wanderungen",
        "für Kinder: Holzspielzeug, ab drei Jahren",
    ];
    let mut out: Vec<(String, Option<String>)> = texts(18, 23)
        .into_iter()
        .enumerate()
        .map(|(i, title)| (title, Some(descriptions[i % descriptions.len()].to_string())))
        .collect();
    out.push(("navy merino wool scarf".to_string(), None));
    out
}

#[test]
fn fasttext_models_read_in_rust_match_python_fasttext() {
    let broker = Broker::start();
    broker.create_topic("goods", 2);
    let products = products();
    let records: Vec<RawRecord> = (products.iter().enumerate())
        .map(|(n, (title, description))| {
            let value = match description {
                Some(d) => serde_json::json!({ "title": title, "description": d }),
                None => serde_json::json!({ "title": title }),
            };
            ((n % 2) as i32, Some(format!("sku-{n}").into_bytes()), Some(value.to_string().into_bytes()))
        })
        .collect();
    broker.produce("goods", &records);
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("vectors");
    let job = Job::new(&broker, "goods", "subscribe = [\"goods\"]", "available_now = true", "")
        .with_models(&models())
        .with_parquet_sink(&table);
    let summary = run_job(&job, 1);
    assert_eq!(summary["embeddings"], products.len() - 1, "{summary}");
    assert_eq!(summary["dead_letters"], 1, "{summary}");
    let dead = broker.read_all("goods-dlq", 2);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].key.as_deref(), Some(format!("sku-{}", products.len() - 1).as_bytes()));
    assert_eq!(dead[0].header("es.error"), "description is empty");
    let products = &products[..products.len() - 1];

    let columns = ["embedding_words", "embedding_language", "embedding_title", "embedding_product"];
    let (rows, count) = read_vectors(&table, &columns);
    assert_eq!(count, products.len(), "every good product once");
    let words: Vec<String> =
        products.iter().map(|(t, d)| format!("{t} {}", d.as_deref().unwrap_or_default())).collect();
    let descriptions: Vec<String> = products.iter().map(|(_, d)| d.clone().unwrap_or_default()).collect();
    let titles: Vec<String> = products.iter().map(|(t, _)| t.clone()).collect();
    let want_words = fasttext_vectors(&products_model(), &words);
    let want_language = fasttext_vectors(&language_model(), &descriptions);
    let want_titles = onnx_embeddings(&titles);
    let (mut worst_fasttext, mut worst_onnx) = (0f32, 0f32);
    for (value, vectors) in rows.values() {
        let doc: serde_json::Value = serde_json::from_str(value).unwrap();
        let n = titles.iter().position(|t| doc["title"] == *t).expect("a product");
        let [words, language, title, product] = &vectors[..] else { panic!("four vector columns") };
        assert_eq!((words.len(), language.len(), title.len(), product.len()), (128, 16, DIM, 128 + DIM));
        worst_fasttext = worst_fasttext.max(max_diff(words, &want_words[n])).max(max_diff(language, &want_language[n]));
        worst_onnx = worst_onnx.max(max_diff(title, &want_titles[n]));
        worst_onnx = worst_onnx.max(max_diff(product, &numpy_concat(&[words, title])));
    }
    eprintln!("max difference from Python: fastText {worst_fasttext:e}, ONNX and combine {worst_onnx:e}");
    assert!(worst_fasttext < FASTTEXT_TOLERANCE, "fastText: max difference from Python {worst_fasttext}");
    assert!(worst_onnx < 1e-4, "ONNX and combine: max difference from Python {worst_onnx}");
    // Not a vector of zeros: the model's words were found.
    let (_, first) = rows.values().next().unwrap();
    assert!(first[0].iter().map(|x| x * x).sum::<f32>() > 1e-3);
}
