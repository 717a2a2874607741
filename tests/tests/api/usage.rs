//! `GET /v1/usage`: the rollup the workers keep equals the sum over the
//! executions themselves, per group, with the configured prices; another
//! organisation sees only its own.

use std::time::Duration;

use llmq_shared::config::ModelSettings;
use llmq_tests::TestApp;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn usage(app: &TestApp, key: &str, group_by: &str) -> Value {
    let response = app
        .get_with_key(&format!("/v1/usage?group_by={group_by}"), Some(key))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

fn group<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == name)
        .unwrap_or_else(|| panic!("no group {name:?} in {report:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_figures_equal_the_sum_over_executions() {
    let app = TestApp::builder()
        .configure(|s| {
            s.models.insert(
                "gpt-4o-mini".into(),
                ModelSettings {
                    prompt_price_per_mtok: 150.0,
                    completion_price_per_mtok: 600.0,
                    ..Default::default()
                },
            );
        })
        .spawn()
        .await;
    app.create_org("other-org").await;
    let other_key = app.create_key("other-org", &["*"]).await;
    let run = uuid::Uuid::now_v7().simple().to_string();
    let mut ids = Vec::new();
    for (i, user) in ["ann", "ann", "ann", "bob", "bob"].iter().enumerate() {
        let body = json!({"prompt": "summarize", "user": user,
            "input": {"text": format!("usage {run} number {i} of a longer text")}});
        ids.push(
            app.submit_accepted(&body).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // A failure counts too (with no tokens: the provider refused it).
    let body = json!({"prompt": "summarize", "user": "bob",
        "input": {"text": format!("usage {run} refused [[fault:400]]")}});
    ids.push(
        app.submit_accepted(&body).await["id"]
            .as_str()
            .unwrap()
            .to_string(),
    );
    let done = app.wait_all_terminal(&ids, Duration::from_secs(20)).await;
    // Another organisation's execution is not in this one's figures.
    let body = json!({"prompt": "summarize", "input": {"text": format!("usage {run} elsewhere")}});
    let response = app
        .client
        .post(app.url("/v1/executions"))
        .bearer_auth(&other_key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let other: Value = response.json().await.unwrap();
    let other_id = other["id"].as_str().unwrap().to_string();

    let sum = |rows: &[&Value], field: &str| -> i64 {
        rows.iter()
            .map(|e| e["usage"][field].as_i64().unwrap_or(0))
            .sum()
    };
    let all: Vec<&Value> = done.iter().collect();
    let ann: Vec<&Value> = done[..3].iter().collect();
    let cost: f64 = done
        .iter()
        .map(|e| e["usage"]["cost_usd"].as_f64().unwrap_or(0.0))
        .sum();
    for e in &done[..5] {
        assert_eq!(e["status"], "succeeded", "{e:#}");
        let u = &e["usage"];
        let expected = (u["prompt_tokens"].as_f64().unwrap() * 150.0
            + u["completion_tokens"].as_f64().unwrap() * 600.0)
            / 1e6;
        let cost = u["cost_usd"].as_f64().unwrap();
        assert!((cost - expected).abs() < 1e-12, "{u}: {expected}");
    }
    assert_eq!(done[5]["status"], "failed");

    let by_model = usage(&app, &app.api_key, "model").await;
    let model = group(&by_model, "gpt-4o-mini");
    assert_eq!(model["executions"], 6, "{by_model:#}");
    assert_eq!(model["succeeded"], 5);
    assert_eq!(model["failed"], 1);
    assert_eq!(model["cached"], 0);
    assert_eq!(model["prompt_tokens"], sum(&all, "prompt_tokens"));
    assert_eq!(model["completion_tokens"], sum(&all, "completion_tokens"));
    assert_eq!(model["total_tokens"], sum(&all, "total_tokens"));
    assert!((model["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-9);
    assert_eq!(by_model["total"]["executions"], 6);

    let by_user = usage(&app, &app.api_key, "user").await;
    assert_eq!(group(&by_user, "ann")["executions"], 3);
    assert_eq!(
        group(&by_user, "ann")["total_tokens"],
        sum(&ann, "total_tokens")
    );
    assert_eq!(group(&by_user, "bob")["executions"], 3);
    let by_key = usage(&app, &app.api_key, "key").await;
    assert_eq!(group(&by_key, "config")["executions"], 6);
    let by_version = usage(&app, &app.api_key, "version").await;
    let version = done[0]["prompt"]["version"].as_i64().unwrap();
    assert_eq!(
        group(&by_version, &format!("summarize v{version}"))["executions"],
        6
    );
    let by_day = usage(&app, &app.api_key, "day").await;
    assert_eq!(by_day["total"]["total_tokens"], sum(&all, "total_tokens"));

    let path = format!("/v1/executions/{other_id}?wait=10");
    let mut other_done = Value::Null;
    for _ in 0..5 {
        other_done = app
            .get_with_key(&path, Some(&other_key))
            .await
            .json()
            .await
            .unwrap();
        if llmq_tests::is_terminal(&other_done) {
            break;
        }
    }
    assert_eq!(other_done["status"], "succeeded", "{other_done:#}");
    let theirs = usage(&app, &other_key, "prompt").await;
    assert_eq!(theirs["total"]["executions"], 1, "{theirs:#}");
    assert_eq!(
        theirs["total"]["total_tokens"],
        other_done["usage"]["total_tokens"]
    );
    // Bad questions are 400s in the error shape.
    let response = app.get_authorized("/v1/usage?group_by=colour").await;
    llmq_tests::assert_error(response, StatusCode::BAD_REQUEST, "bad_request").await;
    app.cleanup().await;
}
