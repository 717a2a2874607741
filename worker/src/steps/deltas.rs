//! Token deltas of a streamed model call: the fragments the provider
//! sends, coalesced per execution and published as `delta` events on the
//! events exchange every `events.delta_interval_ms` (a few per second, not
//! one message per token). Best effort and never stored: the call's answer
//! is kept like any other's.

use std::time::Duration;

use llmq_shared::event_log::{delta_data, EventType, LogEvent};
use llmq_shared::execution::Execution;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

use crate::context::WorkerContext;

/// Publishes what arrives on `fragments` until its sender is dropped,
/// then what is left.
pub async fn publish(
    ctx: &WorkerContext,
    execution: &Execution,
    step_seq: i32,
    attempt: i32,
    mut fragments: UnboundedReceiver<String>,
) {
    let interval = Duration::from_millis(ctx.settings.events.delta_interval_ms.max(10));
    let mut pending = String::new();
    let mut due = Instant::now() + interval;
    loop {
        tokio::select! {
            next = fragments.recv() => match next {
                Some(text) => {
                    if pending.is_empty() {
                        due = due.max(Instant::now());
                    }
                    pending.push_str(&text);
                }
                None => break,
            },
            _ = tokio::time::sleep_until(due), if !pending.is_empty() => {
                send(ctx, execution, step_seq, attempt, std::mem::take(&mut pending)).await;
                due = Instant::now() + interval;
            }
        }
    }
    if !pending.is_empty() {
        send(ctx, execution, step_seq, attempt, pending).await;
    }
}

async fn send(
    ctx: &WorkerContext,
    execution: &Execution,
    step_seq: i32,
    attempt: i32,
    text: String,
) {
    let event = LogEvent {
        execution_id: execution.id,
        tenant_id: execution.tenant_id.clone(),
        prompt_name: execution.prompt_name.clone(),
        seq: 0,
        event_type: EventType::Delta,
        data: delta_data(step_seq, attempt, &text),
    };
    ctx.publisher.publish_events(&[], vec![event]).await;
}
