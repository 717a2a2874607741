//! RabbitMQ helpers for tests: publishing raw messages (duplicates, poison
//! messages), reading queue depths and removing a test's topology.
//! Every test has its own queue prefix, so nothing here touches another
//! test's queues.

use anyhow::Context as _;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use llmq_shared::queue::{s, Topology};

/// The broker tests use. Override with `TEST_AMQP_URL`.
pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub async fn connect(url: &str) -> anyhow::Result<Connection> {
    Connection::connect(
        url,
        ConnectionProperties::default().with_connection_name("llmq-tests".into()),
    )
    .await
    .context("connecting to RabbitMQ")
}

/// Publishes `body` persistently and waits for the broker's confirm.
pub async fn publish_confirmed(
    url: &str,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
) -> anyhow::Result<()> {
    let conn = connect(url).await?;
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(s("application/json"));
    let confirmation = channel
        .basic_publish(
            s(exchange),
            s(routing_key),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await?
        .await?;
    let _ = conn.close(200, s("done")).await;
    match confirmation {
        Confirmation::Ack(_) => Ok(()),
        other => anyhow::bail!("publish to {exchange} not confirmed: {other:?}"),
    }
}

/// Messages ready in `queue` (not counting delivered, unacknowledged ones).
pub async fn ready_messages(url: &str, queue: &str) -> anyhow::Result<u32> {
    let conn = connect(url).await?;
    let channel = conn.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let result = channel
        .queue_declare(s(queue), passive, FieldTable::default())
        .await;
    let _ = conn.close(200, s("done")).await;
    Ok(result
        .with_context(|| format!("queue {queue} does not exist"))?
        .message_count())
}

/// Deletes the queues and exchanges of `prefix`. Best effort: each step
/// uses its own channel, since a failed operation closes its channel.
pub async fn delete_topology(url: &str, prefix: &str) {
    let topology = Topology::new(prefix);
    let Ok(conn) = connect(url).await else { return };
    for queue in [&topology.executions_queue, &topology.dead_letter_queue] {
        if let Ok(channel) = conn.create_channel().await {
            let _ = channel
                .queue_delete(s(queue), QueueDeleteOptions::default())
                .await;
        }
    }
    for exchange in [
        &topology.executions_exchange,
        &topology.dead_letter_exchange,
        &topology.events_exchange,
    ] {
        if let Ok(channel) = conn.create_channel().await {
            let _ = channel
                .exchange_delete(s(exchange), ExchangeDeleteOptions::default())
                .await;
        }
    }
    let _ = conn.close(200, s("done")).await;
}
