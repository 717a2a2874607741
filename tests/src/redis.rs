//! Redis for tests: the shared server's URL, deleting one test's keys, and
//! a private `redis-server` on a free port for tests that stop Redis (the
//! shared one is never stopped: other tests use it at the same time).

use std::process::Stdio;
use std::time::Duration;

use llmq_shared::redis::Redis;
use tokio::process::{Child, Command};

/// The shared Redis: `REDIS_URL`, else the local default.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Deletes every key under `prefix` (`SCAN MATCH` + `UNLINK`). Best effort:
/// a Redis that is not there has nothing of ours to delete.
pub async fn delete_keys(redis_url: &str, prefix: &str) {
    if prefix.is_empty() {
        return;
    }
    let Ok(client) = ::redis::Client::open(redis_url) else {
        return;
    };
    let Ok(Ok(mut conn)) = tokio::time::timeout(
        Duration::from_secs(2),
        client.get_multiplexed_async_connection(),
    )
    .await
    else {
        return;
    };
    let pattern = format!("{}*", glob_escape(prefix));
    let mut cursor: u64 = 0;
    loop {
        let scanned: ::redis::RedisResult<(u64, Vec<String>)> = ::redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await;
        let Ok((next, keys)) = scanned else { return };
        if !keys.is_empty() {
            let _: ::redis::RedisResult<i64> = ::redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut conn)
                .await;
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

/// Keys of `redis` under its prefix, for assertions; panics when Redis
/// does not answer (a count of nothing would prove nothing).
pub async fn count_keys(redis: &Redis) -> usize {
    let pattern = format!("{}*", glob_escape(redis.keys().prefix()));
    redis
        .run(|mut c| async move {
            let keys: Vec<String> = ::redis::cmd("KEYS")
                .arg(&pattern)
                .query_async(&mut c)
                .await?;
            Ok(keys.len())
        })
        .await
        .expect("counting keys in redis")
}

fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A `redis-server` of this test only, on a free port, without
/// persistence. Stop and start it again (same port) to simulate an
/// outage; dropping it kills the process.
pub struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts one and waits until it answers `PING`.
    pub async fn start() -> PrivateRedis {
        let port = free_port();
        let mut redis = PrivateRedis { port, child: None };
        redis.resume().await;
        redis
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (as a crash would) and waits until it is gone.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
        assert!(
            !ping(self.port).await,
            "the private redis-server on port {} still answers",
            self.port
        );
    }

    /// Starts the server again on the same port (empty: nothing persisted)
    /// and waits until it answers `PING`.
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "the private redis-server is running");
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--maxmemory-policy",
                "noeviction",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting redis-server (is it installed? `make setup`)");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !ping(self.port).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the private redis-server on port {} did not answer PING within 10 s",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn ping(port: u16) -> bool {
    let Ok(client) = ::redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
        return false;
    };
    let attempt = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        ::redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Ok(_))
    )
}

/// A port nothing listens on now (the OS picks it).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    listener
        .local_addr()
        .expect("the bound address of a listener")
        .port()
}
