//! The resource manager's state file: the applications and containers that survive a restart,
//! as JSON, written only when they changed (every driver's `Allocate`, once a second, usually
//! changes nothing), through `durable::write_atomic`, so a power loss leaves the old state or
//! the new one, never a torn file.

use std::path::PathBuf;
use std::sync::Mutex;

use super::state::Persisted;
use super::RmError;

pub(crate) struct StateFile {
    path: PathBuf,
    /// What the file holds, to skip writes that would change nothing.
    saved: Mutex<Vec<u8>>,
}

impl StateFile {
    pub(crate) fn new(path: PathBuf) -> StateFile {
        StateFile { path, saved: Mutex::new(Vec::new()) }
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

    /// Writes `p` unless the file already holds it; a failed write is logged and tried again
    /// with the next change.
    pub(crate) fn save(&self, p: &Persisted) {
        let bytes = serde_json::to_vec_pretty(p).expect("state serialises");
        let mut saved = self.saved.lock().unwrap();
        if *saved == bytes {
            return;
        }
        match embedstream_core::durable::write_private(&self.path, &bytes) {
            Ok(()) => *saved = bytes,
            Err(e) => tracing::error!(path = %self.path.display(), error = %e, "cannot write the state file"),
        }
    }
}
