//! The executions consumer: manual acks, prefetch equal to the concurrency
//! limit, one task per delivery, acknowledgement only after the outcome is
//! committed. Reconnects after broker failures (`retry_until_cancelled`).
//! Each delivery runs in a span that continues the trace of the request
//! that submitted it (the message's `traceparent`). On shutdown it stops
//! consuming, lets in-flight executions finish until the grace period ends,
//! then interrupts the rest (their leases are given back and their
//! unacknowledged messages return to the queue).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use llmq_shared::backoff::{retry_until_cancelled, unless_cancelled, Backoff, Ended};
use llmq_shared::execution::ExecutionStatus;
use llmq_shared::metrics as m;
use llmq_shared::queue::{self, s, ExecutionMessage, QueueError, Topology};
use llmq_shared::trace::TraceParent;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::context::WorkerContext;
use crate::fairness::Admission;
use crate::runner::{fail_after_error, run_execution, RunOutcome};

/// Consumes until `stop` fires, then drains. `interrupt` is fired when the
/// grace period is over, to stop what is still running.
pub async fn run_consumer(
    ctx: Arc<WorkerContext>,
    stop: CancellationToken,
    interrupt: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let name = format!("llmq-worker {} consumer", ctx.owner);
    retry_until_cancelled(&name, &stop, Backoff::reconnect(), || {
        consume(&ctx, &stop, &interrupt, &tracker)
    })
    .await;
    // A lost broker during shutdown: drain what is left without a channel
    // (acks fail, the broker redelivers, claiming absorbs it).
    if !tracker.is_closed() {
        drain(&ctx, &tracker, &interrupt).await;
    }
}

/// Lets in-flight executions finish until the grace period ends, then
/// interrupts the rest.
async fn drain(ctx: &WorkerContext, tracker: &TaskTracker, interrupt: &CancellationToken) {
    tracker.close();
    let grace = Duration::from_secs(ctx.settings.worker.shutdown_grace_secs);
    let in_flight = tracker.len();
    if in_flight > 0 {
        tracing::info!(
            in_flight,
            grace_secs = grace.as_secs(),
            "draining in-flight executions"
        );
    }
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            remaining = tracker.len(),
            "grace period over; interrupting the rest"
        );
        interrupt.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await;
    }
}

/// One broker session: consumes until `stop` fires, then cancels the
/// consumer and waits for the in-flight executions (whose acks need the
/// channel) before closing the channel and then the connection.
async fn consume(
    ctx: &Arc<WorkerContext>,
    stop: &CancellationToken,
    interrupt: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<(), Ended<QueueError>> {
    let Some(opened) = unless_cancelled(stop, open(ctx)).await else {
        return Ok(());
    };
    let (conn, channel, mut consumer, tag) = opened.map_err(Ended::Failed)?;
    let concurrency = ctx.settings.worker.concurrency.clamp(1, u16::MAX as usize);
    let slots = Arc::new(Semaphore::new(concurrency));
    let lost = loop {
        tokio::select! {
            _ = stop.cancelled() => {
                let _ = channel.basic_cancel(s(&tag), BasicCancelOptions::default()).await;
                break None;
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let Ok(slot) = slots.clone().acquire_owned().await else { break None };
                    let ctx = ctx.clone();
                    let interrupt = interrupt.clone();
                    let span = execution_span(&delivery);
                    tracker.spawn(async move {
                        handle_delivery(&ctx, delivery, &interrupt).await;
                        drop(slot);
                    }.instrument(span));
                }
                Some(Err(e)) => break Some(QueueError::from(e)),
                None => break Some(QueueError::Unavailable("consumer stream ended".into())),
            }
        }
    };
    if let Some(e) = lost {
        return Err(Ended::Lost(e));
    }
    drain(ctx, tracker, interrupt).await;
    let _ = channel.close(200, s("shutdown")).await;
    let _ = conn.close(200, s("shutdown")).await;
    Ok(())
}

async fn open(
    ctx: &WorkerContext,
) -> Result<(lapin::Connection, lapin::Channel, lapin::Consumer, String), QueueError> {
    let conn = queue::connect(
        &ctx.settings.amqp_url,
        &format!("llmq-worker {}", ctx.owner),
    )
    .await?;
    let channel = conn.create_channel().await?;
    let topology = Topology::new(&ctx.settings.queue_prefix);
    topology.declare(&channel).await?;
    let concurrency = ctx.settings.worker.concurrency.clamp(1, u16::MAX as usize);
    channel
        .basic_qos(concurrency as u16, BasicQosOptions::default())
        .await?;
    let tag = format!("llmq-worker-{}", ctx.owner);
    let consumer = channel
        .basic_consume(
            s(&topology.executions_queue),
            s(&tag),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue = %topology.executions_queue, concurrency, "consuming");
    Ok((conn, channel, consumer, tag))
}

/// The span of one delivery: it continues the trace of the request that
/// submitted the execution (the message's `traceparent` header), or starts
/// a new one for a message without it (a relay republish, a test).
fn execution_span(delivery: &Delivery) -> tracing::Span {
    let trace = message_trace(delivery)
        .map(|t| t.child())
        .unwrap_or_else(TraceParent::new_trace);
    tracing::info_span!("execution.delivery", trace_id = %trace.trace_id())
}

/// The W3C trace context a message carries, if any.
pub fn message_trace(delivery: &Delivery) -> Option<TraceParent> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(queue::TRACEPARENT_HEADER)? {
        AMQPValue::LongString(v) => TraceParent::parse(&String::from_utf8_lossy(v.as_bytes())),
        AMQPValue::ShortString(v) => TraceParent::parse(v.as_str()),
        _ => None,
    }
}

async fn handle_delivery(ctx: &WorkerContext, delivery: Delivery, interrupt: &CancellationToken) {
    let message: ExecutionMessage = match serde_json::from_slice(&delivery.data) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, body = %String::from_utf8_lossy(&delivery.data[..delivery.data.len().min(200)]), "unparseable message; dead-lettering");
            dead_letter(&delivery, "unparseable").await;
            return;
        }
    };
    let _share = match ctx.fairness.admit(message.tenant.as_deref()) {
        Admission::Over(delay) => return defer_for_fairness(ctx, &delivery, &message, delay).await,
        admitted => admitted,
    };
    let Some(running) = ctx.start_running(message.id) else {
        tracing::debug!(execution.id = %message.id, "duplicate delivery while running here; dropping");
        ack(&delivery).await;
        return;
    };
    let gauge = metrics::gauge!(m::EXECUTIONS_IN_FLIGHT);
    gauge.increment(1.0);
    // While Postgres is out of reach the delivery stays unacked and the run
    // is tried again here with backoff: requeueing would count deliveries
    // until the broker dead-letters an execution that is still queued.
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
    let outcome = loop {
        match run_execution(ctx, message.id, interrupt, &running.cancel).await {
            Err(e) if e.is_unavailable() => {
                let delay = backoff.next_delay();
                tracing::warn!(execution.id = %message.id, error = %e, retry_in_ms = delay.as_millis() as u64, "database unavailable; will retry");
                tokio::select! {
                    _ = interrupt.cancelled() => break Ok(RunOutcome::Interrupted),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            other => break other,
        }
    };
    drop(running);
    gauge.decrement(1.0);
    match outcome {
        Ok(RunOutcome::Finished(ExecutionStatus::Failed)) => dead_letter(&delivery, "failed").await,
        Ok(RunOutcome::Finished(_) | RunOutcome::RetryScheduled(_) | RunOutcome::Skipped(_)) => {
            ack(&delivery).await
        }
        Ok(RunOutcome::Unknown) => {
            tracing::error!(execution.id = %message.id, "message names no execution; dead-lettering");
            dead_letter(&delivery, "unknown_execution").await;
        }
        Ok(RunOutcome::Interrupted) => requeue(&delivery).await,
        Err(e) => {
            // Not an outage: running it again would fail the same way (and
            // might pay the model again), so the execution fails now, and
            // only then is its message dead-lettered.
            match fail_after_error(ctx, message.id, &e).await {
                Ok(true) => {
                    tracing::error!(execution.id = %message.id, error = %e, "execution failed: it could not be run");
                    dead_letter(&delivery, "failed").await;
                }
                // Not holding the lease (the error came before the claim,
                // e.g. a prompt missing from the registry) or Postgres went
                // away: keep the slot a moment instead of spinning, then
                // give it back; the execution is not ours to end.
                failed => {
                    tracing::error!(execution.id = %message.id, error = %e, failed = ?failed.err(), "execution could not run; requeueing");
                    tokio::select! {
                        _ = interrupt.cancelled() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    requeue(&delivery).await;
                }
            }
        }
    }
}

/// The message's organisation has its share of this process's slots: the
/// execution goes back, unclaimed, for `delay`, and the message is
/// acknowledged so the queue behind it moves on. If the deferral cannot be
/// written the message is requeued instead.
async fn defer_for_fairness(
    ctx: &WorkerContext,
    delivery: &Delivery,
    message: &ExecutionMessage,
    delay: Duration,
) {
    match ctx.writer.defer_queued(message.id, delay).await {
        Ok(_) => {
            metrics::counter!(m::EXECUTIONS_DEFERRED, "reason" => "tenant_concurrency")
                .increment(1);
            ack(delivery).await;
        }
        Err(e) => {
            tracing::warn!(execution.id = %message.id, error = %e, "could not defer; requeueing");
            tokio::time::sleep(Duration::from_millis(200)).await;
            requeue(delivery).await;
        }
    }
}

async fn ack(delivery: &Delivery) {
    if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
        // The channel is gone: the broker redelivers, and claiming absorbs it.
        tracing::warn!(error = %e, "ack failed");
    }
}

async fn requeue(delivery: &Delivery) {
    let _ = delivery
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await;
}

async fn dead_letter(delivery: &Delivery, reason: &'static str) {
    metrics::counter!(m::MESSAGES_DEAD_LETTERED, "reason" => reason).increment(1);
    let _ = delivery
        .acker
        .reject(BasicRejectOptions { requeue: false })
        .await;
}
