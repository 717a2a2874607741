//! Structured output: a `json` prompt asks the provider for JSON the way
//! the model's `structured_output` setting says, the answer is validated
//! against the version's schema, and an invalid one is repaired with its
//! errors, a bounded number of times, every check a `validate` step.

use std::time::Duration;

use llmq_shared::config::{ModelSettings, StructuredOutput};
use llmq_tests::{TempPrompts, TestApp};
use serde_json::{json, Value};
use uuid::Uuid;

const SENTIMENT: &str = r#"description = "The sentiment of a message."
model = "gpt-4o-mini"
system = "You classify the sentiment of messages."
template = "Message: {{ text }}"

[params]
temperature = 0.0

[input_schema]
type = "object"
required = ["text"]
[input_schema.properties.text]
type = "string"

[output]
type = "json"
schema = { type = "object", required = ["sentiment"], additionalProperties = false, properties = { sentiment = { enum = ["positive", "negative", "neutral"] } } }
"#;

/// A schema the fake's JSON-mode answer (`{"summary": ...}`) satisfies.
const SUMMARY_JSON: &str = r#"model = "gpt-4o-mini"
template = "Summarize as JSON: {{ text }}"

[input_schema]
type = "object"
required = ["text"]

[output]
type = "json"
schema = { type = "object", required = ["summary"], properties = { summary = { type = "string" } } }
"#;

fn prompts() -> TempPrompts {
    let prompts = TempPrompts::with_shipped();
    prompts
        .add("sentiment", 1, SENTIMENT)
        .add("summary-json", 1, SUMMARY_JSON);
    prompts
}

fn with_mode(mode: StructuredOutput) -> impl FnOnce(&mut llmq_shared::Settings) + Send {
    move |s| {
        s.models.insert(
            "gpt-4o-mini".into(),
            ModelSettings {
                structured_output: mode,
                ..Default::default()
            },
        );
    }
}

fn unique(what: &str) -> String {
    format!("{what} {}", Uuid::now_v7().simple())
}

async fn submit(app: &TestApp, prompt: &str, text: &str) -> String {
    let body = json!({"prompt": prompt, "input": {"text": text}});
    app.submit_accepted(&body).await["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn kinds(app: &TestApp, id: &str) -> Vec<String> {
    app.step_rows(id)
        .await
        .into_iter()
        .map(|(_, kind, status)| format!("{kind} {status}"))
        .collect()
}

async fn steps(app: &TestApp, id: &str) -> Vec<Value> {
    let body: Value = app.steps(id).await.json().await.unwrap();
    body["steps"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_answer_is_repaired_with_its_errors_and_succeeds() {
    let prompts = prompts();
    let dir = prompts.dir.clone();
    let app = TestApp::builder()
        .configure(move |s| s.prompts_dir = dir)
        .configure(with_mode(StructuredOutput::JsonSchema))
        .spawn()
        .await;

    let text = unique("[[fault:wrong_json:times=1]] I love it");
    let id = submit(&app, "sentiment", &text).await;
    let execution = app.wait_until_terminal(&id, Duration::from_secs(30)).await;

    assert_eq!(execution["status"], "succeeded", "{execution:#}");
    // The stored output is the parsed JSON (the fake fills the schema).
    assert_eq!(execution["output"], json!({"sentiment": "positive"}));
    assert_eq!(
        kinds(&app, &id).await,
        [
            "render succeeded",
            "generate succeeded",
            "validate failed",
            "generate succeeded",
            "validate succeeded",
            "finalize succeeded"
        ]
    );

    // Both calls asked for the schema itself.
    let calls = app.fake.calls_containing(&text);
    assert_eq!(calls.len(), 2, "{calls:#?}");
    for call in &calls {
        let format = call.response_format.as_ref().expect("a response_format");
        assert_eq!(format["type"], "json_schema", "{format}");
        assert_eq!(format["json_schema"]["name"], "sentiment");
        assert_eq!(
            format["json_schema"]["schema"]["required"],
            json!(["sentiment"])
        );
    }
    // The repair is a conversation: the rejected answer, then its errors.
    assert!(!calls[0].key.contains("required property missing"));
    let repair = &calls[1].key;
    assert!(
        repair.contains(r#"{"llmq_fake_unexpected":true}"#),
        "{repair}"
    );
    assert!(
        repair.contains("output.sentiment: required property missing"),
        "{repair}"
    );
    assert!(
        repair.contains("output.llmq_fake_unexpected: property not allowed"),
        "{repair}"
    );

    // The trace: the failed check lists the errors, the second generate
    // records the repair it sent.
    let steps = steps(&app, &id).await;
    let failed = &steps[2];
    assert_eq!(failed["error"]["code"], "invalid_output");
    let errors: Vec<&str> = failed["output"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(errors.contains(&"output.sentiment"), "{failed:#}");
    let repair_step = &steps[3];
    assert_eq!(
        repair_step["input"]["added"]["repair_of_step"],
        failed["seq"]
    );
    let added = repair_step["input"]["added"]["repair_messages"].to_string();
    assert!(
        added.contains("output.sentiment: required property missing"),
        "{added}"
    );
    assert_eq!(steps[4]["output"]["valid"], true);
    // The execution's usage counts both calls.
    let total = |s: &Value| s["usage"]["total_tokens"].as_i64().unwrap();
    assert_eq!(
        execution["usage"]["total_tokens"].as_i64().unwrap(),
        total(&steps[1]) + total(&steps[3]),
        "{execution:#}"
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_never_satisfies_the_schema_fails_with_invalid_output_and_the_errors() {
    let prompts = prompts();
    let dir = prompts.dir.clone();
    let app = TestApp::builder()
        .configure(move |s| s.prompts_dir = dir)
        .configure(with_mode(StructuredOutput::JsonSchema))
        .spawn()
        .await;

    let text = unique("[[fault:wrong_json]] always wrong");
    let id = submit(&app, "sentiment", &text).await;
    let execution = app.wait_until_terminal(&id, Duration::from_secs(30)).await;

    assert_eq!(execution["status"], "failed", "{execution:#}");
    assert_eq!(execution["error"]["code"], "invalid_output");
    assert_eq!(execution["output"], Value::Null);
    let message = execution["error"]["message"].as_str().unwrap();
    assert!(message.contains("after 2 repair(s)"), "{message}");
    assert!(
        message.contains("output.sentiment: required property missing"),
        "{message}"
    );
    // The first answer and the default two repairs: three calls, no more.
    assert_eq!(app.fake.calls_containing(&text).len(), 3);
    assert_eq!(
        kinds(&app, &id).await,
        [
            "render succeeded",
            "generate succeeded",
            "validate failed",
            "generate succeeded",
            "validate failed",
            "generate succeeded",
            "validate failed",
            "finalize succeeded"
        ]
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_is_not_json_is_repaired_too() {
    let prompts = prompts();
    let dir = prompts.dir.clone();
    let app = TestApp::builder()
        .configure(move |s| s.prompts_dir = dir)
        .configure(with_mode(StructuredOutput::JsonSchema))
        .spawn()
        .await;

    let text = unique("[[fault:not_json:times=1]] so so");
    let id = submit(&app, "sentiment", &text).await;
    let execution = app.wait_until_terminal(&id, Duration::from_secs(30)).await;

    assert_eq!(execution["status"], "succeeded", "{execution:#}");
    assert_eq!(execution["output"], json!({"sentiment": "positive"}));
    let calls = app.fake.calls_containing(&text);
    assert_eq!(calls.len(), 2);
    assert!(
        calls[1].key.contains("output: not JSON"),
        "{}",
        calls[1].key
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_mode_sends_json_object_and_the_schema_in_the_system_message() {
    let prompts = prompts();
    let dir = prompts.dir.clone();
    // No model configuration: the default mode, json_mode.
    let app = TestApp::builder()
        .configure(move |s| s.prompts_dir = dir)
        .spawn()
        .await;

    let text = unique("json mode");
    let id = submit(&app, "summary-json", &text).await;
    let execution = app.wait_until_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(execution["status"], "succeeded", "{execution:#}");
    assert!(execution["output"]["summary"].is_string(), "{execution:#}");

    let calls = app.fake.calls_containing(&text);
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].response_format,
        Some(json!({"type": "json_object"}))
    );
    // The schema is spelled out for the model instead.
    assert!(calls[0].key.contains("JSON Schema"), "{}", calls[0].key);
    assert!(
        calls[0].key.contains(r#""required":["summary"]"#),
        "{}",
        calls[0].key
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_without_structured_output_gets_no_response_format() {
    let prompts = prompts();
    let dir = prompts.dir.clone();
    let app = TestApp::builder()
        .configure(move |s| s.prompts_dir = dir)
        .configure(with_mode(StructuredOutput::None))
        .spawn()
        .await;

    // The fake answers text without a response_format: never JSON, so
    // the answer is repaired until the bound and then fails.
    let text = unique("no format");
    let id = submit(&app, "summary-json", &text).await;
    let execution = app.wait_until_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(execution["status"], "failed", "{execution:#}");
    assert_eq!(execution["error"]["code"], "invalid_output");
    let calls = app.fake.calls_containing(&text);
    assert_eq!(calls.len(), 3);
    assert!(
        calls.iter().all(|c| c.response_format.is_none()),
        "{calls:#?}"
    );
    assert!(calls[0].key.contains("JSON Schema"), "{}", calls[0].key);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_during_validation_does_not_call_the_model_again() {
    let prompts = prompts();
    let dir = prompts.dir.clone();
    let mut app = TestApp::builder()
        .without_worker()
        .configure(move |s| {
            s.prompts_dir = dir;
            s.worker.lease_secs = 3;
        })
        .spawn()
        .await;
    // This worker validates only after a pause far longer than the test:
    // it is surely validating when it is killed.
    let mut slow = app.settings.clone();
    slow.worker.validate_delay_ms = 600_000;
    let mut worker = llmq_tests::WorkerProcess::spawn(&slow, "validating");

    let text = unique("killed while validating");
    let id = submit(&app, "summary-json", &text).await;
    let uuid = Uuid::parse_str(&id).unwrap();
    // The generate checkpoint is committed: the answer is on the row.
    let checkpointed = app
        .eventually(Duration::from_secs(30), || async {
            app.db()
                .await
                .query_one(
                    "SELECT output IS NOT NULL FROM executions WHERE id = $1",
                    &[&uuid],
                )
                .await
                .unwrap()
                .get::<_, bool>(0)
        })
        .await;
    assert!(
        checkpointed,
        "no checkpoint; worker log:\n{}",
        worker.log_tail(40)
    );
    assert_eq!(app.fake.calls_containing(&text).len(), 1);
    worker.sigkill().await;

    // Another worker (without the pause) resumes once the lease expires.
    app.start_worker().await;
    let execution = app.wait_until_terminal(&id, Duration::from_secs(60)).await;

    assert_eq!(execution["status"], "succeeded", "{execution:#}");
    assert_eq!(execution["attempts"], 2, "{execution:#}");
    assert!(execution["output"]["summary"].is_string(), "{execution:#}");
    assert_eq!(
        app.fake.calls_containing(&text).len(),
        1,
        "the model was called again for the answer the checkpoint holds"
    );
    assert_eq!(
        kinds(&app, &id).await,
        [
            "render succeeded",
            "generate succeeded",
            "validate succeeded",
            "finalize succeeded"
        ]
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repairs_spent_by_earlier_attempts_count_against_the_bound() {
    let prompts = prompts();
    prompts.add(
        "sentiment-once",
        1,
        &SENTIMENT.replace(
            "[output]\ntype = \"json\"\n",
            "[output]\ntype = \"json\"\nmax_repairs = 1\n",
        ),
    );
    let dir = prompts.dir.clone();
    let mut app = TestApp::builder()
        .without_worker()
        .configure(move |s| s.prompts_dir = dir)
        .configure(with_mode(StructuredOutput::JsonSchema))
        .spawn()
        .await;
    let text = unique("resumed after its repair");
    let id = submit(&app, "sentiment-once", &text).await;
    let uuid = Uuid::parse_str(&id).unwrap();
    // As a first attempt leaves it when its worker dies right after the
    // checkpoint of its one repair, whose answer is still invalid.
    let db = app.db().await;
    db.execute(
        "UPDATE executions SET attempts = 1, output = '{\"mood\": \"meh\"}', \
           prompt_tokens = 20, completion_tokens = 6, total_tokens = 26 WHERE id = $1",
        &[&uuid],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO execution_steps (execution_id, seq, kind, attempt, status, started_at, finished_at, error_code, error_message, retryable) \
         VALUES ($1, 1, 'render', 1, 'succeeded', now(), now(), NULL, NULL, NULL), \
                ($1, 2, 'generate', 1, 'succeeded', now(), now(), NULL, NULL, NULL), \
                ($1, 3, 'validate', 1, 'failed', now(), now(), 'invalid_output', 'output.sentiment: required property missing', true), \
                ($1, 4, 'generate', 1, 'succeeded', now(), now(), NULL, NULL, NULL)",
        &[&uuid],
    )
    .await
    .unwrap();

    app.start_worker().await;
    let execution = app.wait_until_terminal(&id, Duration::from_secs(30)).await;

    // The one repair allowed was spent: the resumed run checks the
    // checkpointed answer and fails, without a model call.
    assert_eq!(execution["status"], "failed", "{execution:#}");
    assert_eq!(execution["error"]["code"], "invalid_output");
    let message = execution["error"]["message"].as_str().unwrap();
    assert!(message.contains("after 1 repair(s)"), "{message}");
    assert!(message.contains("output.mood"), "{message}");
    assert!(
        app.fake.calls_containing(&text).is_empty(),
        "the model was called"
    );
    assert_eq!(execution["usage"]["total_tokens"], 26, "{execution:#}");
    app.cleanup().await;
}
