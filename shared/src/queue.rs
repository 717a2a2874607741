//! RabbitMQ: topology names, idempotent declaration, the execution message,
//! and a publisher that confirms every publish and reconnects by itself.
//! RabbitMQ is transport only: whatever it loses, the outbox in Postgres
//! publishes again, so a failed publish is an error to report, never a
//! reason to drop work.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    ExchangeKind,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, RwLock};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::{retry_until_cancelled, unless_cancelled, Backoff, Ended};
use crate::execution::ExecutionId;
use crate::trace::TraceParent;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    #[error("broker refused the message")]
    Nacked,
    #[error("broker did not confirm within {0:?}")]
    ConfirmTimeout(Duration),
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
}

pub type Result<T, E = QueueError> = std::result::Result<T, E>;

/// The routing key of execution messages on the executions exchange.
pub const EXECUTION_ROUTING_KEY: &str = "execution";
/// The AMQP header of an execution message that carries the submitting
/// request's W3C `traceparent`.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// Redeliveries after which the broker dead-letters a message that keeps
/// killing its consumer.
pub const DELIVERY_LIMIT: i64 = 50;

/// Exchange and queue names, all derived from one prefix.
#[derive(Clone, Debug)]
pub struct Topology {
    pub executions_exchange: String,
    pub executions_queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    /// Lifecycle events (topic exchange): `execution.<status>`.
    pub events_exchange: String,
}

impl Topology {
    pub fn new(prefix: &str) -> Self {
        Self {
            executions_exchange: format!("{prefix}.executions"),
            executions_queue: format!("{prefix}.executions"),
            dead_letter_exchange: format!("{prefix}.dlx"),
            dead_letter_queue: format!("{prefix}.executions.dead"),
            events_exchange: format!("{prefix}.events"),
        }
    }

    /// Declares everything; safe to call from every process at start.
    pub async fn declare(&self, channel: &Channel) -> Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                s(&self.executions_exchange),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                s(&self.dead_letter_exchange),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                s(&self.events_exchange),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        let queue = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let mut dead_args = FieldTable::default();
        dead_args.insert(s("x-queue-type"), AMQPValue::LongString("quorum".into()));
        channel
            .queue_declare(s(&self.dead_letter_queue), queue, dead_args)
            .await?;
        channel
            .queue_bind(
                s(&self.dead_letter_queue),
                s(&self.dead_letter_exchange),
                s(""),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut args = FieldTable::default();
        args.insert(s("x-queue-type"), AMQPValue::LongString("quorum".into()));
        args.insert(
            s("x-dead-letter-exchange"),
            AMQPValue::LongString(self.dead_letter_exchange.as_str().into()),
        );
        args.insert(
            s("x-delivery-limit"),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
        channel
            .queue_declare(s(&self.executions_queue), queue, args)
            .await?;
        channel
            .queue_bind(
                s(&self.executions_queue),
                s(&self.executions_exchange),
                s(EXECUTION_ROUTING_KEY),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }
}

pub fn s(v: &str) -> ShortString {
    v.into()
}

/// The body of a message on the executions queue. Postgres holds the rest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ExecutionMessage {
    pub id: ExecutionId,
    /// The execution's organisation, so a worker can keep each
    /// organisation to its share of slots before it claims anything.
    /// Absent in messages published before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// Opens a connection named after the process, for the broker's UI.
pub async fn connect(url: &str, name: &str) -> Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, props)
        .await
        .map_err(|e| QueueError::Unavailable(e.to_string()))
}

/// How a process listens to the events exchange: a connection, its
/// channel, and a consumer (no acks) of a new exclusive, auto-deleted
/// queue bound under each of `keys`. The queue goes with the connection.
pub async fn consume_events(
    url: &str,
    name: &str,
    topology: &Topology,
    keys: &[&str],
) -> Result<(Connection, Channel, Consumer)> {
    let conn = connect(url, name).await?;
    let channel = conn.create_channel().await?;
    topology.declare(&channel).await?;
    let opts = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let q = channel
        .queue_declare(s(""), opts, FieldTable::default())
        .await?;
    for key in keys {
        channel
            .queue_bind(
                q.name().clone(),
                s(&topology.events_exchange),
                s(key),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    let consume = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let consumer = channel
        .basic_consume(q.name().clone(), s(name), consume, FieldTable::default())
        .await?;
    Ok((conn, channel, consumer))
}

/// A confirmed publisher over one channel, replaced when the connection dies.
pub struct Publisher {
    url: String,
    name: String,
    topology: Topology,
    confirm_timeout: Duration,
    current: RwLock<Option<(Connection, Channel)>>,
    reconnect: tokio::sync::Notify,
    /// Bumped on every (re)connect.
    connected: watch::Sender<u64>,
}

impl Publisher {
    /// Connects (or keeps trying in the background) and returns at once:
    /// a process must start, and answer health checks, without its broker.
    /// The session runs on `tracker` until `cancel` fires, then closes its
    /// channel and connection; wait on the tracker for that.
    pub fn start(
        url: &str,
        name: &str,
        topology: Topology,
        cancel: CancellationToken,
        tracker: &TaskTracker,
    ) -> Arc<Self> {
        let publisher = Arc::new(Self {
            url: url.to_string(),
            name: name.to_string(),
            topology,
            confirm_timeout: Duration::from_secs(5),
            current: RwLock::new(None),
            reconnect: tokio::sync::Notify::new(),
            connected: watch::channel(0).0,
        });
        tracker.spawn(publisher.clone().maintain(cancel));
        publisher
    }

    /// True while a channel is open.
    pub async fn is_connected(&self) -> bool {
        match &*self.current.read().await {
            Some((conn, channel)) => conn.status().connected() && channel.status().connected(),
            None => false,
        }
    }

    /// Keeps a channel open until `cancel` fires, then closes it in
    /// order (channel, then connection).
    async fn maintain(self: Arc<Self>, cancel: CancellationToken) {
        let name = self.name.clone();
        retry_until_cancelled(&name, &cancel, Backoff::reconnect(), || {
            self.session(&cancel)
        })
        .await;
        if let Some((conn, channel)) = self.current.write().await.take() {
            let _ = channel.close(200, s("shutdown")).await;
            let _ = conn.close(200, s("shutdown")).await;
        }
    }

    /// One connection: opened, announced, then watched until it drops.
    async fn session(&self, cancel: &CancellationToken) -> Result<(), Ended<QueueError>> {
        let Some(opened) = unless_cancelled(cancel, self.open()).await else {
            return Ok(());
        };
        let pair = opened.map_err(Ended::Failed)?;
        *self.current.write().await = Some(pair);
        self.connected.send_modify(|generation| *generation += 1);
        tracing::info!(broker.connection = %self.name, "publisher connected");
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = self.reconnect.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            if !self.is_connected().await {
                return Err(Ended::Lost(QueueError::Unavailable(
                    "publisher connection lost".into(),
                )));
            }
        }
    }

    /// Changes each time the publisher (re)gains a channel: what failed
    /// for want of one can be published again at once.
    pub fn reconnected(&self) -> watch::Receiver<u64> {
        self.connected.subscribe()
    }

    async fn open(&self) -> Result<(Connection, Channel)> {
        let conn = connect(&self.url, &self.name).await?;
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        self.topology.declare(&channel).await?;
        Ok((conn, channel))
    }

    async fn channel(&self) -> Result<Channel> {
        match &*self.current.read().await {
            Some((conn, channel)) if conn.status().connected() && channel.status().connected() => {
                Ok(channel.clone())
            }
            _ => {
                self.reconnect.notify_one();
                Err(QueueError::Unavailable("no open channel".into()))
            }
        }
    }

    /// Publishes an execution message and waits for the broker's confirm.
    pub async fn publish_execution(
        &self,
        id: ExecutionId,
        tenant: &str,
        priority: i16,
    ) -> Result<()> {
        self.publish_execution_traced(id, tenant, priority, None)
            .await
    }

    /// Publishes an execution message carrying the W3C trace context of
    /// the request that submitted it (header [`TRACEPARENT_HEADER`]), so
    /// the worker's span continues that trace.
    pub async fn publish_execution_traced(
        &self,
        id: ExecutionId,
        tenant: &str,
        priority: i16,
        trace: Option<&TraceParent>,
    ) -> Result<()> {
        let message = ExecutionMessage {
            id,
            tenant: Some(tenant.to_string()),
        };
        let body = serde_json::to_vec(&message).unwrap_or_default();
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(s("application/json"))
            .with_message_id(s(&id.to_string()))
            .with_priority(priority.clamp(0, 9) as u8);
        if let Some(trace) = trace {
            let mut headers = FieldTable::default();
            headers.insert(
                s(TRACEPARENT_HEADER),
                AMQPValue::LongString(trace.to_string().into()),
            );
            props = props.with_headers(headers);
        }
        let result = self
            .publish_confirmed(
                &self.topology.executions_exchange,
                EXECUTION_ROUTING_KEY,
                &body,
                props,
            )
            .await;
        if result.is_err() {
            metrics::counter!(crate::metrics::QUEUE_PUBLISH_FAILURES).increment(1);
        }
        result
    }

    async fn publish_confirmed(
        &self,
        exchange: &str,
        key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<()> {
        let channel = self.channel().await?;
        let confirm = async {
            let pending = channel
                .basic_publish(
                    s(exchange),
                    s(key),
                    BasicPublishOptions::default(),
                    body,
                    props,
                )
                .await?;
            match pending.await? {
                Confirmation::Ack(_) => Ok(()),
                Confirmation::Nack(_) => Err(QueueError::Nacked),
                Confirmation::NotRequested => {
                    Err(QueueError::Unavailable("channel without confirms".into()))
                }
            }
        };
        match tokio::time::timeout(self.confirm_timeout, confirm).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.reconnect.notify_one();
                Err(e)
            }
            Err(_) => {
                self.reconnect.notify_one();
                Err(QueueError::ConfirmTimeout(self.confirm_timeout))
            }
        }
    }

    /// Publishes a lifecycle event. Best effort: events are hints for
    /// waiters, who also read Postgres, so no confirm is awaited.
    pub async fn publish_event(&self, routing_key: &str, body: &[u8]) -> Result<()> {
        let channel = self.channel().await?;
        let props = BasicProperties::default().with_content_type(s("application/json"));
        channel
            .basic_publish(
                s(&self.topology.events_exchange),
                s(routing_key),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await?;
        Ok(())
    }
}
