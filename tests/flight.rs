//! Arrow Flight on the executors: ad-hoc embeddings from the warm workers of a running query
//! (DoExchange), its latest output (DoGet), `embedstream embed`, and what bad calls get.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::builder::StringViewBuilder;
use arrow_array::{
    Array, ArrayRef, BinaryArray, FixedSizeListArray, Float32Array, Int64Array, RecordBatch, StringArray,
};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::{FlightClient, Ticket};
use arrow_schema::{Field, Schema};
use common::*;
use futures::{StreamExt, TryStreamExt};

const TOKEN: &str = "flight-test-token";

/// The executor's Flight address, from the target list the driver keeps.
fn flight_address(job: &Job) -> String {
    let targets: serde_json::Value = read_checkpoint_file(&job.checkpoint().join("monitoring/targets.json"));
    let executor = targets
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["labels"]["role"] == "executor")
        .unwrap_or_else(|| panic!("no executor in {targets}"));
    executor["labels"]["flight_address"].as_str().unwrap().to_string()
}

async fn client(address: &str, token: Option<&str>) -> FlightClient {
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{address}")).unwrap().connect().await.unwrap();
    let mut client = FlightClient::new(channel);
    if let Some(t) = token {
        client.add_header("authorization", &format!("Bearer {t}")).unwrap();
    }
    client
}

fn batch(name: &str, column: ArrayRef) -> RecordBatch {
    let schema = Schema::new(vec![Field::new(name, column.data_type().clone(), true)]);
    RecordBatch::try_new(Arc::new(schema), vec![column]).unwrap()
}

fn text_batch(texts: &[String]) -> RecordBatch {
    batch("text", Arc::new(StringArray::from(texts.to_vec())))
}

/// Sends `batches` in one DoExchange call.
async fn exchange(client: &mut FlightClient, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>, FlightError> {
    let request = FlightDataEncoderBuilder::new().build(futures::stream::iter(batches.into_iter().map(Ok)));
    client.do_exchange(request).await?.try_collect().await
}

/// (text, vector) per row of answers that have `text` and `embedding` columns.
fn embeddings(batches: &[RecordBatch], text_column: &str) -> Vec<(String, Vec<f32>)> {
    let mut out = Vec::new();
    for b in batches {
        let list = b.column_by_name("embedding").unwrap().as_any().downcast_ref::<FixedSizeListArray>().unwrap();
        let text = b.column_by_name(text_column).unwrap();
        for row in 0..b.num_rows() {
            let vector = list.value(row).as_any().downcast_ref::<Float32Array>().unwrap().values().to_vec();
            let text = match text.as_any().downcast_ref::<StringArray>() {
                Some(s) => s.value(row).to_string(),
                None => {
                    let bytes = text.as_any().downcast_ref::<arrow_array::BinaryArray>().unwrap().value(row);
                    String::from_utf8(bytes.to_vec()).unwrap()
                }
            };
            out.push((text, vector));
        }
    }
    out
}

/// Runs `cmd` with the cluster token and `input` on stdin; its JSON lines `{text, embedding}`
/// and its stderr.
fn json_lines(mut cmd: std::process::Command, input: &str) -> (Vec<(String, Vec<f32>)>, String) {
    cmd.env("EMBEDSTREAM_TOKEN", TOKEN).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{cmd:?} failed: {stderr}");
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let vector = v["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            (v["text"].as_str().unwrap().to_string(), vector)
        })
        .collect();
    (lines, stderr)
}

fn assert_close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: dimensions");
    let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-4, "{what}: vectors differ by up to {diff}");
}

fn status_of(e: FlightError) -> tonic::Status {
    match e {
        FlightError::Tonic(s) => *s,
        other => panic!("expected a gRPC status, got {other}"),
    }
}

#[test]
fn concurrent_do_exchange_during_a_streaming_query_equals_the_stream() {
    let broker = Broker::start();
    broker.create_topic("items", 1);
    let first = texts(60, 21);
    broker.produce_texts("items", 1, 0, &first);
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let job = Job::new(
        &broker,
        "fl",
        "subscribe = [\"items\"]\nmax_offsets_per_trigger = 40",
        "processing_time = \"500ms\"",
        &format!("\n[security]\ntoken_file = \"{}\"", token_file.display()),
    );
    let mut q = Running::start(&job, 1);
    q.wait_until("the first 60 records committed", Duration::from_secs(120), |_| {
        broker.committed("fl-group", "items", 1) == vec![60]
    });
    let address = flight_address(&job);
    // The executor needs the cluster token: it reads it from a private file its driver names
    // on its command line, never from its environment or argv; its model daemon and forked
    // workers never call anything, and do not get it (issue 14, findings 10 and 15).
    let executor = q.executor_pids()[0];
    let daemon = children_of(executor);
    let workers: Vec<u32> = daemon.iter().flat_map(|&d| children_of(d)).collect();
    assert!(daemon.len() == 1 && !workers.is_empty(), "daemon {daemon:?}, workers {workers:?}");
    let environ =
        |pid: u32| String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap()).into_owned();
    let cmdline =
        |pid: u32| String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap()).replace('\0', " ");
    assert!(cmdline(executor).contains("--token-file") && !cmdline(executor).contains(TOKEN), "{}", cmdline(executor));
    for pid in std::iter::once(&executor).chain(&daemon).chain(&workers) {
        assert!(
            !environ(*pid).contains("EMBEDSTREAM_TOKEN") && !environ(*pid).contains(TOKEN),
            "pid {pid} has the token"
        );
    }

    let runtime = tokio::runtime::Runtime::new().unwrap();
    // More input for the stream, and the same texts from two Flight clients at once, while the
    // query embeds them.
    let second = texts(200, 22);
    broker.produce_texts("items", 1, 60, &second);
    let answers: Vec<Vec<(String, Vec<f32>)>> = runtime.block_on(async {
        let calls = (0..2).map(|_| {
            let (address, second) = (address.clone(), second.clone());
            tokio::spawn(async move {
                let mut c = client(&address, Some(TOKEN)).await;
                // Two batches in one call: rows come back in the order sent.
                let batches = vec![text_batch(&second[..120]), text_batch(&second[120..])];
                embeddings(&exchange(&mut c, batches).await.expect("DoExchange"), "text")
            })
        });
        futures::future::join_all(calls).await.into_iter().map(Result::unwrap).collect()
    });
    q.wait_until("all 260 records committed", Duration::from_secs(120), |_| {
        broker.committed("fl-group", "items", 1) == vec![260]
    });

    // The stream's vector for each input offset.
    let stream: BTreeMap<i64, Vec<f32>> =
        broker.read_all("fl-out", 1).iter().map(|r| (r.origin().1, r.vector())).collect();
    assert_eq!(stream.len(), 260);
    for answer in &answers {
        assert_eq!(answer.len(), second.len(), "every row comes back");
        for (i, (text, vector)) in answer.iter().enumerate() {
            assert_eq!(text, &second[i], "row {i} keeps its text and its place");
            assert_close(vector, &stream[&(60 + i as i64)], &format!("text {i}"));
        }
    }

    // `embedstream embed` and the README's Python client (pyarrow.flight) print the same
    // vectors as JSON lines, skipping blank lines.
    let input = format!("{}\n\n{}\n{}\n", first[0], first[1], first[2]);
    let mut embed = embedstream();
    embed.args(["embed", "--flight", &address]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/flight_client.py");
    let mut python = std::process::Command::new(cache().join("pyenv/bin/python"));
    python.args([script, &address, "fl"]);
    for (name, cmd) in [("embed", embed), ("flight_client.py", python)] {
        let (lines, stderr) = json_lines(cmd, &input);
        assert_eq!(lines.len(), 3, "{name}");
        for (i, (text, vector)) in lines.iter().enumerate() {
            assert_eq!(text, &first[i]);
            assert_close(vector, &stream[&(i as i64)], &format!("{name} line {i}"));
        }
        if name == "flight_client.py" {
            assert!(stderr.contains("DoGet fl: ") && !stderr.contains("DoGet fl: 0 rows"), "{stderr}");
        }
    }

    runtime.block_on(async {
        // DoGet on the query's ticket: the latest windows the query wrote, as written.
        let mut c = client(&address, Some(TOKEN)).await;
        let recent: Vec<RecordBatch> = c.do_get(Ticket::new("fl")).await.unwrap().try_collect().await.expect("DoGet");
        assert!(!recent.is_empty(), "DoGet returns the latest output");
        assert!(recent.iter().map(RecordBatch::num_rows).sum::<usize>() <= 16 * 16, "bounded by flight.recent_batches");
        for b in &recent {
            let offsets = b.column_by_name("offset").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
            for (row, (text, vector)) in embeddings(std::slice::from_ref(b), "value").into_iter().enumerate() {
                let offset = offsets.value(row);
                let produced = if offset < 60 { &first[offset as usize] } else { &second[offset as usize - 60] };
                assert_eq!(&text, produced);
                assert_close(&vector, &stream[&offset], &format!("DoGet offset {offset}"));
            }
        }
        let last = recent.last().unwrap();
        let offsets = last.column_by_name("offset").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(offsets.value(offsets.len() - 1), 259, "the newest batch holds the latest record");
        let unknown = status_of(c.do_get(Ticket::new("other")).await.unwrap_err());
        assert_eq!(unknown.code(), tonic::Code::NotFound);

        // Without the token, or with a wrong one, nothing is served.
        for token in [None, Some("not-the-token")] {
            let mut c = client(&address, token).await;
            let refused = status_of(exchange(&mut c, vec![text_batch(&first[..2])]).await.unwrap_err());
            assert_eq!(refused.code(), tonic::Code::Unauthenticated, "token {token:?}");
        }
    });
    // The driver's stderr is read by another thread: a line may come a moment after the answer.
    q.wait_until("the refusals in the log", Duration::from_secs(30), |q| {
        q.log().contains("refused a call without a cluster token")
    });
    q.stop();
}

#[test]
fn bad_flight_calls_get_clear_errors_and_the_executor_keeps_serving() {
    let broker = Broker::start();
    broker.create_topic("quiet", 1);
    let job = Job::new(
        &broker,
        "flbad",
        "subscribe = [\"quiet\"]",
        "processing_time = \"1s\"",
        // Small limits, so that the test can exceed them.
        "\n[flight]\nmax_rows_per_call = 50\nmax_bytes_per_call = 4000\nmax_concurrent_calls = 1\nidle_timeout = \"10s\"",
    );
    // A local query without a token makes its own (issue 14, finding 10): this one is given one.
    let mut q = Running::start_with_env(&job, 1, &[("EMBEDSTREAM_TOKEN", TOKEN)]);
    q.wait_until("the executor registered", Duration::from_secs(120), |q| q.log().contains("executor registered"));
    q.wait_until("the target list", Duration::from_secs(30), |_| {
        std::fs::read_to_string(job.checkpoint().join("monitoring/targets.json"))
            .is_ok_and(|t| t.contains("flight_address"))
    });
    let address = flight_address(&job);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut c = client(&address, Some(TOKEN)).await;
        let expect = |result: Result<Vec<RecordBatch>, FlightError>, code: tonic::Code, words: &str| {
            let status = status_of(result.expect_err(words));
            assert_eq!(status.code(), code, "{}", status.message());
            assert!(status.message().contains(words), "{:?} should say {words:?}", status.message());
        };
        let good = texts(3, 30);
        expect(
            exchange(&mut c, vec![batch("title", Arc::new(StringArray::from(good.clone())))]).await,
            tonic::Code::InvalidArgument,
            "no `text` column (it has: title)",
        );
        expect(
            exchange(&mut c, vec![batch("text", Arc::new(Int64Array::from(vec![1, 2])))]).await,
            tonic::Code::InvalidArgument,
            "column `text` is Int64; it must be a string",
        );
        expect(
            exchange(&mut c, vec![batch("text", Arc::new(StringArray::from(vec![Some("a hat"), None])))]).await,
            tonic::Code::InvalidArgument,
            "row 1: text is null",
        );
        expect(
            exchange(&mut c, vec![text_batch(&texts(30, 31)), text_batch(&texts(30, 32))]).await,
            tonic::Code::ResourceExhausted,
            "over 50 rows, the limit flight.max_rows_per_call",
        );
        let long: Vec<String> = (0..20).map(|i| format!("{i} {}", "word ".repeat(50))).collect();
        expect(
            exchange(&mut c, vec![text_batch(&long)]).await,
            tonic::Code::ResourceExhausted,
            "over 4000 bytes of text, the limit flight.max_bytes_per_call",
        );
        // Utf8View rows count at their own length: 40 views of one 120-byte string are 4800
        // bytes of text, though the string is stored (and sent) once.
        let mut views = StringViewBuilder::new().with_deduplicate_strings();
        let one = "word ".repeat(24);
        (0..40).for_each(|_| views.append_value(&one));
        expect(
            exchange(&mut c, vec![batch("text", Arc::new(views.finish()))]).await,
            tonic::Code::ResourceExhausted,
            "over 4000 bytes of text, the limit flight.max_bytes_per_call",
        );
        // Bytes on the wire count too, not only text: one-row batches that carry a 256 KiB
        // column pass the row and text limits, but 8 of them pass 2 × 4000 bytes + 1 MiB.
        let blob = vec![0u8; 256 * 1024];
        let heavy = RecordBatch::try_from_iter([
            ("text", Arc::new(StringArray::from(vec![good[0].clone()])) as ArrayRef),
            ("blob", Arc::new(BinaryArray::from(vec![blob.as_slice()])) as ArrayRef),
        ])
        .unwrap();
        expect(
            exchange(&mut c, vec![heavy; 8]).await,
            tonic::Code::ResourceExhausted,
            "bytes of Arrow messages, the limit 2 × flight.max_bytes_per_call + 1 MiB",
        );

        // One call in flight holds the only slot: another is answered "overloaded", not queued.
        let (tx, rx) = futures::channel::mpsc::unbounded::<RecordBatch>();
        tx.unbounded_send(text_batch(&good)).unwrap();
        let mut holder = client(&address, Some(TOKEN)).await;
        let mut held = holder.do_exchange(FlightDataEncoderBuilder::new().build(rx.map(Ok))).await.unwrap();
        let first = held.next().await.expect("an answer").expect("embedded");
        assert_eq!(first.num_rows(), 3);
        expect(exchange(&mut c, vec![text_batch(&good)]).await, tonic::Code::ResourceExhausted, "overloaded");
        drop(tx);
        assert!(held.next().await.is_none(), "the held call ends when its client ends");

        // A call that goes quiet is ended after `flight.idle_timeout`, and its slot is free again.
        let (tx, rx) = futures::channel::mpsc::unbounded::<RecordBatch>();
        tx.unbounded_send(text_batch(&good)).unwrap();
        let mut quiet = holder.do_exchange(FlightDataEncoderBuilder::new().build(rx.map(Ok))).await.unwrap();
        assert_eq!(quiet.next().await.expect("an answer").expect("embedded").num_rows(), 3);
        let ended = tokio::time::timeout(Duration::from_secs(120), quiet.next())
            .await
            .expect("the server ends a quiet call")
            .expect("an error, not the end")
            .expect_err("the call times out");
        let status = status_of(ended);
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{}", status.message());
        assert!(status.message().contains("no input batch for 10s"), "{}", status.message());
        exchange(&mut c, vec![text_batch(&good)])
            .await
            .expect("the slot is free while the quiet client still holds its end");
        drop(tx);

        // Errors after embedding started (issue 14, finding 1): a call whose second batch is bad
        // once its first was embedded, and a client that drops its call while the workers embed
        // its texts. Neither may cost the executor a worker (it has one: a lost worker slot made
        // the next batch panic).
        let bad_second = exchange(
            &mut c,
            vec![text_batch(&good), batch("text", Arc::new(StringArray::from(vec![Some("a hat"), None])))],
        )
        .await;
        assert_eq!(status_of(bad_second.unwrap_err()).code(), tonic::Code::InvalidArgument);
        // 15 texts of some 220 bytes: under the call's limits, a few batches of work.
        let long: Vec<String> = (0..15).map(|i| format!("{} {i}", "a long product description ".repeat(8))).collect();
        let (tx, rx) = futures::channel::mpsc::unbounded::<RecordBatch>();
        tx.unbounded_send(text_batch(&long[..15])).unwrap();
        let dropped = holder.do_exchange(FlightDataEncoderBuilder::new().build(rx.map(Ok))).await.unwrap();
        drop((dropped, tx));
        // The server learns of the dropped call asynchronously: its one call slot is busy until
        // then, and a call meanwhile is refused "overloaded" (as it should be), not queued.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let answer = loop {
            match exchange(&mut c, vec![text_batch(&good)]).await {
                Ok(answer) => break answer,
                Err(e) => {
                    let status = status_of(e);
                    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{}", status.message());
                    assert!(std::time::Instant::now() < deadline, "the dropped call's slot never came back");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        assert_eq!(embeddings(&answer, "text").len(), 3);
        for _ in 0..3 {
            let answer = exchange(&mut c, vec![text_batch(&good)]).await.expect("a call after a dropped one");
            assert_eq!(embeddings(&answer, "text").len(), 3);
        }

        // After all that, the executor still embeds.
        let answer = exchange(&mut c, vec![text_batch(&good)]).await.expect("a good call after bad ones");
        let rows = embeddings(&answer, "text");
        assert_eq!(rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>(), good);
        for (_, v) in rows {
            let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-3, "unit vectors, got norm {norm}");
        }
    });
    q.stop();
}

/// Issue 14, finding 10: a local query given no cluster token makes one of its own, so another
/// local user can neither fetch the job spec (and its secrets) from the driver, nor register a
/// fake executor, nor embed or read texts with Flight; the query's own executors run as before.
#[test]
fn a_local_query_without_a_token_refuses_calls_from_others() {
    use embedstream_proto::pb::driver_service_client::DriverServiceClient;
    use embedstream_proto::pb::GetJobSpecRequest;

    let broker = Broker::start();
    broker.create_topic("open", 1);
    let job = Job::new(&broker, "open", "subscribe = [\"open\"]", "processing_time = \"200ms\"", "");
    let mut q = Running::start(&job, 1);
    q.wait_until("a registered executor", Duration::from_secs(60), |q| q.executor_pids().len() == 1);
    let log = q.log();
    let driver = log.split(" driver=").nth(1).and_then(|r| r.split_whitespace().next()).expect("the driver's address");
    let flight = flight_address(&job);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut d = DriverServiceClient::connect(format!("http://{driver}")).await.unwrap();
        let refused = d.get_job_spec(GetJobSpecRequest { executor_id: "intruder".into() }).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "the job spec without the query's token");
        let mut c = client(&flight, None).await;
        let refused = status_of(exchange(&mut c, vec![text_batch(&texts(2, 29))]).await.unwrap_err());
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "Flight without the query's token");
    });
    broker.produce_texts("open", 1, 0, &texts(5, 30));
    q.wait_until("the query's own executor embeds", Duration::from_secs(60), |_| {
        broker.committed("open-group", "open", 1) == vec![5]
    });
    assert_eq!(q.stop()["embeddings"], 5);
}

/// Issue 36: one rule for tokens. A local query given no token makes its own; `embed` that
/// names only an address is refused and told where the token is, and `embed JOB.toml` finds the
/// query's token and its executor's Flight address as the admin commands do.
#[test]
fn embed_finds_a_local_querys_own_token_through_its_job_spec() {
    let broker = Broker::start();
    broker.create_topic("own", 1);
    let first = texts(4, 23);
    broker.produce_texts("own", 1, 0, &first);
    let job = Job::new(&broker, "own", "subscribe = [\"own\"]", "processing_time = \"200ms\"", "");
    let mut q = Running::start(&job, 1);
    q.wait_until("the 4 records committed", Duration::from_secs(90), |_| {
        broker.committed("own-group", "own", 1) == vec![4]
    });
    let targets: serde_json::Value =
        serde_json::from_slice(&std::fs::read(job.checkpoint().join("monitoring/targets.json")).unwrap()).unwrap();
    let flight =
        targets.as_array().unwrap().iter().find_map(|t| t["labels"]["flight_address"].as_str()).unwrap().to_string();
    let run = |args: &[&str]| {
        let mut cmd = embedstream();
        cmd.args(args)
            .env_remove("EMBEDSTREAM_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        child.stdin.take().unwrap().write_all(format!("{}\n{}\n", first[0], first[1]).as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let refused = run(&["embed", "--flight", &flight]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("embedstream embed JOB.toml") && stderr.contains("driver.json"),
        "{stderr}"
    );

    let out = run(&["embed", job.path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stream: BTreeMap<i64, Vec<f32>> =
        broker.read_all("own-out", 1).iter().map(|r| (r.origin().1, r.vector())).collect();
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    for (i, line) in lines.iter().enumerate() {
        let vector: Vec<f32> =
            line["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        assert_close(&vector, &stream[&(i as i64)], &format!("line {i}"));
    }
    q.stop();
}
