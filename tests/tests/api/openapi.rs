//! The OpenAPI document: clients generate code from it, so every route and
//! its error shape must be in it.

use llmq_tests::TestApp;
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn the_openapi_document_lists_every_route() {
    let app = TestApp::builder().without_worker().spawn().await;

    let response = app.openapi().await;
    assert_eq!(response.status(), StatusCode::OK);
    let doc: Value = response.json().await.unwrap();
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc["openapi"]
    );

    let expected = [
        ("/v1/executions", "post"),
        ("/v1/executions/{id}", "get"),
        ("/v1/executions/{id}/steps", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    ];
    let paths = doc["paths"].as_object().expect("paths");
    for (path, method) in expected {
        assert!(
            paths.get(path).is_some_and(|p| p.get(method).is_some()),
            "{method} {path} missing; paths: {:?}",
            paths.keys()
        );
    }

    // Errors are described with the shared error schema.
    let submit = &paths["/v1/executions"]["post"];
    for status in ["400", "401", "404", "413", "422"] {
        let schema = &submit["responses"][status]["content"]["application/json"]["schema"]["$ref"];
        assert_eq!(
            schema, "#/components/schemas/ErrorBody",
            "POST /v1/executions {status}"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());

    app.cleanup().await;
}
