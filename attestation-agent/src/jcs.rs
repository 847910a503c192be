//! RFC 8785 JSON Canonicalization Scheme (JCS), for the KBS binding hash.
//!
//! Object members sorted by their UTF-16 code units, no whitespace, strings
//! escaped exactly as ECMAScript's JSON.stringify does. Numbers: integers are
//! written as is; a non-integer number is refused rather than risk a
//! formatting that differs from ECMAScript (the KBS runtime data has none).

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
#[error("cannot canonicalize JSON: {0}")]
pub struct JcsError(String);

/// The canonical bytes of `value`.
pub fn canonicalize(value: &Value) -> Result<Vec<u8>, JcsError> {
    let mut out = Vec::new();
    write(value, &mut out)?;
    Ok(out)
}

fn write(value: &Value, out: &mut Vec<u8>) -> Result<(), JcsError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.extend_from_slice(i.to_string().as_bytes());
            } else if let Some(u) = n.as_u64() {
                out.extend_from_slice(u.to_string().as_bytes());
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 {
                    out.extend_from_slice((f as i64).to_string().as_bytes());
                } else {
                    return Err(JcsError(format!("non-integer number {n} is not supported")));
                }
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write(&map[key], out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes()),
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorts_members_and_drops_whitespace() {
        let v = json!({"tee-pubkey": {"y": "2", "x": "1", "kty": "EC"}, "nonce": "n", "additional-evidence": ""});
        assert_eq!(
            String::from_utf8(canonicalize(&v).unwrap()).unwrap(),
            r#"{"additional-evidence":"","nonce":"n","tee-pubkey":{"kty":"EC","x":"1","y":"2"}}"#
        );
    }

    #[test]
    fn escapes_like_ecmascript() {
        let v = json!("a\"b\\c\u{1}\n\u{7f}é€");
        assert_eq!(String::from_utf8(canonicalize(&v).unwrap()).unwrap(), "\"a\\\"b\\\\c\\u0001\\n\u{7f}é€\"");
    }

    #[test]
    fn orders_keys_by_utf16_code_units() {
        // U+FB33 sorts after U+1D11E's surrogate pair in UTF-16 but before it in UTF-8.
        let v = json!({"\u{fb33}": 1, "\u{1d11e}": 2});
        let s = String::from_utf8(canonicalize(&v).unwrap()).unwrap();
        assert!(s.find('\u{1d11e}').unwrap() < s.find('\u{fb33}').unwrap(), "{s}");
    }

    #[test]
    fn refuses_fractional_numbers() {
        assert!(canonicalize(&json!({"a": 1.5})).is_err());
        assert_eq!(canonicalize(&json!([1, -2, 3.0])).unwrap(), b"[1,-2,3]");
    }
}
