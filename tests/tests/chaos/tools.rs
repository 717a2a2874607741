//! Tool calls under SIGKILL: a call that succeeded is never made again
//! when the execution resumes (its recorded result is reused); a call cut
//! off by the kill is made again only if the tool is idempotent, else the
//! execution fails `tool_outcome_unknown`. The fake tool server counts the
//! calls per `Idempotency-Key`.

use std::time::Duration;

use llmq_tests::{TempPrompts, TestApp, ToolServer, WorkerProcess};
use serde_json::json;
use uuid::Uuid;

use super::support;

const BOOKER: &str = r#"description = "Books things with tools."
model = "gpt-4o-mini"
template = "{{ text }}"
tools = ["book", "lookup"]

[input_schema]
type = "object"
required = ["text"]

[input_schema.properties.text]
type = "string"
"#;

struct Setup {
    app: TestApp,
    tools: ToolServer,
    _prompts: TempPrompts,
}

async fn setup(configure: impl FnOnce(&ToolServer)) -> Setup {
    let tools = ToolServer::start().await.unwrap();
    // `book` has a side effect a repeat would double; `lookup` has none.
    tools
        .define("book", "")
        .define("lookup", "idempotent = true\ntimeout_ms = 60000");
    configure(&tools);
    let prompts = TempPrompts::with_shipped();
    prompts.add("booker", 1, BOOKER);
    let (prompts_dir, tools_dir) = (prompts.dir.clone(), tools.tools_dir.clone());
    let app = TestApp::builder()
        .without_worker()
        .configure(move |s| {
            s.prompts_dir = prompts_dir;
            s.tools_dir = tools_dir;
            // A killed worker's lease runs out quickly.
            s.worker.lease_secs = 2;
            s.republish_after_secs = 1;
            s.worker.relay_interval_ms = 100;
        })
        .spawn()
        .await;
    Setup {
        app,
        tools,
        _prompts: prompts,
    }
}

async fn submit(app: &TestApp, text: &str) -> String {
    let text = format!("{text} ({})", Uuid::now_v7().simple());
    let body = json!({"prompt": "booker", "input": {"text": text}});
    app.submit_accepted(&body).await["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Waits until the execution has a `kind` step with `status`.
async fn wait_for_step(app: &TestApp, id: &str, kind: &str, status: &str) -> bool {
    app.eventually(Duration::from_secs(15), || async {
        support::steps_of(app, id)
            .await
            .iter()
            .any(|s| s.kind == kind && s.status == status)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_after_a_tool_call_succeeded_does_not_call_it_again_on_resume() {
    let _shared = support::shared().await;
    let s = setup(|_| {}).await;
    let mut first: WorkerProcess = s.app.spawn_worker_process("tools-a");
    // The model's second turn (after the tool result) is slow the first
    // time it is asked, so the kill lands after the call succeeded.
    let id = submit(
        &s.app,
        r#"Book it [[tool:book {"city":"Oslo"}]] [[fault:latency=30000:from_round=2:times=1]]"#,
    )
    .await;
    assert!(
        wait_for_step(&s.app, &id, "tool:book", "succeeded").await,
        "the tool call did not succeed; worker log:\n{}",
        first.log_tail(40)
    );
    let key = format!("llmq-{id}-1-0");
    assert!(
        s.app
            .eventually(Duration::from_secs(10), || async {
                support::steps_of(&s.app, &id)
                    .await
                    .iter()
                    .filter(|st| st.kind == "generate")
                    .count()
                    == 2
            })
            .await,
        "the second model turn did not start"
    );
    first.sigkill().await;
    let _second = s.app.spawn_worker_process("tools-b");
    let done = s
        .app
        .wait_until_terminal(&id, Duration::from_secs(25))
        .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        s.tools.calls_per_key().get(&key),
        Some(&1),
        "the tool was called again: {:?}",
        s.tools.calls()
    );
    // The resumed run reused the first turn too: one succeeded turn with
    // tool calls, then the answer.
    let steps = support::steps_of(&s.app, &id).await;
    let succeeded_turns = steps
        .iter()
        .filter(|st| st.kind == "generate" && st.status == "succeeded")
        .count();
    assert_eq!(succeeded_turns, 2, "{steps:#?}");
    assert!(done["output"].as_str().unwrap().contains("(tool result: "));
    s.app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_during_a_non_idempotent_call_ends_tool_outcome_unknown() {
    let _shared = support::shared().await;
    let s = setup(|t| {
        t.latency_first("book", &[30_000]);
    })
    .await;
    let mut first = s.app.spawn_worker_process("tools-a");
    let id = submit(&s.app, r#"Book it [[tool:book {"city":"Oslo"}]]"#).await;
    // The call has reached the tool, and its "started" row is committed.
    assert!(
        s.app
            .eventually(Duration::from_secs(15), || async {
                s.tools.calls().len() == 1
            })
            .await,
        "the tool was not called; worker log:\n{}",
        first.log_tail(40)
    );
    assert!(wait_for_step(&s.app, &id, "tool:book", "running").await);
    first.sigkill().await;
    let _second = s.app.spawn_worker_process("tools-b");
    let done = s
        .app
        .wait_until_terminal(&id, Duration::from_secs(25))
        .await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "tool_outcome_unknown", "{done}");
    assert_eq!(s.tools.calls().len(), 1, "the call was not made again");
    let steps = support::steps_of(&s.app, &id).await;
    assert!(
        steps
            .iter()
            .any(|st| st.kind == "tool:book" && st.error_code.as_deref() == Some("worker_lost")),
        "{steps:#?}"
    );
    s.app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_during_an_idempotent_call_makes_it_again_with_the_same_key() {
    let _shared = support::shared().await;
    let s = setup(|t| {
        t.latency_first("lookup", &[30_000]);
    })
    .await;
    let mut first = s.app.spawn_worker_process("tools-a");
    let id = submit(&s.app, r#"Look it up [[tool:lookup {"city":"Oslo"}]]"#).await;
    assert!(
        s.app
            .eventually(Duration::from_secs(15), || async {
                s.tools.calls().len() == 1
            })
            .await,
        "the tool was not called; worker log:\n{}",
        first.log_tail(40)
    );
    first.sigkill().await;
    let _second = s.app.spawn_worker_process("tools-b");
    let done = s
        .app
        .wait_until_terminal(&id, Duration::from_secs(25))
        .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let key = format!("llmq-{id}-1-0");
    assert_eq!(
        s.tools.calls_per_key().get(&key),
        Some(&2),
        "{:?}",
        s.tools.calls()
    );
    s.app.cleanup().await;
}
