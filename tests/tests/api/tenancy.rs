//! Organisations and API keys: keys shown once and stored hashed, scopes
//! (403 naming the one missing), expiry, revocation reaching every API
//! process within a second, keys bound to an end user, prompts per
//! organisation, and the admin API's own isolation.

use std::time::{Duration, Instant};

use llmq_api::Application;
use llmq_tests::{assert_error, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const ADMIN: &str = "tenancy-admin-key";

async fn spawn() -> TestApp {
    TestApp::builder()
        .configure(|s| s.api.admin_key = ADMIN.into())
        .spawn()
        .await
}

#[tokio::test]
async fn an_admin_creates_an_organisation_and_a_key_that_is_shown_once_and_stored_hashed() {
    let app = spawn().await;
    let created = app
        .send_as(
            ADMIN,
            Method::POST,
            "/v1/orgs",
            Some(&json!({"id": "acme", "name": "Acme"})),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let org: Value = created.json().await.unwrap();
    assert_eq!(org["id"], "acme");
    assert_eq!(org["keys"], "/v1/orgs/acme/keys");
    // The same id again is a conflict; a bad id a 400.
    let again = app
        .send_as(
            ADMIN,
            Method::POST,
            "/v1/orgs",
            Some(&json!({"id": "acme"})),
        )
        .await;
    assert_error(again, StatusCode::CONFLICT, "conflict").await;
    let bad = app
        .send_as(
            ADMIN,
            Method::POST,
            "/v1/orgs",
            Some(&json!({"id": "Acme Corp"})),
        )
        .await;
    assert_error(bad, StatusCode::BAD_REQUEST, "bad_request").await;

    let body = json!({"scopes": ["executions:write", "executions:read"], "name": "ci"});
    let response = app
        .send_as(ADMIN, Method::POST, "/v1/orgs/acme/keys", Some(&body))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let key: Value = response.json().await.unwrap();
    let secret = key["secret"].as_str().unwrap().to_string();
    assert!(
        secret.starts_with("llmq_sk_") && secret.len() >= 8 + 43,
        "{secret}"
    );
    assert!(secret.starts_with(key["prefix"].as_str().unwrap()));
    assert_eq!(key["organisation"], "acme");

    // Listed with its prefix and scopes, never its secret; stored hashed.
    let listed = app
        .send_as(ADMIN, Method::GET, "/v1/orgs/acme/keys", None)
        .await;
    assert_eq!(listed.status(), StatusCode::OK);
    let text = listed.text().await.unwrap();
    assert!(!text.contains(&secret), "{text}");
    let listed: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(listed["keys"][0]["prefix"], key["prefix"]);
    assert_eq!(
        listed["keys"][0]["scopes"],
        json!(["executions:write", "executions:read"])
    );
    assert!(listed["keys"][0]["revoked_at"].is_null());
    let row = app
        .db()
        .await
        .query_one(
            "SELECT key_hash FROM api_keys WHERE prefix = $1",
            &[&key["prefix"].as_str()],
        )
        .await
        .unwrap();
    let hash: String = row.get(0);
    assert_eq!(hash, llmq_shared::keys::hash_key(&secret));
    assert!(!hash.contains(&secret[8..]));

    // The key works for its organisation: it runs the prompt files (its
    // own copy) and sees its own execution.
    let submitted = app
        .send_as(
            &secret,
            Method::POST,
            "/v1/executions",
            Some(&json!({"prompt": "summarize", "input": {"text": "acme's text"}})),
        )
        .await;
    assert_eq!(submitted.status(), StatusCode::ACCEPTED);
    let execution: Value = submitted.json().await.unwrap();
    assert_eq!(execution["prompt"]["name"], "summarize");
    let id = execution["id"].as_str().unwrap();
    let row = app.execution_row(id).await.unwrap();
    assert_eq!(row.get::<_, String>("tenant_id"), "acme");
    let read = app
        .send_as(&secret, Method::GET, &format!("/v1/executions/{id}"), None)
        .await;
    assert_eq!(read.status(), StatusCode::OK);
    // ... and the default organisation's key does not.
    assert_eq!(app.get_execution(id).await.status(), StatusCode::NOT_FOUND);
    // last_used_at is written when a process loads the key.
    let listed: Value = app
        .send_as(ADMIN, Method::GET, "/v1/orgs/acme/keys", None)
        .await
        .json()
        .await
        .unwrap();
    assert!(listed["keys"][0]["last_used_at"].is_string(), "{listed}");
    app.cleanup().await;
}

#[tokio::test]
async fn a_missing_scope_is_403_naming_it() {
    let app = spawn().await;
    app.create_org("acme").await;
    let reader = app.create_key("acme", &["executions:read"]).await;
    let submit = app
        .send_as(
            &reader,
            Method::POST,
            "/v1/executions",
            Some(&json!({"prompt": "summarize", "input": {"text": "x"}})),
        )
        .await;
    let body = assert_error(submit, StatusCode::FORBIDDEN, "missing_scope").await;
    assert_eq!(body["details"]["scope"], "executions:write");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("executions:write"));
    // Reading is allowed; webhook management and administration are not.
    let listed = app
        .send_as(&reader, Method::GET, "/v1/executions", None)
        .await;
    assert_eq!(listed.status(), StatusCode::OK);
    let hooks = app
        .send_as(&reader, Method::GET, "/v1/webhook-endpoints", None)
        .await;
    let body = assert_error(hooks, StatusCode::FORBIDDEN, "missing_scope").await;
    assert_eq!(body["details"]["scope"], "webhooks:manage");
    let orgs = app.send_as(&reader, Method::GET, "/v1/orgs", None).await;
    let body = assert_error(orgs, StatusCode::FORBIDDEN, "missing_scope").await;
    assert_eq!(body["details"]["scope"], "admin");

    // prompts:write moves an unprotected label; production needs
    // prompts:promote too.
    let writer = app.create_key("acme", &["prompts:write"]).await;
    let moved = app
        .send_as(
            &writer,
            Method::PUT,
            "/v1/prompts/summarize/labels/staging",
            Some(&json!({"version": 1})),
        )
        .await;
    assert_eq!(moved.status(), StatusCode::OK);
    assert!(moved.json::<Value>().await.unwrap()["actor"]
        .as_str()
        .unwrap()
        .starts_with("key:"));
    let production = app
        .send_as(
            &writer,
            Method::PUT,
            "/v1/prompts/summarize/labels/production",
            Some(&json!({"version": 1})),
        )
        .await;
    let body = assert_error(production, StatusCode::FORBIDDEN, "forbidden").await;
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("prompts:promote"));
    let promoter = app
        .create_key("acme", &["prompts:write", "prompts:promote"])
        .await;
    let production = app
        .send_as(
            &promoter,
            Method::PUT,
            "/v1/prompts/summarize/labels/production",
            Some(&json!({"version": 1})),
        )
        .await;
    assert_eq!(production.status(), StatusCode::OK);
    app.cleanup().await;
}

#[tokio::test]
async fn unknown_expired_and_malformed_keys_are_refused() {
    let app = spawn().await;
    app.create_org("acme").await;
    let soon = chrono::Utc::now() + chrono::Duration::seconds(2);
    let expiring = app.create_key_with("acme", &["*"], None, Some(soon)).await;
    let made_up = llmq_shared::keys::generate_key().secret;
    for key in [made_up.as_str(), "llmq_sk_short", "not-a-key"] {
        let response = app.send_as(key, Method::GET, "/v1/executions", None).await;
        assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    let response = app
        .send_as(&expiring, Method::GET, "/v1/executions", None)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    // Cached or not, an expired key is refused from its expiry on.
    let refused = app
        .eventually(Duration::from_secs(10), || async {
            app.send_as(&expiring, Method::GET, "/v1/executions", None)
                .await
                .status()
                == StatusCode::UNAUTHORIZED
        })
        .await;
    assert!(refused, "the expired key is still accepted");
    // An expiry in the past is refused at creation.
    let past = app
        .send_as(
            ADMIN,
            Method::POST,
            "/v1/orgs/acme/keys",
            Some(&json!({"scopes": ["admin"], "expires_at": "2020-01-01T00:00:00Z"})),
        )
        .await;
    assert_error(past, StatusCode::BAD_REQUEST, "bad_request").await;
    let unknown_scope = app
        .send_as(
            ADMIN,
            Method::POST,
            "/v1/orgs/acme/keys",
            Some(&json!({"scopes": ["root"]})),
        )
        .await;
    assert_error(unknown_scope, StatusCode::BAD_REQUEST, "bad_request").await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_revoked_key_is_refused_by_two_api_processes_within_a_second() {
    // A cache entry age far past the test: only the pushed revocation can
    // make the second process refuse the key.
    let app = TestApp::builder()
        .without_worker()
        .configure(|s| {
            s.api.admin_key = ADMIN.into();
            s.api.key_cache_secs = 3600;
        })
        .spawn()
        .await;
    let cancel = CancellationToken::new();
    let second = Application::build(app.settings.clone(), cancel.child_token())
        .await
        .unwrap();
    let second_url = format!("http://127.0.0.1:{}", second.port());
    // Listening before the revocation is announced.
    let bound = second.events_bound();
    tokio::time::timeout(Duration::from_secs(10), bound)
        .await
        .expect("the second API process never bound its events queue");
    let second_task = tokio::spawn(second.run_until_stopped());

    app.create_org("acme").await;
    let key = app.create_key("acme", &["executions:read"]).await;
    let status_at = |base: String, key: String| {
        let client = app.client.clone();
        async move {
            client
                .get(format!("{base}/v1/executions"))
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    // Both processes have the key cached.
    assert_eq!(
        status_at(app.address.clone(), key.clone()).await,
        StatusCode::OK
    );
    assert_eq!(
        status_at(second_url.clone(), key.clone()).await,
        StatusCode::OK
    );
    let id: String = app
        .db()
        .await
        .query_one(
            "SELECT id::text FROM api_keys WHERE tenant_id = 'acme'",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    let revoked = app
        .send_as(
            ADMIN,
            Method::POST,
            &format!("/v1/orgs/acme/keys/{id}/revoke"),
            None,
        )
        .await;
    assert_eq!(revoked.status(), StatusCode::OK);
    let revoked_at = Instant::now();
    let body: Value = revoked.json().await.unwrap();
    assert!(body["revoked_at"].is_string());
    // The process that revoked it refuses it at once.
    assert_eq!(
        status_at(app.address.clone(), key.clone()).await,
        StatusCode::UNAUTHORIZED
    );
    let mut refused_after = None;
    while revoked_at.elapsed() < Duration::from_secs(1) {
        if status_at(second_url.clone(), key.clone()).await == StatusCode::UNAUTHORIZED {
            refused_after = Some(revoked_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused_after = refused_after
        .expect("the second API process accepted the key for a second after its revocation");
    eprintln!("revocation reached the second API process after {refused_after:?}");
    // Revoking again changes nothing; the listing shows it revoked.
    let again = app
        .send_as(
            ADMIN,
            Method::POST,
            &format!("/v1/orgs/acme/keys/{id}/revoke"),
            None,
        )
        .await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(
        again.json::<Value>().await.unwrap()["revoked_at"],
        body["revoked_at"]
    );

    cancel.cancel();
    second_task.await.unwrap().unwrap();
    app.cleanup().await;
}

#[tokio::test]
async fn a_key_bound_to_an_end_user_submits_as_that_user_only() {
    let app = spawn().await;
    app.create_org("acme").await;
    let key = app
        .create_key_with(
            "acme",
            &["executions:write", "executions:read"],
            Some("u_42"),
            None,
        )
        .await;
    let input = json!({"text": "bound"});
    let ok = app
        .send_as(
            &key,
            Method::POST,
            "/v1/executions",
            Some(&json!({"prompt": "summarize", "input": input})),
        )
        .await;
    assert_eq!(ok.status(), StatusCode::ACCEPTED);
    assert_eq!(ok.json::<Value>().await.unwrap()["user"], "u_42");
    let other = app
        .send_as(
            &key,
            Method::POST,
            "/v1/executions",
            Some(&json!({"prompt": "summarize", "input": input, "user": "u_7"})),
        )
        .await;
    assert_error(other, StatusCode::FORBIDDEN, "forbidden").await;
    app.cleanup().await;
}

#[tokio::test]
async fn each_organisation_has_its_own_prompts_and_labels() {
    let app = spawn().await;
    app.create_org("acme").await;
    let acme = app.create_key("acme", &["*"]).await;
    // acme's own version of summarize, and its production moved to it.
    let definition = json!({"model": "gpt-4o-mini", "template": "Acme: {{ text }}",
        "input_schema": {"type": "object", "required": ["text"]}});
    let created = app
        .send_as(
            &acme,
            Method::POST,
            "/v1/prompts/summarize/versions",
            Some(&definition),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let version = created.json::<Value>().await.unwrap()["version"]
        .as_i64()
        .unwrap();
    let moved = app
        .send_as(
            &acme,
            Method::PUT,
            "/v1/prompts/summarize/labels/production",
            Some(&json!({"version": version})),
        )
        .await;
    assert_eq!(moved.status(), StatusCode::OK);
    // The default organisation's summarize is untouched.
    let default: Value = app
        .get_authorized("/v1/prompts/summarize")
        .await
        .json()
        .await
        .unwrap();
    let acme_view: Value = app
        .send_as(&acme, Method::GET, "/v1/prompts/summarize", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(acme_view["name"], "summarize");
    assert_eq!(
        acme_view["versions"].as_array().unwrap().len(),
        default["versions"].as_array().unwrap().len() + 1
    );
    let production = |v: &Value| {
        v["labels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == "production" || l["label"] == "production")
            .cloned()
            .unwrap()
    };
    assert_ne!(production(&default), production(&acme_view));
    let history: Value = app
        .get_authorized("/v1/prompts/summarize/labels/production/history")
        .await
        .json()
        .await
        .unwrap();
    assert!(!history.to_string().contains("key:"), "{history}");
    // acme's history: the copy of the files (by the sync), then acme's move.
    let history: Value = app
        .send_as(
            &acme,
            Method::GET,
            "/v1/prompts/summarize/labels/production/history",
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    let actors: Vec<&str> = history["moves"]
        .as_array()
        .unwrap_or_else(|| panic!("{history}"))
        .iter()
        .map(|m| m["actor"].as_str().unwrap())
        .collect();
    assert_eq!(actors.len(), 2, "{history}");
    assert!(
        actors[0].starts_with("key:") && actors[1] == "sync",
        "{history}"
    );

    // An execution of each runs its own organisation's version.
    let submit = json!({"prompt": "summarize", "input": {"text": "t"}});
    let mine = app
        .send_as(&acme, Method::POST, "/v1/executions", Some(&submit))
        .await;
    assert_eq!(
        mine.json::<Value>().await.unwrap()["prompt"]["version"],
        version
    );
    let theirs = app.submit_accepted(&submit).await;
    assert_ne!(theirs["prompt"]["version"], version);
    app.cleanup().await;
}

#[tokio::test]
async fn an_organisations_admin_manages_only_its_own_keys_and_creates_no_organisation() {
    let app = spawn().await;
    app.create_org("acme").await;
    app.create_org("globex").await;
    let acme_admin = app.create_key("acme", &["admin"]).await;
    let listed: Value = app
        .send_as(&acme_admin, Method::GET, "/v1/orgs", None)
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = listed["organisations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["acme"]);
    let everyone: Value = app
        .send_as(ADMIN, Method::GET, "/v1/orgs", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(everyone["organisations"].as_array().unwrap().len(), 3);
    let created = app
        .send_as(
            &acme_admin,
            Method::POST,
            "/v1/orgs/acme/keys",
            Some(&json!({"scopes": ["executions:read"]})),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    for path in [
        "/v1/orgs/globex",
        "/v1/orgs/globex/keys",
        "/v1/orgs/default/keys",
    ] {
        let response = app.send_as(&acme_admin, Method::GET, path, None).await;
        assert_error(response, StatusCode::NOT_FOUND, "not_found").await;
    }
    let new_org = app
        .send_as(
            &acme_admin,
            Method::POST,
            "/v1/orgs",
            Some(&json!({"id": "initech"})),
        )
        .await;
    assert_error(new_org, StatusCode::FORBIDDEN, "forbidden").await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_cached_key_costs_no_database_look_up_per_request() {
    let app = TestApp::builder().without_worker().spawn().await;
    app.create_org("acme").await;
    let key = app.create_key("acme", &["executions:write"]).await;
    // Binding the events queue drops every cached key (revocations may
    // have been missed before): bound first, so the cache stays.
    app.events_bound().await;
    let submit = json!({"prompt": "summarize", "input": {"text": "hot path"}});
    let first = app
        .send_as(&key, Method::POST, "/v1/executions", Some(&submit))
        .await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    // Every load of a key writes its last_used_at: unchanged after more
    // requests means none of them looked the key up.
    let last_used = || async {
        app.db()
            .await
            .query_one(
                "SELECT last_used_at::text FROM api_keys WHERE tenant_id = 'acme'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, Option<String>>(0)
    };
    let loaded = last_used().await;
    assert!(loaded.is_some());
    for _ in 0..5 {
        let again = app
            .send_as(&key, Method::POST, "/v1/executions", Some(&submit))
            .await;
        assert_eq!(again.status(), StatusCode::ACCEPTED);
    }
    assert_eq!(last_used().await, loaded);
    app.cleanup().await;
}
