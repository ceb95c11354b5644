//! Test hooks for the exactly-once tests: with the `test-hooks` feature (which only the test
//! build enables), an executor stops itself (SIGSTOP) inside a task's transaction commit, after
//! the group's offset was sent and before the commit, so that a test can hold a stale attempt
//! past its deadline and resume it. A release binary has no such switch: without the feature
//! [`freeze_before_commit`] does nothing.

/// `EMBEDSTREAM_TEST_FREEZE_BEFORE_COMMIT=<batch>`: the first attempt of that batch's task of
/// source partition 0.
#[cfg(feature = "test-hooks")]
pub fn freeze_before_commit(batch_id: u64, partition: i32, attempt: u32) {
    const ENV: &str = "EMBEDSTREAM_TEST_FREEZE_BEFORE_COMMIT";
    if std::env::var(ENV).ok().and_then(|v| v.parse().ok()) == Some(batch_id) && partition == 0 && attempt == 0 {
        tracing::warn!(batch_id, "{ENV}: stopping this executor before the transaction's commit");
        // Stops the whole process until a SIGCONT; the commit goes on after it.
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP).expect("raising SIGSTOP");
        tracing::warn!(batch_id, "{ENV}: resumed; committing");
    }
}

/// Without `test-hooks`: nothing.
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn freeze_before_commit(_batch_id: u64, _partition: i32, _attempt: u32) {}
