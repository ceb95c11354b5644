//! The query's own page (issue 18), in a real browser: Debian's headless chromium driven through
//! chromedriver, against a running query on a real Apache Kafka broker. The page asks for the
//! cluster token, then shows every partition with the offsets that Kafka's own
//! `kafka-consumer-groups` and the admin API (`embedstream status`) show, the batches as they
//! commit, a dead letter with its reason and origin, the executor with its model processes and a
//! restart once a worker is killed, and "paused" once the query is paused; a request without the
//! token is refused. Writes a screenshot to target/embedstream-page.png.

mod common;

use std::time::Duration;

use common::browser::Browser;
use common::*;

/// The committed offsets `embedstream status` prints (the admin API's), as JSON.
fn admin_committed(job: &Job) -> serde_json::Value {
    let out = embedstream().args(["status", job.path.to_str().unwrap()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let line = stdout.lines().find_map(|l| l.strip_prefix("committed offsets: ")).expect("committed offsets");
    serde_json::from_str(line).unwrap()
}

#[test]
fn the_page_shows_the_partitions_offsets_and_batches_and_wants_the_token() {
    let broker = Broker::start();
    broker.create_topic("shop", 2);
    broker.produce_texts("shop", 2, 0, &texts(24, 3));
    let job = Job::new(&broker, "paged", "subscribe = [\"shop\"]", "processing_time = \"300ms\"", "");
    let token_file = job.dir.path().join("token");
    std::fs::write(&token_file, "page-secret-1\n").unwrap();
    let spec = std::fs::read_to_string(&job.path).unwrap()
        + &format!("\n[security]\ntoken_file = \"{}\"\n", token_file.display());
    std::fs::write(&job.path, spec).unwrap();

    let mut q = Running::start(&job, 1);
    q.wait_until("the first records committed", Duration::from_secs(90), |_| {
        broker.committed("paged-group", "shop", 2) == vec![12, 12]
    });
    let address = q.metrics_address().expect("the driver's metrics address in its log");
    assert_eq!(http_get(&address, "/api/query").0, 401, "the data wants the token");
    assert_eq!(http_get(&address, "/api/executors").0, 401, "the data wants the token");
    assert_eq!(http_get(&address, "/metrics").0, 200, "Prometheus still scrapes");

    let browser = Browser::start();
    browser.goto(&format!("http://{address}/"));
    // Without the token: the login form.
    browser.type_into("#token", "page-secret-1");
    browser.click("#sign-in");
    browser.wait_text("#state", TIMEOUT, |t| t == "running");
    assert_eq!(browser.text("#title").as_deref(), Some("paged"));
    // The model's version, as `validate` computes it from the model's files.
    let version = validated_version(&job);
    browser.wait_text("#models", TIMEOUT, |t| t == format!("all-MiniLM-L6-v2 {version}"));

    // Every partition, with the offsets kafka-consumer-groups and the admin API show.
    let (groups, out) = broker.consumer_group("paged-group", "shop");
    assert_eq!(groups, vec![(0, 12, 12, 0), (1, 12, 12, 0)], "Kafka's own view:\n{out}");
    let admin = admin_committed(&job);
    for (p, current, end, lag) in groups {
        let row = format!("#partitions tr[data-partition=\"shop-{p}\"]");
        let committed = browser.wait_text(&format!("{row} td:nth-child(4)"), TIMEOUT, |t| t == current.to_string());
        assert_eq!(committed, admin["shop"][p.to_string()].to_string(), "the admin API's offset");
        assert_eq!(browser.text(&format!("{row} td:nth-child(3)")), Some(end.to_string()), "latest");
        assert_eq!(browser.text(&format!("{row} td:nth-child(5)")), Some(lag.to_string()), "lag");
    }
    // The shipped alert conditions, evaluated by the driver: none holds for a query keeping up.
    for alert in
        ["EmbedstreamLagGrowing", "EmbedstreamNoBatchFinished", "EmbedstreamExecutorLost", "EmbedstreamDeadLetters"]
    {
        let holds =
            browser.wait_text(&format!("#alerts tr[data-alert=\"{alert}\"] td:nth-child(2)"), TIMEOUT, |_| true);
        assert_eq!(holds, "no", "{alert}");
    }

    // The executor, with its model daemon and workers; a worker killed shows as a restart.
    let executor = q.executor_pids()[0];
    let row = format!("#executors-table tr[data-pid=\"{executor}\"]");
    browser.wait_text(&format!("{row} td:nth-child(11)"), TIMEOUT, |t| t.contains("daemon") && t.contains("MiB"));
    assert_eq!(browser.text(&format!("{row} td[data-field=\"restarts\"]")).as_deref(), Some("0"));
    let worker = children_of(executor).into_iter().flat_map(children_of).next().expect("a model worker");
    std::process::Command::new("kill").args(["-KILL", &worker.to_string()]).status().unwrap();
    browser.wait_text(&format!("{row} td[data-field=\"restarts\"]"), TIMEOUT, |t| t == "1");

    // More records, one of them with no value: the timeline grows, the offsets follow, and the
    // dead letter shows with its reason and where it came from.
    let before = browser.count("#batches tbody tr");
    assert!(before >= 1, "at least one batch shown");
    broker.produce_texts("shop", 2, 24, &texts(10, 4));
    broker.produce("shop", &[(0, Some(b"no-value".to_vec()), None)]);
    q.wait_until("the next records committed", Duration::from_secs(90), |_| {
        broker.committed("paged-group", "shop", 2) == vec![18, 17]
    });
    browser.wait_text("#partitions tr[data-partition=\"shop-0\"] td:nth-child(4)", TIMEOUT, |t| t == "18");
    // Its rates over the last minute: records in and out per second, both above zero now.
    for column in [6, 7] {
        let cell = format!("#partitions tr[data-partition=\"shop-1\"] td:nth-child({column})");
        browser.wait_text(&cell, TIMEOUT, |t| t.parse::<f64>().is_ok_and(|r| r > 0.0));
    }
    assert!(browser.count("#batches tbody tr") > before, "a batch more in the timeline");
    browser.wait_text("#dead-reasons tr[data-reason=\"value is null\"] td:nth-child(2)", TIMEOUT, |t| t == "1");
    let reason = browser.text("#dead-last tr[data-origin=\"shop-0-17\"] td:nth-child(5)");
    assert_eq!(reason.as_deref(), Some("value is null"), "the last dead letter, from shop-0 at offset 17");
    let dlq = broker.read_all("paged-dlq", 1);
    assert_eq!(dlq.len(), 1, "the dead letter is in the dead-letter topic too");

    // Paused through the admin API: the page says so.
    let paused = embedstream().args(["pause", job.path.to_str().unwrap()]).output().unwrap();
    assert!(paused.status.success(), "{}", String::from_utf8_lossy(&paused.stderr));
    browser.wait_text("#state", TIMEOUT, |t| t == "paused");
    // Issue 36: records that arrive while it is paused show as lag within seconds (the broker's
    // latest offsets are refreshed without a batch), as kafka-consumer-groups shows them.
    broker.produce_texts("shop", 2, 100, &texts(3, 4));
    let (groups, out) = broker.consumer_group("paged-group", "shop");
    assert_eq!(groups.iter().map(|g| g.3).sum::<i64>(), 3, "Kafka's own view:\n{out}");
    for (p, _, end, lag) in groups {
        let row = format!("#partitions tr[data-partition=\"shop-{p}\"]");
        browser.wait_text(&format!("{row} td:nth-child(5)"), TIMEOUT, |t| t == lag.to_string());
        assert_eq!(browser.text(&format!("{row} td:nth-child(3)")), Some(end.to_string()), "latest");
    }
    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/embedstream-page.png");
    browser.screenshot(&shot);
    drop(browser);
    q.stop();
}
