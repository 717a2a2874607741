//! Canonical JSON and its hash: the same value always hashes the same,
//! whatever the order of its object keys. Used for immutable prompt
//! versions and for recognising a repeated request body.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// JSON text with object keys sorted at every level.
pub fn canonical_json(v: &Value) -> String {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), canonical_json(&map[k])))
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(canonical_json)
                .collect::<Vec<_>>()
                .join(",")
        ),
        other => other.to_string(),
    }
}

/// Hex sha256 of the canonical JSON.
pub fn json_sha256(v: &Value) -> String {
    Sha256::digest(canonical_json(v).as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_does_not_change_the_hash() {
        assert_eq!(
            json_sha256(&json!({"a": 1, "b": [1, {"c": 2, "d": 3}]})),
            json_sha256(&json!({"b": [1, {"d": 3, "c": 2}], "a": 1}))
        );
        assert_ne!(json_sha256(&json!({"a": 1})), json_sha256(&json!({"a": 2})));
    }
}
