//! The OpenAPI document: clients generate code from it, so every route and
//! its error shape must be in it, and what it says must be what the API
//! answers.

use std::collections::BTreeMap;

use llmq_tests::TestApp;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

pub(super) async fn document(app: &TestApp) -> Value {
    let response = app.openapi().await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

#[tokio::test]
async fn the_openapi_document_lists_every_route_the_app_registers() {
    let app = TestApp::builder().without_worker().spawn().await;
    let doc = document(&app).await;
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc["openapi"]
    );

    // The App registers exactly the routes of this list (one macro builds
    // both), so comparing it with the served document covers every route.
    let registered: BTreeMap<String, Vec<String>> = llmq_api::routes::registered_routes()
        .into_iter()
        .map(|(path, mut methods)| {
            methods.sort();
            (path, methods)
        })
        .collect();
    assert!(registered.contains_key("/v1/executions/{id}/cancel"));
    let paths = doc["paths"].as_object().expect("paths");
    let documented: BTreeMap<String, Vec<String>> = paths
        .iter()
        .map(|(path, item)| {
            let mut methods: Vec<String> = item
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| {
                    [
                        "get", "post", "put", "patch", "delete", "head", "options", "trace",
                    ]
                    .contains(&k.as_str())
                })
                .map(|k| k.to_uppercase())
                .collect();
            methods.sort();
            (path.clone(), methods)
        })
        .collect();
    assert_eq!(documented, registered);

    // And each documented route is really served at that path and method
    // (not the fallback's "no such route" or 405).
    let some_id = "0193a3c4-0000-7000-8000-000000000000";
    for (path, methods) in &registered {
        for method in methods {
            let url = app.url(&path.replace("{id}", some_id));
            let response = app
                .client
                .request(Method::from_bytes(method.as_bytes()).unwrap(), url)
                .bearer_auth(&app.api_key)
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            let status = response.status();
            // An event stream does not end: its head says enough.
            let streaming = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
            let body = if streaming {
                String::new()
            } else {
                response.text().await.unwrap()
            };
            assert_ne!(
                status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}: {body}"
            );
            assert!(!body.contains("no such route"), "{method} {path}: {body}");
        }
    }

    // Errors are described with the shared error schema.
    let submit = &paths["/v1/executions"]["post"];
    for status in [
        "400", "401", "404", "408", "409", "413", "415", "422", "503",
    ] {
        let schema = &submit["responses"][status]["content"]["application/json"]["schema"]["$ref"];
        assert_eq!(
            schema, "#/components/schemas/ErrorBody",
            "POST /v1/executions {status}"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    // The resource links its event stream, which is served.
    assert!(doc["components"]["schemas"]["Links"]["properties"]
        .get("events")
        .is_some());
    let prompt = &doc["components"]["schemas"]["SubmitExecution"]["properties"]["prompt"];
    assert_eq!(prompt["pattern"], "^[a-z0-9._-]{1,64}$");

    app.cleanup().await;
}

/// Validates a real answer against the schema the document gives for its
/// path, method and status.
pub(super) async fn check(
    doc: &Value,
    path: &str,
    method: &str,
    response: reqwest::Response,
) -> Value {
    let status = response.status().as_u16().to_string();
    let body: Value = response.json().await.unwrap();
    let described = &doc["paths"][path][method]["responses"][&status];
    assert!(
        described.is_object(),
        "{method} {path} answered {status}, which the document does not describe: {body}"
    );
    let schema = &described["content"]["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "{method} {path} {status} has no JSON schema"
    );
    let root = json!({"components": doc["components"], "allOf": [schema]});
    let validator = jsonschema::validator_for(&root).expect("the document's schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(&body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {status} disagrees with the document: {errors:?}\n{body:#}"
    );
    body
}

#[tokio::test]
async fn real_answers_of_every_route_match_the_document() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    let item = "/v1/executions/{id}";

    // The check can fail: a wrong shape is caught.
    let resource =
        json!({"components": doc["components"], "$ref": "#/components/schemas/ExecutionResource"});
    let validator = jsonschema::validator_for(&resource).unwrap();
    assert!(!validator.is_valid(&json!({"id": 3})));
    assert!(!validator.is_valid(&json!({"output": 1})));

    let submitted = check(
        &doc,
        "/v1/executions",
        "post",
        app.submit(&json!({"prompt": "summarize", "input": {"text": "hello"}}))
            .await,
    )
    .await;
    let id = submitted["id"].as_str().unwrap().to_string();
    let finished = app
        .wait_until_terminal(&id, std::time::Duration::from_secs(60))
        .await;
    assert_eq!(finished["status"], "succeeded", "{finished}");
    // A text prompt's output is a string.
    assert!(finished["output"].is_string(), "{finished}");
    check(&doc, item, "get", app.get_execution(&id).await).await;
    check(
        &doc,
        "/v1/executions/{id}/steps",
        "get",
        app.steps(&id).await,
    )
    .await;
    let cancel = |id: &str| {
        app.client
            .post(app.url(&format!("/v1/executions/{id}/cancel")))
            .bearer_auth(&app.api_key)
            .send()
    };
    check(
        &doc,
        "/v1/executions/{id}/cancel",
        "post",
        cancel(&id).await.unwrap(),
    )
    .await;

    let unknown = "0193a3c4-0000-7000-8000-000000000000";
    check(&doc, item, "get", app.get_execution(unknown).await).await;
    check(
        &doc,
        item,
        "get",
        app.get_authorized(&format!("/v1/executions/{id}?wait=-1"))
            .await,
    )
    .await;
    check(
        &doc,
        item,
        "get",
        app.get_unauthenticated(&format!("/v1/executions/{id}"))
            .await,
    )
    .await;
    check(
        &doc,
        "/v1/executions/{id}/steps",
        "get",
        app.steps(unknown).await,
    )
    .await;
    check(
        &doc,
        "/v1/executions/{id}/cancel",
        "post",
        cancel(unknown).await.unwrap(),
    )
    .await;
    for bad in [
        json!({"prompt": "summarize", "input": {"text": 3}}),
        json!({"prompt": "no-such-prompt", "input": {}}),
        json!({"prompt": "summarize", "input": {"text": "x"}, "stream": true}),
        json!({"prompt": "summarize", "input": {"text": "x"}, "priority": 12}),
    ] {
        check(&doc, "/v1/executions", "post", app.submit(&bad).await).await;
    }
    check(
        &doc,
        "/v1/executions",
        "post",
        app.submit_with_raw_body("{}", "text/plain").await,
    )
    .await;
    let events = "/v1/executions/{id}/events";
    check(
        &doc,
        events,
        "get",
        app.execution_events(unknown, None).await,
    )
    .await;
    check(
        &doc,
        events,
        "get",
        app.execution_events(&id, Some("x")).await,
    )
    .await;
    for path in [events, "/v1/events"] {
        assert!(
            doc["paths"][path]["get"]["responses"]["200"]["content"]["text/event-stream"]
                .is_object(),
            "{path} is not documented as an event stream"
        );
    }
    check(&doc, "/readyz", "get", app.readyz().await).await;
    app.cleanup().await;
}

#[tokio::test]
async fn real_answers_of_the_prompt_registry_routes_match_the_document() {
    let admin = "openapi-admin-key";
    let app = TestApp::builder()
        .configure(move |s| s.api.admin_key = admin.into())
        .spawn()
        .await;
    let doc = document(&app).await;
    let send = |method: Method, path: &str, key: &str, body: Option<Value>| {
        let mut req = app.client.request(method, app.url(path)).bearer_auth(key);
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send()
    };
    let key = app.api_key.clone();
    let definition = json!({"model": "gpt-4o-mini", "template": "{{ text }}",
        "input_schema": {"type": "object", "required": ["text"]}});
    for (path, doc_path, method, key, body) in [
        ("/v1/prompts", "/v1/prompts", Method::GET, &key, None),
        (
            "/v1/prompts/summarize",
            "/v1/prompts/{name}",
            Method::GET,
            &key,
            None,
        ),
        (
            "/v1/prompts/nope",
            "/v1/prompts/{name}",
            Method::GET,
            &key,
            None,
        ),
        (
            "/v1/prompts/summarize/versions",
            "/v1/prompts/{name}/versions",
            Method::POST,
            &key,
            Some(definition.clone()),
        ),
        (
            "/v1/prompts/summarize/versions",
            "/v1/prompts/{name}/versions",
            Method::POST,
            &key,
            Some(definition),
        ),
        (
            "/v1/prompts/summarize/versions",
            "/v1/prompts/{name}/versions",
            Method::POST,
            &key,
            Some(json!({"model": 1})),
        ),
        (
            "/v1/prompts/summarize/versions/3",
            "/v1/prompts/{name}/versions/{version}",
            Method::GET,
            &key,
            None,
        ),
        (
            "/v1/prompts/summarize/versions/9",
            "/v1/prompts/{name}/versions/{version}",
            Method::GET,
            &key,
            None,
        ),
        (
            "/v1/prompts/summarize/diff?from=1&to=3",
            "/v1/prompts/{name}/diff",
            Method::GET,
            &key,
            None,
        ),
        (
            "/v1/prompts/summarize/diff?from=1",
            "/v1/prompts/{name}/diff",
            Method::GET,
            &key,
            None,
        ),
        (
            "/v1/prompts/summarize/labels/production/rollback",
            "/v1/prompts/{name}/labels/{label}/rollback",
            Method::POST,
            &admin.to_string(),
            None,
        ),
        (
            "/v1/prompts/summarize/labels/production",
            "/v1/prompts/{name}/labels/{label}",
            Method::PUT,
            &key,
            Some(json!({"version": 3})),
        ),
        (
            "/v1/prompts/summarize/labels/production",
            "/v1/prompts/{name}/labels/{label}",
            Method::PUT,
            &admin.to_string(),
            Some(
                json!({"targets": [{"version": 2, "weight": 9}, {"version": 3, "weight": 1}], "segments": {"beta": 1}}),
            ),
        ),
        (
            "/v1/prompts/summarize/labels/production",
            "/v1/prompts/{name}/labels/{label}",
            Method::PUT,
            &admin.to_string(),
            Some(json!({"version": 7})),
        ),
        (
            "/v1/prompts/summarize/labels/production",
            "/v1/prompts/{name}/labels/{label}",
            Method::PUT,
            &admin.to_string(),
            Some(json!({})),
        ),
        (
            "/v1/prompts/summarize/labels/production/rollback",
            "/v1/prompts/{name}/labels/{label}/rollback",
            Method::POST,
            &admin.to_string(),
            None,
        ),
        (
            "/v1/prompts/summarize/labels/production/history",
            "/v1/prompts/{name}/labels/{label}/history",
            Method::GET,
            &key,
            None,
        ),
        (
            "/v1/prompts/summarize/labels/none/history",
            "/v1/prompts/{name}/labels/{label}/history",
            Method::GET,
            &key,
            None,
        ),
        (
            "/v1/prompts/summarize/stats",
            "/v1/prompts/{name}/stats",
            Method::GET,
            &key,
            None,
        ),
        (
            "/v1/prompts/summarize/stats?since=x",
            "/v1/prompts/{name}/stats",
            Method::GET,
            &key,
            None,
        ),
        (
            "/v1/executions?limit=2",
            "/v1/executions",
            Method::GET,
            &key,
            None,
        ),
        (
            "/v1/executions?cursor=x",
            "/v1/executions",
            Method::GET,
            &key,
            None,
        ),
    ] {
        let method_name = method.as_str().to_lowercase();
        check(
            &doc,
            doc_path,
            &method_name,
            send(method, path, key, body).await.unwrap(),
        )
        .await;
    }
    // After one submit through the split, the listing and stats have rows.
    app.submit_accepted(&json!({"prompt": "summarize", "input": {"text": "x"}}))
        .await;
    check(
        &doc,
        "/v1/executions",
        "get",
        app.get_authorized("/v1/executions").await,
    )
    .await;
    check(
        &doc,
        "/v1/prompts/{name}/stats",
        "get",
        app.get_authorized("/v1/prompts/summarize/stats").await,
    )
    .await;
    app.cleanup().await;
}
