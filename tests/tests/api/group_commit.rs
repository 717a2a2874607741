//! The group-committed statements: many executions per statement, and
//! still one answer per execution — claimed or why not, written or lease
//! lost — with one bad row failing alone. Also the label cache that keeps
//! the registry off the submit path.

use std::time::Duration;

use futures::FutureExt;
use llmq_api::startup::sync_prompts;
use llmq_shared::db::executions::{self as db, Finish, Outcome};
use llmq_shared::db::leases::{self, Claim};
use llmq_shared::db::{create_batch_pool, run_batch, steps as db_steps, Pool};
use llmq_shared::execution::{ExecutionId, ExecutionStatus, NewExecution};
use llmq_shared::step::{Step, StepKind, StepStatus};
use llmq_tests::app::test_settings;
use llmq_tests::{TestApp, TestDatabase};
use serde_json::json;

const LEASE: Duration = Duration::from_secs(15);
const REPUBLISH: Duration = Duration::from_secs(10);

async fn registry() -> (TestDatabase, Pool) {
    let db = TestDatabase::create().await.unwrap();
    let pool = create_batch_pool(&db.url, 4).unwrap();
    sync_prompts(&test_settings(&db.url, "http://127.0.0.1:1/v1"), &pool)
        .await
        .unwrap();
    (db, pool)
}

fn new_execution(version: i32) -> NewExecution {
    NewExecution {
        id: ExecutionId::new(),
        tenant_id: "default".into(),
        prompt_name: "summarize".into(),
        prompt_version: version,
        prompt_label: None,
        prompt_arm: None,
        model: "gpt-4o-mini".into(),
        params: json!({}),
        input: json!({ "text": "batched" }),
        metadata: json!({}),
        end_user: None,
        priority: 5,
        stream: false,
        webhook_url: None,
        key_id: None,
        cache_ttl_secs: None,
        reserved: false,
    }
}

async fn insert(pool: &Pool, n: usize) -> Vec<ExecutionId> {
    let new: Vec<NewExecution> = (0..n).map(|_| new_execution(1)).collect();
    let client = pool.get().await.unwrap();
    let inserted = db::insert_executions(&client, &new.iter().collect::<Vec<_>>(), REPUBLISH)
        .await
        .unwrap();
    let ids: Vec<ExecutionId> = inserted.iter().map(|e| e.id).collect();
    assert_eq!(
        ids,
        new.iter().map(|n| n.id).collect::<Vec<_>>(),
        "answered in the order given"
    );
    assert!(inserted
        .iter()
        .all(|e| e.status == ExecutionStatus::Queued && e.attempts == 0));
    ids
}

fn finalize(id: ExecutionId, seq: i32) -> Step {
    let mut step = Step::start(id, seq, StepKind::Finalize, 1);
    step.finish(StepStatus::Succeeded);
    step
}

#[tokio::test]
async fn a_claim_batch_answers_each_execution_in_the_order_given() {
    let (db, pool) = registry().await;
    let ids = insert(&pool, 4).await;
    let (free, other, done, cancelled) = (ids[0], ids[1], ids[2], ids[3]);
    let unknown = ExecutionId::new();
    let client = pool.get().await.unwrap();

    // Set the scene one statement at a time.
    assert!(matches!(
        leases::claim_executions(&client, &[other, done], "other-worker", LEASE)
            .await
            .unwrap()
            .0[..],
        [Claim::Claimed(_), Claim::Claimed(_)]
    ));
    let finish = Finish {
        id: done,
        outcome: Outcome {
            status: ExecutionStatus::Succeeded,
            output: Some(json!("ok")),
            error: None,
            usage: None,
            cached: false,
        },
        steps: vec![finalize(done, 1)],
    };
    let finished = db::finish_executions(&client, "other-worker", &[&finish])
        .await
        .unwrap();
    assert!(finished.contains(&done.0));
    client
        .execute(
            "UPDATE executions SET cancel_requested = true WHERE id = $1",
            &[&cancelled.0],
        )
        .await
        .unwrap();

    let (claims, _) = leases::claim_executions(
        &client,
        &[unknown, other, free, done, cancelled],
        "this-worker",
        LEASE,
    )
    .await
    .unwrap();
    assert!(matches!(claims[0], Claim::NotFound), "{:?}", claims[0]);
    assert!(matches!(claims[1], Claim::Leased), "{:?}", claims[1]);
    match &claims[2] {
        Claim::Claimed(e) => {
            assert_eq!(e.id, free);
            assert_eq!(e.status, ExecutionStatus::Running);
            assert_eq!(e.attempts, 1);
        }
        other => panic!("the free execution was not claimed: {other:?}"),
    }
    assert!(
        matches!(claims[3], Claim::Terminal(ExecutionStatus::Succeeded)),
        "{:?}",
        claims[3]
    );
    assert!(
        matches!(claims[4], Claim::CancelRequested),
        "{:?}",
        claims[4]
    );
    drop(client);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn step_and_finish_batches_write_only_where_the_lease_holds() {
    let (db, pool) = registry().await;
    let ids = insert(&pool, 2).await;
    let (kept, lost) = (ids[0], ids[1]);
    let client = pool.get().await.unwrap();
    leases::claim_executions(&client, &ids, "this-worker", LEASE)
        .await
        .unwrap();
    // Another worker took `lost` over (its lease expired and was reclaimed).
    client
        .execute(
            "UPDATE executions SET lease_owner = 'other-worker' WHERE id = $1",
            &[&lost.0],
        )
        .await
        .unwrap();

    let render = |id| {
        let mut s = Step::start(id, 1, StepKind::Render, 1);
        s.finish(StepStatus::Succeeded);
        s
    };
    let (r1, r2) = (render(kept), render(lost));
    let written = db_steps::record_steps(&client, "this-worker", &[&r1, &r2])
        .await
        .unwrap();
    assert_eq!(
        written.written.into_keys().collect::<Vec<_>>(),
        vec![kept.0]
    );

    let outcome = Outcome {
        status: ExecutionStatus::Succeeded,
        output: Some(json!("done")),
        error: None,
        usage: None,
        cached: false,
    };
    let finishes: Vec<Finish> = ids
        .iter()
        .map(|&id| Finish {
            id,
            outcome: outcome.clone(),
            steps: vec![finalize(id, 2)],
        })
        .collect();
    let finished =
        db::finish_executions(&client, "this-worker", &finishes.iter().collect::<Vec<_>>())
            .await
            .unwrap();
    assert_eq!(
        finished.written.into_keys().collect::<Vec<_>>(),
        vec![kept.0]
    );

    let status = |id: ExecutionId| {
        let client = &client;
        async move {
            let row = client
                .query_one(
                    "SELECT status, (SELECT count(*) FROM execution_steps WHERE execution_id = $1) \
                     FROM executions WHERE id = $1",
                    &[&id.0],
                )
                .await
                .unwrap();
            (row.get::<_, String>(0), row.get::<_, i64>(1))
        }
    };
    assert_eq!(status(kept).await, ("succeeded".to_string(), 2));
    assert_eq!(
        status(lost).await,
        ("running".to_string(), 0),
        "nothing of an execution whose lease was lost is written"
    );
    drop(client);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn one_bad_row_fails_alone_and_the_rest_of_its_batch_is_written() {
    let (db, pool) = registry().await;
    // Version 999 does not exist: its row breaks the registry's foreign key.
    let new = vec![new_execution(1), new_execution(999), new_execution(2)];
    let results = run_batch(&pool, &new, |client, new| {
        async move {
            db::insert_executions(client, &new.iter().collect::<Vec<_>>(), REPUBLISH).await
        }
        .boxed()
    })
    .await;
    assert_eq!(results.len(), 3);
    assert_eq!(results[0].as_ref().unwrap().id, new[0].id);
    let err = results[1].as_ref().unwrap_err();
    assert!(!err.is_unavailable(), "a bad row is not an outage: {err}");
    assert!(
        err.to_string().contains("foreign key"),
        "the server's reason is in the error: {err}"
    );
    assert_eq!(results[2].as_ref().unwrap().id, new[2].id);

    let count: i64 = pool
        .get()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM executions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 2);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn a_label_move_reaches_submits_within_the_label_cache_ttl() {
    let app = TestApp::builder()
        .without_worker()
        .configure(|s| s.api.label_cache_ms = 300)
        .spawn()
        .await;
    let body = json!({ "prompt": "summarize", "input": { "text": "which version?" } });
    let first = app.submit_accepted(&body).await;
    assert_eq!(
        first["prompt"]["version"], 2,
        "production follows the newest file"
    );
    assert_eq!(first["prompt"]["label"], "production");

    // A prompt engineer rolls production back to v1.
    app.db()
        .await
        .execute(
            "UPDATE prompt_labels SET version = 1, updated_by = 'test', updated_at = now() \
             WHERE prompt_name = 'summarize' AND label = 'production'",
            &[],
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let after = app.submit_accepted(&body).await;
    assert_eq!(
        after["prompt"]["version"], 1,
        "a submit after the TTL runs the version the label points at now"
    );
    // An exact version is immutable, so cached for good, and still served.
    let exact = app
        .submit_accepted(&json!({ "prompt": "summarize", "version": 2, "input": { "text": "v2" } }))
        .await;
    assert_eq!(exact["prompt"]["version"], 2);
    assert_eq!(exact["prompt"]["label"], serde_json::Value::Null);
}

#[tokio::test]
async fn lease_renewal_skips_a_row_being_written_instead_of_waiting_for_it() {
    let (db, pool) = registry().await;
    let ids = insert(&pool, 2).await;
    let (busy, idle) = (ids[0], ids[1]);
    let writer = pool.get().await.unwrap();
    leases::claim_executions(&writer, &ids, "this-worker", LEASE)
        .await
        .unwrap();
    // An outcome batch holds `busy`'s row (its transaction is still open).
    let mut holder = llmq_tests::database::connect(&db.url).await.unwrap();
    let tx = holder.transaction().await.unwrap();
    tx.execute(
        "UPDATE executions SET updated_at = now() WHERE id = $1",
        &[&busy.0],
    )
    .await
    .unwrap();

    let renewed = tokio::time::timeout(
        Duration::from_secs(5),
        leases::renew_leases(&writer, "this-worker", Duration::from_secs(60)),
    )
    .await
    .expect("renewal waited for a locked row")
    .unwrap();
    assert_eq!(renewed, 1, "the locked row is skipped, the other renewed");
    let extended: bool = writer
        .query_one(
            "SELECT lease_expires_at > now() + interval '30 seconds' FROM executions WHERE id = $1",
            &[&idle.0],
        )
        .await
        .unwrap()
        .get(0);
    assert!(extended);
    tx.rollback().await.unwrap();
    drop((writer, holder));
    db.drop_database().await.unwrap();
}
