//! Provider limits shared by every worker process: calls in flight at
//! once (`max_concurrency`), requests and tokens per window (`rpm`,
//! `tpm`), and the pause a provider's 429 with `Retry-After` asks for.
//! The state is in Redis, changed only by the two Lua scripts below, so a
//! check and its charge are one atomic step for all workers together.
//!
//! - Concurrency slots are leases: a sorted set of lease ids scored by
//!   their expiry (the call's timeout plus a margin). A worker killed
//!   mid-call cannot leak its slot for longer than that.
//! - Requests and tokens are counted in fixed windows aligned to Redis's
//!   clock (every worker sees the same windows). A call is charged its
//!   estimate up front (the rendered prompt's tokens by the model's
//!   tokenizer plus its `max_tokens`), and settled with the real usage
//!   when it ends: the difference is given back, an excess is charged. A
//!   call admitted in the last moments of a window (a tenth of it, at
//!   most a second) is charged to the next window too, since it may
//!   reach the provider there.
//! - A 429 with `Retry-After` sets a pause key that every worker's
//!   acquire sees.
//!
//! Round trips: a model with no limit configured makes none. With limits,
//! a call makes two (acquire, release); the 429 pause rides on the release.
//! Redis down: the call goes ahead (a warning and a metric), since the
//! provider's own limit still answers 429 and that is retried.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use llmq_shared::config::ModelSettings;
use llmq_shared::metrics as m;
use llmq_shared::redis::{Redis, Script};

/// The default window: a minute.
pub const DEFAULT_WINDOW_MS: u64 = 60_000;

/// ARGV: key prefix, lease id, lease ms, max concurrency, rpm, tpm (0 =
/// none), tokens, window ms. Answers `{1, window, windows, charged}` or
/// `{0, limit, retry_ms}`.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local p, lease, lease_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
local max_conc, rpm, tpm = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local tokens, window = tonumber(ARGV[7]), tonumber(ARGV[8])
local paused = redis.call('PTTL', p .. ':pause')
if paused > 0 then return {0, 'paused', paused} end
local w = math.floor(now / window)
local guard = math.min(1000, math.floor(window / 10))
local wins = {w}
if (w + 1) * window - now <= guard then wins = {w, w + 1} end
if tpm > 0 and tokens > tpm then tokens = tpm end
for _, i in ipairs(wins) do
  if rpm > 0 and tonumber(redis.call('GET', p .. ':rpm:' .. i) or '0') + 1 > rpm then
    return {0, 'rpm', (i + 1) * window - now}
  end
  if tpm > 0 and tonumber(redis.call('GET', p .. ':tpm:' .. i) or '0') + tokens > tpm then
    return {0, 'tpm', (i + 1) * window - now}
  end
end
if max_conc > 0 then
  local c = p .. ':conc'
  redis.call('ZREMRANGEBYSCORE', c, '-inf', now)
  if redis.call('ZCARD', c) >= max_conc then return {0, 'concurrency', 0} end
  redis.call('ZADD', c, now + lease_ms, lease)
  redis.call('PEXPIRE', c, lease_ms * 2)
end
for _, i in ipairs(wins) do
  if rpm > 0 then
    redis.call('INCR', p .. ':rpm:' .. i)
    redis.call('PEXPIRE', p .. ':rpm:' .. i, window * 3)
  end
  if tpm > 0 then
    redis.call('INCRBY', p .. ':tpm:' .. i, tokens)
    redis.call('PEXPIRE', p .. ':tpm:' .. i, window * 3)
  end
end
return {1, w, #wins, tokens}
"#,
    )
});

/// ARGV: key prefix, lease id, first window, windows, token correction
/// (actual − charged; 0 for none), pause ms (0 for none).
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local p, lease = ARGV[1], ARGV[2]
local w, n, delta, pause = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
redis.call('ZREM', p .. ':conc', lease)
if delta ~= 0 then
  for i = w, w + n - 1 do
    local k = p .. ':tpm:' .. i
    if redis.call('EXISTS', k) == 1 then redis.call('INCRBY', k, delta) end
  end
end
if pause > 0 and redis.call('PTTL', p .. ':pause') < pause then
  redis.call('SET', p .. ':pause', '1', 'PX', pause)
end
return 1
"#,
    )
});

/// The limits of one model as configured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelLimits {
    pub max_concurrency: u32,
    pub rpm: u64,
    pub tpm: u64,
    pub window_ms: u64,
    /// Shared by models with the same `limit_key`.
    pub key: String,
}

impl ModelLimits {
    /// None when the model has no limit (the common, free path).
    pub fn of(model: &str, settings: &ModelSettings) -> Option<Self> {
        if !settings.has_limits() {
            return None;
        }
        let key = settings
            .limit_key
            .clone()
            .or_else(|| settings.upstream.clone())
            .unwrap_or_else(|| model.to_string());
        Some(Self {
            max_concurrency: settings.max_concurrency.unwrap_or(0),
            rpm: settings.rpm.unwrap_or(0),
            tpm: settings.tpm.unwrap_or(0),
            window_ms: settings
                .limit_window_ms
                .unwrap_or(DEFAULT_WINDOW_MS)
                .max(100),
            key,
        })
    }
}

/// Capacity held for one call; give it back with [`ProviderLimits::release`].
#[derive(Debug)]
pub struct Permit {
    prefix: String,
    lease: String,
    window: i64,
    windows: i64,
    charged: i64,
    counts_tokens: bool,
}

/// What acquiring answered.
#[derive(Debug)]
pub enum Admission {
    /// Call now (`None`: no limit applies, or Redis was out of reach).
    Go(Option<Permit>),
    /// No capacity: defer the execution for `delay`; `limit` says which.
    Wait { limit: String, delay: Duration },
}

/// How a call ended, for settling its charge.
#[derive(Debug, Clone, Copy)]
pub enum Settle {
    /// Answered with this many tokens.
    Used(i64),
    /// The provider refused it without counting it (a 429, a refused
    /// connection); with the pause it asked for.
    NotCounted { pause: Option<Duration> },
    /// Unknown (timeout, broken answer, cancelled): the estimate stands.
    Unknown,
}

pub struct ProviderLimits {
    redis: Arc<Redis>,
}

impl ProviderLimits {
    pub fn new(redis: Arc<Redis>) -> Self {
        Self { redis }
    }

    fn prefix(&self, limits: &ModelLimits) -> String {
        self.redis.keys().key(&["provider", &limits.key])
    }

    /// Takes capacity for one call of `estimate` tokens, held for at most
    /// `lease` (the call's timeout and a margin).
    pub async fn acquire(&self, limits: &ModelLimits, estimate: u32, lease: Duration) -> Admission {
        let prefix = self.prefix(limits);
        let id = uuid::Uuid::now_v7().simple().to_string();
        let mut invocation = ACQUIRE.prepare_invoke();
        invocation
            .arg(&prefix)
            .arg(&id)
            .arg(lease.as_millis() as u64)
            .arg(limits.max_concurrency)
            .arg(limits.rpm)
            .arg(limits.tpm)
            .arg(estimate)
            .arg(limits.window_ms);
        let answer = self
            .redis
            .run(|mut c| async move { invocation.invoke_async::<Vec<redis::Value>>(&mut c).await })
            .await;
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                metrics::counter!(m::PROVIDER_LIMIT_WAITS, "model" => limits.key.clone(), "limit" => "redis_down_allowed").increment(1);
                tracing::warn!(error = %e, model = %limits.key, "provider limits unavailable (Redis); calling without them");
                return Admission::Go(None);
            }
        };
        let int = |i: usize| match answer.get(i) {
            Some(redis::Value::Int(n)) => *n,
            _ => 0,
        };
        if int(0) == 1 {
            return Admission::Go(Some(Permit {
                prefix,
                lease: id,
                window: int(1),
                windows: int(2),
                charged: int(3),
                counts_tokens: limits.tpm > 0,
            }));
        }
        let limit = match answer.get(1) {
            Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(redis::Value::SimpleString(s)) => s.clone(),
            _ => "unknown".into(),
        };
        // A slot frees when some call ends: look again soon, spread out.
        let floor = Duration::from_millis(int(2).max(0) as u64);
        let delay = floor.max(Duration::from_millis(100))
            + Duration::from_millis(rand::random_range(0..250));
        metrics::counter!(m::PROVIDER_LIMIT_WAITS, "model" => limits.key.clone(), "limit" => limit.clone()).increment(1);
        Admission::Wait { limit, delay }
    }

    /// Gives the slot back and settles the token charge; a 429's pause is
    /// set for every worker.
    pub async fn release(&self, permit: Permit, settle: Settle) {
        let (delta, pause) = match settle {
            Settle::Used(n) if permit.counts_tokens => (n - permit.charged, 0),
            Settle::Used(_) | Settle::Unknown => (0, 0),
            Settle::NotCounted { pause } => (
                if permit.counts_tokens {
                    -permit.charged
                } else {
                    0
                },
                pause.map_or(0, |p| p.as_millis() as u64),
            ),
        };
        let mut invocation = RELEASE.prepare_invoke();
        invocation
            .arg(&permit.prefix)
            .arg(&permit.lease)
            .arg(permit.window)
            .arg(permit.windows)
            .arg(delta)
            .arg(pause);
        let done = self
            .redis
            .run(|mut c| async move { invocation.invoke_async::<i64>(&mut c).await })
            .await;
        if let Err(e) = done {
            // The lease expires by itself; the window's charge stands.
            tracing::warn!(error = %e, "provider limit release failed (Redis); the lease expires by itself");
        }
    }

    /// Sets the pause of a model without a permit (a 429 on a call that
    /// held none, e.g. admitted while Redis was down): one round trip.
    pub async fn pause(&self, limits: &ModelLimits, pause: Duration) {
        let permit = Permit {
            prefix: self.prefix(limits),
            lease: String::new(),
            window: 0,
            windows: 0,
            charged: 0,
            counts_tokens: false,
        };
        self.release(permit, Settle::NotCounted { pause: Some(pause) })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_without_limits_has_none_and_the_key_defaults_to_the_upstream() {
        assert_eq!(ModelLimits::of("m", &ModelSettings::default()), None);
        let settings = ModelSettings {
            upstream: Some("gpt-4o".into()),
            tpm: Some(1000),
            ..Default::default()
        };
        let limits = ModelLimits::of("m", &settings).unwrap();
        assert_eq!(limits.key, "gpt-4o");
        assert_eq!(
            (limits.tpm, limits.rpm, limits.max_concurrency),
            (1000, 0, 0)
        );
        assert_eq!(limits.window_ms, DEFAULT_WINDOW_MS);
    }
}
