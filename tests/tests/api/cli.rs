//! The `llmq` CLI as a subprocess against a real API: its commands, its
//! `--json` output and the exit codes scripts rely on (0 ok, 2 usage,
//! 3 API error, 4 unreachable, 5 execution failed).

use std::path::PathBuf;
use std::process::Output;

use llmq_tests::TestApp;
use serde_json::Value;

const ADMIN: &str = "test-admin-key";

/// `target/<profile>/llmq`, beside the test executable's `deps/`.
fn llmq_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let binary = dir.join(format!("llmq{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.is_file(),
        "{} is missing: build it with `cargo build --workspace --all-targets`",
        binary.display()
    );
    binary
}

async fn llmq(app: &TestApp, key: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(llmq_binary())
        .args(args)
        .env("LLMQ_URL", &app.address)
        .env("LLMQ_API_KEY", key)
        .output()
        .await
        .expect("running llmq")
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("llmq exited by a signal")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(out)))
}

async fn spawn() -> TestApp {
    TestApp::builder()
        .configure(|s| s.api.admin_key = ADMIN.into())
        .spawn()
        .await
}

#[tokio::test]
async fn the_cli_pushes_shows_diffs_promotes_rolls_back_and_reports_stats() {
    let app = spawn().await;
    let key = app.api_key.clone();

    let list = llmq(&app, &key, &["prompts", "list"]).await;
    assert_eq!(code(&list), 0);
    assert!(stdout(&list).contains("summarize") && stdout(&list).contains("production"));
    let list = json(&llmq(&app, &key, &["--json", "prompts", "list"]).await);
    assert_eq!(list["prompts"][3]["name"], "summarize");

    // Push a file laid out as in prompts/: the name is its directory's.
    let dir = std::env::temp_dir().join(format!("llmq-cli-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(dir.join("summarize")).unwrap();
    let file = dir.join("summarize").join("next.toml");
    std::fs::write(
        &file,
        "model = \"gpt-4o-mini\"\ntemplate = \"Briefly: {{ text }}\"\n[params]\ntemperature = 0.7\n\
         [input_schema]\ntype = \"object\"\nrequired = [\"text\"]\n",
    )
    .unwrap();
    let file = file.to_str().unwrap().to_string();
    let pushed = llmq(&app, &key, &["prompts", "push", &file]).await;
    assert_eq!(code(&pushed), 0, "{pushed:?}");
    assert_eq!(stdout(&pushed).trim(), "created summarize v3");
    let again = json(&llmq(&app, &key, &["--json", "prompts", "push", &file]).await);
    assert_eq!(again["version"], 3);
    assert_eq!(again["created"], false);

    let diff = llmq(&app, &key, &["prompts", "diff", "summarize", "2", "3"]).await;
    assert_eq!(code(&diff), 0);
    assert!(
        stdout(&diff).contains("+ template: \"Briefly: {{ text }}\""),
        "{}",
        stdout(&diff)
    );
    let show = json(
        &llmq(
            &app,
            &key,
            &["--json", "prompts", "show", "summarize", "--version", "3"],
        )
        .await,
    );
    assert_eq!(show["source"], "api");

    // production is protected: the ordinary key is refused (3), the admin
    // key promotes, and rolls back.
    let refused = llmq(
        &app,
        &key,
        &["prompts", "promote", "summarize", "production", "3"],
    )
    .await;
    assert_eq!(code(&refused), 3);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("admin key"));
    let promoted = llmq(
        &app,
        ADMIN,
        &[
            "prompts",
            "promote",
            "summarize",
            "production",
            "3",
            "--reason",
            "cli",
        ],
    )
    .await;
    assert_eq!(code(&promoted), 0, "{promoted:?}");
    assert_eq!(stdout(&promoted).trim(), "summarize production: v2 -> v3");
    let ran = json(
        &llmq(
            &app,
            &key,
            &[
                "--json",
                "run",
                "summarize",
                "--input",
                r#"{"text": "hello"}"#,
            ],
        )
        .await,
    );
    assert_eq!(ran["prompt"]["version"], 3);
    assert_eq!(ran["status"], "succeeded");
    let split = llmq(
        &app,
        ADMIN,
        &["prompts", "promote", "summarize", "staging", "2:90,3:10"],
    )
    .await;
    assert_eq!(
        stdout(&split).trim(),
        "summarize staging: (new) -> v2:90,v3:10"
    );
    let back = llmq(
        &app,
        ADMIN,
        &["prompts", "rollback", "summarize", "production"],
    )
    .await;
    assert_eq!(code(&back), 0);
    assert_eq!(stdout(&back).trim(), "summarize production: v3 -> v2");
    let history = json(
        &llmq(
            &app,
            &key,
            &["--json", "prompts", "history", "summarize", "production"],
        )
        .await,
    );
    assert_eq!(history["moves"].as_array().unwrap().len(), 3, "{history}");
    assert_eq!(history["moves"][1]["reason"], "cli");
    assert_eq!(history["moves"][2]["actor"], "sync");
    let shown = llmq(&app, &key, &["prompts", "show", "summarize"]).await;
    assert!(stdout(&shown).contains("v2:90,v3:10"), "{}", stdout(&shown));

    let stats = json(&llmq(&app, &key, &["--json", "prompts", "stats", "summarize"]).await);
    assert_eq!(stats["versions"][0]["version"], 3);
    assert_eq!(stats["versions"][0]["executions"], 1);
    let table = llmq(&app, &key, &["prompts", "stats", "summarize"]).await;
    assert!(stdout(&table).contains("100.0%"), "{}", stdout(&table));

    let _ = std::fs::remove_dir_all(&dir);
    app.cleanup().await;
}

#[tokio::test]
async fn the_cli_run_follows_an_execution_and_its_exit_code_says_how_it_ended() {
    let app = spawn().await;
    let key = app.api_key.clone();
    let ok = llmq(
        &app,
        &key,
        &[
            "run",
            "summarize",
            "--input",
            r#"{"text": "The quick brown fox."}"#,
        ],
    )
    .await;
    assert_eq!(code(&ok), 0, "{ok:?}");
    let text = stdout(&ok);
    let first = text.lines().next().unwrap();
    assert!(first.ends_with("queued (summarize v2)"), "{text}");
    assert!(text.lines().any(|l| l.ends_with(" succeeded")), "{text}");
    // It followed the event stream: each finished step has a line.
    for kind in ["render", "generate", "finalize"] {
        assert!(
            text.lines()
                .any(|l| l.contains(&format!(" step {kind} succeeded"))),
            "{text}"
        );
    }

    let failed = llmq(
        &app,
        &key,
        &[
            "run",
            "summarize",
            "--input",
            r#"{"text": "no [[fault:400]]"}"#,
        ],
    )
    .await;
    assert_eq!(code(&failed), 5, "{failed:?}");
    assert!(String::from_utf8_lossy(&failed.stderr).contains("failed"));

    let not_json = llmq(&app, &key, &["run", "summarize", "--input", "{text"]).await;
    assert_eq!(code(&not_json), 2);
    let usage = llmq(&app, &key, &["prompts", "promote", "summarize"]).await;
    assert_eq!(code(&usage), 2);
    let invalid = llmq(
        &app,
        &key,
        &["run", "summarize", "--input", r#"{"txt": 1}"#],
    )
    .await;
    assert_eq!(code(&invalid), 3);
    assert!(String::from_utf8_lossy(&invalid.stderr).contains("invalid_input"));
    let unknown = llmq(&app, &key, &["prompts", "show", "nope"]).await;
    assert_eq!(code(&unknown), 3);
    let bad_key = llmq(&app, "wrong", &["prompts", "list"]).await;
    assert_eq!(code(&bad_key), 3);
    let unreachable = tokio::process::Command::new(llmq_binary())
        .args(["--url", "http://127.0.0.1:9", "prompts", "list"])
        .output()
        .await
        .unwrap();
    assert_eq!(code(&unreachable), 4);
    app.cleanup().await;
}
