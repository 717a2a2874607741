//! The worker's step pipeline at its edges: an output contract that the
//! model's answer breaks, a stored prompt version that does not compile,
//! an execution claimed more often than its retry policy allows, and a
//! worker configured with a role it does not know.

use std::path::{Path, PathBuf};
use std::time::Duration;

use llmq_tests::app::prompts_dir;
use llmq_tests::TestApp;
use serde_json::{json, Value};
use uuid::Uuid;

/// A copy of `prompts/` plus two JSON-output prompts, removed on drop:
/// `extract` (repairs allowed) and `extract_once`, which allows no repair.
struct JsonPrompts(PathBuf);

impl JsonPrompts {
    fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("llmq-json-prompts-{}", Uuid::now_v7().simple()));
        copy_dir(&prompts_dir(), &dir);
        for (name, output) in [("extract", ""), ("extract_once", "max_repairs = 0\n")] {
            std::fs::create_dir_all(dir.join(name)).unwrap();
            std::fs::write(
                dir.join(name).join("v1.toml"),
                format!(
                    "model = \"gpt-4o-mini\"\ntemplate = \"Extract: {{{{ text }}}}\"\n\
                     [input_schema]\ntype = \"object\"\nrequired = [\"text\"]\n\n\
                     [output]\ntype = \"json\"\n{output}"
                ),
            )
            .unwrap();
        }
        Self(dir)
    }
}

impl Drop for JsonPrompts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

fn unique(what: &str) -> String {
    format!("{what} {}", Uuid::now_v7().simple())
}

async fn kinds(app: &TestApp, id: &str) -> Vec<String> {
    app.step_rows(id)
        .await
        .into_iter()
        .map(|(_, kind, status)| format!("{kind} {status}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_prompt_fails_with_invalid_output_when_the_answer_is_not_json() {
    let prompts = JsonPrompts::new();
    let dir = prompts.0.clone();
    let app = TestApp::builder()
        .configure(move |s| s.prompts_dir = dir)
        .spawn()
        .await;

    // A prompt that allows no repair: the one answer is final.
    let text = unique("[[fault:not_json]] not json");
    let body = json!({"prompt": "extract_once", "input": {"text": text}});
    let id = app.submit_accepted(&body).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let execution = app.wait_until_terminal(&id, Duration::from_secs(20)).await;

    assert_eq!(execution["status"], "failed", "{execution:#}");
    assert_eq!(
        execution["error"]["code"], "invalid_output",
        "{execution:#}"
    );
    assert_eq!(execution["output"], Value::Null);
    assert_eq!(
        app.fake.calls_containing(&text).len(),
        1,
        "the model is not called again"
    );
    assert_eq!(
        kinds(&app, &id).await,
        [
            "render succeeded",
            "generate succeeded",
            "validate failed",
            "finalize succeeded"
        ]
    );

    // A JSON answer passes validation and is kept as JSON.
    let text = unique("json");
    let body = json!({"prompt": "extract", "input": {"text": text}});
    let id = app.submit_accepted(&body).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let execution = app.wait_until_terminal(&id, Duration::from_secs(20)).await;
    assert_eq!(execution["status"], "succeeded", "{execution:#}");
    assert!(execution["output"].is_object(), "{execution:#}");
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
async fn a_prompt_version_that_does_not_compile_fails_the_execution_at_once() {
    let mut app = TestApp::builder().without_worker().spawn().await;
    let text = unique("broken prompt");
    let id = app.submit_summary(&text).await;
    // A stored version the worker cannot compile (an unclosed tag).
    let db = app.db().await;
    db.execute(
        "INSERT INTO prompt_versions (prompt_name, version, definition, content_hash) \
         SELECT prompt_name, 99, jsonb_set(definition, '{template}', '\"{{ unclosed\"'), 'broken' \
         FROM prompt_versions WHERE prompt_name = 'summarize' AND version = 1",
        &[],
    )
    .await
    .unwrap();
    db.execute(
        "UPDATE executions SET prompt_version = 99 WHERE id = $1",
        &[&Uuid::parse_str(&id).unwrap()],
    )
    .await
    .unwrap();

    app.start_worker().await;
    let execution = app.wait_until_terminal(&id, Duration::from_secs(20)).await;

    assert_eq!(execution["status"], "failed", "{execution:#}");
    assert_eq!(
        execution["error"]["code"], "prompt_invalid",
        "{execution:#}"
    );
    let message = execution["error"]["message"].as_str().unwrap();
    assert!(message.contains("summarize v99"), "{message}");
    assert_eq!(
        execution["attempts"], 1,
        "failed on its first delivery: {execution:#}"
    );
    assert!(app.fake.calls_containing(&text).is_empty());
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_claimed_past_its_attempts_bound_fails_without_calling_the_model() {
    let mut app = TestApp::builder()
        .without_worker()
        .configure(|s| s.worker.max_attempts = 4)
        .spawn()
        .await;
    let text = unique("too many claims");
    let id = app.submit_summary(&text).await;
    // As after a long series of runs that never reached a retry decision.
    app.db()
        .await
        .execute(
            "UPDATE executions SET attempts = 6 WHERE id = $1",
            &[&Uuid::parse_str(&id).unwrap()],
        )
        .await
        .unwrap();

    app.start_worker().await;
    let execution = app.wait_until_terminal(&id, Duration::from_secs(20)).await;

    assert_eq!(execution["status"], "failed", "{execution:#}");
    assert_eq!(
        execution["error"]["code"], "attempts_exhausted",
        "{execution:#}"
    );
    assert_eq!(execution["attempts"], 7);
    assert!(
        app.fake.calls_containing(&text).is_empty(),
        "the model was called"
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_an_unknown_role_does_not_start() {
    let app = TestApp::builder().without_worker().spawn().await;
    let mut settings = app.settings.clone();
    settings.worker.roles = vec!["executions".into(), "realy".into()];

    let built = llmq_worker::Worker::build(settings, Default::default()).await;

    let error = built.err().expect("an unknown role is refused").to_string();
    assert!(
        error.contains("\"realy\"") && error.contains("executions, relay"),
        "{error}"
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_run_reuses_the_generate_checkpoint_and_runs_only_what_follows() {
    let prompts = JsonPrompts::new();
    let dir = prompts.0.clone();
    let mut app = TestApp::builder()
        .without_worker()
        .configure(move |s| s.prompts_dir = dir)
        .spawn()
        .await;
    let text = unique("resumed");
    let body = json!({"prompt": "extract", "input": {"text": text}});
    let id = app.submit_accepted(&body).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let uuid = Uuid::parse_str(&id).unwrap();
    // As a first attempt leaves it when its worker dies after the generate
    // checkpoint and before validate: the result on the row, the steps
    // committed, the lease expired and the row requeued.
    let db = app.db().await;
    db.execute(
        "UPDATE executions SET attempts = 1, output = '{\"kept\": \"from the checkpoint\"}', \
           prompt_tokens = 7, completion_tokens = 3, total_tokens = 10 WHERE id = $1",
        &[&uuid],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO execution_steps (execution_id, seq, kind, attempt, status, started_at, finished_at, output) \
         VALUES ($1, 1, 'render', 1, 'succeeded', now(), now(), '{}'), \
                ($1, 2, 'generate', 1, 'succeeded', now(), now(), '{\"masked\": true}')",
        &[&uuid],
    )
    .await
    .unwrap();

    app.start_worker().await;
    let execution = app.wait_until_terminal(&id, Duration::from_secs(20)).await;

    assert_eq!(execution["status"], "succeeded", "{execution:#}");
    assert_eq!(execution["attempts"], 2);
    assert_eq!(execution["output"], json!({"kept": "from the checkpoint"}));
    assert_eq!(execution["usage"]["total_tokens"], 10, "{execution:#}");
    assert!(
        app.fake.calls_containing(&text).is_empty(),
        "the model was paid twice"
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
