//! The body of a delivery: `{"type", "timestamp", "data"}`, where `data`
//! is the execution resource, or only its id, status and links when the
//! resource is larger than `webhooks.max_payload_bytes` (the receiver
//! fetches the rest). The timestamp is the delivery's creation time, so
//! every attempt sends the same bytes.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;

use crate::resource::ExecutionResource;

pub fn payload_body(
    event_type: &str,
    created_at: DateTime<Utc>,
    resource: &ExecutionResource,
    max_bytes: usize,
) -> Vec<u8> {
    let timestamp = created_at.to_rfc3339_opts(SecondsFormat::Micros, true);
    let full = json!({"type": event_type, "timestamp": timestamp, "data": resource});
    let body = serde_json::to_vec(&full).unwrap_or_default();
    if body.len() <= max_bytes {
        return body;
    }
    let thin = json!({
        "type": event_type,
        "timestamp": timestamp,
        "data": {"id": resource.id, "status": resource.status, "links": resource.links},
    });
    serde_json::to_vec(&thin).unwrap_or_default()
}
