//! A Postgres database per test, cloned from a migrated template.
//!
//! The template is named after a hash of the migration files, so a changed
//! migration gets a fresh template and an unchanged one is reused across
//! runs. It is created at most once per process (a `OnceCell`) and at most
//! once across concurrently running test processes (an advisory lock on the
//! maintenance database), built under a temporary name and renamed when
//! complete, so a crashed run never leaves a half-migrated template behind.
//!
//! Each test then gets `llmq_test_<uuid v7>`. The v7 id carries its creation
//! time, which is how the sweep at template time recognises databases left
//! behind by earlier runs (older than an hour, nobody connected) without
//! touching those a concurrently running test process is using. Templates
//! of other migration sets with no connection are dropped at the same time.

use std::time::Duration;

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

/// The maintenance database the harness connects to for CREATE/DROP DATABASE.
/// Override with `TEST_DATABASE_URL` (any database of the server to use).
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

const TEST_DB_PREFIX: &str = "llmq_test_";
const TEMPLATE_PREFIX: &str = "llmq_test_template_";
/// Key of the advisory lock serialising template creation between processes.
const TEMPLATE_LOCK: i64 = 0x6c6c_6d71_7465_7374; // "llmqtest"
/// Databases of earlier runs older than this, with no connection, are dropped.
const STALE_AFTER: Duration = Duration::from_secs(3600);

static TEMPLATE: OnceCell<String> = OnceCell::const_new();

/// A database of one test.
#[derive(Clone, Debug)]
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    /// Clones the migrated template into a new database of this test.
    pub async fn create() -> anyhow::Result<Self> {
        let template = TEMPLATE.get_or_try_init(create_template).await?.clone();
        let name = format!("{TEST_DB_PREFIX}{}", Uuid::now_v7().simple());
        let admin = connect(&admin_url()).await?;
        let sql = format!(
            "CREATE DATABASE {} TEMPLATE {}",
            ident(&name)?,
            ident(&template)?
        );
        // CREATE DATABASE refuses while anyone is connected to the template
        // (e.g. a backend of another process still exiting): retry briefly.
        // A template dropped by another process's sweep (it had other
        // migrations) is built again.
        let mut attempt = 0;
        loop {
            match admin.batch_execute(&sql).await {
                Ok(()) => break,
                Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) && attempt < 50 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) if e.code() == Some(&SqlState::UNDEFINED_DATABASE) && attempt < 50 => {
                    attempt += 1;
                    create_template().await?;
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("creating test database {name} from {template}"))
                }
            }
        }
        Ok(Self {
            url: with_database(&admin_url(), &name),
            name,
        })
    }

    /// Drops the database, closing whatever connections are still open.
    pub async fn drop_database(&self) -> anyhow::Result<()> {
        let admin = connect(&admin_url()).await?;
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                ident(&self.name)?
            ))
            .await
            .with_context(|| format!("dropping {}", self.name))
    }
}

/// Connects one client whose connection task runs on the current runtime.
pub async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to {}", llmq_shared::config::redact_url(url)))?;
    // Ends when the client is dropped; nothing to report then.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn create_template() -> anyhow::Result<String> {
    let name = format!("{TEMPLATE_PREFIX}{}", migrations_hash()?);
    let admin = connect(&admin_url()).await?;
    admin
        .execute("SELECT pg_advisory_lock($1)", &[&TEMPLATE_LOCK])
        .await?;
    let result = create_template_locked(&admin, &name).await;
    // Closing the session would release it too; unlock so the connection's
    // fate does not matter.
    let _ = admin
        .execute("SELECT pg_advisory_unlock($1)", &[&TEMPLATE_LOCK])
        .await;
    result.map(|()| name)
}

async fn create_template_locked(admin: &Client, name: &str) -> anyhow::Result<()> {
    sweep_stale_databases(admin).await;
    sweep_other_templates(admin, name).await;
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if exists {
        return Ok(());
    }
    // Only the lock holder uses this name, so a leftover is from a crash.
    let building = format!("{name}_building");
    admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            ident(&building)?
        ))
        .await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {}", ident(&building)?))
        .await?;
    llmq_shared::db::migrate(&with_database(&admin_url(), &building))
        .await
        .context("migrating the template database")?;
    // The migration's backend may still be exiting: RENAME needs it gone.
    let rename = format!(
        "ALTER DATABASE {} RENAME TO {}",
        ident(&building)?,
        ident(name)?
    );
    let mut attempt = 0;
    loop {
        match admin.batch_execute(&rename).await {
            Ok(()) => return Ok(()),
            Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) && attempt < 50 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).context("renaming the template database"),
        }
    }
}

/// Drops test databases of earlier runs: older than `STALE_AFTER` (read
/// from their v7 id) and with no open connection. Best effort: a failure is
/// only logged, and a database someone connects to meanwhile refuses the drop.
async fn sweep_stale_databases(admin: &Client) {
    let rows = match admin
        .query(
            "SELECT d.datname FROM pg_database d \
             WHERE d.datname LIKE 'llmq\\_test\\_%' AND d.datname NOT LIKE 'llmq\\_test\\_template\\_%' \
               AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)",
            &[],
        )
        .await
    {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list leftover test databases");
            return;
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    for row in rows {
        let name: String = row.get(0);
        let Some(created) = name
            .strip_prefix(TEST_DB_PREFIX)
            .and_then(|id| Uuid::parse_str(id).ok())
            .filter(|id| id.get_version_num() == 7)
            .and_then(|id| id.get_timestamp())
        else {
            continue;
        };
        let (secs, nanos) = created.to_unix();
        if now.saturating_sub(Duration::new(secs, nanos)) < STALE_AFTER {
            continue;
        }
        let Ok(quoted) = ident(&name) else { continue };
        if let Err(e) = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {quoted}"))
            .await
        {
            tracing::debug!(database = %name, error = %e, "leftover test database not dropped");
        }
    }
}

/// Drops templates of other migration sets that nobody is connected to,
/// so editing migrations does not pile templates up. Safe under the
/// template lock: nobody builds one meanwhile, and a process of another
/// build that still wants its template builds it again (see `create`).
async fn sweep_other_templates(admin: &Client, current: &str) {
    let rows = match admin
        .query(
            "SELECT d.datname FROM pg_database d \
             WHERE d.datname LIKE 'llmq\\_test\\_template\\_%' AND d.datname <> $1 \
               AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)",
            &[&current],
        )
        .await
    {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list old test templates");
            return;
        }
    };
    for row in rows {
        let name: String = row.get(0);
        let Ok(quoted) = ident(&name) else { continue };
        if let Err(e) = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {quoted}"))
            .await
        {
            tracing::debug!(database = %name, error = %e, "old test template not dropped");
        }
    }
}

/// sha256 over the names and contents of `migrations/*.sql`, shortened.
fn migrations_hash() -> anyhow::Result<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {dir}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    let mut hasher = Sha256::new();
    for path in files {
        hasher.update(
            path.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        );
        hasher.update([0]);
        hasher.update(std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?);
        hasher.update([0]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// A quoted identifier; only the harness's own names (a-z, 0-9, _) pass.
fn ident(name: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        !name.is_empty()
            && name.len() < 64
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
        "refusing to use {name:?} as a database name"
    );
    Ok(format!("\"{name}\""))
}

/// `url` with its database path replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let server = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{server}/{database}?{q}"),
        None => format!("{server}/{database}"),
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_only_the_database_of_a_url() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "x"),
            "postgres://h:5432/x"
        );
    }
}
