//! Retrieval end to end: documents upserted through the API, chunked and
//! embedded by the worker's `indexer` role against the fake embeddings
//! endpoint, then searched by the `retrieve` step of a prompt version.

use std::time::Duration;

use llmq_shared::db::GenericClient;
use llmq_shared::prompt::tokens::count_tokens;
use llmq_tests::{assert_error, TempPrompts, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(15);

async fn app_with(prompts: &TempPrompts) -> TestApp {
    let dir = prompts.dir.clone();
    TestApp::builder()
        .configure(move |s| {
            s.prompts_dir = dir;
            s.retrieval.index_poll_ms = 50;
        })
        .spawn()
        .await
}

async fn upsert(app: &TestApp, collection: &str, docs: Value) -> Value {
    let path = format!("/v1/collections/{collection}/documents");
    let response = app
        .send_json(Method::POST, &path, &json!({ "documents": docs }))
        .await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{body:#}");
    body
}

async fn document(app: &TestApp, collection: &str, id: &str) -> Value {
    let path = format!("/v1/collections/{collection}/documents/{id}");
    let response = app.get_authorized(&path).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

/// Waits until every one of `ids` is `indexed` with content `hash` (any,
/// when None) and `model` (any, when None).
async fn wait_indexed(app: &TestApp, collection: &str, ids: &[&str], model: Option<&str>) {
    let ok = app
        .eventually(WAIT, || async {
            for id in ids {
                let d = document(app, collection, id).await;
                if d["status"] != "indexed" || model.is_some_and(|m| d["embedding_model"] != m) {
                    return false;
                }
            }
            true
        })
        .await;
    assert!(ok, "documents {ids:?} of {collection} were not indexed");
}

async fn run(app: &TestApp, prompt: &str, question: &str) -> Value {
    let accepted = app
        .submit_accepted(&json!({"prompt": prompt, "input": {"question": question}}))
        .await;
    let id = accepted["id"].as_str().unwrap().to_string();
    app.wait_until_terminal(&id, WAIT).await
}

async fn step(app: &TestApp, id: &str, kind: &str) -> Value {
    let steps: Value = app.steps(id).await.json().await.unwrap();
    steps["steps"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|s| s["kind"] == kind)
        .cloned()
        .unwrap_or_else(|| panic!("no {kind} step in {steps:#}"))
}

fn rendered_text(render: &Value) -> String {
    render["output"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrieval_finds_the_relevant_chunk_and_the_step_records_it_with_its_score() {
    let prompts = TempPrompts::with_shipped();
    let app = app_with(&prompts).await;
    upsert(
        &app,
        "handbook",
        json!([
            {"id": "paris", "text": "Paris is the capital of France.", "metadata": {"source": "atlas"}},
            {"id": "tokyo", "text": "Tokyo is the capital of Japan."},
            {"id": "rust", "text": "Rust is a systems programming language."},
        ]),
    )
    .await;
    wait_indexed(&app, "handbook", &["paris", "tokyo", "rust"], None).await;

    let execution = run(&app, "ask", "What is the capital of France?").await;
    assert_eq!(execution["status"], "succeeded", "{execution:#}");
    assert_eq!(execution["flags"], json!([]));
    let id = execution["id"].as_str().unwrap();

    let retrieve = step(&app, id, "retrieve").await;
    assert_eq!(retrieve["status"], "succeeded");
    let out = &retrieve["output"];
    assert_eq!(out["status"], "ok", "{out:#}");
    let chunks = out["first"]["chunks"].as_array().unwrap();
    assert_eq!(chunks[0]["document_id"], "paris", "{out:#}");
    assert_eq!(chunks[0]["metadata"]["source"], "atlas");
    let scores: Vec<f64> = chunks
        .iter()
        .map(|c| c["score"].as_f64().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    // Full-text candidates only: the Rust document shares no word.
    assert!(chunks.iter().all(|c| c["document_id"] != "rust"));

    // The chunk reached the model, in the rendered system message.
    let render = step(&app, id, "render").await;
    assert!(rendered_text(&render).contains("[1] Paris is the capital of France."));
    let sent = app.fake.calls_containing("What is the capital of France?");
    assert!(sent[0].key.contains("Paris is the capital of France."));
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_collection_gives_empty_in_the_rendered_prompt_and_in_flags() {
    let prompts = TempPrompts::with_shipped();
    let app = app_with(&prompts).await;
    let execution = run(&app, "ask", "Where is the holiday policy?").await;
    assert_eq!(execution["status"], "succeeded", "{execution:#}");
    assert_eq!(execution["flags"], json!(["retrieval_empty"]));
    let id = execution["id"].as_str().unwrap();
    let render = step(&app, id, "render").await;
    assert!(
        rendered_text(&render).contains("Retrieval status: empty."),
        "{render:#}"
    );
    let sent = app.fake.calls_containing("Where is the holiday policy?");
    assert!(sent[0].key.contains("Retrieval status: empty."));
    let metrics = app.metrics().await.text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("llmq_retrievals_total") && l.contains("status=\"empty\"")),
        "no retrieval metric"
    );
    app.cleanup().await;
}

const SLOW_FIRST: &str = r#"description = "Retrieves with a query the fake embeds slowly, then falls back."
model = "gpt-4o-mini"
system = "Status: {{ retrieval.status }}; fallback: {{ retrieval.fallback }}; {% for c in retrieval.chunks %}<{{ c.text }}>{% endfor %}"
template = "{{ question }}"

[input_schema]
type = "object"
required = ["question"]
properties = { question = { type = "string" } }

[retrieve]
collection = "handbook"
query = "{{ question }} [[fault:latency=5000]]"
timeout_ms = 300
on_failure = "fallback"

[retrieve.fallback]
query = "{{ question }}"
"#;

const MUST_FIND: &str = r#"description = "Fails when nothing is found."
model = "gpt-4o-mini"
template = "{{ question }} {{ retrieval.status }}"

[input_schema]
type = "object"
required = ["question"]
properties = { question = { type = "string" } }

[retrieve]
collection = "nowhere"
query = "{{ question }}"
on_empty = "fail"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_embeddings_endpoint_times_out_and_the_configured_fallback_answers() {
    let prompts = TempPrompts::with_shipped();
    prompts.add("slow-first", 1, SLOW_FIRST);
    prompts.add("must-find", 1, MUST_FIND);
    let app = app_with(&prompts).await;
    upsert(
        &app,
        "handbook",
        json!([{"id": "leave", "text": "Holiday leave is twenty days a year."}]),
    )
    .await;
    wait_indexed(&app, "handbook", &["leave"], None).await;

    let execution = run(&app, "slow-first", "How much holiday leave?").await;
    assert_eq!(execution["status"], "succeeded", "{execution:#}");
    let id = execution["id"].as_str().unwrap();
    let retrieve = step(&app, id, "retrieve").await;
    assert_eq!(
        execution["flags"],
        json!(["retrieval_fallback", "retrieval_timed_out"]),
        "{retrieve:#}"
    );
    let out = &retrieve["output"];
    assert_eq!(out["first"]["status"], "timed_out", "{out:#}");
    assert_eq!(out["fallback_result"]["status"], "ok", "{out:#}");
    assert_eq!(out["status"], "ok");
    let render = step(&app, id, "render").await;
    assert!(
        rendered_text(&render)
            .contains("Status: ok; fallback: True; <Holiday leave is twenty days a year.>"),
        "{render:#}"
    );

    // `on_empty = "fail"` fails the execution with its own code.
    let failed = run(&app, "must-find", "Anything at all?").await;
    assert_eq!(failed["status"], "failed", "{failed:#}");
    assert_eq!(failed["error"]["code"], "retrieval_empty");
    assert_eq!(failed["flags"], json!(["retrieval_empty"]));
    assert!(app.fake.calls_containing("Anything at all?").is_empty());
    app.cleanup().await;
}

const TIGHT: &str = r#"description = "Context of at most 25 tokens."
model = "gpt-4o-mini"
system = "{% for c in retrieval.chunks %}<{{ c.text }}>{% endfor %}"
template = "{{ question }}"

[input_schema]
type = "object"
required = ["question"]
properties = { question = { type = "string" } }

[retrieve]
collection = "handbook"
query = "{{ question }}"
top_k = 10
max_tokens = 25
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_drops_duplicates_and_fits_the_token_budget() {
    let prompts = TempPrompts::with_shipped();
    prompts.add("tight", 1, TIGHT);
    let app = app_with(&prompts).await;
    let long = "The expense policy covers travel, meals and lodging for every trip abroad, \
                with receipts kept for seven years and approval from a manager before booking.";
    upsert(
        &app,
        "handbook",
        json!([
            {"id": "long", "text": long},
            {"id": "short", "text": "Expense claims are paid monthly."},
            {"id": "copy", "text": "Expense claims are paid monthly."},
            {"id": "other", "text": "Expense reports go to finance."},
        ]),
    )
    .await;
    wait_indexed(&app, "handbook", &["long", "short", "copy", "other"], None).await;

    let execution = run(&app, "tight", "When are expense claims paid?").await;
    assert_eq!(execution["status"], "succeeded", "{execution:#}");
    let id = execution["id"].as_str().unwrap();
    let out = step(&app, id, "retrieve").await["output"]["first"].clone();
    let chunks = out["chunks"].as_array().unwrap();
    let used: usize = chunks
        .iter()
        .map(|c| count_tokens("o200k_base", c["text"].as_str().unwrap()))
        .sum();
    assert!(used <= 25, "{used} tokens: {out:#}");
    assert_eq!(out["tokens"].as_u64().unwrap() as usize, used);
    let reasons: Vec<(&str, &str)> = out["dropped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["document_id"].as_str().unwrap(),
                d["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(reasons.contains(&("long", "over_budget")), "{reasons:?}");
    // One of the two identical chunks is a duplicate of the other.
    assert!(
        reasons.contains(&("copy", "duplicate")) || reasons.contains(&("short", "duplicate")),
        "{reasons:?}"
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_updated_document_is_re_embedded_and_an_unchanged_one_is_not() {
    let prompts = TempPrompts::with_shipped();
    let app = app_with(&prompts).await;
    let a = "Alpha: the office opens at nine.";
    let b1 = "Beta: lunch is served at noon.";
    let b2 = "Beta: lunch is served at one.";
    upsert(
        &app,
        "notes",
        json!([{"id": "a", "text": a}, {"id": "b", "text": b1}]),
    )
    .await;
    wait_indexed(&app, "notes", &["a", "b"], None).await;
    let embedded = |text: &str| {
        app.fake
            .embedded_texts()
            .iter()
            .filter(|t| t.as_str() == text)
            .count()
    };
    assert_eq!((embedded(a), embedded(b1)), (1, 1));

    let body = upsert(
        &app,
        "notes",
        json!([{"id": "a", "text": a}, {"id": "b", "text": b2}]),
    )
    .await;
    assert_eq!(
        body["data"][0]["status"], "indexed",
        "unchanged stays indexed"
    );
    assert_eq!(body["data"][1]["status"], "pending", "changed is pending");
    let ok = app
        .eventually(WAIT, || async {
            let d = document(&app, "notes", "b").await;
            d["status"] == "indexed" && d["text"] == b2
        })
        .await;
    assert!(ok, "the updated document was not re-indexed");
    assert_eq!(embedded(b2), 1);
    assert_eq!(
        embedded(a),
        1,
        "an unchanged document is not embedded again"
    );

    // Another model for the collection: both are stale and re-embedded.
    let response = app
        .send_json(
            Method::PUT,
            "/v1/collections/notes",
            &json!({"embedding_model": "another-embedder"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let collection: Value = response.json().await.unwrap();
    assert_eq!(collection["embedding_model"], "another-embedder");
    wait_indexed(&app, "notes", &["a", "b"], Some("another-embedder")).await;
    assert_eq!((embedded(a), embedded(b2)), (2, 2));
    let d = document(&app, "notes", "a").await;
    assert_eq!(d["stale"], false);

    // Listing, deleting, and bad input.
    let list: Value = app
        .get_authorized("/v1/collections/notes/documents")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    assert!(list["data"][0].get("text").is_none());
    let response = app
        .send_empty(Method::DELETE, "/v1/collections/notes/documents/a")
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let response = app
        .get_authorized("/v1/collections/notes/documents/a")
        .await;
    assert_error(response, StatusCode::NOT_FOUND, "not_found").await;
    let response = app
        .send_json(
            Method::POST,
            "/v1/collections/notes/documents",
            &json!({"documents": [{"id": "x", "text": "1"}, {"id": "x", "text": "2"}]}),
        )
        .await;
    assert_error(response, StatusCode::BAD_REQUEST, "bad_request").await;
    let response = app
        .send_json(
            Method::POST,
            "/v1/collections/Not%20A%20Name/documents",
            &json!({"documents": [{"id": "x", "text": "1"}]}),
        )
        .await;
    assert_error(response, StatusCode::BAD_REQUEST, "bad_request").await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_candidate_search_reads_the_gin_index_not_the_whole_table() {
    let app = TestApp::builder().without_worker().spawn().await;
    let db = app.db().await;
    db.batch_execute(
        "INSERT INTO collections (tenant_id, name, embedding_model) VALUES ('default', 'big', 'm'); \
         INSERT INTO documents (tenant_id, collection, id, text, content_hash, status) \
           SELECT 'default', 'big', 'd' || i, 'x', 'h', 'indexed' FROM generate_series(1, 5000) i; \
         INSERT INTO chunks (tenant_id, collection, document_id, ord, text, tokens, content_hash, \
             embedding_model, embedding) \
           SELECT 'default', 'big', 'd' || i, 0, 'note k' || i || ' about subject' || (i % 500), \
                  8, 'h', 'm', '\\x00000000' FROM generate_series(1, 5000) i; \
         ANALYZE chunks; ANALYZE documents;",
    )
    .await
    .unwrap();
    let sql = format!(
        "EXPLAIN {}",
        llmq_shared::db::collections::SEARCH_CANDIDATES
    );
    let plan: Vec<String> = db
        .query(
            &sql,
            &[&"default", &"big", &"k42 subject7", &"m", &200i64, &1000i64],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    let plan = plan.join("\n");
    assert!(plan.contains("chunks_tsv_idx"), "{plan}");
    assert!(plan.contains("chunk_terms_pkey"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
    app.cleanup().await;
}

/// Inserts indexed documents of one chunk each, with a zero embedding,
/// straight into the tables (the search reads nothing else).
async fn insert_chunks(db: &impl GenericClient, collection: &str, texts: &[(String, String)]) {
    db.execute(
        "INSERT INTO collections (tenant_id, name, embedding_model) VALUES ('default', $1, 'm') \
         ON CONFLICT DO NOTHING",
        &[&collection],
    )
    .await
    .unwrap();
    let ids: Vec<&str> = texts.iter().map(|(id, _)| id.as_str()).collect();
    let bodies: Vec<&str> = texts.iter().map(|(_, t)| t.as_str()).collect();
    db.execute(
        "WITH d AS (INSERT INTO documents (tenant_id, collection, id, text, content_hash, status) \
           SELECT 'default', $1, id, text, 'h', 'indexed' FROM UNNEST($2::text[], $3::text[]) AS n(id, text)) \
         INSERT INTO chunks (tenant_id, collection, document_id, ord, text, tokens, content_hash, \
             embedding_model, embedding) \
           SELECT 'default', $1, id, 0, text, 8, 'h', 'm', '\\x00000000' \
             FROM UNNEST($2::text[], $3::text[]) AS n(id, text)",
        &[&collection, &ids, &bodies],
    )
    .await
    .unwrap();
}

async fn candidate_ids(
    db: &impl GenericClient,
    collection: &str,
    query: &str,
    limit: i64,
    max_ranked: i64,
) -> Vec<String> {
    llmq_shared::db::collections::search_candidates(
        db, "default", collection, query, "m", limit, max_ranked,
    )
    .await
    .unwrap()
    .into_iter()
    .map(|r| r.document_id)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_search_takes_the_chunks_holding_every_word_first_and_falls_back_to_any_word() {
    let app = TestApp::builder().without_worker().spawn().await;
    let db = app.db().await;
    let docs = [
        ("both", "alpha beta"),
        ("alpha", "alpha gamma"),
        ("beta", "beta delta"),
        ("other", "epsilon zeta"),
    ]
    .map(|(id, t)| (id.to_string(), t.to_string()));
    insert_chunks(&db, "words", &docs).await;

    // Enough chunks hold both words: those alone, no fallback.
    assert_eq!(
        candidate_ids(&db, "words", "alpha beta", 1, 1000).await,
        ["both"]
    );
    // Fewer than wanted: the chunks holding either word join them, the
    // one holding both ranked first.
    let found = candidate_ids(&db, "words", "alpha beta", 10, 1000).await;
    assert_eq!(found[0], "both", "{found:?}");
    let mut rest = found[1..].to_vec();
    rest.sort();
    assert_eq!(rest, ["alpha", "beta"]);
    // No chunk holds every word (one is in none): any word still finds.
    assert_eq!(
        candidate_ids(&db, "words", "gamma omicron", 10, 1000).await,
        ["alpha"]
    );
    // Stop words only: nothing to search for.
    assert!(candidate_ids(&db, "words", "the of and", 10, 1000)
        .await
        .is_empty());
    // Another collection's chunks are not candidates, nor are its counts.
    insert_chunks(&db, "elsewhere", &[("x".into(), "alpha beta gamma".into())]).await;
    assert_eq!(
        candidate_ids(&db, "words", "gamma omicron", 10, 1000).await,
        ["alpha"]
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn common_words_do_not_crowd_out_the_chunk_holding_the_rare_one() {
    let app = TestApp::builder().without_worker().spawn().await;
    let db = app.db().await;
    let mut docs: Vec<(String, String)> = (0..60)
        .map(|i| {
            (
                format!("note-{i}"),
                format!("The system report covers the system status, item {i}."),
            )
        })
        .collect();
    docs.push((
        "zebrafish".into(),
        "Zebrafish are kept in tank nine.".into(),
    ));
    insert_chunks(&db, "handbook", &docs).await;

    // Every chunk but one holds "system" and "report" (ranked above a
    // chunk holding one word of the query); the rare word selects the
    // candidates, within a budget of 20 rows where either common word
    // alone would be 60.
    let query = "How does the system report zebrafish sightings?";
    assert_eq!(
        candidate_ids(&db, "handbook", query, 5, 20).await,
        ["zebrafish"]
    );
    // Delete the rare chunk's document: its term count goes with it.
    db.execute(
        "DELETE FROM documents WHERE tenant_id = 'default' AND collection = 'handbook' AND id = 'zebrafish'",
        &[],
    )
    .await
    .unwrap();
    let terms: i64 = db
        .query_one(
            "SELECT count(*) FROM chunk_terms WHERE collection = 'handbook' AND term = 'zebrafish'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(terms, 0);
    // Only common words left: the best of a bounded sample of the chunks
    // holding the rarest, never more than wanted.
    let found = candidate_ids(&db, "handbook", query, 5, 20).await;
    assert_eq!(found.len(), 5, "{found:?}");
    assert!(found.iter().all(|id| id.starts_with("note-")), "{found:?}");
    let counts: Vec<(String, i64)> = db
        .query(
            "SELECT term, chunks FROM chunk_terms WHERE collection = 'handbook' \
             AND term IN ('system', 'report') ORDER BY term",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        counts,
        [("report".to_string(), 60), ("system".to_string(), 60)]
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retrieve_step_finds_the_rare_word_among_common_ones_end_to_end() {
    let prompts = TempPrompts::with_shipped();
    let dir = prompts.dir.clone();
    let app = TestApp::builder()
        .configure(move |s| {
            s.prompts_dir = dir;
            s.retrieval.index_poll_ms = 50;
            s.retrieval.index_batch = 64;
            s.retrieval.candidates = 5;
            s.retrieval.max_ranked = 20;
        })
        .spawn()
        .await;
    let mut docs: Vec<Value> = (0..40)
        .map(|i| {
            json!({"id": format!("note-{i}"),
                   "text": format!("The system report covers the system status, item {i}.")})
        })
        .collect();
    docs.push(json!({"id": "zebrafish", "text": "Zebrafish are kept in tank nine."}));
    upsert(&app, "handbook", Value::Array(docs)).await;
    let mut ids: Vec<String> = (0..40).map(|i| format!("note-{i}")).collect();
    ids.push("zebrafish".into());
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    wait_indexed(&app, "handbook", &ids, None).await;

    let execution = run(
        &app,
        "ask",
        "How does the system report zebrafish sightings?",
    )
    .await;
    assert_eq!(execution["status"], "succeeded", "{execution:#}");
    let id = execution["id"].as_str().unwrap();
    let out = step(&app, id, "retrieve").await["output"].clone();
    assert_eq!(out["status"], "ok", "{out:#}");
    assert_eq!(out["first"]["candidates"], 1, "{out:#}");
    assert_eq!(
        out["first"]["chunks"][0]["document_id"], "zebrafish",
        "{out:#}"
    );
    let render = step(&app, id, "render").await;
    assert!(rendered_text(&render).contains("[1] Zebrafish are kept in tank nine."));
    app.cleanup().await;
}

const RESUMED: &str = r#"description = "Retrieves on a topic; the question may carry a fault for the model."
model = "gpt-4o-mini"
system = "{% for c in retrieval.chunks %}<{{ c.text }}>{% endfor %}"
template = "{{ question }}"

[input_schema]
type = "object"
required = ["topic", "question"]
properties = { topic = { type = "string" }, question = { type = "string" } }

[retrieve]
collection = "handbook"
query = "{{ topic }}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_execution_restores_its_finished_retrieve_step_instead_of_searching_again() {
    let prompts = TempPrompts::with_shipped();
    prompts.add("resumed", 1, RESUMED);
    let app = app_with(&prompts).await;
    upsert(
        &app,
        "handbook",
        json!([{"id": "parking", "text": "Parking spaces are free for visitors."}]),
    )
    .await;
    wait_indexed(&app, "handbook", &["parking"], None).await;
    let before = app.fake.embedded_texts().len();

    // The model fails once: the execution is retried from its checkpoints.
    let accepted = app
        .submit_accepted(&json!({"prompt": "resumed", "input": {
            "topic": "visitor parking", "question": "Is parking free? [[fault:500:times=1]]"}}))
        .await;
    let id = accepted["id"].as_str().unwrap();
    let execution = app.wait_until_terminal(id, WAIT).await;
    assert_eq!(execution["status"], "succeeded", "{execution:#}");
    assert_eq!(execution["attempts"], 2);
    let queries: Vec<String> = app.fake.embedded_texts()[before..].to_vec();
    assert_eq!(
        queries,
        vec!["visitor parking".to_string()],
        "searched once"
    );
    let steps: Value = app.steps(id).await.json().await.unwrap();
    let retrieves: Vec<&Value> = steps["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "retrieve")
        .collect();
    assert_eq!(retrieves.len(), 1, "{steps:#}");
    // Both model calls saw the retrieved chunk.
    let calls = app.fake.calls_containing("Is parking free?");
    assert_eq!(calls.len(), 2);
    assert!(calls
        .iter()
        .all(|c| c.key.contains("<Parking spaces are free for visitors.>")));
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_taken_by_a_dead_indexer_and_a_failed_embedding_are_indexed_later() {
    let prompts = TempPrompts::with_shipped();
    let dir = prompts.dir.clone();
    let mut app = TestApp::builder()
        .without_worker()
        .configure(move |s| {
            s.prompts_dir = dir;
            s.retrieval.index_poll_ms = 50;
        })
        .spawn()
        .await;
    upsert(
        &app,
        "notes",
        json!([{"id": "taken", "text": "Taken by an indexer that died."}]),
    )
    .await;
    // An indexer takes `taken` and dies before writing anything.
    let claimed = llmq_shared::db::collections::claim_documents(&app.db().await, 10, 1.0)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, "taken");
    upsert(
        &app,
        "notes",
        json!([{"id": "flaky", "text": "The endpoint fails once here. [[fault:500:times=1]]"}]),
    )
    .await;
    app.start_worker().await;
    wait_indexed(&app, "notes", &["taken", "flaky"], None).await;
    let flaky = document(&app, "notes", "flaky").await;
    // Retried after the 500 (attempts also count a batch shared with `taken`).
    assert!(flaky["attempts"].as_i64().unwrap() >= 2, "{flaky:#}");
    let taken = document(&app, "notes", "taken").await;
    assert_eq!(taken["chunks"], 1);
    assert!(
        taken["attempts"].as_i64().unwrap() >= 2,
        "taken again: {taken:#}"
    );
    app.cleanup().await;
}
