//! Records whose input did not change cost no inference (`skip_unchanged`, issue 35). A record's
//! input fingerprint is a hash of what its models embed (each model's rendered text or image
//! URL) and of their versions; the sink keeps the fingerprint last written for each key
//! (pgvector's `input_hash` column, a Kafka sink's state topic). Before a window is embedded,
//! its keys' fingerprints are looked up once, and a record whose fingerprint is its key's is
//! skipped: no inference, nothing written.
//!
//! A task embeds a few windows at once and the sink learns of a window's rows only when it is
//! written, so the task remembers what it decided itself ([`LastInputs`]): a key's newer record
//! in a later window is compared with the task's own latest decision, never with an older row.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use embedstream_sinks::{SinkError, TaskWriter};

/// Hex digits a fingerprint keeps (128 bits).
const FINGERPRINT_HEX_DIGITS: usize = 32;

/// The fingerprint of one record's inputs (`inputs`, one per model that reads records, in the
/// spec's order) under the models' versions (`versions`).
pub fn fingerprint<'a>(versions: &str, inputs: impl Iterator<Item = &'a str>) -> String {
    let mut h = Sha256::new();
    h.update((versions.len() as u64).to_le_bytes());
    h.update(versions.as_bytes());
    for input in inputs {
        h.update((input.len() as u64).to_le_bytes());
        h.update(input.as_bytes());
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    hex[..FINGERPRINT_HEX_DIGITS].to_string()
}

/// A task attempt's view of its keys' last inputs: what the sink holds, under what the task
/// decided itself (a fingerprint to be written, or `None`: embed the key's next record).
#[derive(Default)]
pub struct LastInputs {
    decided: HashMap<Vec<u8>, Option<String>>,
}

impl LastInputs {
    /// Which of a window's records (`keys`, `fingerprints`: one per record, in offset order)
    /// are unchanged; the others are taken as the task's decision for their keys. A record
    /// without a key is always embedded.
    pub async fn unchanged(
        &mut self,
        writer: &mut dyn TaskWriter,
        keys: &[Option<&[u8]>],
        fingerprints: &[String],
    ) -> Result<Vec<bool>, SinkError> {
        let mut ask: Vec<Vec<u8>> =
            keys.iter().flatten().filter(|k| !self.decided.contains_key(**k)).map(|k| k.to_vec()).collect();
        ask.sort_unstable();
        ask.dedup();
        let held = match ask.is_empty() {
            true => HashMap::new(),
            false => writer.last_inputs(&ask).await?,
        };
        let mut unchanged = Vec::with_capacity(keys.len());
        for (key, fingerprint) in keys.iter().zip(fingerprints) {
            let Some(key) = key else {
                unchanged.push(false);
                continue;
            };
            let last = match self.decided.get(*key) {
                Some(decided) => decided.as_ref(),
                None => held.get(*key),
            };
            let same = last == Some(fingerprint);
            if !same {
                self.decided.insert(key.to_vec(), Some(fingerprint.clone()));
            }
            unchanged.push(same);
        }
        Ok(unchanged)
    }

    /// The key's row is gone or was not written (a tombstone, a record that became a dead
    /// letter after it was embedded): its next record is embedded.
    pub fn forget(&mut self, key: &[u8]) {
        self.decided.insert(key.to_vec(), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_changes_with_any_input_or_version_and_parts_do_not_run_together() {
        let base = fingerprint("v1", ["red shoe", "http://i/1.jpg"].into_iter());
        assert_eq!(base.len(), FINGERPRINT_HEX_DIGITS);
        assert_eq!(base, fingerprint("v1", ["red shoe", "http://i/1.jpg"].into_iter()));
        assert_ne!(base, fingerprint("v2", ["red shoe", "http://i/1.jpg"].into_iter()));
        assert_ne!(base, fingerprint("v1", ["red shoes", "http://i/1.jpg"].into_iter()));
        assert_ne!(fingerprint("v1", ["ab", "c"].into_iter()), fingerprint("v1", ["a", "bc"].into_iter()));
    }
}
