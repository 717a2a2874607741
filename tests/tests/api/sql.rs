//! tokio-postgres checks no query at compile time, so every SQL constant
//! of every repository is prepared here against the migrated schema.

use llmq_shared::db::{
    collections, events, executions, idempotency, labels, leases, org_limits, outbox, prompts,
    stats, steps, tenancy, tools, usage, webhooks,
};
use llmq_tests::database::{connect, TestDatabase};

#[tokio::test]
async fn every_repository_statement_prepares_against_the_migrated_schema() {
    let db = TestDatabase::create().await.unwrap();
    let client = connect(&db.url).await.unwrap();
    let all = executions::ALL_SQL
        .iter()
        .chain(leases::ALL_SQL.iter())
        .chain(events::ALL_SQL)
        .chain(outbox::ALL_SQL)
        .chain(idempotency::ALL_SQL)
        .chain(prompts::ALL_SQL)
        .chain(labels::ALL_SQL)
        .chain(stats::ALL_SQL)
        .chain(usage::ALL_SQL)
        .chain(steps::ALL_SQL.iter())
        .chain(tools::ALL_SQL)
        .chain(webhooks::ALL_SQL.iter())
        .chain(tenancy::ALL_SQL)
        .chain(collections::ALL_SQL)
        .chain(org_limits::ALL_SQL.iter());
    let mut prepared = 0;
    for sql in all {
        client
            .prepare(sql)
            .await
            .unwrap_or_else(|e| panic!("{e:?}\nwhile preparing:\n{sql}"));
        prepared += 1;
    }
    assert!(prepared >= 20, "only {prepared} statements prepared");
    drop(client);
    db.drop_database().await.unwrap();
}
