//! The YARN launcher's side of the ApplicationMaster channel, against a scripted master over
//! real pipes: what a ResourceManager failover looks like from the driver (an allocate slower
//! than the channel's timeout, then one that fails) must not end the query or lose a
//! "container completed" event.

use std::io::{BufRead, BufReader, Write};

use super::*;

/// A launcher for a driver at 127.0.0.1:7077 that has not registered yet, over `channel`.
fn unregistered(channel: AmChannel) -> YarnLauncher {
    YarnLauncher {
        channel,
        vcores: 1,
        container_memory_mb: 512,
        unregistered: Some(("127.0.0.1".to_string(), 7077, "http://127.0.0.1:4040".to_string())),
        executor_args: String::new(),
        hadoop_tokens: Default::default(),
    }
}

fn ids(ended: &[Ended]) -> Vec<&str> {
    ended.iter().map(|e| e.id.as_str()).collect()
}

/// Issue 31, item 7: one allocate that failed, or took over the channel's 60 s, ended the
/// query, and the answer it was still waiting for (with its completed containers) was read by
/// a blocked thread nobody listened to.
#[tokio::test]
async fn yarn_one_failed_or_slow_allocate() {
    let (driver_reads, mut am_writes) = std::io::pipe().unwrap();
    let (am_reads, driver_writes) = std::io::pipe().unwrap();
    let (answer_late, late) = std::sync::mpsc::channel::<()>();
    let master = std::thread::spawn(move || {
        let mut requests = BufReader::new(am_reads).lines();
        let mut next = || requests.next().unwrap().unwrap();
        // The executors' TLS flags ride on the registration, quoted for YARN's shell.
        assert_eq!(next(), "register\t127.0.0.1\t7077\thttp://127.0.0.1:4040\t'--tls-ca' 'app-ca.pem' 'it'\\''s'");
        writeln!(am_writes, "ok\t8192\t8\t1").unwrap();
        // Answered only once the driver has given up waiting for it.
        assert!(next().starts_with("allocate\t"));
        late.recv().unwrap();
        writeln!(am_writes, "allocated\tcontainer_2\tnode1:8041").unwrap();
        writeln!(am_writes, "completed\tcontainer_1\t137\t0\tKilled by the NodeManager").unwrap();
        writeln!(am_writes, "end").unwrap();
        // The ResourceManager failing over.
        assert!(next().starts_with("allocate\t"));
        writeln!(am_writes, "error\tjava.net.ConnectException: Call to rm1 failed on connection refused").unwrap();
        writeln!(am_writes, "end").unwrap();
        // Back.
        assert!(next().starts_with("allocate\t"));
        writeln!(am_writes, "completed\tcontainer_2\t0\t0\t").unwrap();
        writeln!(am_writes, "end").unwrap();
        // The attempt ended by YARN: that one ends the query.
        assert!(next().starts_with("allocate\t"));
        let gone = "org.apache.hadoop.yarn.exceptions.ApplicationAttemptNotFoundException: attempt 1 is not running";
        writeln!(am_writes, "error\t{gone}").unwrap();
        writeln!(am_writes, "end").unwrap();
        am_writes.flush().unwrap();
    });
    let channel = AmChannel::over(BufReader::new(driver_reads), driver_writes, Duration::from_millis(300));
    let flags = vec!["--tls-ca".to_string(), "app-ca.pem".to_string(), "it's".to_string()];
    let mut yarn = unregistered(channel).with_executor_flags(flags);

    assert!(yarn.reconcile(1, &[]).await.unwrap().is_empty(), "the slow allocate is carried on from");
    answer_late.send(()).unwrap();
    let ended = yarn.reconcile(1, &[]).await.unwrap();
    assert_eq!(ids(&ended), ["container_1"], "the late answer's completed container, with the failed allocate");
    assert!(ended[0].why.contains("exit status 137"), "{}", ended[0].why);
    assert_eq!(ids(&yarn.reconcile(1, &[]).await.unwrap()), ["container_2"]);
    let e = yarn.reconcile(1, &[]).await.unwrap_err();
    assert!(e.to_string().contains("ApplicationAttemptNotFoundException"), "{e}");
    master.join().unwrap();
}

/// Issue 39, item 8: when the master gives up renewing the delegation tokens (it tells the
/// driver once they have no time left), the query ends with one line that says so, names
/// Kerberos and the expiry, and says how to resume; the other lines of that answer are read.
#[tokio::test]
async fn yarn_a_failed_token_renewal_ends_the_query_in_one_line() {
    let (driver_reads, mut am_writes) = std::io::pipe().unwrap();
    let (am_reads, driver_writes) = std::io::pipe().unwrap();
    let master = std::thread::spawn(move || {
        let mut requests = BufReader::new(am_reads).lines();
        let mut next = || requests.next().unwrap().unwrap();
        assert!(next().starts_with("register\t"));
        writeln!(am_writes, "ok\t8192\t8\t1").unwrap();
        assert!(next().starts_with("allocate\t"));
        writeln!(am_writes, "allocated\tcontainer_2\tnode1:8041").unwrap();
        let why = "Login failure for carol@EXAMPLE.COM from keytab user.keytab: Client not found in Kerberos database";
        writeln!(am_writes, "renewal-failed\t2026-12-07T12:00:00Z\t{why}").unwrap();
        writeln!(am_writes, "end").unwrap();
        am_writes.flush().unwrap();
    });
    let channel = AmChannel::over(BufReader::new(driver_reads), driver_writes, Duration::from_secs(5));
    let mut yarn = unregistered(channel);
    let e = yarn.reconcile(1, &[]).await.unwrap_err().to_string();
    assert!(matches!(e.lines().count(), 1), "{e}");
    for said in ["Kerberos", "could not renew", "2026-12-07T12:00:00Z", "Client not found", "--keytab"] {
        assert!(e.contains(said), "{said:?} in {e}");
    }
    master.join().unwrap();
}
