//! A field-level diff of two versions' definitions: every leaf that was
//! added, removed or changed, by its dotted path (`params.temperature`,
//! `input_schema.properties.text.type`), with both values.

use llmq_shared::db::Pool;
use serde::Serialize;
use serde_json::Value;

use super::versions::get_version;
use crate::services::error::Result;

/// One difference between two definitions.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FieldChange {
    /// Dotted path of the field; array items as `[i]`.
    pub path: String,
    /// `added`, `removed` or `changed`.
    pub change: &'static str,
    #[schema(value_type = Option<serde_json::Value>)]
    pub from: Option<Value>,
    #[schema(value_type = Option<serde_json::Value>)]
    pub to: Option<Value>,
}

/// The changes from version `from` to version `to` of `name`.
pub async fn diff_versions(
    pool: &Pool,
    name: &str,
    from: i32,
    to: i32,
) -> Result<Vec<FieldChange>> {
    let (_, a) = get_version(pool, name, from).await?;
    let (_, b) = get_version(pool, name, to).await?;
    let a = serde_json::to_value(a).unwrap_or(Value::Null);
    let b = serde_json::to_value(b).unwrap_or(Value::Null);
    let mut changes = Vec::new();
    diff_values("", &a, &b, &mut changes);
    Ok(changes)
}

/// Leaf differences of two JSON values, appended to `out` in path order.
pub fn diff_values(path: &str, a: &Value, b: &Value, out: &mut Vec<FieldChange>) {
    let child = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                match (x.get(key), y.get(key)) {
                    (Some(u), Some(v)) => diff_values(&child(key), u, v, out),
                    (Some(u), None) => out.push(change(child(key), Some(u), None)),
                    (None, Some(v)) => out.push(change(child(key), None, Some(v))),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                let p = format!("{path}[{i}]");
                match (x.get(i), y.get(i)) {
                    (Some(u), Some(v)) => diff_values(&p, u, v, out),
                    (u, v) => out.push(change(p, u, v)),
                }
            }
        }
        (u, v) if u != v => out.push(change(path.to_string(), Some(u), Some(v))),
        _ => {}
    }
}

fn change(path: String, from: Option<&Value>, to: Option<&Value>) -> FieldChange {
    FieldChange {
        path,
        change: match (from, to) {
            (None, _) => "added",
            (_, None) => "removed",
            _ => "changed",
        },
        from: from.cloned(),
        to: to.cloned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn leaves_are_compared_by_path() {
        let mut out = Vec::new();
        diff_values(
            "",
            &json!({"model": "a", "params": {"t": 1}, "stop": ["x"]}),
            &json!({"model": "b", "params": {"t": 1, "top_p": 0.5}, "stop": []}),
            &mut out,
        );
        let paths: Vec<_> = out.iter().map(|c| (c.path.as_str(), c.change)).collect();
        assert_eq!(
            paths,
            vec![
                ("model", "changed"),
                ("params.top_p", "added"),
                ("stop[0]", "removed")
            ]
        );
    }
}
