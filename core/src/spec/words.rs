//! Spec errors a person can act on: serde's messages with the Rust type names said in words
//! (`a whole number`, not `u64`), a suggestion for a misspelt key (`did you mean ...?`), and the
//! line of the spec file a key is on.

/// `message` (a serde error) with type names in words and, for an unknown key, the nearest
/// known one.
pub(crate) fn in_words(message: &str) -> String {
    // toml adds "in `section`" lines below serde's message; the key already says where.
    let message = message.lines().next().unwrap_or_default().trim_end();
    let mut out = message.to_string();
    for (rust, words) in [
        ("expected usize", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number"),
        ("expected i64", "expected a whole number"),
        ("expected i32", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
        ("expected a sequence", "expected a list like [\"a\", \"b\"]"),
        ("expected struct ", "expected a table of "),
    ] {
        out = out.replace(rust, words);
    }
    if let Some(suggestion) = nearest_known(message) {
        out.push_str(&format!("; did you mean `{suggestion}`?"));
    }
    out
}

/// For serde's "unknown field `x`, expected one of `a`, `b`" (or "expected `a`"), the known
/// name closest to `x`, if one is close enough to be a typo.
fn nearest_known(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, rest) = rest.split_once('`')?;
    let known: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    let (best, distance) = known.iter().map(|k| (*k, edit_distance(unknown, k))).min_by_key(|(_, d)| *d)?;
    (distance > 0 && distance <= (unknown.len() / 3).max(2)).then(|| best.to_string())
}

/// Levenshtein distance between `a` and `b`.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for j in 0..b.len() {
            let substitution = previous + usize::from(ca != b[j]);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

/// The 1-based line of `text` (a spec file) that holds `key` (`source.max_offsets_per_trigger`):
/// the line that sets its last part inside its section (`[source]`), or the section's header.
pub(crate) fn line_of(text: &str, key: &str) -> Option<usize> {
    if key.is_empty() {
        return None;
    }
    let (section, name) = match key.rsplit_once('.') {
        Some((section, name)) => (section, name),
        None => ("", key),
    };
    let mut current = String::new();
    let mut header = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(inner) = trimmed.strip_prefix('[').and_then(|t| t.split(']').next()) {
            current = inner.trim_matches('[').trim().to_string();
            if current == key {
                return Some(i + 1);
            }
            if current == section {
                header = Some(i + 1);
            }
            continue;
        }
        let set = trimmed.split('=').next().map(|k| k.trim().trim_matches('"'));
        if current == section && set == Some(name) {
            return Some(i + 1);
        }
    }
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misspelt_keys_get_a_suggestion_and_types_are_in_words() {
        let m = "unknown field `max_offset_per_trigger`, expected one of `subscribe`, `max_offsets_per_trigger`, `min_partitions`";
        assert!(in_words(m).ends_with("; did you mean `max_offsets_per_trigger`?"), "{}", in_words(m));
        let far = "unknown field `colour`, expected one of `subscribe`, `min_partitions`";
        assert_eq!(in_words(far), far, "no suggestion for a key that is nothing like a known one");
        assert_eq!(
            in_words("invalid type: string \"many\", expected u64"),
            "invalid type: string \"many\", expected a whole number"
        );
    }

    #[test]
    fn keys_are_found_on_their_line() {
        let text = "name = \"q\"\n\n[source]\nsubscribe = [\"t\"]\nmax_offset_per_trigger = 10\n[sink]\ntopic = \"o\"\n[model2]\n";
        assert_eq!(line_of(text, "name"), Some(1));
        assert_eq!(line_of(text, "source.max_offset_per_trigger"), Some(5));
        assert_eq!(line_of(text, "sink.topic"), Some(7));
        assert_eq!(line_of(text, "sink.format"), Some(6), "a key not written: its section");
        assert_eq!(line_of(text, "model2"), Some(8));
        assert_eq!(line_of(text, ""), None);
    }
}
