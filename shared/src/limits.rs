//! Request rate limits, token budgets and spend caps, shared by every
//! replica through Redis.
//!
//! Admission is one Lua script (`ADMIT`), one round trip, atomic: it checks
//! every limit that applies to a submit — GCRA request limits per key, end
//! user, organisation and organisation × model; token windows (minute, UTC
//! day) per organisation and organisation × model; spend windows (UTC day,
//! UTC month) — and only when all pass does it take the request from each
//! GCRA, add the estimate to each window and record the reservation under
//! the execution's id. Nothing is taken when any limit refuses.
//!
//! Settlement (`SETTLE`) replaces the estimate by the actual usage in the
//! windows the reservation was made in, and deletes the reservation in the
//! same script: settling twice (an execution finished twice after a worker
//! crash) changes nothing the second time. A reservation that is never
//! settled expires by itself after `limits.reservation_ttl_secs`; its
//! estimate stays charged in its windows (never under-charged), which go
//! when their window ends.
//!
//! Times are the replicas' clocks (milliseconds since the epoch); replicas
//! are expected to run NTP-synchronized clocks. Key names are built from
//! [`crate::redis::Keys`]; the settle script touches the reservation's
//! windows by the names stored in it, so limits need a single Redis (or a
//! primary), not a cluster.

use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Utc};

use crate::config::{DownPolicy, LimitSettings, OrgLimits};
use crate::execution::ExecutionId;
use crate::redis::{Redis, RedisError, Script};

/// Which kind of limit refused or could not be asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitKind {
    Requests,
    Tokens,
    Spend,
}

impl LimitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Tokens => "tokens",
            Self::Spend => "spend",
        }
    }
}

/// Whom a submit is counted against.
#[derive(Clone, Debug)]
pub struct Subject<'a> {
    pub tenant: &'a str,
    pub key_id: &'a str,
    pub user: Option<&'a str>,
    pub model: &'a str,
}

/// What a submit reserves: its tokens (prompt + the completion it may
/// use) and their price in micro-USD.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Estimate {
    pub tokens: u64,
    pub spend_micros: u64,
}

/// One request rate limit that applies, for the `RateLimit` headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RatePolicy {
    /// `key`, `user`, `org` or `model`.
    pub name: &'static str,
    /// Requests in a full burst, and the seconds a full burst refills in.
    pub quota: u64,
    pub window_secs: u64,
}

/// Where a policy stands after this request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateState {
    pub policy: RatePolicy,
    pub remaining: u64,
    /// Seconds until the full quota is available again.
    pub reset_secs: u64,
}

/// The answer of the limiter.
#[derive(Clone, Debug, PartialEq)]
pub enum Admission {
    /// Admitted; `rates` for the headers (empty: no request limit applies).
    Admitted { rates: Vec<RateState> },
    /// Refused by a limit; nothing was taken.
    Refused {
        kind: LimitKind,
        /// Which limit (e.g. `org`, `tokens_per_day`).
        limit: String,
        retry_after_secs: u64,
        rates: Vec<RateState>,
    },
    /// Redis could not be asked and a limit that applies denies then.
    Unavailable { kind: LimitKind },
}

/// The limits of one submit, ready for the script.
#[derive(Debug, Default)]
struct Plan {
    rates: Vec<(String, RatePolicy, u64, u64)>,
    /// (key, kind, limit name, limit, amount, window end ms)
    windows: Vec<(String, LimitKind, &'static str, u64, u64, i64)>,
}

const ADMIT: &str = r#"
-- KEYS: the GCRA keys, then the window keys, then the reservation key.
-- ARGV: now_ms, n_rates, n_windows, reservation_ttl_ms, then per rate
--   (interval_ms, tolerance_ms), then per window (limit, amount, end_ms, tag).
-- Answers {verdict, which, retry_ms, then per rate (remaining, reset_ms)}:
-- verdict 0 admitted, 1 refused by rate `which`, 2 by window `which`.
local now = tonumber(ARGV[1])
local nr = tonumber(ARGV[2])
local nw = tonumber(ARGV[3])
local res_ttl = tonumber(ARGV[4])
local a = 5
local verdict, which, retry = 0, 0, 0
local tats, taken, kept = {}, {}, {}
for i = 1, nr do
  local t = tonumber(ARGV[a]); local tol = tonumber(ARGV[a + 1]); a = a + 2
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local new_tat = tat + t
  tats[i] = new_tat
  taken[i] = {math.floor((tol - (new_tat - now)) / t), new_tat - now}
  kept[i] = {math.max(math.floor((tol - (tat - now)) / t), 0), tat - now}
  if new_tat - now > tol and verdict == 0 then
    verdict, which, retry = 1, i, new_tat - now - tol
  end
end
local wa = a
if verdict == 0 then
  for j = 1, nw do
    local limit = tonumber(ARGV[a]); local amount = tonumber(ARGV[a + 1]); local wend = tonumber(ARGV[a + 2]); a = a + 4
    local used = tonumber(redis.call('GET', KEYS[nr + j]) or 0)
    if used + amount > limit then
      verdict, which, retry = 2, j, wend - now
      break
    end
  end
end
local out = {verdict, which, retry}
local states = taken
if verdict ~= 0 then states = kept end
for i = 1, nr do
  out[#out + 1] = states[i][1]; out[#out + 1] = states[i][2]
end
if verdict ~= 0 then return out end
for i = 1, nr do
  redis.call('SET', KEYS[i], tats[i], 'PX', math.max(tats[i] - now, 1))
end
a = wa
local res = KEYS[nr + nw + 1]
local fields = {}
for j = 1, nw do
  local amount = ARGV[a + 1]; local wend = tonumber(ARGV[a + 2]); local tag = ARGV[a + 3]; a = a + 4
  local key = KEYS[nr + j]
  -- A window's first charge sets when it goes: a minute after its end.
  if redis.call('INCRBY', key, amount) == tonumber(amount) then
    redis.call('PEXPIREAT', key, wend + 60000)
  end
  fields[#fields + 1] = tag .. '|' .. key
  fields[#fields + 1] = amount .. ':' .. wend
end
if nw > 0 then
  redis.call('HSET', res, unpack(fields))
  redis.call('PEXPIRE', res, res_ttl)
end
return out
"#;

const SETTLE: &str = r#"
-- KEYS[1]: the reservation. ARGV: actual tokens, actual spend (micro-USD),
-- now_ms. Its fields are `<t|s>|<window key>` -> `<amount>:<window end ms>`.
-- A window lives until a minute after its end; one that ended more than
-- 30 s ago is left alone (it is going, and INCRBY would revive it without
-- an expiry).
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then return 0 end
local now = tonumber(ARGV[3])
for i = 1, #fields, 2 do
  local tag = string.sub(fields[i], 1, 1)
  local key = string.sub(fields[i], 3)
  local sep = string.find(fields[i + 1], ':', 1, true)
  local reserved = tonumber(string.sub(fields[i + 1], 1, sep - 1))
  local wend = tonumber(string.sub(fields[i + 1], sep + 1))
  local actual = tonumber(ARGV[1])
  if tag == 's' then actual = tonumber(ARGV[2]) end
  if now < wend + 30000 and actual ~= reserved then
    redis.call('INCRBY', key, actual - reserved)
  end
end
redis.call('DEL', KEYS[1])
return 1
"#;

/// The limiter of one process: the loaded scripts and the settings.
pub struct Limiter {
    admit: Script,
    settle: Script,
    settings: LimitSettings,
    warned: std::sync::Mutex<Option<std::time::Instant>>,
}

/// A key part that cannot be confused with the separator.
fn enc(part: &str) -> String {
    part.replace('%', "%25").replace(':', "%3A")
}

fn rate_policy(name: &'static str, per_minute: u32, burst: u32) -> Option<(RatePolicy, u64, u64)> {
    if per_minute == 0 {
        return None;
    }
    let burst = if burst == 0 { per_minute } else { burst } as u64;
    // Microsecond-free integers: the interval in ms, at least 1.
    let interval = (60_000 / per_minute as u64).max(1);
    let tolerance = interval * burst;
    Some((
        RatePolicy {
            name,
            quota: burst,
            window_secs: (tolerance as f64 / 1000.0).ceil() as u64,
        },
        interval,
        tolerance,
    ))
}

fn day_end(now: DateTime<Utc>) -> i64 {
    let start = now.date_naive().and_hms_opt(0, 0, 0).unwrap_or_default();
    Utc.from_utc_datetime(&start).timestamp_millis() + 86_400_000
}

fn month_end(now: DateTime<Utc>) -> i64 {
    let (y, m) = if now.month() == 12 {
        (now.year() + 1, 1)
    } else {
        (now.year(), now.month() + 1)
    };
    Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0)
        .single()
        .map(|t| t.timestamp_millis())
        .unwrap_or_else(|| day_end(now))
}

impl Limiter {
    pub fn new(settings: LimitSettings) -> Self {
        Self {
            admit: Script::new(ADMIT),
            settle: Script::new(SETTLE),
            settings,
            warned: std::sync::Mutex::new(None),
        }
    }

    pub fn settings(&self) -> &LimitSettings {
        &self.settings
    }

    /// The effective limits of an organisation: its overrides (a JSON
    /// object of `OrgLimits` fields) over the configured defaults.
    pub fn effective(&self, overrides: &serde_json::Value) -> Result<OrgLimits, serde_json::Error> {
        effective_limits(&self.settings.defaults, overrides)
    }

    /// Whether any limit applies to `limits` at all (none: no Redis call).
    pub fn any(limits: &OrgLimits) -> bool {
        limits
            != &OrgLimits {
                key_burst: limits.key_burst,
                user_burst: limits.user_burst,
                org_burst: limits.org_burst,
                model_burst: limits.model_burst,
                ..OrgLimits::default()
            }
    }

    /// Whether admission under `limits` reserves tokens or spend (a token
    /// budget or a spend cap applies): only then has the execution's end
    /// anything to settle.
    pub fn reserves(limits: &OrgLimits) -> bool {
        limits.tokens_per_minute > 0
            || limits.tokens_per_day > 0
            || limits.model_tokens_per_minute > 0
            || limits.model_tokens_per_day > 0
            || limits.spend_usd_per_day > 0.0
            || limits.spend_usd_per_month > 0.0
    }

    fn plan(
        &self,
        keys: &crate::redis::Keys,
        s: &Subject<'_>,
        l: &OrgLimits,
        e: Estimate,
        now: DateTime<Utc>,
    ) -> Plan {
        let mut plan = Plan::default();
        let org = enc(s.tenant);
        let model = enc(s.model);
        let mut rate = |name, rpm, burst, key: String| {
            if let Some((p, interval, tol)) = rate_policy(name, rpm, burst) {
                plan.rates.push((key, p, interval, tol));
            }
        };
        rate(
            "key",
            l.key_requests_per_minute,
            l.key_burst,
            keys.key(&["rl", "k", &enc(s.key_id)]),
        );
        if let Some(user) = s.user {
            rate(
                "user",
                l.user_requests_per_minute,
                l.user_burst,
                keys.key(&["rl", "u", &org, &enc(user)]),
            );
        }
        rate(
            "org",
            l.org_requests_per_minute,
            l.org_burst,
            keys.key(&["rl", "o", &org]),
        );
        rate(
            "model",
            l.model_requests_per_minute,
            l.model_burst,
            keys.key(&["rl", "m", &org, &model]),
        );

        let now_ms = now.timestamp_millis();
        let minute = now_ms / 60_000;
        let minute_end = (minute + 1) * 60_000;
        let day = now_ms / 86_400_000;
        let month = format!("{:04}{:02}", now.year(), now.month());
        let minute_s = minute.to_string();
        let day_s = day.to_string();
        let mut window = |kind: LimitKind,
                          name: &'static str,
                          limit: u64,
                          amount: u64,
                          scope: &[&str],
                          window: &str,
                          end: i64| {
            if limit == 0 {
                return;
            }
            let mut parts = vec!["w", name];
            parts.extend_from_slice(scope);
            parts.push(window);
            plan.windows
                .push((keys.key(&parts), kind, name, limit, amount, end));
        };
        let t = LimitKind::Tokens;
        window(
            t,
            "tokens_per_minute",
            l.tokens_per_minute,
            e.tokens,
            &[&org],
            &minute_s,
            minute_end,
        );
        window(
            t,
            "tokens_per_day",
            l.tokens_per_day,
            e.tokens,
            &[&org],
            &day_s,
            day_end(now),
        );
        window(
            t,
            "model_tokens_per_minute",
            l.model_tokens_per_minute,
            e.tokens,
            &[&org, &model],
            &minute_s,
            minute_end,
        );
        window(
            t,
            "model_tokens_per_day",
            l.model_tokens_per_day,
            e.tokens,
            &[&org, &model],
            &day_s,
            day_end(now),
        );
        let micros = |usd: f64| (usd * 1e6).round().max(0.0) as u64;
        let sp = LimitKind::Spend;
        window(
            sp,
            "spend_usd_per_day",
            micros(l.spend_usd_per_day),
            e.spend_micros,
            &[&org],
            &day_s,
            day_end(now),
        );
        window(
            sp,
            "spend_usd_per_month",
            micros(l.spend_usd_per_month),
            e.spend_micros,
            &[&org],
            &month,
            month_end(now),
        );
        plan
    }

    /// Checks every limit of `limits` for one submit and, when all pass,
    /// takes it from each and reserves `estimate` under `id`: one round trip.
    pub async fn admit(
        &self,
        redis: &Redis,
        id: ExecutionId,
        subject: &Subject<'_>,
        limits: &OrgLimits,
        estimate: Estimate,
    ) -> Admission {
        let now = Utc::now();
        let plan = self.plan(redis.keys(), subject, limits, estimate, now);
        if plan.rates.is_empty() && plan.windows.is_empty() {
            return Admission::Admitted { rates: Vec::new() };
        }
        let now_ms = now.timestamp_millis();
        let mut invocation = self.admit.prepare_invoke();
        for (key, ..) in &plan.rates {
            invocation.key(key);
        }
        for (key, ..) in &plan.windows {
            invocation.key(key);
        }
        invocation.key(redis.keys().key(&["res", &id.to_string()]));
        invocation
            .arg(now_ms)
            .arg(plan.rates.len())
            .arg(plan.windows.len())
            .arg(self.settings.reservation_ttl_secs.max(1) * 1000);
        for (_, _, interval, tol) in &plan.rates {
            invocation.arg(*interval).arg(*tol);
        }
        for (_, kind, _, limit, amount, end) in &plan.windows {
            let tag = if *kind == LimitKind::Spend { "s" } else { "t" };
            invocation.arg(*limit).arg(*amount).arg(*end).arg(tag);
        }
        let answer: Result<Vec<i64>, RedisError> = redis
            .run(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await;
        match answer {
            Ok(out) => interpret(&plan, &out),
            Err(e) => self.when_down(&plan, &e),
        }
    }

    fn when_down(&self, plan: &Plan, e: &RedisError) -> Admission {
        let kinds = plan
            .rates
            .iter()
            .map(|_| LimitKind::Requests)
            .chain(plan.windows.iter().map(|w| w.1));
        let mut denied = None;
        for kind in kinds {
            crate::metrics::limits_unchecked(kind.as_str());
            if self.policy(kind) == DownPolicy::Deny && denied.is_none() {
                denied = Some(kind);
            }
        }
        self.warn_down(e);
        match denied {
            Some(kind) => Admission::Unavailable { kind },
            None => Admission::Admitted { rates: Vec::new() },
        }
    }

    fn policy(&self, kind: LimitKind) -> DownPolicy {
        match kind {
            LimitKind::Requests => self.settings.redis_down_requests,
            LimitKind::Tokens => self.settings.redis_down_tokens,
            LimitKind::Spend => self.settings.redis_down_spend,
        }
    }

    /// One warning per 10 s at most: an outage must not flood the log.
    fn warn_down(&self, e: &RedisError) {
        let mut last = self
            .warned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            *last = Some(std::time::Instant::now());
            tracing::warn!(error = %e, "limits not checked: redis unavailable; applying the down-policies");
        }
    }

    /// Replaces `id`'s reservation by the actual usage; a no-op when there
    /// is none (settled already, expired, or never made). True when a
    /// reservation was settled.
    pub async fn settle(
        &self,
        redis: &Redis,
        id: ExecutionId,
        tokens: u64,
        spend_micros: u64,
    ) -> Result<bool, RedisError> {
        let mut invocation = self.settle.prepare_invoke();
        invocation
            .key(redis.keys().key(&["res", &id.to_string()]))
            .arg(tokens)
            .arg(spend_micros)
            .arg(Utc::now().timestamp_millis());
        let settled: i64 = redis
            .run(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await?;
        Ok(settled == 1)
    }
}

/// Overrides over defaults, field by field.
pub fn effective_limits(
    defaults: &OrgLimits,
    overrides: &serde_json::Value,
) -> Result<OrgLimits, serde_json::Error> {
    let mut merged = serde_json::to_value(defaults)?;
    if let (Some(m), Some(o)) = (merged.as_object_mut(), overrides.as_object()) {
        for (k, v) in o {
            m.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(merged)
}

fn interpret(plan: &Plan, out: &[i64]) -> Admission {
    let rates = plan
        .rates
        .iter()
        .enumerate()
        .map(|(i, (_, policy, ..))| RateState {
            policy: policy.clone(),
            remaining: out.get(3 + 2 * i).copied().unwrap_or(0).max(0) as u64,
            reset_secs: ms_to_secs(out.get(4 + 2 * i).copied().unwrap_or(0)),
        })
        .collect();
    let which = out.get(1).copied().unwrap_or(0).max(1) as usize - 1;
    let retry_after_secs = ms_to_secs(out.get(2).copied().unwrap_or(0)).max(1);
    match out.first().copied() {
        Some(1) => Admission::Refused {
            kind: LimitKind::Requests,
            limit: plan
                .rates
                .get(which)
                .map(|r| r.1.name)
                .unwrap_or("requests")
                .to_string(),
            retry_after_secs,
            rates,
        },
        Some(2) => {
            let (kind, name) = plan
                .windows
                .get(which)
                .map(|w| (w.1, w.2))
                .unwrap_or((LimitKind::Tokens, "tokens"));
            Admission::Refused {
                kind,
                limit: name.to_string(),
                retry_after_secs,
                rates,
            }
        }
        _ => Admission::Admitted { rates },
    }
}

fn ms_to_secs(ms: i64) -> u64 {
    (ms.max(0) as u64).div_ceil(1000)
}

/// Micro-USD of `prompt` and `completion` tokens at the model's prices
/// (USD per million tokens): tokens × price, rounded up.
pub fn spend_micros(prompt: u64, completion: u64, prompt_price: f64, completion_price: f64) -> u64 {
    (prompt as f64 * prompt_price + completion as f64 * completion_price)
        .ceil()
        .max(0.0) as u64
}

/// `RateLimit-Policy` and `RateLimit` header values (IETF httpapi
/// ratelimit-headers draft): every policy, and the one closest to refusing.
pub fn headers(rates: &[RateState]) -> Option<(String, String)> {
    let tightest = rates
        .iter()
        .min_by_key(|r| (r.remaining, std::cmp::Reverse(r.reset_secs)))?;
    let policy = rates
        .iter()
        .map(|r| {
            format!(
                "\"{}\";q={};w={}",
                r.policy.name, r.policy.quota, r.policy.window_secs
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let state = format!(
        "\"{}\";r={};t={}",
        tightest.policy.name, tightest.remaining, tightest.reset_secs
    );
    Some((policy, state))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn overrides_replace_defaults_field_by_field() {
        let defaults = OrgLimits {
            org_requests_per_minute: 10,
            tokens_per_day: 1000,
            ..Default::default()
        };
        let l = effective_limits(&defaults, &serde_json::json!({"tokens_per_day": 5})).unwrap();
        assert_eq!(l.org_requests_per_minute, 10);
        assert_eq!(l.tokens_per_day, 5);
        assert!(effective_limits(&defaults, &serde_json::json!({"tokens_per_dya": 5})).is_err());
    }

    #[test]
    fn no_limit_means_no_redis_call() {
        assert!(!Limiter::any(&OrgLimits::default()));
        assert!(!Limiter::any(&OrgLimits {
            key_burst: 3,
            ..Default::default()
        }));
        assert!(Limiter::any(&OrgLimits {
            spend_usd_per_day: 1.0,
            ..Default::default()
        }));
    }

    #[test]
    fn a_burst_of_zero_is_a_minutes_worth() {
        let (p, interval, tol) = rate_policy("org", 120, 0).unwrap();
        assert_eq!(
            (p.quota, p.window_secs, interval, tol),
            (120, 60, 500, 60_000)
        );
        assert!(rate_policy("org", 0, 5).is_none());
    }

    #[test]
    fn headers_name_every_policy_and_the_tightest_state() {
        let state = |name, remaining, reset_secs| RateState {
            policy: RatePolicy {
                name,
                quota: 10,
                window_secs: 60,
            },
            remaining,
            reset_secs,
        };
        let (policy, now) = headers(&[state("key", 7, 10), state("org", 2, 40)]).unwrap();
        assert_eq!(policy, "\"key\";q=10;w=60, \"org\";q=10;w=60");
        assert_eq!(now, "\"org\";r=2;t=40");
        assert!(headers(&[]).is_none());
    }

    #[test]
    fn spend_is_tokens_times_price_in_micro_usd() {
        // 1,000 tokens at $0.15 / Mtok = $0.00015 = 150 micro-USD.
        assert_eq!(spend_micros(1000, 0, 0.15, 0.6), 150);
        assert_eq!(spend_micros(1000, 1000, 0.15, 0.6), 750);
    }

    #[test]
    fn windows_end_at_the_next_utc_day_and_month() {
        let t = Utc.with_ymd_and_hms(2026, 12, 31, 13, 0, 0).unwrap();
        assert_eq!(
            day_end(t),
            Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0)
                .unwrap()
                .timestamp_millis()
        );
        assert_eq!(month_end(t), day_end(t));
    }
}
