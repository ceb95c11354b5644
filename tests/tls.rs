//! Issue 14, finding 7: TLS on every endpoint of a local query, with certificates the test makes
//! (openssl): the driver and its executors call each other over mutual TLS and embed; the admin
//! CLI, Flight (`embedstream embed`) and a real Prometheus reach them with the CA and a client
//! certificate; a client with another CA, one without a certificate and a plaintext one are
//! refused, by the gRPC servers and by the `/metrics` endpoints alike.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::prometheus::Prometheus;
use common::tls::{certificates, http_get, https_get};
use common::*;

const TOKEN: &str = "tls-test-token";

/// `embedstream ARGS` with the test's token; (success, stdout, stderr).
fn cli(args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut cmd = embedstream();
    cmd.args(args).env("EMBEDSTREAM_TOKEN", TOKEN).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
    let out = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("{args:?} did not end in 60 s"));
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn pem(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

#[test]
fn a_local_query_runs_over_mutual_tls_and_refuses_every_other_client() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, identity) = certificates(certs.path(), "es-ca");
    let (other_ca, other_identity) = certificates(certs.path(), "other-ca");
    let (ca, identity) = (ca.display().to_string(), identity.display().to_string());
    let token_file = certs.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();

    let broker = Broker::start();
    broker.create_topic("secure", 2);
    let inputs = texts(40, 71);
    broker.produce_texts("secure", 2, 0, &inputs);
    let job = Job::new(
        &broker,
        "secure",
        "subscribe = [\"secure\"]",
        "processing_time = \"200ms\"",
        &format!(
            "\n[security]\ntoken_file = \"{}\"\ntls_cert = \"{identity}\"\ntls_key = \"{identity}\"\ntls_ca = \"{ca}\"\n\
             tls_client_auth = true\n",
            token_file.display()
        ),
    );
    let mut q = Running::start(&job, 1);
    // The executor fetched the spec, registered and ran tasks: every call between them was TLS.
    q.wait_until("all 40 records committed", Duration::from_secs(90), |_| {
        broker.committed("secure-group", "secure", 2).iter().sum::<i64>() == 40
    });
    let out = broker.read_all("secure-out", 2);
    assert_eq!(out.len(), 40);
    assert!(out.iter().all(|r| r.vector().len() == DIM), "every output is a {DIM}-dim vector");

    let log = q.log();
    let driver = log.split(" driver=").nth(1).and_then(|r| r.split_whitespace().next()).expect("the driver's address");
    let targets: serde_json::Value = read_checkpoint_file(&job.checkpoint().join("monitoring/targets.json"));
    let targets = targets.as_array().unwrap();
    assert_eq!(targets.len(), 2, "the driver and one executor: {targets:?}");
    assert!(targets.iter().all(|t| t["labels"]["__scheme__"] == "https"), "Prometheus is told to scrape https");
    let metrics: Vec<String> = targets.iter().map(|t| t["targets"][0].as_str().unwrap().to_string()).collect();
    let flight = targets[1]["labels"]["flight_address"].as_str().unwrap().to_string();

    // The admin API with the CA and a client certificate.
    let tls = ["--tls-ca", &ca, "--tls-cert", &identity, "--tls-key", &identity];
    let status = |extra: &[&str]| cli(&[&["status", "--driver", driver][..], extra].concat(), "");
    let (ok, stdout, stderr) = status(&tls);
    assert!(ok && stdout.contains("query secure") && stdout.contains("executors: 1 wanted"), "{stdout}{stderr}");

    // Refused: a plaintext client, a client that trusts another CA, a client without a certificate.
    let (ok, stdout, stderr) = status(&[]);
    assert!(!ok && stdout.is_empty(), "a plaintext client is refused: {stdout}{stderr}");
    let other_ca = other_ca.display().to_string();
    let (ok, _, stderr) = status(&["--tls-ca", &other_ca, "--tls-cert", &identity, "--tls-key", &identity]);
    assert!(!ok && stderr.contains("certificate"), "a server not signed by the CA it trusts is refused: {stderr}");
    let (ok, stdout, stderr) = status(&["--tls-ca", &ca]);
    assert!(!ok && stdout.is_empty(), "without a client certificate, mutual TLS refuses: {stderr}");
    let other = other_identity.display().to_string();
    let (ok, stdout, stderr) = status(&["--tls-ca", &ca, "--tls-cert", &other, "--tls-key", &other]);
    assert!(!ok && stdout.is_empty(), "a client certificate from another CA is refused: {stderr}");
    // A half-given pair is refused before any call, naming the flag.
    let (ok, _, stderr) = status(&["--tls-ca", &ca, "--tls-cert", &identity]);
    assert!(!ok && stderr.contains("--tls-key: needed with --tls-cert"), "{stderr}");

    // Arrow Flight over mutual TLS: the executor's warm model embeds, and the vector is the one
    // the pipeline wrote for the same text.
    let (ok, stdout, stderr) = cli(&[&["embed", "--flight", &flight][..], &tls].concat(), &format!("{}\n", inputs[0]));
    assert!(ok, "{stderr}");
    let line: serde_json::Value = serde_json::from_str(stdout.lines().next().expect("one answer")).unwrap();
    let embedded: Vec<f32> = line["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    let written = out.iter().find(|r| r.origin() == (0, 0)).expect("the first input's output").vector();
    assert!(embedded.iter().zip(&written).all(|(a, b)| (a - b).abs() < 1e-4), "Flight and the pipeline agree");
    let (ok, _, _) = cli(&["embed", "--flight", &flight], "plaintext\n");
    assert!(!ok, "Flight refuses a plaintext client");

    // /metrics over mutual TLS: with the CA and a certificate, metrics; otherwise nothing.
    for addr in &metrics {
        let answer = https_get(addr, Path::new(&ca), Some(Path::new(&identity))).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("embedstream_"), "{addr}: {answer}");
        let refused = https_get(addr, Path::new(&ca), None);
        assert!(refused.as_ref().is_err_and(|e| !e.is_empty()), "{addr} without a client certificate: {refused:?}");
        let refused = https_get(addr, Path::new(&other_ca), Some(Path::new(&identity)));
        assert!(refused.as_ref().is_err_and(|e| e.contains("certificate")), "{addr} under another CA: {refused:?}");
        let plain = http_get(addr);
        assert!(plain.as_ref().is_err() || !plain.as_ref().unwrap().contains("HTTP/1.1 200"), "{addr}: {plain:?}");
    }

    // A real Prometheus scrapes both targets over mutual TLS, from the target list alone.
    let scrape = format!(
        "    tls_config: {{ca_file: '{ca}', cert_file: '{}', key_file: '{}'}}\n",
        pem(certs.path(), "es-ca-server.crt"),
        pem(certs.path(), "es-ca-server.key")
    );
    let prom = Prometheus::start_with(&job.checkpoint().join("monitoring/targets.json"), "groups: []\n", &scrape);
    let deadline = Instant::now() + Duration::from_secs(60);
    while prom.query("up{query=\"secure\"} == 1").len() < 2 {
        assert!(Instant::now() < deadline, "prometheus did not scrape both targets over TLS: {:?}", prom.query("up"));
        std::thread::sleep(Duration::from_millis(250));
    }
    let committed = prom.query("embedstream_input_rows_total{query=\"secure\"}");
    assert!(!committed.is_empty(), "the driver's metrics arrive through TLS");

    // The query goes on, and stops cleanly.
    broker.produce_texts("secure", 2, 40, &texts(10, 72));
    q.wait_until("the 10 new records", Duration::from_secs(60), |_| {
        broker.committed("secure-group", "secure", 2).iter().sum::<i64>() == 50
    });
    assert_eq!(q.stop()["embeddings"], 50);
}

/// A spec that names a certificate without its key, or the CA without a certificate, is refused
/// by `validate` and `run` before anything starts, naming the key.
#[test]
fn an_incomplete_tls_section_is_refused_naming_the_key() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, identity) = certificates(certs.path(), "es-ca");
    let broker = Broker::client_of("127.0.0.1:9");
    for (section, key) in [
        (format!("tls_cert = \"{}\"\ntls_ca = \"{}\"", identity.display(), ca.display()), "security.tls_key"),
        (format!("tls_ca = \"{}\"", ca.display()), "security.tls_cert"),
        (format!("tls_cert = \"{0}\"\ntls_key = \"{0}\"", identity.display()), "security.tls_ca"),
        (
            format!("tls_cert = \"{0}\"\ntls_key = \"{0}\"\ntls_ca = \"/nonexistent/ca.pem\"", identity.display()),
            "security.tls_ca",
        ),
    ] {
        let job = Job::new(&broker, "badtls", "subscribe = [\"t\"]", "", &format!("\n[security]\n{section}\n"));
        let (ok, _, stderr) = cli(&["validate", job.path.to_str().unwrap()], "");
        assert!(!ok && stderr.contains(&format!("`{key}`")), "{section}: {stderr}");
        let refused = run_refused(&job);
        assert!(refused.contains(&format!("`{key}`")), "{section}: {refused}");
        assert!(!job.checkpoint().exists(), "nothing started: {section}");
    }
}
