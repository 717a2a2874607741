//! The tenant-wide stream: live lifecycle events of every execution of
//! one tenant, filtered by prompt and status; no replay. Its events carry
//! `execution_id` and `seq` in their data (the SSE `id:` is left out: the
//! stream cannot be resumed). A `done` says `{"status"}` only: the final
//! resource is one read away, and reading it for every execution of a
//! busy tenant would cost a query per execution.

use std::time::Duration;

use futures::Stream;
use llmq_shared::event_log::{EventType, LogEvent};
use llmq_shared::execution::ExecutionStatus;
use llmq_shared::ids::{PromptName, TenantId};
use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::sse::Frame;

/// Which events a tenant stream passes.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub prompt: Option<PromptName>,
    /// Only `status` and `done` events with this status.
    pub status: Option<ExecutionStatus>,
}

impl Filter {
    fn passes(&self, tenant: &TenantId, event: &LogEvent) -> bool {
        if event.tenant_id != tenant.as_str() || !event.event_type.is_lifecycle() {
            return false;
        }
        if let Some(prompt) = &self.prompt {
            if event.prompt_name != tenant.prompt_key(prompt.as_str()) {
                return false;
            }
        }
        match self.status {
            None => true,
            Some(status) => {
                event.event_type != EventType::Step && event.data["status"] == status.as_str()
            }
        }
    }
}

/// Live lifecycle events of `tenant`'s executions passing `filter`.
pub fn tenant_stream(
    events: broadcast::Receiver<std::sync::Arc<LogEvent>>,
    tenant: TenantId,
    filter: Filter,
    keepalive: Duration,
) -> impl Stream<Item = Frame> {
    let state = (events, false);
    futures::stream::unfold(state, move |(mut events, over)| {
        let (tenant, filter) = (tenant.clone(), filter.clone());
        async move {
            if over {
                return None;
            }
            loop {
                tokio::select! {
                    next = events.recv() => match next {
                        Ok(event) if filter.passes(&tenant, &event) => {
                            return Some((frame(&event), (events, false)));
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            let error = json!({"error": {
                                "code": "slow_consumer",
                                "message": "this stream fell too far behind and is closed; reconnect",
                            }});
                            return Some((Frame::event(None, "error", &error), (events, true)));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                    _ = tokio::time::sleep(keepalive) => {
                        return Some((Frame::Comment, (events, false)));
                    }
                }
            }
        }
    })
}

fn frame(event: &LogEvent) -> Frame {
    let mut data = match &event.data {
        Value::Object(map) => map.clone(),
        other => {
            let mut map = serde_json::Map::new();
            map.insert("data".into(), other.clone());
            map
        }
    };
    data.insert("execution_id".into(), json!(event.execution_id));
    data.insert("seq".into(), json!(event.seq));
    Frame::event(None, event.event_type.as_str(), &Value::Object(data))
}
