//! Where a running query's driver is: `<checkpoint_location>/driver.json`, written when its
//! admin API listens, and a copy in this user's run directory for `embedstream list`. Admin
//! commands given a job spec or a checkpoint read it instead of asking for `--driver`.
//!
//! It holds no secret: when a local query made its own token, the record names the 0600 file
//! that holds it (in a 0700 directory of the driver's), which only the same user can read.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriverRecord {
    pub query: String,
    pub query_id: String,
    /// The admin API's HOST:PORT.
    pub address: String,
    pub pid: u32,
    pub checkpoint: PathBuf,
    /// The admin API serves TLS.
    pub tls: bool,
    /// The file holding the token the query made for itself, when it was given none.
    pub token_file: Option<PathBuf>,
    pub started_ms: u64,
}

impl DriverRecord {
    /// `<checkpoint>/driver.json`.
    pub fn path(checkpoint: &Path) -> PathBuf {
        checkpoint.join("driver.json")
    }

    /// This user's directory of running queries' records: `$XDG_RUNTIME_DIR/embedstream`, else
    /// `/tmp/embedstream-<uid>` (0700).
    pub fn run_dir() -> PathBuf {
        match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
            Some(dir) => PathBuf::from(dir).join("embedstream"),
            None => {
                use std::os::unix::fs::MetadataExt;
                let uid = std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0);
                PathBuf::from(format!("/tmp/embedstream-{uid}"))
            }
        }
    }

    /// Writes the record into the checkpoint and the run directory (both 0600).
    pub fn write(&self) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).expect("a record serialises");
        crate::durable::write_private(&Self::path(&self.checkpoint), &bytes)?;
        let dir = Self::run_dir();
        crate::durable::create_private_dir(&dir)?;
        // In /tmp someone else could have made it first: use it only if it is ours alone.
        use std::os::unix::fs::MetadataExt;
        let (ours, me) = (std::fs::symlink_metadata(&dir)?, std::fs::metadata("/proc/self")?.uid());
        if !ours.is_dir() || ours.uid() != me || ours.mode() & 0o077 != 0 {
            return Err(std::io::Error::other(format!("{} is not this user's private directory", dir.display())));
        }
        crate::durable::write_private(&dir.join(format!("{}.json", self.query_id)), &bytes)
    }

    /// Removes the run directory's copy (the query ended); the checkpoint's stays, its pid gone.
    pub fn remove_running(&self) {
        let _ = std::fs::remove_file(Self::run_dir().join(format!("{}.json", self.query_id)));
    }

    /// The record in `checkpoint`.
    pub fn read(checkpoint: &Path) -> std::io::Result<DriverRecord> {
        let bytes = std::fs::read(Self::path(checkpoint))?;
        serde_json::from_slice(&bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// The records of the queries running on this machine for this user (those whose driver is
    /// gone are removed).
    pub fn running() -> Vec<DriverRecord> {
        let Ok(entries) = std::fs::read_dir(Self::run_dir()) else { return Vec::new() };
        let mut records = Vec::new();
        for entry in entries.flatten() {
            let Some(record) =
                std::fs::read(entry.path()).ok().and_then(|b| serde_json::from_slice::<DriverRecord>(&b).ok())
            else {
                continue;
            };
            match record.alive() {
                true => records.push(record),
                // A driver that was killed left its record: tidy it away.
                false => {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        records.sort_by_key(|r| r.started_ms);
        records
    }

    /// Its driver process still runs.
    pub fn alive(&self) -> bool {
        Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}
