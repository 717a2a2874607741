//! Embeddings: OpenAI-compatible `POST /v1/embeddings` calls over the
//! provider's HTTP client, one recorded attempt per call with the
//! caller's timeout, errors classified like model calls
//! (`ProviderError`: 429/5xx/timeouts retryable, other 4xx final).

use std::time::Duration;

use llmq_shared::Settings;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::provider::{status_error, transport_error, ProviderClient, ProviderError};

/// Where an embedding model is served and how its texts are prefixed.
#[derive(Clone, Debug)]
pub struct EmbeddingEndpoint {
    pub base_url: String,
    pub api_key: String,
    pub upstream_model: String,
    pub document_prefix: String,
    pub query_prefix: String,
    pub send_input_type: bool,
}

/// What a text is embedded for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    Document,
    Query,
}

impl EmbeddingEndpoint {
    /// `[embeddings.<model>]`, falling back to the default provider.
    pub fn resolve(settings: &Settings, model: &str) -> Self {
        let m = settings.embedding_model(model);
        let (base_url, api_key) = settings.served_at(m.base_url, m.api_key);
        Self {
            base_url,
            api_key,
            upstream_model: m.upstream.unwrap_or_else(|| model.to_string()),
            document_prefix: m.document_prefix,
            query_prefix: m.query_prefix,
            send_input_type: m.send_input_type,
        }
    }
}

/// The embeddings of `inputs`, in their order, from one request.
pub async fn embed(
    client: &ProviderClient,
    endpoint: &EmbeddingEndpoint,
    inputs: &[String],
    purpose: Use,
    timeout: Duration,
) -> Result<Vec<Vec<f32>>, ProviderError> {
    let url = format!("{}/embeddings", endpoint.base_url.trim_end_matches('/'));
    let mut body =
        json!({"model": endpoint.upstream_model, "input": inputs, "encoding_format": "float"});
    if endpoint.send_input_type {
        body["input_type"] = json!(match purpose {
            Use::Document => "passage",
            Use::Query => "query",
        });
    }
    let mut request = client.http().post(url).json(&body).timeout(timeout);
    if !endpoint.api_key.is_empty() {
        request = request.bearer_auth(&endpoint.api_key);
    }
    let response = request
        .send()
        .await
        .map_err(|e| transport_error(e, timeout))?;
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| transport_error(e, timeout))?;
    if status != StatusCode::OK {
        return Err(status_error(status, &headers, &bytes));
    }
    parse_embeddings(&bytes, inputs.len())
}

/// `{"data": [{"index": i, "embedding": [...]}, ...]}`, put in index order;
/// anything else (a missing index, a non-numeric value) is a bad response.
fn parse_embeddings(bytes: &[u8], expected: usize) -> Result<Vec<Vec<f32>>, ProviderError> {
    let bad = |m: String| ProviderError::BadResponse(m);
    let value: Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    let data = value
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no `data` array".into()))?;
    let mut out: Vec<Option<Vec<f32>>> = vec![None; expected];
    for (pos, item) in data.iter().enumerate() {
        let index = item
            .get("index")
            .and_then(Value::as_u64)
            .map_or(pos, |i| i as usize);
        let vector = item
            .get("embedding")
            .and_then(Value::as_array)
            .ok_or_else(|| bad(format!("data[{pos}] has no embedding array")))?
            .iter()
            .map(|x| x.as_f64().map(|f| f as f32))
            .collect::<Option<Vec<f32>>>()
            .ok_or_else(|| bad(format!("data[{pos}].embedding is not all numbers")))?;
        if vector.is_empty() {
            return Err(bad(format!("data[{pos}].embedding is empty")));
        }
        match out.get_mut(index) {
            Some(slot) => *slot = Some(vector),
            None => return Err(bad(format!("data[{pos}].index {index} is out of range"))),
        }
    }
    out.into_iter()
        .enumerate()
        .map(|(i, v)| v.ok_or_else(|| bad(format!("no embedding for input {i}"))))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn embeddings_are_put_in_index_order_and_checked() {
        let body =
            br#"{"data":[{"index":1,"embedding":[0.0,1.0]},{"index":0,"embedding":[1.0,0.0]}]}"#;
        assert_eq!(
            parse_embeddings(body, 2).unwrap(),
            vec![vec![1.0, 0.0], vec![0.0, 1.0]]
        );
        assert!(parse_embeddings(body, 3).is_err());
        assert!(parse_embeddings(br#"{"data":[{"embedding":["x"]}]}"#, 1).is_err());
        assert!(parse_embeddings(b"not json", 1).is_err());
    }
}
