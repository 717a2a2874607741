//! Cross-tenant isolation, route by route: one organisation (A) creates
//! one of everything (a prompt with a moved label, a finished execution
//! with its steps and webhook delivery, an endpoint, a key), then a
//! second organisation's key (B, every scope) calls every route of the
//! served OpenAPI document with A's ids in the path. Each answer must be
//! a 404, or B's own empty or B-only listing, and never carry A's data.
//!
//! The walk knows every route by name (`Expect`, `plan`): a route added
//! later that it was not taught fails the test until someone decides
//! what a stranger's call of it must answer.

use std::collections::BTreeMap;
use std::time::Duration;

use llmq_tests::{SseClient, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const ADMIN: &str = "isolation-admin-key";
/// In A's input and A's prompt template: no answer to B may contain it.
const A_MARKER: &str = "tenant-a-private-marker";
const WAIT: Duration = Duration::from_secs(20);

/// What one of A's things is called.
struct Owned {
    org: String,
    key: String,
    prompt: String,
    execution: String,
    endpoint: String,
    delivery: String,
    key_id: String,
    tool: String,
    /// A collection holding one document, `doc-a`.
    collection: String,
}

/// What a stranger's call of a route must answer.
enum Expect {
    /// 404, A's thing unknown to B.
    NotFound,
    /// 200, a listing of B's own (none of A's ids in it).
    OwnList,
    /// 403: only the operator may (B is not the default organisation).
    Forbidden,
    /// 2xx: B made a thing of its own (A's is checked untouched after).
    OwnCreated,
    /// A live stream of B's own events (checked apart, below).
    OwnStream,
    /// An operations route: no tenant data (health, metrics, document).
    Public,
}

/// The call of `method path` with A's ids, its body and what B must get.
/// Panics on a route it does not know: teach it the new route.
fn plan(method: &str, path: &str, a: &Owned) -> (String, Option<Value>, Expect) {
    use Expect::*;
    let e = &a.execution;
    let p = &a.prompt;
    let w = &a.endpoint;
    let d = &a.delivery;
    let o = &a.org;
    let k = &a.key_id;
    let t = &a.tool;
    let c = &a.collection;
    let documents = json!({"documents": [{"id": "doc-b", "text": "B's own text"}]});
    let submit = json!({"prompt": p, "input": {"text": "from b"}});
    let endpoint = json!({"url": "http://127.0.0.1:9/b", "event_types": ["execution.succeeded"]});
    let definition = json!({"model": "gpt-4o-mini", "template": "B: {{ text }}",
        "input_schema": {"type": "object"}});
    let (url, body, expect) = match (method, path) {
        ("POST", "/v1/executions") => (path.to_string(), Some(submit), NotFound),
        ("GET", "/v1/executions") => (path.to_string(), None, OwnList),
        ("GET", "/v1/executions/{id}") => (format!("/v1/executions/{e}"), None, NotFound),
        ("GET", "/v1/executions/{id}/steps") => {
            (format!("/v1/executions/{e}/steps"), None, NotFound)
        }
        ("POST", "/v1/executions/{id}/cancel") => {
            (format!("/v1/executions/{e}/cancel"), None, NotFound)
        }
        ("GET", "/v1/executions/{id}/events") => {
            (format!("/v1/executions/{e}/events"), None, NotFound)
        }
        ("GET", "/v1/executions/{id}/deliveries") => {
            (format!("/v1/executions/{e}/deliveries"), None, NotFound)
        }
        ("GET", "/v1/events") => (path.to_string(), None, OwnStream),
        ("GET", "/v1/prompts") => (path.to_string(), None, OwnList),
        ("GET", "/v1/prompts/{name}") => (format!("/v1/prompts/{p}"), None, NotFound),
        ("POST", "/v1/prompts/{name}/versions") => (
            format!("/v1/prompts/{p}/versions"),
            Some(definition),
            OwnCreated,
        ),
        ("GET", "/v1/prompts/{name}/versions/{version}") => {
            (format!("/v1/prompts/{p}/versions/1"), None, NotFound)
        }
        ("GET", "/v1/prompts/{name}/diff") => {
            (format!("/v1/prompts/{p}/diff?from=1&to=1"), None, NotFound)
        }
        ("PUT", "/v1/prompts/{name}/labels/{label}") => (
            format!("/v1/prompts/{p}/labels/staging"),
            Some(json!({"version": 1})),
            NotFound,
        ),
        ("POST", "/v1/prompts/{name}/labels/{label}/rollback") => (
            format!("/v1/prompts/{p}/labels/staging/rollback"),
            None,
            NotFound,
        ),
        ("GET", "/v1/prompts/{name}/labels/{label}/history") => (
            format!("/v1/prompts/{p}/labels/staging/history"),
            None,
            NotFound,
        ),
        ("GET", "/v1/prompts/{name}/stats") => (format!("/v1/prompts/{p}/stats"), None, NotFound),
        ("POST", "/v1/webhook-endpoints") => (path.to_string(), Some(endpoint), OwnCreated),
        ("GET", "/v1/webhook-endpoints") => (path.to_string(), None, OwnList),
        ("GET", "/v1/webhook-endpoints/{id}") => {
            (format!("/v1/webhook-endpoints/{w}"), None, NotFound)
        }
        ("PATCH", "/v1/webhook-endpoints/{id}") => (
            format!("/v1/webhook-endpoints/{w}"),
            Some(json!({"enabled": false})),
            NotFound,
        ),
        ("DELETE", "/v1/webhook-endpoints/{id}") => {
            (format!("/v1/webhook-endpoints/{w}"), None, NotFound)
        }
        ("POST", "/v1/webhook-endpoints/{id}/rotate-secret") => (
            format!("/v1/webhook-endpoints/{w}/rotate-secret"),
            None,
            NotFound,
        ),
        ("GET", "/v1/webhook-endpoints/{id}/deliveries") => (
            format!("/v1/webhook-endpoints/{w}/deliveries"),
            None,
            NotFound,
        ),
        ("POST", "/v1/webhook-endpoints/{id}/recover") => (
            format!("/v1/webhook-endpoints/{w}/recover"),
            Some(json!({"since": "2020-01-01T00:00:00Z"})),
            NotFound,
        ),
        ("POST", "/v1/webhook-secret") => (path.to_string(), None, OwnCreated),
        ("POST", "/v1/deliveries/{id}/retry") => {
            (format!("/v1/deliveries/{d}/retry"), None, NotFound)
        }
        ("POST", "/v1/orgs") => (
            path.to_string(),
            Some(json!({"id": "made-by-b"})),
            Forbidden,
        ),
        ("GET", "/v1/orgs") => (path.to_string(), None, OwnList),
        ("GET", "/v1/orgs/{id}") => (format!("/v1/orgs/{o}"), None, NotFound),
        ("POST", "/v1/orgs/{id}/keys") => (
            format!("/v1/orgs/{o}/keys"),
            Some(json!({"scopes": ["admin"]})),
            NotFound,
        ),
        ("GET", "/v1/orgs/{id}/keys") => (format!("/v1/orgs/{o}/keys"), None, NotFound),
        ("POST", "/v1/orgs/{id}/keys/{key_id}/revoke") => {
            (format!("/v1/orgs/{o}/keys/{k}/revoke"), None, NotFound)
        }
        ("GET", "/v1/tools") => (path.to_string(), None, OwnList),
        ("GET", "/v1/tools/{name}") => (format!("/v1/tools/{t}"), None, NotFound),
        ("DELETE", "/v1/tools/{name}") => (format!("/v1/tools/{t}"), None, NotFound),
        // B's own tool of the same name; A's is checked untouched after.
        ("PUT", "/v1/tools/{name}") => (format!("/v1/tools/{t}"), Some(tool("B's")), OwnCreated),
        ("GET", "/v1/collections/{name}") => (format!("/v1/collections/{c}"), None, NotFound),
        ("GET", "/v1/collections/{name}/documents") => {
            (format!("/v1/collections/{c}/documents"), None, NotFound)
        }
        ("GET", "/v1/collections/{name}/documents/{id}") => (
            format!("/v1/collections/{c}/documents/doc-a"),
            None,
            NotFound,
        ),
        ("DELETE", "/v1/collections/{name}/documents/{id}") => (
            format!("/v1/collections/{c}/documents/doc-a"),
            None,
            NotFound,
        ),
        // B's own collection of the same name; A's is checked untouched after.
        ("POST", "/v1/collections/{name}/documents") => (
            format!("/v1/collections/{c}/documents"),
            Some(documents),
            OwnCreated,
        ),
        ("PUT", "/v1/collections/{name}") => (
            format!("/v1/collections/{c}"),
            Some(json!({"embedding_model": "b-model"})),
            OwnCreated,
        ),
        ("GET", "/v1/usage") => (path.to_string(), None, OwnList),
        ("GET", "/v1/orgs/{id}/limits") => (format!("/v1/orgs/{o}/limits"), None, NotFound),
        ("PUT", "/v1/orgs/{id}/limits") => (
            format!("/v1/orgs/{o}/limits"),
            Some(json!({"org_requests_per_minute": 1})),
            NotFound,
        ),
        ("GET", "/healthz" | "/readyz" | "/metrics" | "/openapi.json") => {
            (path.to_string(), None, Public)
        }
        _ => panic!(
            "the isolation walk does not know {method} {path}: teach `plan` in \
             tests/tests/api/isolation.rs what another organisation's key must get from it"
        ),
    };
    (url, body, expect)
}

/// A tool definition whose description says whose it is.
fn tool(whose: &str) -> Value {
    json!({"description": format!("{whose} tool"), "idempotent": true,
        "endpoint": {"method": "POST", "url": "http://127.0.0.1:9/tool"},
        "parameters": {"type": "object"}})
}

async fn app() -> TestApp {
    TestApp::builder()
        .configure(|s| {
            s.api.admin_key = ADMIN.into();
            // A dropped stream is noticed at its next keep-alive.
            s.events.keepalive_ms = 100;
            s.webhooks.allow_http = true;
            s.webhooks.allowed_hosts = vec!["127.0.0.1".into()];
            s.tools.allow_http = true;
            s.tools.allowed_hosts = vec!["127.0.0.1".into()];
        })
        .spawn()
        .await
}

async fn ok_json(response: reqwest::Response, what: &str) -> Value {
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "{what}: {status} {text}");
    serde_json::from_str(&text).unwrap()
}

/// One of everything, owned by `org`, made with `key`.
async fn make_everything(app: &TestApp, org: &str, key: &str) -> Owned {
    let prompt = format!("walk-{org}");
    let definition = json!({"model": "gpt-4o-mini", "template": format!("{A_MARKER} {{{{ text }}}}"),
        "input_schema": {"type": "object", "required": ["text"]}});
    let path = format!("/v1/prompts/{prompt}/versions");
    ok_json(
        app.send_as(key, Method::POST, &path, Some(&definition))
            .await,
        "A's version",
    )
    .await;
    let path = format!("/v1/prompts/{prompt}/labels/production");
    ok_json(
        app.send_as(key, Method::PUT, &path, Some(&json!({"version": 1})))
            .await,
        "A's production",
    )
    .await;
    let path = format!("/v1/prompts/{prompt}/labels/staging");
    ok_json(
        app.send_as(key, Method::PUT, &path, Some(&json!({"version": 1})))
            .await,
        "A's staging",
    )
    .await;
    let endpoint = json!({"url": "http://127.0.0.1:9/a", "event_types": ["execution.succeeded"]});
    let endpoint = ok_json(
        app.send_as(key, Method::POST, "/v1/webhook-endpoints", Some(&endpoint))
            .await,
        "A's endpoint",
    )
    .await;
    let tool_name = format!("walk-tool-{org}");
    ok_json(
        app.send_as(
            key,
            Method::PUT,
            &format!("/v1/tools/{tool_name}"),
            Some(&tool(A_MARKER)),
        )
        .await,
        "A's tool",
    )
    .await;
    let collection = format!("walk-docs-{org}");
    let documents = json!({"documents": [{"id": "doc-a", "text": format!("{A_MARKER} handbook")}]});
    ok_json(
        app.send_as(
            key,
            Method::POST,
            &format!("/v1/collections/{collection}/documents"),
            Some(&documents),
        )
        .await,
        "A's document",
    )
    .await;
    let submit =
        json!({"prompt": prompt, "input": {"text": A_MARKER}, "metadata": {"m": A_MARKER}});
    let execution = ok_json(
        app.send_as(key, Method::POST, "/v1/executions", Some(&submit))
            .await,
        "A's execution",
    )
    .await;
    let id = execution["id"].as_str().unwrap().to_string();
    let deliveries_path = format!("/v1/executions/{id}/deliveries");
    let delivery = std::sync::Mutex::new(None::<String>);
    let found = app
        .eventually(WAIT, || async {
            let body = ok_json(
                app.send_as(key, Method::GET, &deliveries_path, None).await,
                "A's deliveries",
            )
            .await;
            let id = body["data"][0]["id"].as_str().map(str::to_string);
            let seen = id.is_some();
            *delivery.lock().unwrap() = id;
            seen
        })
        .await;
    assert!(found, "A's execution never made its delivery");
    let delivery = delivery.into_inner().unwrap();
    let key_id: String = app
        .db()
        .await
        .query_one(
            "SELECT id::text FROM api_keys WHERE key_hash = $1",
            &[&llmq_shared::keys::hash_key(key)],
        )
        .await
        .unwrap()
        .get(0);
    Owned {
        org: org.to_string(),
        key: key.to_string(),
        prompt,
        execution: id,
        endpoint: endpoint["id"].as_str().unwrap().to_string(),
        delivery: delivery.unwrap(),
        key_id,
        tool: tool_name,
        collection,
    }
}

/// Every route of the served document, as (method, path).
async fn every_route(app: &TestApp) -> Vec<(String, String)> {
    let doc: Value = app.openapi().await.json().await.unwrap();
    let mut routes = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                routes.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    assert!(routes.len() >= 30, "only {} routes", routes.len());
    routes
}

/// B calls every route with A's ids; what B got, by route.
async fn walk(app: &TestApp, a: &Owned, b_key: &str) {
    let routes = every_route(app).await;
    let planned: Vec<_> = routes
        .iter()
        .map(|(m, p)| (m.clone(), p.clone(), plan(m, p, a)))
        .collect();
    // B's own creations last: after B makes a prompt named like A's, B's
    // reads of that name are B's own.
    let (own, strange): (Vec<_>, Vec<_>) = planned
        .into_iter()
        .partition(|(_, _, (_, _, e))| matches!(e, Expect::OwnCreated));
    let a_ids = [&a.execution, &a.endpoint, &a.delivery, &a.key_id];
    let mut answered = BTreeMap::new();
    for (method, path, (url, body, expect)) in strange.into_iter().chain(own) {
        if matches!(expect, Expect::OwnStream) {
            continue;
        }
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let response = app.send_as(b_key, m, &url, body.as_ref()).await;
        let status = response.status();
        let text = response.text().await.unwrap();
        let what = format!("{method} {path} as another organisation ({url}): {status} {text}");
        assert!(!text.contains(A_MARKER), "{what}");
        match expect {
            Expect::NotFound => {
                assert_eq!(status, StatusCode::NOT_FOUND, "{what}");
                let body: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(body["error"]["code"], "not_found", "{what}");
            }
            Expect::OwnList => {
                assert_eq!(status, StatusCode::OK, "{what}");
                for id in a_ids {
                    assert!(!text.contains(id.as_str()), "{what}");
                }
                assert!(!text.contains(&a.prompt), "{what}");
                assert!(!text.contains(&format!("\"{}\"", a.org)), "{what}");
            }
            Expect::Forbidden => assert_eq!(status, StatusCode::FORBIDDEN, "{what}"),
            Expect::OwnCreated => {
                assert!(status.is_success(), "{what}");
                for id in a_ids {
                    assert!(!text.contains(id.as_str()), "{what}");
                }
            }
            Expect::Public => {
                assert_eq!(status, StatusCode::OK, "{what}");
            }
            Expect::OwnStream => unreachable!(),
        }
        answered.insert(format!("{method} {path}"), status.as_u16());
    }
    eprintln!("cross-tenant walk: {answered:?}");

    // A's things are as A left them.
    let path = format!("/v1/executions/{}", a.execution);
    let execution = ok_json(
        app.send_as(&a.key, Method::GET, &path, None).await,
        "A's execution",
    )
    .await;
    assert_eq!(execution["status"], "succeeded");
    let path = format!("/v1/webhook-endpoints/{}", a.endpoint);
    let endpoint = ok_json(
        app.send_as(&a.key, Method::GET, &path, None).await,
        "A's endpoint",
    )
    .await;
    assert_eq!(endpoint["enabled"], true);
    let path = format!("/v1/prompts/{}", a.prompt);
    let prompt = ok_json(
        app.send_as(&a.key, Method::GET, &path, None).await,
        "A's prompt",
    )
    .await;
    assert_eq!(prompt["versions"].as_array().unwrap().len(), 1, "{prompt}");
    let path = format!("/v1/tools/{}", a.tool);
    let tool = ok_json(
        app.send_as(&a.key, Method::GET, &path, None).await,
        "A's tool",
    )
    .await;
    assert!(
        tool.to_string().contains(A_MARKER),
        "A's tool was changed: {tool}"
    );
    let path = format!("/v1/collections/{}/documents/doc-a", a.collection);
    let document = ok_json(
        app.send_as(&a.key, Method::GET, &path, None).await,
        "A's document",
    )
    .await;
    assert!(
        document["text"].as_str().unwrap_or("").contains(A_MARKER),
        "A's document was changed: {document}"
    );
}

/// B's tenant stream carries B's executions and none of A's.
async fn tenant_stream_is_own(app: &TestApp, a: &Owned, b_key: &str) {
    let response = app.send_as(b_key, Method::GET, "/v1/events", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = SseClient::new(response);
    let submit = json!({"prompt": a.prompt, "input": {"text": A_MARKER}});
    let theirs = ok_json(
        app.send_as(&a.key, Method::POST, "/v1/executions", Some(&submit))
            .await,
        "A's",
    )
    .await;
    let theirs = theirs["id"].as_str().unwrap().to_string();
    let path = format!("/v1/executions/{theirs}?wait=10");
    let finished = app
        .eventually(WAIT, || async {
            let e = ok_json(app.send_as(&a.key, Method::GET, &path, None).await, "A's").await;
            llmq_tests::is_terminal(&e)
        })
        .await;
    assert!(finished, "A's execution never finished");
    let submit = json!({"prompt": "summarize", "input": {"text": "b's own"}});
    let mine = ok_json(
        app.send_as(b_key, Method::POST, "/v1/executions", Some(&submit))
            .await,
        "B's",
    )
    .await;
    let mine = mine["id"].as_str().unwrap().to_string();
    loop {
        let event = stream
            .next_event(WAIT)
            .await
            .expect("B's stream ended before B's execution finished");
        let text = event.data.to_string();
        assert!(
            !text.contains(&theirs) && !text.contains(A_MARKER),
            "{text}"
        );
        if event.event == "done" && text.contains(&mine) {
            break;
        }
    }
}

#[tokio::test]
async fn another_organisations_key_gets_404_from_every_route_with_a_tenants_ids() {
    let app = app().await;
    app.create_org("tenant-a").await;
    app.create_org("tenant-b").await;
    let a_key = app.create_key("tenant-a", &["*"]).await;
    let b_key = app.create_key("tenant-b", &["*"]).await;

    // A is an organisation of its own; then A is the default organisation
    // (whose registry holds the prompt files under their bare names).
    let a = make_everything(&app, "tenant-a", &a_key).await;
    walk(&app, &a, &b_key).await;
    tenant_stream_is_own(&app, &a, &b_key).await;

    let default_key = app.create_key("default", &["*"]).await;
    let default = make_everything(&app, "default", &default_key).await;
    walk(&app, &default, &b_key).await;

    app.cleanup().await;
}
