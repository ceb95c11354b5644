//! The resource manager's state file: the applications and containers that survive a restart,
//! as JSON, written only when they changed (every driver's `Allocate`, once a second, usually
//! changes nothing), through `durable::write_atomic`, so a power loss leaves the old state or
//! the new one, never a torn file.
//!
//! A handler takes a [`Snapshot`] under the state's lock (serialising is quick), lets the lock
//! go, and awaits [`StateFile::persist`]: the write and its fsyncs run on tokio's blocking pool,
//! so neither the async threads nor the other handlers wait on the disk, and the handler still
//! answers only once its change is durable. Snapshots are numbered in the order of the changes
//! they hold; one older than what the file holds is skipped, since the newer one includes it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use super::state::Persisted;
use super::RmError;

pub(crate) struct StateFile {
    path: PathBuf,
    /// The number of the latest snapshot taken.
    taken: AtomicU64,
    /// The number and bytes of what the file holds; writes take turns on it.
    written: tokio::sync::Mutex<(u64, Vec<u8>)>,
}

/// The state as it was when taken, numbered.
pub(crate) struct Snapshot {
    number: u64,
    bytes: Vec<u8>,
}

impl StateFile {
    pub(crate) fn new(path: PathBuf) -> StateFile {
        StateFile { path, taken: AtomicU64::new(0), written: tokio::sync::Mutex::new((0, Vec::new())) }
    }

    /// `p` as JSON, numbered after every snapshot taken before it. Take it under the state's lock.
    pub(crate) fn snapshot(&self, p: &Persisted) -> Snapshot {
        let bytes = serde_json::to_vec_pretty(p).expect("state serialises");
        Snapshot { number: self.taken.fetch_add(1, Ordering::SeqCst) + 1, bytes }
    }

    /// Writes `snapshot` unless the file holds it or a newer one, on the blocking pool; a failed
    /// write is logged and tried again with the next change.
    pub(crate) async fn persist(&self, snapshot: Snapshot) {
        let mut written = self.written.lock().await;
        if snapshot.number <= written.0 {
            return;
        }
        if snapshot.bytes == written.1 {
            written.0 = snapshot.number;
            return;
        }
        let path = self.path.clone();
        let Snapshot { number, bytes } = snapshot;
        let (result, bytes) =
            tokio::task::spawn_blocking(move || (embedstream_core::durable::write_private(&path, &bytes), bytes))
                .await
                .expect("writing the state file does not panic");
        match result {
            Ok(()) => *written = (number, bytes),
            Err(e) => tracing::error!(path = %self.path.display(), error = %e, "cannot write the state file"),
        }
    }

    /// The saved state, or an empty one when there is no file yet.
    pub(crate) fn load(&self) -> Result<Persisted, RmError> {
        let err = |message: String| RmError::State { path: self.path.display().to_string(), message };
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| err(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Persisted::default()),
            Err(e) => Err(err(e.to_string())),
        }
    }
}
