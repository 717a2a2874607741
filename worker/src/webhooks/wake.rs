//! Wake-ups for the delivery role: an exclusive queue bound to the
//! terminal-events messages committed outcome batches publish, and to
//! `webhooks.due` hints. Hints only: a lost one delays a delivery until
//! the next poll, never loses it.

use std::sync::Arc;

use futures::StreamExt;
use llmq_shared::backoff::{retry_until_cancelled, unless_cancelled, Backoff, Ended};
use llmq_shared::events::TERMINAL_EVENTS_KEY;
use llmq_shared::queue::{self, s, QueueError, Topology};
use llmq_shared::webhook::WEBHOOKS_DUE_KEY;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub async fn run_waker(
    url: String,
    name: String,
    topology: Topology,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    retry_until_cancelled(&name, &stop, Backoff::reconnect(), || {
        session(&url, &name, &topology, &wake, &stop)
    })
    .await;
}

async fn session(
    url: &str,
    name: &str,
    topology: &Topology,
    wake: &Notify,
    stop: &CancellationToken,
) -> Result<(), Ended<QueueError>> {
    let Some(opened) = unless_cancelled(stop, open(url, name, topology)).await else {
        return Ok(());
    };
    let (conn, channel, mut consumer) = opened.map_err(Ended::Failed)?;
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                let _ = channel.close(200, s("shutdown")).await;
                let _ = conn.close(200, s("shutdown")).await;
                return Ok(());
            }
            next = consumer.next() => match next {
                Some(Ok(_)) => wake.notify_one(),
                Some(Err(e)) => return Err(Ended::Lost(e.into())),
                None => return Err(Ended::Lost(QueueError::Unavailable("wake-ups ended".into()))),
            }
        }
    }
}

async fn open(
    url: &str,
    name: &str,
    topology: &Topology,
) -> queue::Result<(lapin::Connection, lapin::Channel, lapin::Consumer)> {
    queue::consume_events(
        url,
        name,
        topology,
        &[TERMINAL_EVENTS_KEY, WEBHOOKS_DUE_KEY],
    )
    .await
}
