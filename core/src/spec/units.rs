//! Values of the job spec that are written as text and used as numbers: durations ("5s",
//! "1500ms", as Spark's configs write them) and memory sizes ("512m", "2g", as Spark and YARN
//! write them). Each parses once, when the spec is read, and keeps its text so that the spec
//! an executor receives and `validate` prints read as the user wrote them.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value the spec writes as text: the text as written, and what it means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written<T> {
    text: String,
    value: T,
}

/// What a [`Written`] value can mean, and how its text is read.
pub trait Unit: Sized + Copy {
    fn from_text(text: &str) -> Result<Self, String>;
}

/// A duration such as "5s" or "1500ms".
pub type HumanDuration = Written<Duration>;

/// A memory size such as "512m", "2g" or "1.5g" (a plain number is MiB).
pub type MemorySize = Written<Mib>;

/// Mebibytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mib(pub u64);

impl Unit for Duration {
    fn from_text(text: &str) -> Result<Self, String> {
        humantime::parse_duration(text).map_err(|e| format!("`{text}` is not a duration such as \"5s\": {e}"))
    }
}

impl Unit for Mib {
    fn from_text(text: &str) -> Result<Self, String> {
        parse_memory_mb(text).map(Mib).ok_or_else(|| format!("`{text}` is not a size such as \"512m\" or \"2g\""))
    }
}

impl<T: Unit> Written<T> {
    pub fn parse(text: &str) -> Result<Written<T>, String> {
        T::from_text(text).map(|value| Written { text: text.to_string(), value })
    }

    pub fn get(&self) -> T {
        self.value
    }
}

impl<T> fmt::Display for Written<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<T> Serialize for Written<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de, T: Unit> Deserialize<'de> for Written<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Written::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// "512m", "2g", "1.5g" or a plain number of MiB, as Spark and YARN write memory sizes.
pub fn parse_memory_mb(text: &str) -> Option<u64> {
    let t = text.trim().to_ascii_lowercase();
    let (number, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => t.split_at(i),
        None => (t.as_str(), "m"),
    };
    let n: f64 = number.trim().parse().ok()?;
    let mb = match unit.trim_end_matches('b') {
        "k" => n / 1024.0,
        "m" => n,
        "g" => n * 1024.0,
        "t" => n * 1024.0 * 1024.0,
        _ => return None,
    };
    (mb >= 1.0 && mb.is_finite()).then_some(mb as u64)
}
