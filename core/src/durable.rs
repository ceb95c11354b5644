//! Writes that survive a crash or a power loss, for every file the cluster's state lives in:
//! the checkpoint's logs, the Parquet sink's manifests and data directories, the RM's state file.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` so that readers, and a machine that lost power, see the old file or
/// the whole new one: to `<path>.tmp` (the extension replaced), synced, renamed over `path`,
/// then the directory synced so that the rename itself is durable.
/// The file gets the umask's mode: for what other users read (a table's manifests).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_with_mode(path, bytes, 0o666)
}

/// As [`write_atomic`], the file readable by its owner only (0600): a query's checkpoint, the
/// resource manager's state.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_with_mode(path, bytes, 0o600)
}

/// A directory and its missing parents, those it creates readable by their owner only (0700).
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

fn write_with_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
    // A temporary file left by a crash keeps its old mode: set it again.
    if mode != 0o666 {
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    sync_dir(path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")))
}

/// Makes the entries of `dir` (files created or renamed in it) durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
