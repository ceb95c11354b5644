//! A record's named fields and the text templates over them.
//!
//! [`RecordFields::read`] reads a record once, as `[input]` says: its key, its value, the Kafka
//! headers it names and, for JSON, the fields its pointers name. [`Template::render`] then writes one model's input from
//! them (`"{title}. {description}"`). Every way a record can fail says which field: a value that
//! is not JSON, a required field that is missing, a field that is not a string. The executor
//! sends such records to the dead-letter topic with that reason.

use std::collections::BTreeMap;

use crate::spec::input::{is_field_name, FieldColumn, FieldType, InputFormat, InputSpec};

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

/// One record's fields, read once and shared by every model's template, and the values of
/// those the sink writes as columns ([`RecordFields::cells`]).
#[derive(Debug)]
pub struct RecordFields {
    fields: BTreeMap<String, FieldValue>,
    cells: Vec<Cell>,
}

/// A field's value in a column of its type ([`FieldType`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Text(String),
    Bigint(i64),
    Double(f64),
    Boolean(bool),
    /// Milliseconds since the epoch, UTC.
    Timestamp(i64),
}

/// The latest instant a timestamp column holds: the end of year 9999 (PostgreSQL's and Spark's
/// timestamps end there or later; a field past it is a mistake, not a date).
const LATEST_MS: i64 = 253_402_300_799_999;

/// Field `name`'s `value` (absent: `None`) as a column of type `ty` holds it, or why it cannot
/// be: `at` says where the field is (` (/price)`).
fn cell(name: &str, at: &str, value: Option<&serde_json::Value>, ty: FieldType) -> Result<Cell, String> {
    use serde_json::Value;
    let wrong = |v: &Value| format!("field `{name}`{at} is {}, not a {}", shown(v), ty.name());
    let Some(v) = value.filter(|v| !v.is_null()) else { return Ok(Cell::Null) };
    Ok(match (ty, v) {
        (FieldType::Text, Value::String(s)) => Cell::Text(s.clone()),
        (FieldType::Text, other) => Cell::Text(other.to_string()),
        (FieldType::Bigint, Value::Number(n)) => Cell::Bigint(n.as_i64().ok_or_else(|| wrong(v))?),
        (FieldType::Bigint, Value::String(s)) => Cell::Bigint(s.trim().parse().map_err(|_| wrong(v))?),
        (FieldType::Double, Value::Number(n)) => Cell::Double(n.as_f64().ok_or_else(|| wrong(v))?),
        (FieldType::Double, Value::String(s)) => {
            Cell::Double(s.trim().parse::<f64>().ok().filter(|x| x.is_finite()).ok_or_else(|| wrong(v))?)
        }
        (FieldType::Boolean, Value::Bool(b)) => Cell::Boolean(*b),
        (FieldType::Boolean, Value::String(s)) if s == "true" || s == "false" => Cell::Boolean(s == "true"),
        (FieldType::Timestamp, Value::Number(n)) => Cell::Timestamp(n.as_i64().ok_or_else(|| wrong(v))?),
        (FieldType::Timestamp, Value::String(s)) => {
            let t = humantime::parse_rfc3339_weak(s.trim()).map_err(|_| wrong(v))?;
            let ms = match t.duration_since(std::time::UNIX_EPOCH) {
                Ok(d) => d.as_millis() as i64,
                Err(before) => -(before.duration().as_millis() as i64),
            };
            Cell::Timestamp(ms)
        }
        _ => return Err(wrong(v)),
    })
    .and_then(|c| match c {
        Cell::Timestamp(ms) if ms > LATEST_MS => Err(format!("field `{name}`{at} is past the year 9999")),
        c => Ok(c),
    })
}

/// A JSON value in a reason: short ones as they are, else their type.
fn shown(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) if s.len() <= 40 => format!("{v}"),
        serde_json::Value::Number(_) | serde_json::Value::Bool(_) => v.to_string(),
        other => json_type(other).to_string(),
    }
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
    ///
    /// `columns` are the fields the sink writes as columns: a record whose field is not of its
    /// type is refused too.
    pub fn read(
        input: &InputSpec,
        columns: &[FieldColumn],
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
        Self::from_parts(input, columns, key, utf8_field("value", Some(value)), doc.as_ref(), headers)
    }

    /// Reads a record whose value was decoded already (Avro, Protobuf): `fields` point into
    /// `decoded`, and `value` is its JSON text (made once, for the sinks too).
    pub fn read_decoded(
        input: &InputSpec,
        columns: &[FieldColumn],
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        decoded: &serde_json::Value,
        headers: &[Option<&[u8]>],
    ) -> Result<RecordFields, String> {
        Self::from_parts(input, columns, key, utf8_field("value", value), Some(decoded), headers)
    }

    fn from_parts(
        input: &InputSpec,
        columns: &[FieldColumn],
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
            let at = || {
                (input.fields.get(name).map(|p| format!(" ({p})")))
                    .or_else(|| input.headers.get(name).map(|h| format!(" (header `{h}`)")))
                    .unwrap_or_default()
            };
            match fields.get(name) {
                // A required text that is empty (or only white space) says nothing to a model.
                Some(Ok(Some(text))) if text.trim().is_empty() => {
                    return Err(format!("required field `{name}`{} is empty", at()));
                }
                Some(Ok(Some(_))) => {}
                Some(Err(reason)) => return Err(reason.clone()),
                _ => return Err(format!("required field `{name}`{} is missing", at())),
            }
        }
        let mut cells = Vec::with_capacity(columns.len());
        for c in columns {
            let cell = match (input.fields.get(&c.name), doc) {
                (Some(pointer), Some(doc)) => cell(&c.name, &format!(" ({pointer})"), doc.pointer(pointer), c.ty)?,
                (Some(_), None) => Cell::Null,
                // A header (or the key): its text.
                (None, _) => match fields.get(&c.name) {
                    Some(Ok(Some(text))) => {
                        let at = input.headers.get(&c.name).map(|h| format!(" (header `{h}`)")).unwrap_or_default();
                        cell(&c.name, &at, Some(&serde_json::Value::String(text.clone())), c.ty)?
                    }
                    Some(Err(reason)) => return Err(reason.clone()),
                    _ => Cell::Null,
                },
            };
            cells.push(cell);
        }
        Ok(RecordFields { fields, cells })
    }

    /// The values of the sink's field columns, in the order `read` was given them.
    pub fn cells(&self) -> &[Cell] {
        &self.cells
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
            types: BTreeMap::new(),
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
        let r = RecordFields::read(&input, &[], Some(b"k1"), Some(value), &[]).unwrap();
        let t = Template::parse("{title}. {description} ({key})").unwrap();
        assert_eq!(t.render(&r).unwrap(), "Red shoe. Leather (k1)");
        assert_eq!(r.get("image").unwrap(), Some("http://x/1.png"));
        // An optional field may be absent (or null): it writes nothing.
        let r = RecordFields::read(&input, &[], None, Some(br#"{"title": "Hat", "description": null}"#), &[]).unwrap();
        assert_eq!(t.render(&r).unwrap(), "Hat.  ()");
    }

    #[test]
    fn bad_records_name_the_field() {
        let input = json_input(&["title"]);
        let reason = |v: &[u8]| RecordFields::read(&input, &[], None, Some(v), &[]).unwrap_err();
        assert!(reason(b"{not json").contains("not valid JSON"));
        assert_eq!(reason(br#"{"description": "x"}"#), "required field `title` (/title) is missing");
        assert_eq!(reason(br#"{"title": 7}"#), "field `title` (/title) is a number, not a string");
        // Issue 36: a required field that is there but empty is refused too.
        assert_eq!(reason(br#"{"title": ""}"#), "required field `title` (/title) is empty");
        assert_eq!(reason(br#"{"title": " \n "}"#), "required field `title` (/title) is empty");
        assert_eq!(RecordFields::read(&input, &[], None, None, &[]).unwrap_err(), "value is null");
        // An optional field of the wrong type fails only the templates that read it.
        let r = RecordFields::read(&input, &[], None, Some(br#"{"title": "a", "description": ["b"]}"#), &[]).unwrap();
        let err = Template::parse("{description}").unwrap().render(&r).unwrap_err();
        assert_eq!(err, "field `description` (/description) is an array, not a string");
        assert_eq!(Template::parse("{title}").unwrap().render(&r).unwrap(), "a");
    }

    #[test]
    fn columns_take_their_fields_typed() {
        let mut input = json_input(&[]);
        input.fields.insert("price".into(), "/price".into());
        input.fields.insert("stock".into(), "/stock".into());
        input.fields.insert("sale".into(), "/sale".into());
        input.fields.insert("since".into(), "/since".into());
        input.headers.insert("shop".into(), "x-shop".into());
        let col = |name: &str, ty| FieldColumn { name: name.into(), ty };
        let columns = [
            col("title", FieldType::Text),
            col("price", FieldType::Double),
            col("stock", FieldType::Bigint),
            col("sale", FieldType::Boolean),
            col("since", FieldType::Timestamp),
            col("image", FieldType::Text),
            col("shop", FieldType::Bigint),
        ];
        let value = br#"{"title": "Hat", "price": 12.5, "stock": "7", "sale": true, "since": "2026-12-07T10:00:00Z",
            "images": [{"url": {"x": 1}}]}"#;
        let r = RecordFields::read(&input, &columns, None, Some(value), &[Some(b"42")]).unwrap();
        assert_eq!(
            r.cells(),
            [
                Cell::Text("Hat".into()),
                Cell::Double(12.5),
                Cell::Bigint(7),
                Cell::Boolean(true),
                Cell::Timestamp(1_796_637_600_000),
                Cell::Text(r#"{"x":1}"#.into()),
                Cell::Bigint(42),
            ]
        );
        let r = RecordFields::read(&input, &columns, None, Some(br#"{"since": 1796637600000}"#), &[None]).unwrap();
        assert_eq!(r.cells()[4], Cell::Timestamp(1_796_637_600_000));
        assert_eq!(r.cells()[1], Cell::Null);
        assert_eq!(r.cells()[6], Cell::Null);
        let reason = |v: &[u8]| RecordFields::read(&input, &columns, None, Some(v), &[None]).unwrap_err();
        assert_eq!(reason(br#"{"price": "cheap"}"#), r#"field `price` (/price) is "cheap", not a double"#);
        assert_eq!(reason(br#"{"stock": 1.5}"#), "field `stock` (/stock) is 1.5, not a bigint");
        assert_eq!(reason(br#"{"sale": [true]}"#), "field `sale` (/sale) is an array, not a boolean");
        assert_eq!(reason(br#"{"since": "yesterday"}"#), r#"field `since` (/since) is "yesterday", not a timestamp"#);
        assert!(reason(br#"{"since": 99999999999999999}"#).contains("past the year 9999"));
        let r = RecordFields::read(&input, &columns, None, Some(b"{}"), &[Some(b"x")]).unwrap_err();
        assert_eq!(r, r#"field `shop` (header `x-shop`) is "x", not a bigint"#);
    }

    #[test]
    fn text_records_have_key_and_value() {
        let input = InputSpec::default();
        let r = RecordFields::read(&input, &[], Some(&[0xff]), Some(b"plain text"), &[]).unwrap();
        assert_eq!(Template::parse("{value}").unwrap().render(&r).unwrap(), "plain text");
        assert!(Template::parse("{key}").unwrap().render(&r).unwrap_err().contains("key is not valid UTF-8"));
        let r = RecordFields::read(&input, &[], None, Some(&[0xff, 0xfe]), &[]).unwrap();
        assert!(Template::parse("{value}").unwrap().render(&r).unwrap_err().contains("value is not valid UTF-8"));
    }

    #[test]
    fn headers_are_fields() {
        let mut input = InputSpec::default();
        input.headers.insert("source".into(), "x-source".into());
        input.headers.insert("lang".into(), "content-language".into());
        input.required = vec!["source".into()];
        // In the order of input.headers: `lang` (content-language), then `source` (x-source).
        let r = RecordFields::read(&input, &[], None, Some(b"Hat"), &[Some(b"de"), Some(b"shop-7")]).unwrap();
        assert_eq!(
            Template::parse("[{lang}] {value} from {source}").unwrap().render(&r).unwrap(),
            "[de] Hat from shop-7"
        );
        let r = RecordFields::read(&input, &[], None, Some(b"Hat"), &[None, Some(b"shop-7")]).unwrap();
        assert_eq!(r.get("lang").unwrap(), None);
        let reason = RecordFields::read(&input, &[], None, Some(b"Hat"), &[Some(b"de"), None]).unwrap_err();
        assert_eq!(reason, "required field `source` (header `x-source`) is missing");
        let r = RecordFields::read(&input, &[], None, Some(b"Hat"), &[Some(&[0xff]), Some(b"s")]).unwrap();
        assert!(r.get("lang").unwrap_err().contains("header `content-language` is not valid UTF-8"));
    }
}
