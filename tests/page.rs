//! The query's own page (issue 18), in a real browser: Debian's headless chromium driven through
//! chromedriver, against a running query on a real Apache Kafka broker. The page asks for the
//! cluster token, then shows every partition with the offsets the broker's consumer group holds,
//! the batches as they commit, and "paused" once the query is paused; a request without the
//! token is refused. Writes a screenshot to target/embedstream-page.png.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::browser::Browser;
use common::*;

/// The driver's metrics address, from its "query starting" line.
fn metrics_address(q: &Running) -> Option<String> {
    let log = q.log();
    let line = log.lines().find(|l| l.contains("query starting"))?;
    Some(line.split("metrics=").nth(1)?.split_whitespace().next()?.to_string())
}

/// A GET without a token: the status line's code.
fn status_without_token(address: &str, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer.split_whitespace().nth(1).unwrap_or_default().to_string()
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
    let address = metrics_address(&q).expect("the driver's metrics address in its log");
    assert_eq!(status_without_token(&address, "/api/query"), "401", "the data wants the token");
    assert_eq!(status_without_token(&address, "/metrics"), "200", "Prometheus still scrapes");

    let browser = Browser::start();
    browser.goto(&format!("http://{address}/"));
    // Without the token: the login form.
    browser.type_into("#token", "page-secret-1");
    browser.click("#sign-in");
    browser.wait_text("#state", TIMEOUT, |t| t == "running");
    assert_eq!(browser.text("#title").as_deref(), Some("paged"));

    // Every partition, with the offsets the consumer group holds, and no lag.
    for p in 0..2 {
        let row = format!("#partitions tr[data-partition=\"shop-{p}\"]");
        let committed = browser.wait_text(&format!("{row} td:nth-child(4)"), TIMEOUT, |t| t == "12");
        assert_eq!(committed, broker.committed("paged-group", "shop", 2)[p].to_string());
        assert_eq!(browser.text(&format!("{row} td:nth-child(5)")).as_deref(), Some("0"));
    }
    // The shipped alert conditions, evaluated by the driver: none holds for a query keeping up.
    for alert in ["EmbedstreamLagGrowing", "EmbedstreamNoBatchFinished", "EmbedstreamExecutorLost", "EmbedstreamDeadLetters"] {
        let holds = browser.wait_text(&format!("#alerts tr[data-alert=\"{alert}\"] td:nth-child(2)"), TIMEOUT, |_| true);
        assert_eq!(holds, "no", "{alert}");
    }
    // More records: the timeline grows and the offsets follow.
    let before = browser.count("#batches tbody tr");
    assert!(before >= 1, "at least one batch shown");
    broker.produce_texts("shop", 2, 24, &texts(10, 4));
    q.wait_until("the next records committed", Duration::from_secs(90), |_| {
        broker.committed("paged-group", "shop", 2) == vec![17, 17]
    });
    browser.wait_text("#partitions tr[data-partition=\"shop-1\"] td:nth-child(4)", TIMEOUT, |t| t == "17");
    assert!(browser.count("#batches tbody tr") > before, "a batch more in the timeline");

    // Paused through the admin API: the page says so.
    let paused = embedstream().args(["pause", job.path.to_str().unwrap()]).output().unwrap();
    assert!(paused.status.success(), "{}", String::from_utf8_lossy(&paused.stderr));
    browser.wait_text("#state", TIMEOUT, |t| t == "paused");
    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/embedstream-page.png");
    browser.screenshot(&shot);
    drop(browser);
    q.stop();
}
