//! JSON and `repr()` the way Python writes them.
//!
//! Celery peers do not care about whitespace, but writing `json.dumps`'s exact style
//! (`", "` and `": "` separators, non-ASCII escaped as `\uXXXX`) makes our messages and
//! results byte-comparable with captures of real Celery traffic, and `redis-cli` output
//! reads the same whichever side wrote it. [`py_repr`] renders `argsrepr`/`kwargsrepr`,
//! which Celery only logs.

use std::io;

use serde::Serialize;
use serde_json::Value;

/// A `serde_json` formatter that writes what Python's `json.dumps(obj)` writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct PyFormatter;

impl serde_json::ser::Formatter for PyFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        if fragment.is_ascii() {
            return writer.write_all(fragment.as_bytes());
        }
        // ensure_ascii=True: everything outside ASCII as \uXXXX (UTF-16, surrogate pairs).
        let mut units = [0u16; 2];
        for c in fragment.chars() {
            if c.is_ascii() {
                writer.write_all(&[c as u8])?;
            } else {
                for unit in c.encode_utf16(&mut units) {
                    write!(writer, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

/// Serialises `value` as Python's `json.dumps` would.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PyFormatter);
    value
        .serialize(&mut ser)
        .expect("serialising to memory cannot fail for JSON-representable values");
    out
}

/// Serialises `value` as Python's `json.dumps` would, as a string.
pub fn to_string<T: Serialize + ?Sized>(value: &T) -> String {
    String::from_utf8(to_vec(value)).expect("the formatter writes ASCII only")
}

/// The longest `argsrepr`/`kwargsrepr` Celery writes (`argsrepr_maxsize`).
pub const REPR_MAX: usize = 1024;

/// Python's `repr()` of a JSON value (`None`, `True`, `'text'`, `[1, 2]`, `{'k': 1}`),
/// cut to [`REPR_MAX`] characters with a trailing `...` like Celery's `saferepr`.
pub fn py_repr(value: &Value) -> String {
    let mut out = String::new();
    write_repr(value, &mut out);
    truncate(out)
}

/// [`py_repr`] of a list of values (positional arguments), without building a `Value`.
pub fn py_repr_list(items: &[Value]) -> String {
    let mut out = String::from("[");
    write_items(items, &mut out);
    out.push(']');
    truncate(out)
}

/// [`py_repr`] of an object (keyword arguments), without building a `Value`.
pub fn py_repr_map(map: &serde_json::Map<String, Value>) -> String {
    let mut out = String::from("{");
    write_entries(map, &mut out);
    out.push('}');
    truncate(out)
}

fn truncate(mut out: String) -> String {
    if out.len() > REPR_MAX {
        let mut cut = REPR_MAX - 3;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("...");
    }
    out
}

fn write_repr(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => repr_str(s, out),
        Value::Array(items) => {
            out.push('[');
            write_items(items, out);
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            write_entries(map, out);
            out.push('}');
        }
    }
}

fn write_items(items: &[Value], out: &mut String) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_repr(item, out);
        if out.len() > REPR_MAX {
            return;
        }
    }
}

fn write_entries(map: &serde_json::Map<String, Value>, out: &mut String) {
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        repr_str(k, out);
        out.push_str(": ");
        write_repr(v, out);
        if out.len() > REPR_MAX {
            return;
        }
    }
}

/// Python's `repr(str)`: single quotes unless the text has a `'` and no `"`.
pub fn repr_str(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dumps_like_python() {
        let v = json!({"a": [1, null, "é"], "b": {}});
        assert_eq!(to_string(&v), r#"{"a": [1, null, "\u00e9"], "b": {}}"#);
        assert_eq!(to_string(&json!("🦀")), r#""\ud83e\udd80""#);
    }

    #[test]
    fn repr_like_python() {
        let v = json!(["https://x", 3, null, true, {"t": ["a"]}, "it's"]);
        assert_eq!(
            py_repr(&v),
            r#"['https://x', 3, None, True, {'t': ['a']}, "it's"]"#
        );
        let long = json!(["x".repeat(5000)]);
        let r = py_repr(&long);
        assert_eq!(r.len(), REPR_MAX);
        assert!(r.ends_with("..."));
    }
}
