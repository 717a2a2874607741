//! The response cache (Redis, with a TTL): an execution that opts in
//! (its request's `cache`, else its prompt version's `[cache]`) first
//! looks for the answer an earlier execution got for exactly the same
//! call, and makes no model call on a hit.
//!
//! The key is a SHA-256 over the prompt name and version, the request
//! body the provider would get (model, rendered messages, parameters,
//! response format; not the streaming flags) and the organisation, so one
//! organisation is never served another's answer, unless the version
//! says `shared = true`. Only an answer whose execution succeeded is
//! stored (after its outcome is committed), so a rejected answer is never
//! reused.
//!
//! Round trips: none for an execution without the cache; a `GET`, and a
//! `SET` after a miss that succeeds. Redis down: a miss (and no store),
//! with a metric; the execution runs as if uncached.

use std::time::Duration;

use llmq_shared::canonical::json_sha256;
use llmq_shared::metrics as m;
use llmq_shared::redis::Redis;
use serde_json::{json, Value};

use crate::steps::Cx;

/// Where an execution's answer is looked up and stored.
#[derive(Clone, Debug, PartialEq)]
pub struct CachePlan {
    pub key: String,
    pub ttl: Duration,
}

/// The cache plan of the execution's first call with `body`, if it opts in.
pub fn plan(cx: &Cx<'_>, body: &Value) -> Option<CachePlan> {
    let version = cx.prompt.definition.cache.as_ref();
    let (ttl_secs, shared) = match cx.execution.cache_ttl_secs {
        Some(0) => return None,
        Some(ttl) => (ttl.max(1) as u64, version.is_some_and(|c| c.shared)),
        None => {
            let spec = version?;
            (spec.ttl_secs, spec.shared)
        }
    };
    let mut call = body.clone();
    if let Some(map) = call.as_object_mut() {
        map.remove("stream");
        map.remove("stream_options");
    }
    let scope = if shared {
        Value::Null
    } else {
        Value::String(cx.execution.tenant_id.clone())
    };
    let digest = json_sha256(&json!({
        "prompt": cx.prompt.name,
        "version": cx.prompt.version,
        "tenant": scope,
        "call": call,
    }));
    Some(CachePlan {
        key: cx.ctx.redis.keys().key(&["cache", &digest]),
        ttl: Duration::from_secs(ttl_secs),
    })
}

/// The cached answer, if any; a Redis failure is a miss.
pub async fn lookup(redis: &Redis, plan: &CachePlan) -> Option<Value> {
    let key = plan.key.clone();
    let found = redis
        .run(|mut c| async move {
            redis::cmd("GET")
                .arg(&key)
                .query_async::<Option<String>>(&mut c)
                .await
        })
        .await;
    let (result, answer) = match found {
        Ok(Some(text)) => match serde_json::from_str::<Value>(&text) {
            Ok(v) => ("hit", v.get("output").cloned()),
            Err(_) => ("miss", None),
        },
        Ok(None) => ("miss", None),
        Err(e) => {
            tracing::warn!(error = %e, "response cache unavailable (Redis); calling the model");
            ("error", None)
        }
    };
    metrics::counter!(m::CACHE_LOOKUPS, "result" => result).increment(1);
    answer
}

/// Keeps a succeeded execution's answer for the plan's TTL.
pub async fn store(redis: &Redis, plan: &CachePlan, output: &Value) {
    let key = plan.key.clone();
    let text = json!({ "output": output }).to_string();
    let ttl_ms = plan.ttl.as_millis() as u64;
    let stored = redis
        .run(|mut c| async move {
            redis::cmd("SET")
                .arg(&key)
                .arg(text)
                .arg("PX")
                .arg(ttl_ms)
                .query_async::<()>(&mut c)
                .await
        })
        .await;
    if let Err(e) = stored {
        tracing::warn!(error = %e, "could not store the answer in the response cache");
    }
}
