//! What the previous release wrote, this one reads: a checkpoint and a Parquet table made by the
//! release before the issue 12 refactor (`tests/fixtures/previous-release/`) are continued by a
//! query of this release. It resumes after the committed batch, writes only the new records,
//! keeps the old batch's manifest and rows, and embeds a text as the old release did.

mod common;

use std::path::Path;

use common::table::read_table;
use common::*;
use embedstream_core::manifest;

/// The texts the fixture's query embedded, in partition 0 of `fixture-in`, offsets 0 to 4.
const OLD_TEXTS: [&str; 5] = [
    "waterproof hiking boots, size 42",
    "ceramic pour-over coffee dripper",
    "wireless noise cancelling headphones",
    "organic cotton bath towel set",
    "stainless steel water bottle 750 ml",
];

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn a_checkpoint_and_a_table_of_the_previous_release_are_continued() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/previous-release");
    let broker = Broker::start();
    broker.create_topic("fixture-in", 1);
    // The same five records at the same offsets, then three new ones; the first new one repeats
    // a text the old release embedded.
    let mut input: Vec<String> = OLD_TEXTS.iter().map(|t| t.to_string()).collect();
    input.extend([OLD_TEXTS[0].to_string(), "linen shirt, slim fit".into(), "cast iron skillet 28 cm".into()]);
    broker.produce_texts("fixture-in", 1, 0, &input);

    let job = Job::new(&broker, "fixture", "subscribe = [\"fixture-in\"]", "available_now = true", "");
    let table = job.dir.path().join("table");
    let job = job.with_parquet_sink(&table);
    copy_dir(&fixtures.join("checkpoint"), &job.checkpoint());
    copy_dir(&fixtures.join("table"), &table);
    let old_manifest = manifest::committed(&table, 0).unwrap().expect("the fixture's batch 0");

    let summary = run_job(&job, 1);
    // The checkpoint's query goes on: same id, one new batch with only the three new records.
    let metadata = read_checkpoint_file(&job.checkpoint().join("metadata"));
    assert_eq!(summary["query_id"], metadata["query_id"], "{summary}");
    assert_eq!(summary["batches"], 1, "{summary}");
    assert_eq!(summary["embeddings"], 3, "{summary}");
    assert_eq!(job.logged_batches("commits"), [0, 1]);
    let batch1 = read_checkpoint_file(&job.checkpoint().join("offsets/1"));
    assert_eq!(batch1["start"], serde_json::json!({"fixture-in": {"0": 5}}));
    assert_eq!(batch1["end"], serde_json::json!({"fixture-in": {"0": 8}}));

    // The old batch's manifest is untouched; the new one follows it; each record is in the
    // table once, with its text.
    assert_eq!(manifest::committed(&table, 0).unwrap(), Some(old_manifest.clone()));
    let new_manifest = manifest::committed(&table, 1).unwrap().expect("batch 1's manifest");
    assert_eq!(new_manifest.query_id, old_manifest.query_id);
    let (rows, count) = read_table(&table);
    assert_eq!(count, 8, "each record once");
    let texts: Vec<&str> = rows.values().map(|(t, _)| t.as_str()).collect();
    assert_eq!(texts, input.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(rows.keys().map(|&(p, o)| (p, o)).collect::<Vec<_>>(), (0..8).map(|o| (0, o)).collect::<Vec<_>>());

    // The same text, embedded by the old release (offset 0) and by this one (offset 5).
    let (old_vector, new_vector) = (&rows[&(0, 0)].1, &rows[&(0, 5)].1);
    assert_eq!(old_vector.len(), 384);
    let gap = old_vector.iter().zip(new_vector).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(gap < 1e-5, "the two releases embed the same text the same way (max difference {gap})");
}
