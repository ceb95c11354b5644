//! Hadoop delegation tokens in a YARN application: the file a container's
//! `HADOOP_TOKEN_FILE_LOCATION` names (YARN writes it at launch; the HDFS client, `hdfs-native`,
//! reads it at every new connection to a NameNode), replaced in place when the master has
//! renewed the application's tokens ([`replace_token_file`]); and [`Credentials`], the newest
//! tokens a driver holds for its executors, which each heartbeat answer carries to an executor
//! that has older ones.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The variable YARN (and Hadoop's own clients) name a container's token file by.
pub const TOKEN_FILE_ENV: &str = "HADOOP_TOKEN_FILE_LOCATION";

/// Replaces this process's token file with `tokens` (Hadoop's token storage format, as
/// `Credentials.writeTokenStorageToStream` writes it), atomically and privately (0600): a reader
/// sees the old tokens or the new ones. Returns the file, or `None` when this process has no
/// token file (no Kerberos), and then writes nothing.
pub fn replace_token_file(tokens: &[u8]) -> std::io::Result<Option<PathBuf>> {
    let Some(file) = std::env::var_os(TOKEN_FILE_ENV).filter(|f| !f.is_empty()).map(PathBuf::from) else {
        return Ok(None);
    };
    crate::durable::write_private(&file, tokens)?;
    Ok(Some(file))
}

/// Tokens in Hadoop's token storage format, with their number.
type Numbered = (u64, Arc<Vec<u8>>);

/// The newest tokens a driver holds for its executors, numbered from 1 as they come. Cheap to
/// clone; every clone sees the same tokens.
#[derive(Clone, Default)]
pub struct Credentials(Arc<Mutex<Option<Numbered>>>);

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let version = self.0.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|(v, _)| *v);
        write!(f, "Credentials(version: {version:?})")
    }
}

impl Credentials {
    /// Holds `tokens` as the newest; returns their number.
    pub fn set(&self, tokens: Vec<u8>) -> u64 {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let version = held.as_ref().map_or(1, |(v, _)| v + 1);
        *held = Some((version, Arc::new(tokens)));
        version
    }

    /// The newest tokens and their number, when newer than `version` (0: none held yet).
    pub fn newer_than(&self, version: u64) -> Option<Numbered> {
        let held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        held.as_ref().filter(|(v, _)| *v > version).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_executor_gets_tokens_only_when_the_driver_has_newer_ones() {
        let held = Credentials::default();
        assert!(held.newer_than(0).is_none(), "none yet");
        assert_eq!(held.set(b"first".to_vec()), 1);
        let (v, tokens) = held.clone().newer_than(0).unwrap();
        assert_eq!((v, tokens.as_slice()), (1, b"first".as_slice()));
        assert!(held.newer_than(1).is_none(), "an executor with version 1 is sent nothing");
        assert_eq!(held.set(b"second".to_vec()), 2);
        assert_eq!(held.newer_than(1).unwrap().1.as_slice(), b"second");
    }
}
