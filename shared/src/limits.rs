//! Request rate limits, token budgets and spend caps, shared by every
//! replica through Redis.
//!
//! Admission is one Lua script (`ADMIT`), atomic: it checks every limit
//! that applies to a submit — GCRA request limits per key, end user,
//! organisation and organisation × model; token windows (minute, UTC day)
//! per organisation and organisation × model; spend windows (UTC day, UTC
//! month) — and only when all pass does it take the request from each
//! GCRA, add the estimate to each window and record the reservation under
//! the execution's id. Nothing is taken when any limit refuses.
//!
//! Concurrent submits share one script call: the process's admissions go
//! through a [`Batcher`] (the same adaptive group commit as the database
//! writes: a lone submit goes out at once, those arriving while a call runs
//! form the next one; no timer). The script admits the batch's items one
//! after the other, each all-or-nothing and answered on its own; a later
//! item sees what the earlier ones took, so a limit admits exactly as many
//! as it would one call each. Within a call each key is read once and
//! written once (the batch's takes summed): a batch of submits under the
//! same limits costs Redis one reservation per submit plus one read and
//! one write per limit, instead of ~22 commands per submit. Every batch is
//! one script, so admission stays atomic across replicas.
//!
//! Settlement (`SETTLE`) replaces the estimate by the actual usage in the
//! windows the reservation was made in, and deletes the reservation in the
//! same script: settling twice (an execution finished twice after a worker
//! crash) changes nothing the second time, in the same batch or not.
//! Settlements are batched the same way (the worker's finishes come from
//! its group-committed outcome batches, so they arrive together), the
//! corrections summed per window. A reservation that is never
//! settled expires by itself after `limits.reservation_ttl_secs`; its
//! estimate stays charged in its windows (never under-charged), which go
//! when their window ends.
//!
//! Times are the replicas' clocks (milliseconds since the epoch); replicas
//! are expected to run NTP-synchronized clocks. Key names are built from
//! [`crate::redis::Keys`]; the settle script touches the reservation's
//! windows by the names stored in it, so limits need a single Redis (or a
//! primary), not a cluster.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Utc};

use crate::batch::Batcher;
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
-- A batch of admissions, each atomic and answered on its own, in order:
-- a later item sees what the earlier ones took.
-- KEYS: per item, its GCRA keys, its window keys, its reservation key.
-- ARGV: reservation_ttl_ms, n_items, then per item now_ms, n_rates,
--   n_windows, per rate (interval_ms, tolerance_ms), per window (limit,
--   amount, end_ms, tag).
-- Answers per item {verdict, which, retry_ms, then per rate (remaining,
-- reset_ms)}: verdict 0 admitted, 1 refused by rate `which`, 2 by window
-- `which`.
-- Each key is read once per batch and written once at its end (the
-- batch's takes summed), so a batch of n submits under the same limits
-- costs n reservations plus one read and one write per limit.
local res_ttl = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local val, tat_end, added, wend_of = {}, {}, {}, {}
local rate_keys, window_keys = {}, {}
local function read(key)
  local v = val[key]
  if v == nil then
    v = tonumber(redis.call('GET', key) or 0)
    val[key] = v
  end
  return v
end
local out = {}
local a, k = 3, 0
for _ = 1, n do
  local now = tonumber(ARGV[a]); local nr = tonumber(ARGV[a + 1]); local nw = tonumber(ARGV[a + 2])
  a = a + 3
  local verdict, which, retry = 0, 0, 0
  local tats, taken, kept = {}, {}, {}
  for i = 1, nr do
    local t = tonumber(ARGV[a]); local tol = tonumber(ARGV[a + 1]); a = a + 2
    local tat = read(KEYS[k + i])
    if tat < now then tat = now end
    local new_tat = tat + t
    tats[i] = new_tat
    taken[i] = {math.floor((tol - (new_tat - now)) / t), new_tat - now}
    kept[i] = {math.max(math.floor((tol - (tat - now)) / t), 0), tat - now}
    if new_tat - now > tol and verdict == 0 then
      verdict, which, retry = 1, i, new_tat - now - tol
    end
  end
  -- The windows' arguments start at `a`: (limit, amount, end, tag) each.
  if verdict == 0 then
    for j = 1, nw do
      local w = a + 4 * (j - 1)
      local limit = tonumber(ARGV[w]); local amount = tonumber(ARGV[w + 1]); local wend = tonumber(ARGV[w + 2])
      if read(KEYS[k + nr + j]) + amount > limit then
        verdict, which, retry = 2, j, wend - now
        break
      end
    end
  end
  local states = taken
  if verdict ~= 0 then states = kept end
  out[#out + 1] = verdict; out[#out + 1] = which; out[#out + 1] = retry
  for i = 1, nr do
    out[#out + 1] = states[i][1]; out[#out + 1] = states[i][2]
  end
  if verdict == 0 then
    for i = 1, nr do
      local key = KEYS[k + i]
      if tat_end[key] == nil then rate_keys[#rate_keys + 1] = key end
      val[key] = tats[i]
      tat_end[key] = tats[i] - now
    end
    local fields = {}
    for j = 1, nw do
      local w = a + 4 * (j - 1)
      local amount = tonumber(ARGV[w + 1]); local wend = tonumber(ARGV[w + 2]); local tag = ARGV[w + 3]
      local key = KEYS[k + nr + j]
      if added[key] == nil then
        window_keys[#window_keys + 1] = key
        added[key] = 0
      end
      val[key] = val[key] + amount
      added[key] = added[key] + amount
      wend_of[key] = wend
      fields[#fields + 1] = tag .. '|' .. key
      fields[#fields + 1] = ARGV[w + 1] .. ':' .. ARGV[w + 2]
    end
    if nw > 0 then
      local res = KEYS[k + nr + nw + 1]
      redis.call('HSET', res, unpack(fields))
      redis.call('PEXPIRE', res, res_ttl)
    end
  end
  a = a + 4 * nw
  k = k + nr + nw + 1
end
for _, key in ipairs(rate_keys) do
  redis.call('SET', key, val[key], 'PX', math.max(tat_end[key], 1))
end
for _, key in ipairs(window_keys) do
  -- A window's first charge sets when it goes: a minute after its end.
  if redis.call('INCRBY', key, added[key]) == added[key] then
    redis.call('PEXPIREAT', key, wend_of[key] + 60000)
  end
end
return out
"#;

const SETTLE: &str = r#"
-- A batch of settlements. KEYS: the reservations. ARGV: now_ms, then per
-- reservation its actual tokens and actual spend (micro-USD). Answers per
-- reservation 1 (settled) or 0 (none: settled already, expired or never
-- made). Its fields are `<t|s>|<window key>` -> `<amount>:<window end ms>`.
-- A window lives until a minute after its end; one that ended more than
-- 30 s ago is left alone (it is going, and INCRBY would revive it without
-- an expiry). The batch's corrections are summed per window: one INCRBY
-- per window touched.
local now = tonumber(ARGV[1])
local delta, order, out = {}, {}, {}
for r = 1, #KEYS do
  local fields = redis.call('HGETALL', KEYS[r])
  if #fields == 0 then
    out[r] = 0
  else
    local tokens = tonumber(ARGV[2 * r]); local spend = tonumber(ARGV[2 * r + 1])
    for i = 1, #fields, 2 do
      local tag = string.sub(fields[i], 1, 1)
      local key = string.sub(fields[i], 3)
      local sep = string.find(fields[i + 1], ':', 1, true)
      local reserved = tonumber(string.sub(fields[i + 1], 1, sep - 1))
      local wend = tonumber(string.sub(fields[i + 1], sep + 1))
      local actual = tokens
      if tag == 's' then actual = spend end
      if now < wend + 30000 and actual ~= reserved then
        if delta[key] == nil then
          order[#order + 1] = key
          delta[key] = 0
        end
        delta[key] = delta[key] + actual - reserved
      end
    end
    redis.call('DEL', KEYS[r])
    out[r] = 1
  end
end
for _, key in ipairs(order) do
  if delta[key] ~= 0 then redis.call('INCRBY', key, delta[key]) end
end
return out
"#;

/// Admissions (or settlements) in one script call at most. A full admit
/// batch under every limit is about 1,400 keys and 3,000 arguments, and
/// well under a millisecond of script.
const MAX_BATCH: usize = 128;
/// Script calls of each kind in flight at once: one, like the database's
/// group commit. Redis runs scripts one after the other anyway; what
/// arrives while a call runs is the next batch.
const MAX_BATCHES_IN_FLIGHT: usize = 1;

/// The limiter of one process: the settings, and the batchers that carry
/// its admissions and its settlements to Redis, many concurrent ones per
/// script call (see [`crate::batch`]: a lone submit goes out at once, no
/// timer is involved; submits that arrive while a call runs share the next
/// one). Each item of a batch is still admitted or settled atomically and
/// answered on its own.
pub struct Limiter {
    settings: LimitSettings,
    redis: Arc<Redis>,
    admit: Arc<Script>,
    settle: Arc<Script>,
    admits: Batcher<Arc<Pending>, Result<Vec<i64>, RedisError>>,
    settles: Batcher<Settlement, Result<bool, RedisError>>,
    warned: std::sync::Mutex<Option<std::time::Instant>>,
}

/// One admission on its way to its batch: its limits, its reservation's
/// key and the time it was planned at.
struct Pending {
    plan: Plan,
    reservation: String,
    now_ms: i64,
}

/// One settlement on its way to its batch.
struct Settlement {
    reservation: String,
    tokens: u64,
    spend_micros: u64,
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
    /// The limiter over `redis`; starts its two batchers (call it within
    /// the runtime).
    pub fn new(settings: LimitSettings, redis: Arc<Redis>) -> Self {
        let ttl_ms = settings.reservation_ttl_secs.max(1) * 1000;
        let admit = Arc::new(Script::new(ADMIT));
        let admits = {
            let (redis, admit) = (redis.clone(), admit.clone());
            Batcher::spawn(
                "limits_admit",
                MAX_BATCH,
                MAX_BATCHES_IN_FLIGHT,
                move |items: Vec<Arc<Pending>>| {
                    let (redis, script) = (redis.clone(), admit.clone());
                    async move { admit_batch(&redis, &script, ttl_ms, &items).await }
                },
            )
        };
        let settle = Arc::new(Script::new(SETTLE));
        let settles = {
            let (redis, settle) = (redis.clone(), settle.clone());
            Batcher::spawn(
                "limits_settle",
                MAX_BATCH,
                MAX_BATCHES_IN_FLIGHT,
                move |items: Vec<Settlement>| {
                    let (redis, script) = (redis.clone(), settle.clone());
                    async move { settle_batch(&redis, &script, &items).await }
                },
            )
        };
        Self {
            settings,
            redis,
            admit,
            settle,
            admits,
            settles,
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

    /// What admitting one submit sends, or None when no limit applies.
    fn pending(
        &self,
        id: ExecutionId,
        subject: &Subject<'_>,
        limits: &OrgLimits,
        estimate: Estimate,
    ) -> Option<Arc<Pending>> {
        let now = Utc::now();
        let keys = self.redis.keys();
        let plan = self.plan(keys, subject, limits, estimate, now);
        if plan.rates.is_empty() && plan.windows.is_empty() {
            return None;
        }
        Some(Arc::new(Pending {
            plan,
            reservation: keys.key(&["res", &id.to_string()]),
            now_ms: now.timestamp_millis(),
        }))
    }

    fn answer(&self, pending: &Pending, answer: Result<Vec<i64>, RedisError>) -> Admission {
        match answer {
            Ok(out) => interpret(&pending.plan, &out),
            Err(e) => self.when_down(&pending.plan, &e),
        }
    }

    /// Checks every limit of `limits` for one submit and, when all pass,
    /// takes it from each and reserves `estimate` under `id`: one script
    /// call, shared with the concurrent submits batched with it.
    pub async fn admit(
        &self,
        id: ExecutionId,
        subject: &Subject<'_>,
        limits: &OrgLimits,
        estimate: Estimate,
    ) -> Admission {
        let Some(pending) = self.pending(id, subject, limits, estimate) else {
            return Admission::Admitted { rates: Vec::new() };
        };
        let answer = match self.admits.submit(pending.clone()).await {
            Ok(answer) => answer,
            Err(stopped) => Err(RedisError::Unavailable(stopped.to_string())),
        };
        self.answer(&pending, answer)
    }

    /// Admits `submits` in one script call, in this order, each on its own
    /// as [`Self::admit`] would (what the batcher does with concurrent
    /// admissions); one answer per submit.
    pub async fn admit_many(
        &self,
        submits: &[(ExecutionId, Subject<'_>, &OrgLimits, Estimate)],
    ) -> Vec<Admission> {
        let pendings: Vec<_> = submits
            .iter()
            .map(|(id, subject, limits, estimate)| self.pending(*id, subject, limits, *estimate))
            .collect();
        let sent: Vec<_> = pendings.iter().flatten().cloned().collect();
        let ttl_ms = self.settings.reservation_ttl_secs.max(1) * 1000;
        let mut answers = admit_batch(&self.redis, &self.admit, ttl_ms, &sent)
            .await
            .into_iter();
        pendings
            .iter()
            .map(|pending| match pending {
                Some(pending) => {
                    let answer = answers.next().unwrap_or_else(|| {
                        Err(RedisError::Unavailable(
                            "no answer for this admission".into(),
                        ))
                    });
                    self.answer(pending, answer)
                }
                None => Admission::Admitted { rates: Vec::new() },
            })
            .collect()
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
    /// reservation was settled. One script call, shared with the
    /// settlements batched with it.
    pub async fn settle(
        &self,
        id: ExecutionId,
        tokens: u64,
        spend_micros: u64,
    ) -> Result<bool, RedisError> {
        let item = Settlement {
            reservation: self.redis.keys().key(&["res", &id.to_string()]),
            tokens,
            spend_micros,
        };
        match self.settles.submit(item).await {
            Ok(settled) => settled,
            Err(stopped) => Err(RedisError::Unavailable(stopped.to_string())),
        }
    }

    /// Settles `executions` (id, actual tokens, actual spend) in one
    /// script call, in this order, each as [`Self::settle`] would.
    pub async fn settle_many(
        &self,
        executions: &[(ExecutionId, u64, u64)],
    ) -> Vec<Result<bool, RedisError>> {
        let items: Vec<_> = executions
            .iter()
            .map(|(id, tokens, spend_micros)| Settlement {
                reservation: self.redis.keys().key(&["res", &id.to_string()]),
                tokens: *tokens,
                spend_micros: *spend_micros,
            })
            .collect();
        settle_batch(&self.redis, &self.settle, &items).await
    }
}

/// A script call's answer: `Err` when Redis could not be asked (the
/// connection failed or timed out), `Ok(Err)` when the script itself
/// failed (an error reply, e.g. a key of another type).
type ScriptAnswer<T> = Result<Result<T, RedisError>, RedisError>;

/// Runs `invocation` on `redis`, telling a script's error from an outage.
async fn call_script<T: ::redis::FromRedisValue + Send>(
    redis: &Redis,
    invocation: ::redis::ScriptInvocation<'_>,
) -> ScriptAnswer<T> {
    redis
        .run(|mut c| async move {
            match invocation.invoke_async::<T>(&mut c).await {
                Ok(v) => Ok(Ok(v)),
                Err(e) if is_script_error(&e) => Ok(Err(e.into())),
                Err(e) => Err(e),
            }
        })
        .await
}

/// An error reply of the script (not an outage): only the items of the
/// batch can be at fault.
fn is_script_error(e: &::redis::RedisError) -> bool {
    matches!(
        e.kind(),
        ::redis::ErrorKind::Server(::redis::ServerErrorKind::ResponseError)
            | ::redis::ErrorKind::Extension
    )
}

/// `n` copies of one failure, one per item of a batch.
fn each<T>(e: &RedisError, n: usize) -> Vec<Result<T, RedisError>> {
    (0..n)
        .map(|_| Err(RedisError::Unavailable(e.to_string())))
        .collect()
}

/// Admits a batch in one `ADMIT` call; each item's answer is its own slice
/// of the script's output. Should the script fail on an item (an error
/// reply, not an outage), each item is tried alone, so that the fault
/// stays that item's; an outage fails every item, and each applies its
/// own down-policies.
async fn admit_batch(
    redis: &Redis,
    script: &Script,
    ttl_ms: u64,
    items: &[Arc<Pending>],
) -> Vec<Result<Vec<i64>, RedisError>> {
    by_batch_else_alone(items, |part| admit_call(redis, script, ttl_ms, part)).await
}

/// One script call for the whole batch (`call` answers one output per
/// item). Should the script fail (an error reply, not an outage), each
/// item is called alone, so that the fault stays with the item causing
/// it; an outage fails every item.
async fn by_batch_else_alone<'a, T, O, F, Fut>(
    items: &'a [T],
    call: F,
) -> Vec<Result<O, RedisError>>
where
    F: Fn(&'a [T]) -> Fut,
    Fut: std::future::Future<Output = ScriptAnswer<Vec<O>>>,
{
    match call(items).await {
        Ok(Ok(outs)) => outs.into_iter().map(Ok).collect(),
        Ok(Err(_)) if items.len() > 1 => {
            let mut outs = Vec::with_capacity(items.len());
            for item in items {
                outs.push(match call(std::slice::from_ref(item)).await {
                    Ok(Ok(out)) => out.into_iter().next().ok_or_else(|| {
                        RedisError::Unavailable("the script answered nothing".into())
                    }),
                    Ok(Err(e)) | Err(e) => Err(e),
                });
            }
            outs
        }
        Ok(Err(e)) | Err(e) => each(&e, items.len()),
    }
}

/// One `ADMIT` call for `items`, its output split per item
/// (`3 + 2 × rates` integers each).
async fn admit_call(
    redis: &Redis,
    script: &Script,
    ttl_ms: u64,
    items: &[Arc<Pending>],
) -> ScriptAnswer<Vec<Vec<i64>>> {
    let mut invocation = script.prepare_invoke();
    invocation.arg(ttl_ms).arg(items.len());
    for item in items {
        let plan = &item.plan;
        for (key, ..) in &plan.rates {
            invocation.key(key);
        }
        for (key, ..) in &plan.windows {
            invocation.key(key);
        }
        invocation.key(&item.reservation);
        invocation
            .arg(item.now_ms)
            .arg(plan.rates.len())
            .arg(plan.windows.len());
        for (_, _, interval, tol) in &plan.rates {
            invocation.arg(*interval).arg(*tol);
        }
        for (_, kind, _, limit, amount, end) in &plan.windows {
            let tag = if *kind == LimitKind::Spend { "s" } else { "t" };
            invocation.arg(*limit).arg(*amount).arg(*end).arg(tag);
        }
    }
    let flat = match call_script::<Vec<i64>>(redis, invocation).await? {
        Ok(flat) => flat,
        Err(e) => return Ok(Err(e)),
    };
    let mut outs = Vec::with_capacity(items.len());
    let mut rest = flat.as_slice();
    for item in items {
        let len = 3 + 2 * item.plan.rates.len();
        if rest.len() < len {
            return Ok(Err(RedisError::Unavailable(
                "admit script answered too little".into(),
            )));
        }
        let (out, tail) = rest.split_at(len);
        outs.push(out.to_vec());
        rest = tail;
    }
    Ok(Ok(outs))
}

/// Settles a batch in one `SETTLE` call (true per item that had a
/// reservation); like [`admit_batch`], an error reply retries each item
/// alone.
async fn settle_batch(
    redis: &Redis,
    script: &Script,
    items: &[Settlement],
) -> Vec<Result<bool, RedisError>> {
    by_batch_else_alone(items, |part| settle_call(redis, script, part)).await
}

async fn settle_call(
    redis: &Redis,
    script: &Script,
    items: &[Settlement],
) -> ScriptAnswer<Vec<bool>> {
    let mut invocation = script.prepare_invoke();
    invocation.arg(Utc::now().timestamp_millis());
    for item in items {
        invocation
            .key(&item.reservation)
            .arg(item.tokens)
            .arg(item.spend_micros);
    }
    Ok(call_script::<Vec<i64>>(redis, invocation)
        .await?
        .map(|out| (0..items.len()).map(|i| out.get(i) == Some(&1)).collect()))
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
