//! A record's named fields and the text templates over them.
//!
//! [`RecordFields::read`] reads a record once, as `[input]` says: its key, its value, the Kafka
//! headers it names and, for JSON, the fields its pointers name. [`Template::render`] then writes one model's input from
//! them (`"{title}. {description}"`). Every way a record can fail says which field: a value that
//! is not JSON, a required field that is missing, a field that is not a string. The executor
//! sends such records to the dead-letter topic with that reason.

use std::collections::BTreeMap;

use crate::spec::input::{is_field_name, InputFormat, InputSpec};

/// A text with `{field}` placeholders; `{{` and `}}` are literal braces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(String),
}

impl Template {
    /// Parses `source`, or says what is wrong with it.
    pub fn parse(source: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    text.push('}');
                }
                '{' => {
                    let name: String = chars.by_ref().take_while(|&c| c != '}').collect();
                    if !is_field_name(&name) {
                        return Err(format!("`{{{name}` is not a field: write {{name}} (and {{{{ for a brace)"));
                    }
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    parts.push(Part::Field(name));
                }
                '}' => return Err("a lone `}`: write }} for a brace".into()),
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        if !parts.iter().any(|p| matches!(p, Part::Field(_))) {
            return Err(format!("`{source}` names no field: write at least one, such as {{title}}"));
        }
        Ok(Template { source: source.to_string(), parts })
    }

    /// The fields it reads, in order.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Field(f) => Some(f.as_str()),
            Part::Text(_) => None,
        })
    }

    /// The one field it is, when it is nothing but a field (`{value}`).
    pub fn single_field(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [Part::Field(f)] => Some(f),
            _ => None,
        }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The text for `record`: absent optional fields write nothing. Fails with the reason when
    /// a field it reads could not be read.
    pub fn render(&self, record: &RecordFields) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field(f) => match record.get(f) {
                    Ok(Some(v)) => out.push_str(v),
                    Ok(None) => {}
                    Err(reason) => return Err(reason),
                },
            }
        }
        Ok(out)
    }
}

/// A field's value in one record: text, absent, or why it cannot be read.
type FieldValue = Result<Option<String>, String>;

/// One record's fields, read once and shared by every model's template.
#[derive(Debug)]
pub struct RecordFields {
    fields: BTreeMap<String, FieldValue>,
}

fn utf8_field(name: &str, bytes: Option<&[u8]>) -> FieldValue {
    match bytes {
        None => Ok(None),
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => Ok(Some(s.to_string())),
            Err(e) => Err(format!("{name} is not valid UTF-8: {e}")),
        },
    }
}

/// What a JSON value is, in words.
fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

impl RecordFields {
    /// Reads a record's fields as `input` says. A record that cannot be read at all (a null
    /// value, a value that is not JSON, a required field missing or not a string) is refused
    /// with the reason, naming the field.
    ///
    /// `headers` holds the values of the Kafka headers `input.headers` reads, in its order.
    pub fn read(
        input: &InputSpec,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[Option<&[u8]>],
    ) -> Result<RecordFields, String> {
        let Some(value) = value else {
            return Err("value is null".into());
        };
        let doc = match input.format {
            InputFormat::Json => {
                Some(serde_json::from_slice(value).map_err(|e| format!("value is not valid JSON: {e}"))?)
            }
            _ => None,
        };
        Self::from_parts(input, key, utf8_field("value", Some(value)), doc.as_ref(), headers)
    }

    /// Reads a record whose value was decoded already (Avro, Protobuf): `fields` point into
    /// `decoded`, and `value` is its JSON text (made once, for the sinks too).
    pub fn read_decoded(
        input: &InputSpec,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        decoded: &serde_json::Value,
        headers: &[Option<&[u8]>],
    ) -> Result<RecordFields, String> {
        Self::from_parts(input, key, utf8_field("value", value), Some(decoded), headers)
    }

    fn from_parts(
        input: &InputSpec,
        key: Option<&[u8]>,
        value: FieldValue,
        doc: Option<&serde_json::Value>,
        headers: &[Option<&[u8]>],
    ) -> Result<RecordFields, String> {
        let mut fields = BTreeMap::new();
        fields.insert("key".to_string(), utf8_field("key", key));
        fields.insert("value".to_string(), value);
        for ((name, header), bytes) in input.headers.iter().zip(headers.iter().chain(std::iter::repeat(&None))) {
            fields.insert(name.clone(), utf8_field(&format!("header `{header}`"), *bytes));
        }
        if let Some(doc) = doc {
            for (name, pointer) in &input.fields {
                let field = match doc.pointer(pointer) {
                    None | Some(serde_json::Value::Null) => Ok(None),
                    Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                    Some(other) => Err(format!("field `{name}` ({pointer}) is {}, not a string", json_type(other))),
                };
                fields.insert(name.clone(), field);
            }
        }
        for name in &input.required {
            match fields.get(name) {
                Some(Ok(Some(_))) => {}
                Some(Err(reason)) => return Err(reason.clone()),
                _ => {
                    let at = (input.fields.get(name).map(|p| format!(" ({p})")))
                        .or_else(|| input.headers.get(name).map(|h| format!(" (header `{h}`)")))
                        .unwrap_or_default();
                    return Err(format!("required field `{name}`{at} is missing"));
                }
            }
        }
        Ok(RecordFields { fields })
    }

    /// Field `name`'s text, `None` when absent, or why it cannot be read.
    pub fn get(&self, name: &str) -> Result<Option<&str>, String> {
        match self.fields.get(name) {
            None => Ok(None),
            Some(Ok(value)) => Ok(value.as_deref()),
            Some(Err(reason)) => Err(reason.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_input(required: &[&str]) -> InputSpec {
        InputSpec {
            format: InputFormat::Json,
            fields: [("title", "/title"), ("description", "/description"), ("image", "/images/0/url")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            required: required.iter().map(|s| s.to_string()).collect(),
            headers: BTreeMap::new(),
            schema_registry: None,
        }
    }

    #[test]
    fn templates_parse_and_name_their_fields() {
        let t = Template::parse("{title}. {description} {{x}}").unwrap();
        assert_eq!(t.fields().collect::<Vec<_>>(), ["title", "description"]);
        assert_eq!(t.single_field(), None);
        assert_eq!(Template::parse("{value}").unwrap().single_field(), Some("value"));
        assert!(Template::parse("no fields").unwrap_err().contains("names no field"));
        assert!(Template::parse("{9x}").unwrap_err().contains("`{9x`"));
        assert!(Template::parse("{title} }").unwrap_err().contains("lone"));
    }

    #[test]
    fn json_records_render_their_fields() {
        let input = json_input(&["title"]);
        let value = br#"{"title": "Red shoe", "description": "Leather", "images": [{"url": "http://x/1.png"}]}"#;
        let r = RecordFields::read(&input, Some(b"k1"), Some(value), &[]).unwrap();
        let t = Template::parse("{title}. {description} ({key})").unwrap();
        assert_eq!(t.render(&r).unwrap(), "Red shoe. Leather (k1)");
        assert_eq!(r.get("image").unwrap(), Some("http://x/1.png"));
        // An optional field may be absent (or null): it writes nothing.
        let r = RecordFields::read(&input, None, Some(br#"{"title": "Hat", "description": null}"#), &[]).unwrap();
        assert_eq!(t.render(&r).unwrap(), "Hat.  ()");
    }

    #[test]
    fn bad_records_name_the_field() {
        let input = json_input(&["title"]);
        let reason = |v: &[u8]| RecordFields::read(&input, None, Some(v), &[]).unwrap_err();
        assert!(reason(b"{not json").contains("not valid JSON"));
        assert_eq!(reason(br#"{"description": "x"}"#), "required field `title` (/title) is missing");
        assert_eq!(reason(br#"{"title": 7}"#), "field `title` (/title) is a number, not a string");
        assert_eq!(RecordFields::read(&input, None, None, &[]).unwrap_err(), "value is null");
        // An optional field of the wrong type fails only the templates that read it.
        let r = RecordFields::read(&input, None, Some(br#"{"title": "a", "description": ["b"]}"#), &[]).unwrap();
        let err = Template::parse("{description}").unwrap().render(&r).unwrap_err();
        assert_eq!(err, "field `description` (/description) is an array, not a string");
        assert_eq!(Template::parse("{title}").unwrap().render(&r).unwrap(), "a");
    }

    #[test]
    fn text_records_have_key_and_value() {
        let input = InputSpec::default();
        let r = RecordFields::read(&input, Some(&[0xff]), Some(b"plain text"), &[]).unwrap();
        assert_eq!(Template::parse("{value}").unwrap().render(&r).unwrap(), "plain text");
        assert!(Template::parse("{key}").unwrap().render(&r).unwrap_err().contains("key is not valid UTF-8"));
        let r = RecordFields::read(&input, None, Some(&[0xff, 0xfe]), &[]).unwrap();
        assert!(Template::parse("{value}").unwrap().render(&r).unwrap_err().contains("value is not valid UTF-8"));
    }

    #[test]
    fn headers_are_fields() {
        let mut input = InputSpec::default();
        input.headers.insert("source".into(), "x-source".into());
        input.headers.insert("lang".into(), "content-language".into());
        input.required = vec!["source".into()];
        // In the order of input.headers: `lang` (content-language), then `source` (x-source).
        let r = RecordFields::read(&input, None, Some(b"Hat"), &[Some(b"de"), Some(b"shop-7")]).unwrap();
        assert_eq!(
            Template::parse("[{lang}] {value} from {source}").unwrap().render(&r).unwrap(),
            "[de] Hat from shop-7"
        );
        let r = RecordFields::read(&input, None, Some(b"Hat"), &[None, Some(b"shop-7")]).unwrap();
        assert_eq!(r.get("lang").unwrap(), None);
        let reason = RecordFields::read(&input, None, Some(b"Hat"), &[Some(b"de"), None]).unwrap_err();
        assert_eq!(reason, "required field `source` (header `x-source`) is missing");
        let r = RecordFields::read(&input, None, Some(b"Hat"), &[Some(&[0xff]), Some(b"s")]).unwrap();
        assert!(r.get("lang").unwrap_err().contains("header `content-language` is not valid UTF-8"));
    }
}
