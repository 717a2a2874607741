//! The worker's writes to Postgres, group-committed across executions.
//!
//! Hundreds of executions run at once in one worker, and each makes the
//! same three writes: claim, "generate started" (with the render step),
//! and the outcome with its last steps. Written one execution at a time
//! they cost a statement and a commit each; here concurrent executions'
//! writes of one kind share a statement (see `llmq_shared::batch`). Every
//! row is still fenced by this worker's lease, and each execution gets its
//! own answer: claimed or not, written or lease lost.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;

use llmq_shared::batch::Batcher;
use llmq_shared::db::executions::{self as db, Claim, Finish};
use llmq_shared::db::{spawn_batcher, steps as db_steps, DbError, Pool};
use llmq_shared::execution::ExecutionId;
use llmq_shared::queue::{ExecutionEvent, Publisher};
use llmq_shared::step::Step;

type Answer<T> = Result<T, DbError>;

pub struct Writer {
    claims: Batcher<ExecutionId, Answer<Claim>>,
    steps: Batcher<Vec<Step>, Answer<bool>>,
    started: Batcher<Vec<Step>, Answer<bool>>,
    finishes: Batcher<Finish, Answer<bool>>,
}

impl Writer {
    /// `trace_pool` commits asynchronously; only "started" rows use it.
    /// `publisher` announces the outcomes each batch commits.
    pub fn start(
        pool: Pool,
        trace_pool: Pool,
        publisher: Arc<Publisher>,
        owner: &str,
        lease: Duration,
    ) -> Self {
        let owner: Arc<str> = owner.into();
        let claims = {
            let owner = owner.clone();
            spawn_batcher("claim", pool.clone(), move |client, ids| {
                let owner = owner.clone();
                async move { db::claim_executions(client, ids, &owner, lease).await }.boxed()
            })
        };
        let steps = step_batcher("steps", pool.clone(), owner.clone());
        let started = step_batcher("steps_started", trace_pool, owner.clone());
        let finishes = spawn_batcher("finish", pool, move |client, finishes: &[Finish]| {
            let (owner, publisher) = (owner.clone(), publisher.clone());
            async move {
                let refs: Vec<&Finish> = finishes.iter().collect();
                let done = db::finish_executions(client, &owner, &refs).await?;
                // One events message for the outcomes this statement committed.
                let events: Vec<ExecutionEvent> = finishes
                    .iter()
                    .filter(|f| done.contains(&f.id.0))
                    .map(|f| ExecutionEvent {
                        id: f.id,
                        status: f.outcome.status,
                    })
                    .collect();
                publisher.publish_terminal_events(&events).await;
                Ok(finishes.iter().map(|f| done.contains(&f.id.0)).collect())
            }
            .boxed()
        });
        Self {
            claims,
            steps,
            started,
            finishes,
        }
    }

    /// Takes the lease on `id`.
    pub async fn claim(&self, id: ExecutionId) -> Answer<Claim> {
        self.claims.submit(id).await.map_err(stopped)?
    }

    /// Writes steps of one execution; false when the lease was lost.
    pub async fn record(&self, steps: Vec<Step>) -> Answer<bool> {
        self.steps.submit(steps).await.map_err(stopped)?
    }

    /// Writes steps that have only started, with an asynchronous commit
    /// (see `create_trace_pool`): their finished form is written again,
    /// synchronously, later. False when the lease was lost.
    pub async fn record_started(&self, steps: Vec<Step>) -> Answer<bool> {
        self.started.submit(steps).await.map_err(stopped)?
    }

    /// Writes an execution's outcome with its last steps and announces it
    /// on the events exchange; false when the lease was lost and nothing
    /// was written.
    pub async fn finish(&self, finish: Finish) -> Answer<bool> {
        self.finishes.submit(finish).await.map_err(stopped)?
    }
}

fn step_batcher(
    name: &'static str,
    pool: Pool,
    owner: Arc<str>,
) -> Batcher<Vec<Step>, Answer<bool>> {
    spawn_batcher(name, pool, move |client, items: &[Vec<Step>]| {
        let owner = owner.clone();
        async move {
            let steps: Vec<&Step> = items.iter().flatten().collect();
            let written = db_steps::record_steps(client, &owner, &steps).await?;
            Ok(items
                .iter()
                .map(|steps| steps.iter().all(|s| written.contains(&s.execution_id.0)))
                .collect())
        }
        .boxed()
    })
}

fn stopped(e: llmq_shared::batch::Stopped) -> DbError {
    DbError::Unavailable(e.to_string())
}
