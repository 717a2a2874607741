//! End-to-end tests of the fake provider over real HTTP (reqwest client, responses decoded
//! with `async-openai` types to prove wire compatibility).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use async_openai::types::chat::{CreateChatCompletionResponse, CreateChatCompletionStreamResponse};
use serde_json::{json, Value};

use crate::{FakeConfig, FakeProvider};

async fn start() -> FakeProvider {
    FakeProvider::start(FakeConfig::default()).await.unwrap()
}

fn user(text: &str) -> Value {
    json!({"model": "gpt-test", "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": text}
    ]})
}

async fn post(p: &FakeProvider, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/chat/completions", p.base_url()))
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn completion(p: &FakeProvider, body: &Value) -> CreateChatCompletionResponse {
    let resp = post(p, body).await;
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

#[tokio::test]
async fn normal_completion_has_openai_shape_and_usage() {
    let p = start().await;
    let body = user("Summarise the quarterly report for the board please");
    let raw: Value = post(&p, &body).await.json().await.unwrap();
    assert!(raw["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(raw["object"], "chat.completion");
    assert!(raw["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(raw["model"], "gpt-test");
    let choice = &raw["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(
        choice["message"]["content"],
        "fake completion: Summarise the quarterly report for the board please"
    );
    assert_eq!(choice["finish_reason"], "stop");
    assert!(choice["logprobs"].is_null());
    // system 14 chars + user 51 chars = 65 -> 17, + 2 messages * 3; answer 68 chars -> 17
    assert_eq!(raw["usage"]["prompt_tokens"], 23);
    assert_eq!(raw["usage"]["completion_tokens"], 17);
    assert_eq!(raw["usage"]["total_tokens"], 40);

    // Same input, same content; and async-openai decodes it.
    let typed = completion(&p, &body).await;
    assert_eq!(
        typed.choices[0].message.content,
        choice["message"]["content"].as_str().map(String::from)
    );
    assert_eq!(typed.usage.unwrap().total_tokens, 40);

    let calls = p.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].outcome, "ok");
    assert_eq!(calls[0].model, "gpt-test");
    assert!(!calls[0].stream);
    assert!(calls[0].key.contains("quarterly report"));
    assert!(calls[0].responded_at_ms.unwrap() >= calls[0].received_at_ms);
    p.stop().await;
}

fn sse_data(text: &str) -> Vec<&str> {
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").unwrap())
        .collect()
}

#[tokio::test]
async fn streaming_yields_chunks_usage_then_done() {
    let p = start().await;
    let mut body = user("stream these five words");
    let expected = completion(&p, &body).await.choices[0]
        .message
        .content
        .clone()
        .unwrap();
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = post(&p, &body).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = resp.text().await.unwrap();
    let data = sse_data(&text);
    assert_eq!(*data.last().unwrap(), "[DONE]");
    let chunks: Vec<CreateChatCompletionStreamResponse> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(chunks.iter().all(|c| c.object == "chat.completion.chunk"));
    assert!(chunks.iter().all(|c| c.id == chunks[0].id));
    assert!(chunks[0].choices[0].delta.role.is_some());
    let content: String = chunks
        .iter()
        .flat_map(|c| c.choices.iter())
        .filter_map(|c| c.delta.content.clone())
        .collect();
    assert_eq!(content, expected);
    // role chunk + one per word (6) + finish chunk + usage chunk
    assert_eq!(chunks.len(), 9);
    let finish = &chunks[chunks.len() - 2];
    assert!(finish.choices[0].finish_reason.is_some());
    let usage_chunk = chunks.last().unwrap();
    assert!(usage_chunk.choices.is_empty());
    assert!(usage_chunk.usage.as_ref().unwrap().total_tokens > 0);
    assert!(p.calls()[1].stream);

    // Without include_usage there is no usage chunk.
    body["stream_options"] = json!({"include_usage": false});
    let text = post(&p, &body).await.text().await.unwrap();
    let data = sse_data(&text);
    assert_eq!(data.len(), 8 + 1);
    assert!(!text.contains("\"usage\""));
    p.stop().await;
}

#[tokio::test]
async fn rate_limit_has_retry_after_and_error_body() {
    let p = start().await;
    let resp = post(&p, &user("slow down [[fault:429]]")).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "rate_limit_exceeded");
    assert_eq!(err["error"]["type"], "requests");
    assert!(err["error"]["param"].is_null());

    let resp = post(&p, &user("slow down [[fault:429:retry_after=7]]")).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "7");
    assert_eq!(p.calls()[1].outcome, "429");
    p.stop().await;
}

#[tokio::test]
async fn server_error_and_bad_request_faults() {
    let p = start().await;
    let resp = post(&p, &user("x [[fault:500]]")).await;
    assert_eq!(resp.status(), 500);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["type"], "server_error");
    assert!(err["error"]["code"].is_null());

    let resp = post(&p, &user("x [[fault:400]]")).await;
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["type"], "invalid_request_error");

    // Genuinely invalid requests are rejected (and recorded) too.
    let resp = post(&p, &json!({"model": "m"})).await;
    assert_eq!(resp.status(), 400);
    let outcomes: Vec<String> = p.calls().into_iter().map(|c| c.outcome).collect();
    assert_eq!(outcomes, ["500", "400", "400"]);
    p.stop().await;
}

#[tokio::test]
async fn times_faults_exactly_n_times_then_succeeds() {
    let p = start().await;
    let body = user("flaky [[fault:500:times=2]]");
    let statuses = [
        post(&p, &body).await.status().as_u16(),
        post(&p, &body).await.status().as_u16(),
        post(&p, &body).await.status().as_u16(),
        post(&p, &body).await.status().as_u16(),
    ];
    assert_eq!(statuses, [500, 500, 200, 200]);
    let ok = completion(&p, &body).await;
    assert_eq!(
        ok.choices[0].message.content.as_deref(),
        Some("fake completion: flaky")
    );

    // Counted per key: a different prompt gets its own two failures.
    let other = user("other [[fault:429:retry_after=1:times=1]]");
    assert_eq!(post(&p, &other).await.status(), 429);
    assert_eq!(post(&p, &other).await.status(), 200);

    let outcomes: Vec<String> = p
        .calls_containing("flaky")
        .into_iter()
        .map(|c| c.outcome)
        .collect();
    assert_eq!(outcomes, ["500", "500", "ok", "ok", "ok"]);
    p.stop().await;
}

#[tokio::test]
async fn nul_fault_answers_with_a_nul_character_in_the_text() {
    let p = start().await;
    let resp = post(&p, &user("poison me [[fault:nul]]")).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.contains('\0'), "{content:?}");
    assert_eq!(p.calls()[0].outcome, "nul");
    p.stop().await;
}

#[tokio::test]
async fn malformed_body_is_not_json() {
    let p = start().await;
    let resp = post(&p, &user("break it [[fault:malformed]]")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let text = resp.text().await.unwrap();
    assert!(text.starts_with("{\"choices\"") || text.starts_with('{'));
    assert!(serde_json::from_str::<Value>(&text).is_err());
    assert_eq!(p.calls()[0].outcome, "malformed");
    p.stop().await;
}

#[tokio::test]
async fn tool_call_then_tool_result() {
    let p = start().await;
    let tools = json!([{"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}
    }}]);
    let ask = r#"What is the weather? [[tool:get_weather {"city": "Paris"}]]"#;
    let body = json!({"model": "gpt-test", "tools": tools, "tool_choice": "auto", "messages": [
        {"role": "user", "content": ask}
    ]});
    let raw: Value = post(&p, &body).await.json().await.unwrap();
    let choice = &raw["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert!(choice["message"]["content"].is_null());
    let call = &choice["message"]["tool_calls"][0];
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], r#"{"city":"Paris"}"#);
    let typed: CreateChatCompletionResponse = serde_json::from_value(raw.clone()).unwrap();
    assert_eq!(
        typed.choices[0].message.tool_calls.as_ref().unwrap().len(),
        1
    );

    // Streaming variant carries the same call as deltas.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let text = post(&p, &streamed).await.text().await.unwrap();
    let data = sse_data(&text);
    assert_eq!(*data.last().unwrap(), "[DONE]");
    let args: String = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str::<CreateChatCompletionStreamResponse>(d).unwrap())
        .flat_map(|c| c.choices)
        .flat_map(|c| c.delta.tool_calls.unwrap_or_default())
        .filter_map(|t| t.function.and_then(|f| f.arguments))
        .collect();
    assert_eq!(args, r#"{"city":"Paris"}"#);
    assert!(text.contains("\"finish_reason\":\"tool_calls\""));

    // Once the tool answered, the model answers normally and mentions the result.
    let follow = json!({"model": "gpt-test", "tools": tools, "messages": [
        {"role": "user", "content": ask},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21C"}
    ]});
    let done = completion(&p, &follow).await;
    let content = done.choices[0].message.content.clone().unwrap();
    assert!(
        content.starts_with("fake completion: What is the weather?"),
        "{content}"
    );
    assert!(content.contains("sunny, 21C"), "{content}");

    // Without `tools` in the request, the marker is just stripped text.
    let no_tools = completion(&p, &user(ask)).await;
    assert_eq!(
        no_tools.choices[0].message.content.as_deref(),
        Some("fake completion: What is the weather?")
    );
    p.stop().await;
}

#[tokio::test]
async fn hang_does_not_answer() {
    let p = start().await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = client
        .post(format!("{}/chat/completions", p.base_url()))
        .json(&user("wait forever [[fault:hang]]"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    let calls = p.calls_containing("wait forever");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].outcome, "hang");
    assert!(calls[0].responded_at_ms.is_none());
    p.stop().await;
}

#[tokio::test]
async fn latency_global_override_and_update() {
    let p = FakeProvider::start(FakeConfig {
        latency_ms: 150,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let t = Instant::now();
    completion(&p, &user("global")).await;
    assert!(t.elapsed() >= Duration::from_millis(150));

    let t = Instant::now();
    completion(&p, &user("fast [[fault:latency=0]]")).await;
    assert!(t.elapsed() < Duration::from_millis(150));

    // The global latency also delays faults.
    let t = Instant::now();
    assert_eq!(
        post(&p, &user("late error [[fault:500]]")).await.status(),
        500
    );
    assert!(t.elapsed() >= Duration::from_millis(150));

    p.set_latency_ms(0);
    let t = Instant::now();
    completion(&p, &user("now fast")).await;
    assert!(t.elapsed() < Duration::from_millis(150));

    let t = Instant::now();
    completion(&p, &user("slow marker [[fault:latency=80]]")).await;
    assert!(t.elapsed() >= Duration::from_millis(80));
    p.stop().await;
}

#[tokio::test]
async fn calls_containing_counts_and_stats_route() {
    let p = start().await;
    for i in 0..3 {
        completion(&p, &user(&format!("job-alpha #{i}"))).await;
    }
    completion(&p, &user("job-beta")).await;
    assert_eq!(p.calls().len(), 4);
    assert_eq!(p.calls_containing("job-alpha").len(), 3);
    assert_eq!(p.calls_containing("job-beta").len(), 1);
    assert_eq!(p.calls_containing("job-gamma").len(), 0);

    let root = format!("http://{}", p.local_addr());
    let stats: Vec<crate::CallRecord> = reqwest::get(format!("{root}/_stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats.len(), 4);
    assert_eq!(
        reqwest::get(format!("{root}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
    let models: Value = reqwest::get(format!("{}/models", p.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        models,
        json!({"object": "list", "data": [
            {"id": "fake-model", "object": "model", "created": 0, "owned_by": "llmq-fake"}
        ]})
    );
    p.stop().await;
}

#[tokio::test]
async fn json_modes_answer_json() {
    let p = start().await;
    let mut body = user("extract the key facts");
    body["response_format"] = json!({"type": "json_object"});
    let c = completion(&p, &body).await;
    let v: Value = serde_json::from_str(c.choices[0].message.content.as_deref().unwrap()).unwrap();
    assert_eq!(v, json!({"summary": "extract the key facts"}));

    body["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "facts", "strict": true,
        "schema": {"type": "object", "properties": {"title": {"type": "string"}, "count": {"type": "integer"}},
                   "required": ["title", "count"], "additionalProperties": false}}});
    let c = completion(&p, &body).await;
    let v: Value = serde_json::from_str(c.choices[0].message.content.as_deref().unwrap()).unwrap();
    assert_eq!(v, json!({"title": "extract the key facts", "count": 4}));
    p.stop().await;
}

async fn concurrent_slow(n: usize, latency_ms: u64) -> Duration {
    let p = FakeProvider::start(FakeConfig {
        latency_ms,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(n)
        .build()
        .unwrap();
    let url = format!("{}/chat/completions", p.base_url());
    let started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move {
                client
                    .post(url)
                    .json(&user(&format!("concurrent {i}")))
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let elapsed = started.elapsed();
    assert_eq!(p.calls().len(), n);
    p.stop().await;
    elapsed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_many_concurrent_slow_requests() {
    let elapsed = concurrent_slow(1000, 300).await;
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

/// The full load target (5,000 requests at 2 s), run with the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_5000_concurrent_two_second_requests() {
    let elapsed = concurrent_slow(5000, 2000).await;
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
}

#[test]
fn endless_tool_markers_are_proposed_every_round_with_new_ids() {
    use crate::request::ChatRequest;
    use crate::response::Answer;
    let user = "go [[tool:t {\"a\":1}]] [[tools:endless]]";
    let first = ChatRequest::parse(&serde_json::json!({
        "model": "m",
        "messages": [{"role": "user", "content": user}],
        "tools": [{"type": "function", "function": {"name": "t"}}],
    }))
    .unwrap();
    let second = ChatRequest::parse(&serde_json::json!({
        "model": "m",
        "messages": [
            {"role": "user", "content": user},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "x", "type": "function", "function": {"name": "t", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "x", "content": "ok"},
        ],
        "tools": [{"type": "function", "function": {"name": "t"}}],
    }))
    .unwrap();
    let (Answer::ToolCalls(a), Answer::ToolCalls(b)) =
        (Answer::for_request(&first), Answer::for_request(&second))
    else {
        panic!("both rounds ask for the tool");
    };
    assert_ne!(a[0].id, b[0].id);
}

#[test]
fn from_round_delays_only_later_rounds() {
    let m = crate::markers::fault_markers("[[fault:latency=500:from_round=2]]");
    assert_eq!(crate::markers::plan(&m, 1, 1).latency_ms, None);
    assert_eq!(crate::markers::plan(&m, 2, 2).latency_ms, Some(500));
}
