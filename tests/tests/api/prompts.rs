//! The prompt registry's promise: a stored version never changes. Syncing
//! prompt files is idempotent, and a file that changed an existing version
//! is refused as a whole — nothing of that sync is stored.

use std::path::{Path, PathBuf};

use llmq_api::startup::sync_prompts;
use llmq_tests::app::{prompts_dir, test_settings};
use llmq_tests::TestDatabase;

/// A copy of `prompts/` the test may edit, removed on drop.
struct PromptsCopy(PathBuf);

impl PromptsCopy {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "llmq-tests-prompts-{}",
            uuid::Uuid::now_v7().simple()
        ));
        copy_dir(&prompts_dir(), &dir);
        Self(dir)
    }
}

impl Drop for PromptsCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

async fn stored_versions(pool: &deadpool_postgres::Pool, name: &str) -> Vec<(i32, String)> {
    pool.get()
        .await
        .unwrap()
        .query("SELECT version, content_hash FROM prompt_versions WHERE prompt_name = $1 ORDER BY version", &[&name])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn production_version(pool: &deadpool_postgres::Pool, name: &str) -> i32 {
    pool.get()
        .await
        .unwrap()
        .query_one(
            "SELECT version FROM prompt_labels WHERE prompt_name = $1 AND label = 'production'",
            &[&name],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_prompt_file_changed_for_an_existing_version_is_refused() {
    llmq_tests::init_tracing();
    let database = TestDatabase::create().await.unwrap();
    let pool = llmq_shared::db::create_pool(&database.url, 2).unwrap();
    let prompts = PromptsCopy::new();
    let mut settings = test_settings(&database.url, "http://127.0.0.1:9/v1");
    settings.prompts_dir = prompts.0.clone();

    sync_prompts(&settings, &pool)
        .await
        .expect("the first sync stores the files");
    let before = stored_versions(&pool, "summarize").await;
    assert_eq!(
        before.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(production_version(&pool, "summarize").await, 2);

    // Unchanged files: syncing again is a no-op.
    sync_prompts(&settings, &pool)
        .await
        .expect("an unchanged sync succeeds");
    assert_eq!(stored_versions(&pool, "summarize").await, before);

    // Edit v1 in place, and add a v3 in the same sync.
    let v1 = prompts.0.join("summarize/v1.toml");
    let original = std::fs::read_to_string(&v1).unwrap();
    let edited = original.replace(
        "Summarize the following text",
        "Briefly summarize the following text",
    );
    assert_ne!(edited, original, "the edit must change the template");
    std::fs::write(&v1, edited).unwrap();
    std::fs::copy(
        prompts.0.join("summarize/v2.toml"),
        prompts.0.join("summarize/v3.toml"),
    )
    .unwrap();

    let error = sync_prompts(&settings, &pool)
        .await
        .expect_err("a changed version must be refused");
    let message = format!("{error:#}");
    assert!(
        message.contains("summarize") && message.contains("v1"),
        "{message}"
    );

    // Nothing of the refused sync was stored.
    assert_eq!(stored_versions(&pool, "summarize").await, before);
    assert_eq!(production_version(&pool, "summarize").await, 2);

    // Restoring the file makes the sync (with the new v3) go through.
    std::fs::write(&v1, original).unwrap();
    sync_prompts(&settings, &pool)
        .await
        .expect("the restored files sync");
    assert_eq!(stored_versions(&pool, "summarize").await.len(), 3);
    assert_eq!(production_version(&pool, "summarize").await, 3);

    pool.close();
    database.drop_database().await.unwrap();
}
