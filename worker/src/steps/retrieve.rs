//! `retrieve`: context from a collection, before `render`.
//!
//! The version's `[retrieve]` names the collection, a query template, how
//! many chunks (`top_k`), how good (`min_score`) and how many tokens
//! (`max_tokens`) of context, a timeout, and what a failure or an empty
//! result does (`on_failure`, `on_empty`: continue, fallback, fail).
//!
//! One attempt: full-text candidates over the collection's GIN index
//! (`db::collections::search_candidates`: chunks holding every word of
//! the query, else the chunks holding its selective words, at most
//! `retrieval.max_ranked` rows ranked), the query embedded with the
//! collection's model, candidates reranked by cosine and pruned
//! (`llmq_shared::retrieval::prune`). The whole attempt runs under the
//! step's timeout; a fallback is a second attempt with its own.
//!
//! The result is data for the template (`retrieval.status`: `ok`, `empty`,
//! `failed`, `timed_out`; `retrieval.chunks`), never an exception the
//! template cannot see. Anything but `ok` flags the execution
//! (`retrieval_empty`, ...) and counts in `llmq_retrievals_total`. The
//! step row records every chunk that went into the prompt with its score,
//! and why the others were dropped; it is the checkpoint a resumed run
//! restores from (with the chunk texts as recorded, i.e. masked).

use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use llmq_shared::db::collections as db;
use llmq_shared::db::DbError;
use llmq_shared::execution::ErrorInfo;
use llmq_shared::mask::{mask_json, mask_text};
use llmq_shared::metrics as m;
use llmq_shared::prompt::{tokens, OnRetrievalFailure, RetrieveSpec};
use llmq_shared::retrieval::prune::{prune, Candidate, Limits, Pruned};
use llmq_shared::retrieval::{flags, vector, RetrievalStatus};
use llmq_shared::step::{self as step_row, StepKind, StepStatus};
use serde_json::{json, Value};

use super::{Cx, Outcome, Outputs, Step};
use crate::embeddings::{embed, EmbeddingEndpoint, Use};
use crate::runner::PipelineError;

pub struct Retrieve;

/// Error codes of a `retrieve` whose version says `fail`.
pub mod codes {
    pub const RETRIEVAL_EMPTY: &str = "retrieval_empty";
    pub const RETRIEVAL_FAILED: &str = "retrieval_failed";
    pub const RETRIEVAL_TIMED_OUT: &str = "retrieval_timed_out";
}

/// One attempt's result.
struct Attempt {
    collection: String,
    query: String,
    status: RetrievalStatus,
    pruned: Pruned,
    candidates: usize,
    error: Option<String>,
    latency_ms: f64,
}

impl Attempt {
    fn failed(collection: &str, query: &str, status: RetrievalStatus, error: String) -> Self {
        Self {
            collection: collection.to_string(),
            query: query.to_string(),
            status,
            pruned: Pruned::default(),
            candidates: 0,
            error: Some(error),
            latency_ms: 0.0,
        }
    }

    /// How the step row records it (texts masked).
    fn record(&self) -> Value {
        mask_json(&self.exact())
    }

    /// The result with its texts as found.
    fn exact(&self) -> Value {
        json!({
            "status": self.status.as_str(),
            "collection": self.collection,
            "query": self.query,
            "candidates": self.candidates,
            "tokens": self.pruned.tokens,
            "chunks": self.pruned.selected.iter().map(|c| json!({
                "document_id": c.document_id,
                "ord": c.ord,
                "score": c.score,
                "tokens": c.tokens,
                "text": c.text,
                "metadata": c.metadata,
            })).collect::<Vec<_>>(),
            "dropped": self.pruned.dropped,
            "error": self.error,
            "latency_ms": self.latency_ms,
        })
    }
}

/// The template's `retrieval` from a recorded result: the status, the
/// chunks, whether the fallback ran and what it searched.
fn template_value(recorded: &Value, fallback: bool) -> Value {
    let chunks: Vec<Value> = recorded
        .get("chunks")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    json!({
                        "text": c.get("text").cloned().unwrap_or(Value::Null),
                        "score": c.get("score").cloned().unwrap_or(Value::Null),
                        "document_id": c.get("document_id").cloned().unwrap_or(Value::Null),
                        "ord": c.get("ord").cloned().unwrap_or(Value::Null),
                        "metadata": c.get("metadata").cloned().unwrap_or(Value::Null),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "status": recorded.get("status").cloned().unwrap_or(json!("failed")),
        "chunks": chunks,
        "fallback": fallback,
        "collection": recorded.get("collection").cloned().unwrap_or(Value::Null),
        "error": recorded.get("error").cloned().unwrap_or(Value::Null),
    })
}

impl Step for Retrieve {
    fn kind(&self) -> StepKind {
        StepKind::Retrieve
    }

    fn applies(&self, cx: &Cx<'_>) -> bool {
        cx.prompt.definition.retrieve.is_some()
    }

    fn run<'a>(
        &'a self,
        cx: &'a mut Cx<'_>,
        out: &'a mut Outputs,
    ) -> BoxFuture<'a, Result<Outcome, PipelineError>> {
        async move {
            let Some(spec) = cx.prompt.definition.retrieve.clone() else {
                return Ok(Outcome::Continue);
            };
            let mut step = cx.begin(StepKind::Retrieve);
            let query = match cx.prompt.render_query(&cx.execution.input, false) {
                Some(Ok(q)) => q,
                Some(Err(e)) => {
                    let error = ErrorInfo {
                        code: llmq_shared::execution::codes::TEMPLATE_ERROR.into(),
                        message: e.to_string(),
                    };
                    return Ok(cx.fail(step, error));
                }
                None => String::new(),
            };
            step.input = Some(json!({
                "collection": spec.collection,
                "query": mask_text(&query),
                "top_k": spec.top_k,
                "min_score": spec.min_score,
                "max_tokens": spec.max_tokens,
                "timeout_ms": spec.timeout_ms,
            }));

            let first = tokio::select! {
                a = attempt(cx, &spec, &spec.collection, &query) => a,
                _ = cx.cancel.cancelled() => return Ok(Outcome::Cancelled),
                _ = cx.stop.cancelled() => return Ok(Outcome::Interrupted),
            };
            let policy = match first.status {
                RetrievalStatus::Ok => OnRetrievalFailure::Continue,
                RetrievalStatus::Empty => spec.on_empty,
                RetrievalStatus::Failed | RetrievalStatus::TimedOut => spec.on_failure,
            };
            let mut raised: Vec<&str> = first.status.flag().into_iter().collect();
            let mut fallback_record = None;
            let last = match (policy, &spec.fallback) {
                (OnRetrievalFailure::Fail, _) => {
                    let code = match first.status {
                        RetrievalStatus::Empty => codes::RETRIEVAL_EMPTY,
                        RetrievalStatus::TimedOut => codes::RETRIEVAL_TIMED_OUT,
                        _ => codes::RETRIEVAL_FAILED,
                    };
                    count(first.status, false);
                    step.output = Some(json!({"first": first.record(), "fallback": null}));
                    let message = match &first.error {
                        Some(e) => format!(
                            "retrieval from {} {}: {e}",
                            first.collection,
                            first.status.as_str()
                        ),
                        None => format!(
                            "retrieval from {} came back {}",
                            first.collection,
                            first.status.as_str()
                        ),
                    };
                    if !flag(cx, &raised).await? {
                        return Ok(Outcome::LeaseLost);
                    }
                    return Ok(cx.fail(
                        step,
                        ErrorInfo {
                            code: code.into(),
                            message,
                        },
                    ));
                }
                (OnRetrievalFailure::Fallback, Some(fb)) => {
                    let collection = fb
                        .collection
                        .clone()
                        .unwrap_or_else(|| spec.collection.clone());
                    let query = match cx.prompt.render_query(&cx.execution.input, true) {
                        Some(Ok(q)) => q,
                        Some(Err(e)) => {
                            let error = ErrorInfo {
                                code: llmq_shared::execution::codes::TEMPLATE_ERROR.into(),
                                message: e.to_string(),
                            };
                            return Ok(cx.fail(step, error));
                        }
                        None => query.clone(),
                    };
                    let second = tokio::select! {
                        a = attempt(cx, &spec, &collection, &query) => a,
                        _ = cx.cancel.cancelled() => return Ok(Outcome::Cancelled),
                        _ = cx.stop.cancelled() => return Ok(Outcome::Interrupted),
                    };
                    raised.push(flags::RETRIEVAL_FALLBACK);
                    raised.extend(second.status.flag());
                    fallback_record = Some(second.record());
                    second
                }
                _ => first_ref_record(&first),
            };
            let used_fallback = fallback_record.is_some();
            let first_record = first.record();
            let final_record = fallback_record
                .clone()
                .unwrap_or_else(|| first_record.clone());
            count(last.status, used_fallback);
            raised.sort_unstable();
            raised.dedup();
            if !raised.is_empty() && !flag(cx, &raised).await? {
                return Ok(Outcome::LeaseLost);
            }
            step.output = Some(json!({
                "status": last.status.as_str(),
                "fallback": used_fallback,
                "flags": raised,
                "first": first_record,
                "fallback_result": fallback_record,
                // What a resumed run renders with (texts masked).
                "retrieval": template_value(&final_record, used_fallback),
            }));
            out.retrieval = Some(template_value(&last.exact(), used_fallback));
            cx.done(step, StepStatus::Succeeded);
            Ok(Outcome::Continue)
        }
        .boxed()
    }

    fn restore(
        &self,
        _cx: &mut Cx<'_>,
        checkpoint: &step_row::Step,
        out: &mut Outputs,
    ) -> Result<(), ErrorInfo> {
        let retrieval = checkpoint
            .output
            .as_ref()
            .and_then(|o| o.get("retrieval"))
            .cloned()
            .ok_or_else(|| ErrorInfo {
                code: llmq_shared::execution::codes::INTERNAL.into(),
                message: "the recorded retrieve step has no result".into(),
            })?;
        out.retrieval = Some(retrieval);
        Ok(())
    }
}

/// The first attempt as the final result when no fallback runs (a
/// borrowed copy of what the step keeps).
fn first_ref_record(first: &Attempt) -> Attempt {
    Attempt {
        collection: first.collection.clone(),
        query: first.query.clone(),
        status: first.status,
        pruned: first.pruned.clone(),
        candidates: first.candidates,
        error: first.error.clone(),
        latency_ms: first.latency_ms,
    }
}

fn count(status: RetrievalStatus, fallback: bool) {
    metrics::counter!(m::RETRIEVALS, "status" => status.as_str(), "fallback" => if fallback { "true" } else { "false" })
        .increment(1);
}

/// Flags the execution now (fenced by the lease). False when the lease
/// was lost.
async fn flag(cx: &Cx<'_>, raised: &[&str]) -> Result<bool, PipelineError> {
    if raised.is_empty() {
        return Ok(true);
    }
    let client = cx.ctx.pool.get().await.map_err(DbError::from)?;
    Ok(db::flag_execution(&client, cx.execution.id.0, &cx.ctx.owner, raised).await?)
}

/// One search of `collection` for `query`, under the step's timeout.
async fn attempt(cx: &Cx<'_>, spec: &RetrieveSpec, collection: &str, query: &str) -> Attempt {
    let started = std::time::Instant::now();
    let timeout = Duration::from_millis(spec.timeout_ms.max(1));
    let mut result = match tokio::time::timeout(timeout, search(cx, spec, collection, query)).await
    {
        Ok(Ok(a)) => a,
        Ok(Err(message)) => Attempt::failed(collection, query, RetrievalStatus::Failed, message),
        Err(_) => Attempt::failed(
            collection,
            query,
            RetrievalStatus::TimedOut,
            format!("no result within {} ms", spec.timeout_ms),
        ),
    };
    result.latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    result
}

async fn search(
    cx: &Cx<'_>,
    spec: &RetrieveSpec,
    collection: &str,
    query: &str,
) -> Result<Attempt, String> {
    let tenant = &cx.execution.tenant_id;
    let empty = |candidates| Attempt {
        collection: collection.to_string(),
        query: query.to_string(),
        status: RetrievalStatus::Empty,
        pruned: Pruned::default(),
        candidates,
        error: None,
        latency_ms: 0.0,
    };
    if query.trim().is_empty() {
        return Ok(empty(0));
    }
    let client = cx.ctx.pool.get().await.map_err(|e| e.to_string())?;
    let Some(coll) = db::get_collection(&client, tenant, collection)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(empty(0));
    };
    let rows = db::search_candidates(
        &client,
        tenant,
        collection,
        query,
        &coll.embedding_model,
        cx.ctx.settings.retrieval.candidates.max(1) as i64,
        cx.ctx.settings.retrieval.max_ranked.max(1) as i64,
    )
    .await
    .map_err(|e| e.to_string())?;
    drop(client);
    if rows.is_empty() {
        return Ok(empty(0));
    }
    let endpoint = EmbeddingEndpoint::resolve(&cx.ctx.settings, &coll.embedding_model);
    let text = format!("{}{query}", endpoint.query_prefix);
    // The step's timeout bounds the whole attempt; this one only keeps a
    // hung connection from outliving it, so it ends later than the step's
    // (a tie made a slow endpoint's timeout look like a failure).
    let limit = Duration::from_millis(spec.timeout_ms.max(1)) + Duration::from_secs(1);
    let vectors = embed(&cx.ctx.provider, &endpoint, &[text], Use::Query, limit)
        .await
        .map_err(|e| format!("embedding the query with {}: {e}", coll.embedding_model))?;
    metrics::counter!(m::EMBEDDED_TEXTS, "use" => "query").increment(1);
    let q = vectors.into_iter().next().unwrap_or_default();
    let candidates_found = rows.len();
    let candidates: Vec<Candidate> = rows
        .into_iter()
        .map(|r| {
            let embedding = vector::decode(&r.embedding);
            Candidate {
                score: vector::cosine(&q, &embedding),
                document_id: r.document_id,
                ord: r.ord,
                text: r.text,
                metadata: r.metadata,
                embedding,
            }
        })
        .collect();
    let tokenizer = tokens::tokenizer_for(
        &cx.prompt.definition.model,
        cx.prompt.definition.tokenizer.as_deref(),
    );
    let pruned = prune(
        candidates,
        Limits {
            top_k: spec.top_k as usize,
            min_score: spec.min_score,
            max_tokens: spec.max_tokens as usize,
            duplicate_threshold: spec.duplicate_threshold,
            tokenizer,
        },
    );
    let status = if pruned.selected.is_empty() {
        RetrievalStatus::Empty
    } else {
        RetrievalStatus::Ok
    };
    Ok(Attempt {
        collection: collection.to_string(),
        query: query.to_string(),
        status,
        pruned,
        candidates: candidates_found,
        error: None,
        latency_ms: 0.0,
    })
}
