//! What is done to a spec file's table before it is parsed: `--conf key.path=value` overrides,
//! and relative paths resolved against the spec file's directory (not the working directory),
//! so a spec means the same files wherever it is run from.

use std::path::Path;

use super::SpecError;

/// The keys that hold a path. Secret files (`{ file = "..." }`) in the Kafka sections are
/// found by their shape.
const PATH_KEYS: &[&str] = &[
    "checkpoint_location",
    "model.onnx",
    "model.tokenizer",
    "sink.path",
    "sink.tls_ca",
    "input.schema_registry.ca",
    "security.token_file",
    "security.tls_cert",
    "security.tls_key",
    "security.tls_ca",
];

/// The keys of a `[[models]]` entry that hold a path.
const MODEL_PATH_KEYS: &[&str] = &["onnx", "tokenizer", "model"];

/// The sections whose values may be `{ file = "..." }` secrets.
const SECRET_SECTIONS: &[&str] = &["source.kafka", "sink.kafka", "sink.dead_letter_kafka"];

/// Makes every relative path of `table` absolute under `base`.
pub(super) fn resolve_relative(table: &mut toml::Table, base: &Path) {
    let resolve = |value: &mut toml::Value| {
        if let toml::Value::String(s) = value {
            // `hdfs://...` is a URL, not a relative path.
            if !s.is_empty() && !crate::store::is_url(s) && Path::new(s.as_str()).is_relative() {
                *s = base.join(&*s).display().to_string();
            }
        }
    };
    for key in PATH_KEYS {
        if let Some(value) = lookup(table, key) {
            resolve(value);
        }
    }
    // Each `[[models]]` entry's files.
    if let Some(toml::Value::Array(models)) = table.get_mut("models") {
        for entry in models.iter_mut().filter_map(toml::Value::as_table_mut) {
            for key in MODEL_PATH_KEYS {
                if let Some(value) = entry.get_mut(*key) {
                    resolve(value);
                }
            }
        }
    }
    // A database sink's and a schema registry's password files (`{ file = "..." }`).
    for key in ["sink.password", "input.schema_registry.password"] {
        if let Some(toml::Value::Table(secret)) = lookup(table, key) {
            if let Some(file) = secret.get_mut("file") {
                resolve(file);
            }
        }
    }
    for section in SECRET_SECTIONS {
        if let Some(toml::Value::Table(properties)) = lookup(table, section) {
            for (_, value) in properties.iter_mut() {
                if let toml::Value::Table(secret) = value {
                    if let Some(file) = secret.get_mut("file") {
                        resolve(file);
                    }
                }
            }
        }
    }
}

/// Takes `key` (`source.min_partitions`, `sink.kafka.security.protocol`) out of `table`;
/// false if it is not there.
pub(super) fn remove(table: &mut toml::Table, key: &str) -> bool {
    let parts: Vec<&str> = key.split('.').collect();
    // A Kafka property's key keeps its dots.
    for split in (1..parts.len()).rev() {
        let (section, name) = (parts[..split].join("."), parts[split..].join("."));
        let parent =
            if section.is_empty() { Some(&mut *table) } else { lookup(table, &section).and_then(|v| v.as_table_mut()) };
        if let Some(parent) = parent {
            if parent.remove(&name).is_some() {
                return true;
            }
        }
    }
    table.remove(key).is_some()
}

fn lookup<'a>(table: &'a mut toml::Table, key: &str) -> Option<&'a mut toml::Value> {
    let mut parts = key.split('.');
    let mut value = table.get_mut(parts.next()?)?;
    for part in parts {
        value = value.as_table_mut()?.get_mut(part)?;
    }
    Some(value)
}

/// Applies one `key.path=value` override: the value is read as TOML (`10`, `true`, `"5s"`,
/// `["a", "b"]`), or taken as a string when it is not TOML (`earliest`). A Kafka property
/// keeps its dots: `source.kafka.security.protocol=SSL`.
pub(super) fn set_override(table: &mut toml::Table, text: &str) -> Result<(), SpecError> {
    let (key, raw) = text.split_once('=').ok_or_else(|| SpecError::new("", format!("--conf {text}: not KEY=VALUE")))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(SpecError::new("", format!("--conf {text}: no key")));
    }
    let value = match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").expect("parsed"),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let mut parts: Vec<&str> = key.split('.').collect();
    // Kafka properties are one key with dots inside their section.
    for section in SECRET_SECTIONS {
        if let Some(property) = key.strip_prefix(&format!("{section}.")) {
            parts = section.split('.').chain(std::iter::once(property)).collect();
        }
    }
    let (last, sections) = parts.split_last().expect("a key has a part");
    let mut current = table;
    for (i, part) in sections.iter().enumerate() {
        let entry = current.entry(part.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry.as_table_mut().ok_or_else(|| {
            SpecError::new(
                &parts[..=i].join("."),
                format!("--conf {key}: `{}` is not a section", parts[..=i].join(".")),
            )
        })?;
    }
    current.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_resolved_against_the_spec_folder() {
        let mut t: toml::Table =
            "checkpoint_location = \"cp\"\n[model]\nonnx = \"m/model.onnx\"\ntokenizer = \"/abs/t.json\"\n\
                                  [source.kafka]\n\"sasl.password\" = { file = \"secret.txt\" }\n"
                .parse()
                .unwrap();
        resolve_relative(&mut t, Path::new("/jobs/q"));
        assert_eq!(t["checkpoint_location"].as_str(), Some("/jobs/q/cp"));
        assert_eq!(t["model"]["onnx"].as_str(), Some("/jobs/q/m/model.onnx"));
        assert_eq!(t["model"]["tokenizer"].as_str(), Some("/abs/t.json"), "absolute paths stay");
        assert_eq!(t["source"]["kafka"]["sasl.password"]["file"].as_str(), Some("/jobs/q/secret.txt"));
    }

    #[test]
    fn overrides_set_typed_values_and_kafka_properties() {
        let mut t: toml::Table = "[source]\nmax_offsets_per_trigger = 5\n".parse().unwrap();
        for o in [
            "source.max_offsets_per_trigger=100",
            "trigger.processing_time=\"2s\"",
            "source.starting_offsets=earliest",
            "source.kafka.security.protocol=SSL",
        ] {
            set_override(&mut t, o).unwrap();
        }
        assert_eq!(t["source"]["max_offsets_per_trigger"].as_integer(), Some(100));
        assert_eq!(t["trigger"]["processing_time"].as_str(), Some("2s"));
        assert_eq!(t["source"]["starting_offsets"].as_str(), Some("earliest"));
        assert_eq!(t["source"]["kafka"]["security.protocol"].as_str(), Some("SSL"));
        assert!(set_override(&mut t, "no-equals").is_err());
        assert_eq!(
            set_override(&mut t, "source.max_offsets_per_trigger.x=1").unwrap_err().key,
            "source.max_offsets_per_trigger"
        );
    }
}
