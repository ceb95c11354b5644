//! Where a new query starts. (Offsets without records, from transaction markers, are in
//! tests/kafka.rs.)

mod common;

use common::*;
use std::collections::BTreeSet;

#[test]
fn starting_offsets_per_partition_are_honoured() {
    let broker = Broker::start();
    broker.create_topic("start", 3);
    broker.produce_texts("start", 3, 0, &texts(30, 10)); // 10 records a partition
    let job = Job::new(
        &broker,
        "start",
        "subscribe = [\"start\"]\nstarting_offsets = { start = { \"0\" = 4, \"1\" = -1, \"2\" = -2 } }",
        "available_now = true",
        "",
    )
    .without_default_starting_offsets();
    let summary = run_job(&job, 1);
    assert_eq!(summary["embeddings"], 6 + 10, "offsets 4..10 of partition 0 and all of partition 2");
    let seen: BTreeSet<(i32, i64)> = broker.read_all("start-out", 3).iter().map(Record::origin).collect();
    let want: BTreeSet<(i32, i64)> = (4..10).map(|o| (0, o)).chain((0..10).map(|o| (2, o))).collect();
    assert_eq!(seen, want, "partition 0 from offset 4, partition 1 from latest, partition 2 from earliest");
    assert_eq!(broker.committed("start-group", "start", 3), vec![10, 10, 10]);
}
