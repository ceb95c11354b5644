//! Crash points for the recovery tests: with the `test-hooks` feature (which only the test
//! build enables), the driver exits as if killed at a named step of a named batch. A release
//! binary has no such switch: without the feature [`point`] does nothing.

/// The steps a test can stop the driver at.
#[derive(Debug, Clone, Copy)]
pub enum CrashPoint {
    /// Right after writing `offsets/<N>`.
    AfterWal,
    /// Right after a file sink's manifest for batch N, before its commit log entry.
    AfterManifest,
}

impl CrashPoint {
    /// The environment variable that names the batch to stop at.
    pub const fn env(self) -> &'static str {
        match self {
            CrashPoint::AfterWal => "EMBEDSTREAM_TEST_CRASH_AFTER_WAL",
            CrashPoint::AfterManifest => "EMBEDSTREAM_TEST_CRASH_AFTER_MANIFEST",
        }
    }
}

/// Exits with code 86 when the test hook of `at` names `batch_id`.
#[cfg(feature = "test-hooks")]
pub fn point(at: CrashPoint, batch_id: u64) {
    let env = at.env();
    if std::env::var(env).ok().and_then(|v| v.parse().ok()) == Some(batch_id) {
        tracing::error!(batch_id, "{env}: exiting here");
        std::process::exit(86);
    }
}

/// Without `test-hooks`: nothing.
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn point(_at: CrashPoint, _batch_id: u64) {}
