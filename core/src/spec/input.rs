//! `[input]`: what a record's value is (plain text or JSON) and the named fields that models
//! take their input from: JSON pointers into the value, which ones are required, and the
//! fields every record has (`key`, `value`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::SpecError;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    /// The value is the text (UTF-8).
    #[default]
    Text,
    /// The value is a JSON document; `fields` name the parts of it that models read.
    Json,
}

/// The fields every record has, whatever `[input]` says: its Kafka key and its whole value, as
/// UTF-8 text.
pub const BUILTIN_FIELDS: [&str; 2] = ["key", "value"];

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    #[serde(default)]
    pub format: InputFormat,
    /// Field name to JSON pointer (RFC 6901: `/title`, `/images/0/url`), for `format = "json"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
    /// Field name to Kafka header name (`source = "x-source"`): the header's value as UTF-8
    /// text, absent if the record has no such header (the first, if it has several). Any
    /// format.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Fields a record must have (present, not null, a string): a record without one goes to
    /// the dead-letter topic. Other fields may be absent and are then empty in a template.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required: Vec<String>,
}

/// A field name: what a template writes between braces.
pub(crate) fn is_field_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl InputSpec {
    /// Whether `name` is a field records of this input have.
    pub fn has_field(&self, name: &str) -> bool {
        BUILTIN_FIELDS.contains(&name) || self.fields.contains_key(name) || self.headers.contains_key(name)
    }

    /// The Kafka headers read as fields, in the order of [`InputSpec::headers`].
    pub fn header_names(&self) -> Vec<String> {
        self.headers.values().cloned().collect()
    }

    pub(super) fn validate(&self) -> Result<(), SpecError> {
        if self.format == InputFormat::Text && !self.fields.is_empty() {
            return Err(SpecError::new(
                "input.fields",
                "fields are JSON pointers: they need input.format = \"json\" (a text record has `key` and `value`)",
            ));
        }
        for (name, pointer) in &self.fields {
            let key = format!("input.fields.{name}");
            if !is_field_name(name) {
                return Err(SpecError::new(&key, "a field name is letters, digits and '_', not starting with a digit"));
            }
            if BUILTIN_FIELDS.contains(&name.as_str()) {
                return Err(SpecError::new(&key, format!("`{name}` is a field of every record already")));
            }
            if !pointer.is_empty() && !pointer.starts_with('/') {
                return Err(SpecError::new(
                    &key,
                    format!("`{pointer}` is not a JSON pointer: it starts with '/', as in \"/title\""),
                ));
            }
        }
        for (name, header) in &self.headers {
            let key = format!("input.headers.{name}");
            if !is_field_name(name) {
                return Err(SpecError::new(&key, "a field name is letters, digits and '_', not starting with a digit"));
            }
            if BUILTIN_FIELDS.contains(&name.as_str()) || self.fields.contains_key(name) {
                return Err(SpecError::new(&key, format!("`{name}` is a field already")));
            }
            if header.is_empty() {
                return Err(SpecError::new(&key, "must name a Kafka header"));
            }
        }
        for name in &self.required {
            if !self.has_field(name) {
                return Err(SpecError::new(
                    "input.required",
                    format!("`{name}` is not a field: name one of input.fields or input.headers (or key, value)"),
                ));
            }
        }
        Ok(())
    }
}
