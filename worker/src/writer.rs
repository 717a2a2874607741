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
use llmq_shared::db::{run_batch, steps as db_steps, DbError, Pool};
use llmq_shared::execution::ExecutionId;
use llmq_shared::queue::{ExecutionEvent, Publisher};
use llmq_shared::step::Step;

/// Items per statement at most. A full batch of finishes is a few hundred
/// rows: a statement of a few milliseconds.
const MAX_BATCH: usize = 128;
/// Statements of one kind in flight at once.
const MAX_IN_FLIGHT: usize = 2;

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
        linger: Duration,
    ) -> Self {
        let owner: Arc<str> = owner.into();
        let claims = {
            let (pool, owner) = (pool.clone(), owner.clone());
            Batcher::spawn(
                "claim",
                MAX_BATCH,
                MAX_IN_FLIGHT,
                linger,
                move |ids: Vec<ExecutionId>| {
                    let (pool, owner) = (pool.clone(), owner.clone());
                    async move {
                        run_batch(&pool, &ids, |client, ids| {
                            let owner = owner.clone();
                            async move { db::claim_executions(client, ids, &owner, lease).await }
                                .boxed()
                        })
                        .await
                    }
                },
            )
        };
        let steps = step_batcher("steps", pool.clone(), owner.clone(), linger);
        let started = step_batcher("steps_started", trace_pool, owner.clone(), linger);
        let finishes = Batcher::spawn(
            "finish",
            MAX_BATCH,
            MAX_IN_FLIGHT,
            linger,
            move |finishes: Vec<Finish>| {
                let (pool, owner, publisher) = (pool.clone(), owner.clone(), publisher.clone());
                async move {
                    let written = run_batch(&pool, &finishes, |client, finishes| {
                        let owner = owner.clone();
                        async move {
                            let refs: Vec<&Finish> = finishes.iter().collect();
                            let done = db::finish_executions(client, &owner, &refs).await?;
                            Ok(finishes.iter().map(|f| done.contains(&f.id.0)).collect())
                        }
                        .boxed()
                    })
                    .await;
                    // One events message for the outcomes this batch committed.
                    let events: Vec<ExecutionEvent> = finishes
                        .iter()
                        .zip(&written)
                        .filter(|(_, w)| matches!(w, Ok(true)))
                        .map(|(f, _)| ExecutionEvent {
                            id: f.id,
                            status: f.outcome.status,
                        })
                        .collect();
                    publisher.publish_terminal_events(&events).await;
                    written
                }
            },
        );
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
    linger: Duration,
) -> Batcher<Vec<Step>, Answer<bool>> {
    Batcher::spawn(
        name,
        MAX_BATCH,
        MAX_IN_FLIGHT,
        linger,
        move |items: Vec<Vec<Step>>| {
            let (pool, owner) = (pool.clone(), owner.clone());
            async move {
                run_batch(&pool, &items, |client, items| {
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
                .await
            }
        },
    )
}

fn stopped(e: llmq_shared::batch::Stopped) -> DbError {
    DbError::Unavailable(e.to_string())
}
