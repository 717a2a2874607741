//! What Postgres cannot store, removed before it is written: a NUL
//! character is valid in JSON and in a Rust string, but `jsonb` rejects
//! `\u0000` (SQLSTATE 22P05) and `text` rejects the byte (22021). Data from
//! outside (a model's answer, a provider's error message, later a tool's
//! result) must never be able to make a write fail, so every string that
//! reaches a step row or an outcome goes through here. Checks are
//! allocation-free; only a value that holds a NUL is copied.

use std::borrow::Cow;

use serde_json::Value;

/// True when some string (or object key) inside `v` holds a NUL.
pub fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// `s` without its NUL characters.
pub fn clean_str(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', ""))
    } else {
        Cow::Borrowed(s)
    }
}

/// Removes every NUL inside `v` (strings and keys); answers how many.
pub fn strip_nul(v: &mut Value) -> usize {
    match v {
        Value::String(s) => strip_str(s),
        Value::Array(a) => a.iter_mut().map(strip_nul).sum(),
        Value::Object(o) => {
            let mut removed = 0;
            if o.keys().any(|k| k.contains('\0')) {
                let entries = std::mem::take(o);
                for (mut k, v) in entries {
                    removed += strip_str(&mut k);
                    o.insert(k, v);
                }
            }
            removed + o.values_mut().map(strip_nul).sum::<usize>()
        }
        _ => 0,
    }
}

/// `v` as Postgres can store it, borrowed when it already is.
pub fn clean_json(v: &Value) -> Cow<'_, Value> {
    if has_nul(v) {
        let mut v = v.clone();
        strip_nul(&mut v);
        Cow::Owned(v)
    } else {
        Cow::Borrowed(v)
    }
}

fn strip_str(s: &mut String) -> usize {
    let before = s.len();
    if s.contains('\0') {
        s.retain(|c| c != '\0');
    }
    before - s.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nul_characters_are_removed_everywhere_and_counted() {
        let mut v = json!({"a\u{0}b": ["x\u{0}\u{0}y", 1, {"k": "\u{0}"}], "ok": "fine"});
        assert!(has_nul(&v));
        assert_eq!(strip_nul(&mut v), 4);
        assert_eq!(v, json!({"ab": ["xy", 1, {"k": ""}], "ok": "fine"}));
        assert!(!has_nul(&v));
    }

    #[test]
    fn clean_values_are_borrowed_not_copied() {
        let v = json!({"text": "no nul here"});
        assert!(matches!(clean_json(&v), Cow::Borrowed(_)));
        assert!(matches!(clean_str("plain"), Cow::Borrowed(_)));
        assert_eq!(clean_str("a\u{0}b"), "ab");
    }
}
