//! Monitoring against the real tools: promtool runs the alert rules' unit tests, and a real
//! Prometheus server (Debian's binary, on loopback) scrapes a running query through the target
//! list the driver keeps, answers every dashboard query and every metric the alerts watch, and
//! fires the lag alert when the query falls behind.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::prometheus::Prometheus;
use common::*;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn alert_rules_pass_their_promtool_unit_tests() {
    let out = Command::new("promtool")
        .args(["test", "rules", "alerts_test.yml"])
        .current_dir(Path::new(REPO).join("deploy/prometheus"))
        .output()
        .expect("promtool (Debian package prometheus; deploy/setup.sh installs it)");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// The PromQL of every dashboard panel, with the `$query` variable set to all queries.
fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(REPO).join("deploy/grafana/embedstream.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().replace("$query", ".*"))
        })
        .collect()
}

fn alert_rules() -> String {
    std::fs::read_to_string(Path::new(REPO).join("deploy/prometheus/alerts.yml")).unwrap()
}

/// The embedstream metrics the alert rules' expressions read.
fn alert_metrics(rules: &str) -> BTreeSet<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .flat_map(|e| {
            e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("embedstream_"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn prometheus_scrapes_a_running_query_and_the_lag_alert_fires() {
    let broker = Broker::start();
    broker.create_topic("clicks", 2);
    broker.produce_texts("clicks", 2, 0, &texts(40, 11));
    broker.produce("clicks", &[(0, Some(b"bad".to_vec()), Some(Vec::new()))]); // one dead letter
                                                                               // At most 10 records a second, so that producing 40 a second makes the query fall behind.
    let job = Job::new(
        &broker,
        "mon",
        "subscribe = [\"clicks\"]\nmax_offsets_per_trigger = 10",
        "processing_time = \"1s\"",
        "\n[monitoring]\nlag_refresh_interval = \"1s\"",
    );
    let mut q = Running::start(&job, 1);
    q.wait_until("the 41 records committed", Duration::from_secs(90), |_| {
        broker.committed("mon-group", "clicks", 2) == vec![21, 20]
    });
    let targets = job.checkpoint().join("monitoring/targets.json");
    let listed: serde_json::Value = serde_json::from_slice(&std::fs::read(&targets).unwrap()).unwrap();
    let roles: Vec<&str> = listed.as_array().unwrap().iter().map(|t| t["labels"]["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["driver", "executor"], "the target list holds the driver and the live executor");

    // The shipped rules, with every `for:` shortened so that a test need not wait 10 minutes.
    let rules: String = alert_rules()
        .lines()
        .map(|l| if l.trim_start().starts_with("for:") { "        for: 0s" } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    let prom = Prometheus::start(&targets, &rules);
    let deadline = Instant::now() + Duration::from_secs(60);
    while prom.query("up{job=\"embedstream\"} == 1").len() < 2 {
        assert!(Instant::now() < deadline, "prometheus did not scrape both targets");
        std::thread::sleep(Duration::from_millis(500));
    }

    // Every dashboard query and every metric an alert watches returns data (rates need two scrapes).
    let mut missing: Vec<String> = dashboard_exprs().into_iter().chain(alert_metrics(&alert_rules())).collect();
    assert!(missing.len() > 20, "{missing:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !missing.is_empty() {
        missing.retain(|e| prom.query(e).is_empty());
        assert!(Instant::now() < deadline, "no data for: {missing:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    // Tasks report latency as buckets; the driver's histogram still counts every output record.
    let latencies = prom.query("embedstream_end_to_end_latency_seconds_count{query=\"mon\"}");
    assert_eq!(latencies[0]["value"][1], "40", "one latency per embedding: {latencies:?}");
    let lag = prom.query("embedstream_source_lag_offsets{query=\"mon\"}");
    assert_eq!(lag.len(), 2, "lag per partition: {lag:?}");
    assert!(
        prom.firing().iter().all(|a| a["labels"]["alertname"] != "EmbedstreamLagGrowing"),
        "no lag alert while caught up"
    );

    // Produce four times faster than the query may read, until the lag alert fires.
    let mut fired = None;
    for round in 0..120 {
        broker.produce_texts("clicks", 2, 1000 + round * 20, &texts(20, 12 + round));
        if let Some(a) = prom.firing().into_iter().find(|a| a["labels"]["alertname"] == "EmbedstreamLagGrowing") {
            fired = Some(a);
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let alert = fired.unwrap_or_else(|| {
        panic!("the lag alert did not fire; lag: {:?}", prom.query("embedstream_source_lag_offsets"))
    });
    assert_eq!(alert["labels"]["query"], "mon");
    // The value of the rule's expression when it fired: the summed lag it saw (a query of the
    // lag now may come after the query caught up).
    let lag: f64 = alert["value"].as_str().unwrap().parse().unwrap();
    assert!(lag > 0.0, "the alert fired with a real lag: {alert}");
    q.stop();
}
