//! Redis: the connection handle, namespaced keys and the error type.
//!
//! Redis holds short-lived state that every replica must agree on (rate
//! limits, reservations, shared provider limits, the response cache); it is
//! never the state of record, so every failure here is `Unavailable`: the
//! caller applies its limit's down-policy (allow or deny), never a 500.
//!
//! Connections: `deadpool-redis` creates them (with connect and response
//! timeouts) and the process then shares one multiplexed connection, which
//! pipelines every concurrent command over one socket. A pool checkout
//! would cost an `UNWATCH`+`PING` round trip (deadpool-redis's recycle
//! check) on every request, doubling the round trips of the submit path;
//! sharing the connection costs none. A connection that fails is dropped
//! and the next command takes a fresh one from the pool.
//!
//! Nothing connects at start: [`create_pool`] only checks the URL, so an
//! API or worker started while Redis is down starts, and connects when
//! Redis answers.

use std::sync::Mutex;
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::AsyncConnectionConfig;
use deadpool_redis::{Manager, Pool, Runtime};

use crate::Settings;

pub use ::redis::{Script, Value};

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// Redis did not answer (down, refused, timed out, dropped the
    /// connection) or answered an error: retry later, or apply the
    /// down-policy of the limit that asked.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// `redis_url` cannot be used.
    #[error("bad redis configuration: {0}")]
    Config(String),
}

impl RedisError {
    /// Every Redis failure is worth retrying: Redis holds no state of record.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl From<::redis::RedisError> for RedisError {
    fn from(e: ::redis::RedisError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

impl From<deadpool_redis::PoolError> for RedisError {
    fn from(e: deadpool_redis::PoolError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

pub type Result<T, E = RedisError> = std::result::Result<T, E>;

/// Builds key names under one namespace (`redis_prefix`), so that two
/// deployments (or two tests) sharing a Redis never see each other's keys.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    /// `<prefix><part>:<part>:...`, e.g. `llmq:rl:key:abc`.
    pub fn key(&self, parts: &[&str]) -> String {
        let mut key = self.prefix.clone();
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                key.push(':');
            }
            key.push_str(part);
        }
        key
    }

    /// The namespace itself, e.g. for a `SCAN MATCH <prefix>*`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// One process's way to Redis: the pool that makes connections, the shared
/// multiplexed connection, and the key namespace.
pub struct Redis {
    pool: Pool,
    shared: Mutex<Option<MultiplexedConnection>>,
    keys: Keys,
    timeout: Duration,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.keys.prefix)
            .finish_non_exhaustive()
    }
}

/// The handle for `settings`; it does not connect (see the module docs).
pub fn create_pool(settings: &Settings) -> Result<Redis> {
    let timeout = Duration::from_millis(settings.redis_timeout_ms.max(1));
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let manager = Manager::new_with_config(settings.redis_url.as_str(), config)
        .map_err(|e| RedisError::Config(format!("redis_url: {e}")))?;
    let pool = Pool::builder(manager)
        .max_size(settings.redis_pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .build()
        .map_err(|e| RedisError::Config(e.to_string()))?;
    Ok(Redis {
        pool,
        shared: Mutex::new(None),
        keys: Keys::new(&settings.redis_prefix),
        timeout,
    })
}

impl Redis {
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The bound of one command: connect and response timeouts.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A connection to run commands on: a clone of the shared multiplexed
    /// connection (no round trip), or a new one when there is none yet.
    pub async fn connection(&self) -> Result<MultiplexedConnection> {
        if let Some(conn) = self.lock().as_ref() {
            return Ok(conn.clone());
        }
        let conn = deadpool_redis::Connection::take(self.pool.get().await?);
        *self.lock() = Some(conn.clone());
        Ok(conn)
    }

    /// Runs `f` on a connection; a failure drops the shared connection so
    /// the next call reconnects (a restarted Redis is found again).
    pub async fn run<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = ::redis::RedisResult<T>>,
    {
        let conn = self.connection().await?;
        match f(conn).await {
            Ok(v) => Ok(v),
            Err(e) => {
                if e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_unrecoverable_error()
                {
                    self.lock().take();
                }
                Err(e.into())
            }
        }
    }

    /// `PING`: whether Redis answers now.
    pub async fn ping(&self) -> Result<()> {
        self.run(|mut c| async move { ::redis::cmd("PING").query_async::<String>(&mut c).await })
            .await
            .map(|_| ())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<MultiplexedConnection>> {
        // A panic while holding this lock leaves a valid Option behind.
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_built_under_the_prefix() {
        let keys = Keys::new("llmq:");
        assert_eq!(keys.key(&["rl", "key", "abc"]), "llmq:rl:key:abc");
        assert_eq!(keys.key(&[]), "llmq:");
        assert_eq!(keys.prefix(), "llmq:");
    }

    #[test]
    fn a_bad_url_is_a_configuration_error_and_nothing_connects() {
        let mut s = Settings {
            redis_url: "not a url".into(),
            ..Default::default()
        };
        assert!(matches!(create_pool(&s), Err(RedisError::Config(_))));
        // A valid URL of a server that is not there still builds.
        s.redis_url = "redis://127.0.0.1:1".into();
        assert!(create_pool(&s).is_ok());
    }

    #[tokio::test]
    async fn a_redis_that_is_not_there_is_unavailable_quickly() {
        let s = Settings {
            redis_url: "redis://127.0.0.1:1".into(),
            redis_timeout_ms: 200,
            ..Default::default()
        };
        let redis = create_pool(&s).unwrap();
        let started = std::time::Instant::now();
        let e = redis.ping().await.unwrap_err();
        assert!(e.is_retryable(), "{e}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
