//! Writes that survive a crash or a power loss, for every file the cluster's state lives in:
//! the checkpoint's logs, the Parquet sink's manifests and data directories, the RM's state file.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` so that readers, and a machine that lost power, see the old file or
/// the whole new one: to `<path>.tmp` (the extension replaced), synced, renamed over `path`,
/// then the directory synced so that the rename itself is durable.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    sync_dir(path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")))
}

/// Makes the entries of `dir` (files created or renamed in it) durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
