//! Where the query's durable files live: a local (or mounted) file system, or HDFS.
//!
//! The checkpoint's logs, the Parquet sink's data files and manifests, and model files may be
//! `hdfs://NAMENODE:PORT/path` as well as local paths. Every function here takes the path as
//! the spec gives it and picks the file system by its scheme; callers keep one code path.
//! HDFS is spoken from Rust by `hdfs-native` (HDFS's RPC and data-transfer protocols; no JVM,
//! no `hdfs dfs`), with the same guarantee as [`crate::durable`] on a local disk: a file
//! replaced by [`write_atomic`] is written under a temporary name, closed (the NameNode has
//! then every block acknowledged by the DataNodes' pipeline) and renamed over the old one,
//! which HDFS does atomically, so a reader sees the old file or the whole new one.
//!
//! The functions are blocking, as `std::fs` is: HDFS calls run on one runtime of their own
//! (a thread), so they may be called from async code as local file calls are, and from plain
//! threads. Clients are kept per NameNode.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use crate::durable;

/// `hdfs://` (a NameNode, or a name service that `HADOOP_CONF_DIR`'s hdfs-site.xml defines).
pub const HDFS_SCHEME: &str = "hdfs://";

/// Whether `path` is on HDFS.
pub fn is_hdfs(path: &Path) -> bool {
    path.to_str().is_some_and(|p| p.starts_with(HDFS_SCHEME))
}

/// Whether the string names a file by a URL (`hdfs://...`) rather than a local path.
pub fn is_url(path: &str) -> bool {
    path.contains("://")
}

/// An entry of a directory.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub name: String,
    pub is_dir: bool,
}

/// The whole file, or `None` when there is none.
pub fn read(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match hdfs(path)? {
        Some((client, p)) => run(async move {
            let reader = match client.read(&p).await {
                Ok(r) => r,
                Err(e) if not_found(&e) => return Ok(None),
                Err(e) => return Err(e),
            };
            Ok(Some(reader.read_range(0, reader.file_length()).await?.to_vec()))
        }),
        None => match std::fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        },
    }
}

/// Replaces `path` with `bytes` so that readers see the old file or the whole new one;
/// `private`: readable by its owner only (0600), else the umask's mode (HDFS: 0644).
pub fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> io::Result<()> {
    match hdfs(path)? {
        Some((client, p)) => {
            let bytes = bytes.to_vec();
            run(async move {
                let tmp = format!("{p}.tmp");
                let mode = if private { 0o600 } else { 0o644 };
                let options = hdfs_native::WriteOptions::default().overwrite(true).permission(mode);
                let mut w = client.create(&tmp, options).await?;
                w.write_bytes(bytes.into()).await?;
                w.close().await?;
                client.rename(&tmp, &p, true).await
            })
        }
        None if private => durable::write_private(path, bytes),
        None => durable::write_atomic(path, bytes),
    }
}

/// Writes a new file, whole (a Parquet data file: no reader looks at it before a manifest lists
/// it). On a local disk the file and its directory are synced.
pub fn write_new(path: &Path, bytes: Vec<u8>) -> io::Result<()> {
    write_synced(path, bytes, true, None)
}

/// Creates `path` holding `bytes` only if no file has that name: `Ok(false)` when one does.
/// Two processes that try the same name at once cannot both succeed (the NameNode's create
/// without overwrite; `O_EXCL` on a local disk): a compare-and-swap for claiming a name.
pub fn create_new(path: &Path, bytes: &[u8]) -> io::Result<bool> {
    match write_synced(path, bytes.to_vec(), false, Some(0o600)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Writes `bytes` to the file `path`, synced with its directory: over a file there
/// (`overwrite`), else failing with `AlreadyExists` if there is one; `mode`: the permissions of
/// the file it creates (else the defaults).
fn write_synced(path: &Path, bytes: Vec<u8>, overwrite: bool, mode: Option<u32>) -> io::Result<()> {
    match hdfs(path)? {
        Some((client, p)) => run(async move {
            let mut options = hdfs_native::WriteOptions::default().overwrite(overwrite);
            if let Some(mode) = mode {
                options = options.permission(mode);
            }
            let mut w = client.create(&p, options).await?;
            w.write_bytes(bytes.into()).await?;
            w.close().await
        }),
        None => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut open = std::fs::OpenOptions::new();
            open.write(true);
            if overwrite {
                open.create(true).truncate(true);
            } else {
                open.create_new(true);
            }
            if let Some(mode) = mode {
                open.mode(mode);
            }
            let mut f = open.open(path)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            durable::sync_dir(path.parent().unwrap_or(Path::new(".")))
        }
    }
}

/// A directory and its missing parents; `private`: those it creates are the owner's only (0700).
pub fn create_dir_all(dir: &Path, private: bool) -> io::Result<()> {
    match hdfs(dir)? {
        Some((client, p)) => run(async move { client.mkdirs(&p, if private { 0o700 } else { 0o755 }, true).await }),
        None if private => durable::create_private_dir(dir),
        None => std::fs::create_dir_all(dir),
    }
}

/// The entries of `dir`, or `None` when there is no such directory.
pub fn list(dir: &Path) -> io::Result<Option<Vec<Entry>>> {
    match hdfs(dir)? {
        Some((client, p)) => run(async move {
            match client.list_status(&p, false).await {
                Ok(statuses) => Ok(Some(
                    statuses
                        .into_iter()
                        .map(|s| Entry {
                            name: s.path.rsplit('/').next().unwrap_or_default().to_string(),
                            is_dir: s.isdir,
                        })
                        .collect(),
                )),
                Err(e) if not_found(&e) => Ok(None),
                Err(e) => Err(e),
            }
        }),
        None => {
            let entries = match std::fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            let mut out = Vec::new();
            for e in entries {
                let e = e?;
                let Ok(name) = e.file_name().into_string() else { continue };
                out.push(Entry { name, is_dir: e.file_type()?.is_dir() });
            }
            Ok(Some(out))
        }
    }
}

/// A file's size in bytes and last modification (ms since the epoch), or `None` when there is
/// no such file.
pub fn stat(path: &Path) -> io::Result<Option<(u64, i64)>> {
    match hdfs(path)? {
        Some((client, p)) => run(async move {
            match client.get_file_info(&p).await {
                Ok(s) => Ok(Some((s.length as u64, s.modification_time as i64))),
                Err(e) if not_found(&e) => Ok(None),
                Err(e) => Err(e),
            }
        }),
        None => match std::fs::metadata(path) {
            Ok(m) => {
                let modified = m.modified()?.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                Ok(Some((m.len(), modified.as_millis() as i64)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        },
    }
}

/// Deletes a file; false when there was none.
pub fn remove_file(path: &Path) -> io::Result<bool> {
    match hdfs(path)? {
        Some((client, p)) => run(async move { client.delete(&p, false).await }),
        None => match std::fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        },
    }
}

/// Copies an HDFS file (a model) to a local one, through a temporary name.
pub fn download(from: &Path, to: &Path) -> io::Result<()> {
    let bytes = read(from)?.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))?;
    durable::write_atomic(to, &bytes)
}

/// The runtime HDFS calls run on: one worker thread, started on first use.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("hdfs")
            .enable_all()
            .build()
            .expect("the HDFS runtime")
    })
}

/// Runs an HDFS call to its end from any thread, async or not.
fn run<T: Send + 'static>(
    call: impl std::future::Future<Output = hdfs_native::Result<T>> + Send + 'static,
) -> io::Result<T> {
    let handle = runtime().spawn(call);
    match futures::executor::block_on(handle) {
        Ok(result) => result.map_err(to_io),
        Err(e) => Err(io::Error::other(format!("the HDFS call ended: {e}"))),
    }
}

/// A missing file, as the client says it or as the NameNode's exception does.
fn not_found(e: &hdfs_native::HdfsError) -> bool {
    match e {
        hdfs_native::HdfsError::FileNotFound(_) => true,
        hdfs_native::HdfsError::RPCError(class, _) => class.ends_with("FileNotFoundException"),
        _ => false,
    }
}

fn to_io(e: hdfs_native::HdfsError) -> io::Error {
    if not_found(&e) {
        return io::Error::new(io::ErrorKind::NotFound, e.to_string());
    }
    let exists = match &e {
        hdfs_native::HdfsError::AlreadyExists(_) => true,
        hdfs_native::HdfsError::RPCError(class, _) => class.ends_with("FileAlreadyExistsException"),
        _ => false,
    };
    if exists {
        return io::Error::new(io::ErrorKind::AlreadyExists, e.to_string());
    }
    match e {
        hdfs_native::HdfsError::IOError(e) => e,
        e => io::Error::other(e.to_string()),
    }
}

/// Whether an `hdfs://` path names a file system this process can reach: its client can be made
/// (`hdfs:///` needs `fs.defaultFS`). Nothing is called on the NameNode.
pub fn check_hdfs(path: &Path) -> io::Result<()> {
    hdfs(path).map(|_| ())
}

/// For an `hdfs://` path, the client of its NameNode and the path within it; `None` for a local path.
/// `hdfs://NAMESERVICE/` is resolved by `hdfs-native` from `HADOOP_CONF_DIR`'s hdfs-site.xml (its
/// NameNodes, failed over between), and `hdfs:///` from its core-site.xml's `fs.defaultFS`.
fn hdfs(path: &Path) -> io::Result<Option<(Arc<hdfs_native::Client>, String)>> {
    let Some(url) = path.to_str().filter(|p| p.starts_with(HDFS_SCHEME)) else {
        return Ok(None);
    };
    let rest = &url[HDFS_SCHEME.len()..];
    let (authority, p) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    static CLIENTS: OnceLock<Mutex<HashMap<String, Arc<hdfs_native::Client>>>> = OnceLock::new();
    let mut clients = CLIENTS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    let client = match clients.get(authority) {
        Some(c) => c.clone(),
        None => {
            let mut builder = hdfs_native::ClientBuilder::new().with_io_runtime(runtime().handle().clone());
            // No authority: the default file system, which the builder reads from the configuration.
            if !authority.is_empty() {
                builder = builder.with_url(format!("{HDFS_SCHEME}{authority}"));
            }
            // hdfs-site.xml's name services and settings, where a cluster's configuration is.
            let conf_dir = std::env::var_os("HADOOP_CONF_DIR").filter(|d| !d.is_empty());
            if let Some(dir) = &conf_dir {
                builder = builder.with_config_dir(dir.to_string_lossy().into_owned());
            }
            let client = Arc::new(builder.build().map_err(|e| match authority {
                "" => io::Error::other(format!(
                    "{url}: the default file system is `fs.defaultFS` in the core-site.xml of HADOOP_CONF_DIR ({}): {e}",
                    conf_dir.as_ref().map_or("not set".into(), |d| d.to_string_lossy())
                )),
                _ => io::Error::other(format!("{HDFS_SCHEME}{authority}: {e}")),
            })?);
            clients.insert(authority.to_string(), client.clone());
            client
        }
    };
    let p = match p.trim_end_matches('/') {
        "" => "/",
        p => p,
    };
    Ok(Some((client, p.to_string())))
}
