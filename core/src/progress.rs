//! A progress record: after every batch, the fields Spark users know from
//! `StreamingQueryProgress` (batchId, numInputRows, inputRowsPerSecond, processedRowsPerSecond,
//! durationMs by phase, per-source start/end/latest offsets) and embedstream's own (embeddings,
//! dead letters, lost offsets, rows per executor). The driver writes them as JSON lines
//! (`embedstream_driver::progress`); the admin API sends them as typed messages.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::offsets::PartitionOffsets;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceProgress {
    pub description: String,
    pub start_offset: PartitionOffsets,
    pub end_offset: PartitionOffsets,
    pub latest_offset: PartitionOffsets,
    pub num_input_rows: u64,
    /// Records between the batch's end and the latest offsets when it was planned.
    pub offsets_behind_latest: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgressRecord {
    pub id: String,
    pub name: String,
    pub batch_id: u64,
    /// When the batch started, RFC 3339.
    pub timestamp: String,
    pub num_input_rows: u64,
    pub input_rows_per_second: f64,
    pub processed_rows_per_second: f64,
    /// plan, wal, commit and triggerExecution: driver wall time; read, infer, sink: summed over tasks.
    pub duration_ms: BTreeMap<String, u64>,
    pub sources: Vec<SourceProgress>,
    pub embeddings: u64,
    pub dead_letters: u64,
    /// Offsets the broker deleted before the query read them, skipped (`fail_on_data_loss =
    /// false`). Absent in records written before it existed.
    #[serde(default)]
    pub lost_offsets: u64,
    pub task_retries: u64,
    /// Input rows each executor processed in this batch.
    pub executors: BTreeMap<String, u64>,
    /// Texts the models' embedding caches answered (`model.cache_bytes`), and those they sent to
    /// the model. Absent in records written before them.
    #[serde(default)]
    pub cache_hits: u64,
    #[serde(default)]
    pub cache_misses: u64,
    /// Dead letters by the class of their reason ([`reason_class`]). Absent in records written
    /// before it, and when the batch had none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dead_letter_reasons: BTreeMap<String, u64>,
    /// The batch's last few dead letters (at most [`DEAD_LETTER_SAMPLES`]), with their reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dead_letter_samples: Vec<DeadLetterSample>,
    /// Each model's version (`crate::model_version`), by the model's name. Absent in records
    /// written before versions were.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub model_versions: BTreeMap<String, String>,
    /// Records whose input was the one last embedded for their key (`skip_unchanged`): no
    /// inference, nothing written. Absent in records written before it, and when none was.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unchanged: u64,
    /// Inputs (texts, images) the models computed, summed over the batches their workers ran:
    /// what inference cost, apart from cache hits and unchanged records. Absent in records
    /// written before it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub model_inputs: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Dead letters a task or a batch reports one by one, the newest kept.
pub const DEAD_LETTER_SAMPLES: usize = 5;

/// A record that went to the dead-letter topic: where it came from, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterSample {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub reason: String,
}

/// Dead-letter classes one task or one batch reports; the rest count under
/// [`OTHER_REASONS`], so that no input can make a task's status outgrow the wire's limit.
pub const MAX_REASON_CLASSES: usize = 32;
/// The class that counts dead letters past [`MAX_REASON_CLASSES`].
pub const OTHER_REASONS: &str = "other reasons";
/// The most bytes of a sample's reason a task reports (the dead letter keeps it whole).
pub const MAX_SAMPLE_REASON: usize = 512;
/// The most bytes of a class.
const MAX_CLASS: usize = 120;

/// What dead letters are counted by: the kind of failure, never the value that failed. Quoted
/// values (`` `...` ``: a URL, a field's text) become `` `…` `` and numbers `N` (but an HTTP
/// status stays), and the class ends at the first `": "` after the reason's subject: an image
/// URL's reason keeps the failure that follows (`` image URL `…`: HTTP 404 ``).
pub fn reason_class(reason: &str) -> String {
    let mut out = String::new();
    let mut rest = reason;
    loop {
        let Some(i) = rest.find(['`', ':']) else {
            push_plain(&mut out, rest);
            break;
        };
        let (text, at) = rest.split_at(i);
        push_plain(&mut out, text);
        if let Some(quoted) = at.strip_prefix('`') {
            // A quoted value: elided up to its closing quote.
            out.push_str("`…`");
            rest = quoted.split_once('`').map_or("", |(_, after)| after);
        } else if at.starts_with(": ") && !out.ends_with('`') {
            break;
        } else {
            out.push(':');
            rest = &at[1..];
        }
    }
    ellipsized(&out, MAX_CLASS).into_owned()
}

/// `text` cut to at most `most` bytes on a character boundary, with `…` when cut.
pub fn ellipsized(text: &str, most: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= most {
        return text.into();
    }
    let mut end = most;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end]).into()
}

/// Appends `text` with each run of digits as `N`, except an HTTP status and digits in a name.
fn push_plain(out: &mut String, text: &str) {
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if !c.is_ascii_digit() {
            out.push(c);
            continue;
        }
        let mut end = i + 1;
        while let Some((j, d)) = chars.peek().copied().filter(|(_, d)| d.is_ascii_digit()) {
            end = j + d.len_utf8();
            chars.next();
        }
        let digits = &text[i..end];
        let before = text[..i].chars().next_back();
        let after = text[end..].chars().next();
        // A status (`HTTP 404`) or part of a name (`UTF-8`, `sha256`) is kept.
        let named = before.is_some_and(|c| c.is_alphabetic() || c == '-') || after.is_some_and(char::is_alphabetic);
        if (digits.len() == 3 && text[..i].ends_with("HTTP ")) || named {
            out.push_str(digits);
        } else {
            out.push('N');
        }
    }
}

/// Counts one more dead letter of `class` in `counts`, bounded by [`MAX_REASON_CLASSES`].
pub fn count_reason(counts: &mut BTreeMap<String, u64>, class: String, n: u64) {
    if counts.len() >= MAX_REASON_CLASSES && !counts.contains_key(&class) {
        *counts.entry(OTHER_REASONS.to_string()).or_default() += n;
        return;
    }
    *counts.entry(class).or_default() += n;
}

/// A sample's reason, cut to [`MAX_SAMPLE_REASON`] bytes.
pub fn sample_reason(reason: &str) -> String {
    ellipsized(reason, MAX_SAMPLE_REASON).into_owned()
}

/// Keeps the newest [`DEAD_LETTER_SAMPLES`] of `samples`.
pub fn keep_newest(samples: &mut Vec<DeadLetterSample>) {
    let over = samples.len().saturating_sub(DEAD_LETTER_SAMPLES);
    samples.drain(..over);
}

impl ProgressRecord {
    pub fn lag(&self) -> i64 {
        self.sources.iter().map(|s| s.offsets_behind_latest).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_classes_are_kinds_not_values() {
        let url = format!("http://cdn.example/{}", "a".repeat(1800));
        for (reason, class) in [
            (format!("image URL `{url}`: HTTP 404"), "image URL `…`: HTTP 404"),
            (format!("image URL `{url}`: cannot connect: refused"), "image URL `…`: cannot connect"),
            (format!("image URL `{url}` is not an http(s) URL: no host"), "image URL `…` is not an http(s) URL"),
            (
                format!("image URL `{url}`: image is 9000 x 9000 pixels (81000000), over fetch.max_pixels = 40000000"),
                "image URL `…`: image is N x N pixels (N), over fetch.max_pixels = N",
            ),
            (
                "the text of model `m` (`{title}`) is 70000 bytes, over model.max_text_bytes = 65536".into(),
                "the text of model `…` (`…`) is N bytes, over model.max_text_bytes = N",
            ),
            ("value is null".into(), "value is null"),
            ("not valid UTF-8: invalid utf-8 sequence of 1 bytes from index 5".into(), "not valid UTF-8"),
            ("required field `image` (/image_url) is missing".into(), "required field `…` (/image_url) is missing"),
            ("an unclosed `quote: and more".into(), "an unclosed `…`"),
        ] {
            assert_eq!(reason_class(&reason), class, "{reason}");
        }
        assert!(reason_class(&"x".repeat(5000)).len() <= MAX_CLASS + '…'.len_utf8());
    }

    #[test]
    fn reason_counts_and_samples_are_bounded() {
        let mut counts = BTreeMap::new();
        for i in 0..100 {
            count_reason(&mut counts, format!("field {i} is odd"), 1);
        }
        count_reason(&mut counts, "field 3 is odd".into(), 1);
        assert_eq!(counts.len(), MAX_REASON_CLASSES + 1);
        assert_eq!(counts[OTHER_REASONS], 100 - MAX_REASON_CLASSES as u64);
        assert_eq!(counts["field 3 is odd"], 2);
        assert_eq!(counts.values().sum::<u64>(), 101);
        let long = "é".repeat(1000);
        let cut = sample_reason(&long);
        assert!(cut.len() <= MAX_SAMPLE_REASON + '…'.len_utf8() && cut.ends_with('…'));
    }
}
