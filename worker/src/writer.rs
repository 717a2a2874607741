//! The worker's writes to Postgres, group-committed across executions.
//!
//! Hundreds of executions run at once in one worker, and each makes the
//! same three writes: claim, "generate started" (with the render step),
//! and the outcome with its last steps. Written one execution at a time
//! they cost a statement and a commit each; here concurrent executions'
//! writes of one kind share a statement (see `llmq_shared::batch`). Every
//! row is still fenced by this worker's lease, and each execution gets its
//! own answer: claimed or not, written or lease lost.
//!
//! The rarer writes of a run (a retry's give-back, a shutdown's lease
//! release, a cancel no worker acts on) go through here too, one statement
//! each, so the pipeline never writes past the writer.
//!
//! Each statement numbers the event log entries of what it changes (see
//! `llmq_shared::db::events`); after it commits, the writer publishes them
//! as one events message per statement, never one per execution.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;

use llmq_shared::batch::Batcher;
use llmq_shared::db::executions::{self as db, Finish};
use llmq_shared::db::leases::{self, Claim};
use llmq_shared::db::{spawn_batcher, steps as db_steps, DbError, Pool};
use llmq_shared::events::ExecutionEvent;
use llmq_shared::execution::{ErrorInfo, ExecutionId};
use llmq_shared::queue::Publisher;
use llmq_shared::step::Step;

pub type Answer<T> = Result<T, DbError>;

pub struct Writer {
    pool: Pool,
    publisher: Arc<Publisher>,
    owner: Arc<str>,
    republish_after: Duration,
    claims: Batcher<ExecutionId, Answer<Claim>>,
    steps: Batcher<Vec<Step>, Answer<bool>>,
    started: Batcher<Vec<Step>, Answer<bool>>,
    finishes: Batcher<Finish, Answer<bool>>,
    deferrals: Batcher<(ExecutionId, Duration), Answer<bool>>,
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
        republish_after: Duration,
    ) -> Self {
        let owner: Arc<str> = owner.into();
        let claims = {
            let (owner, publisher) = (owner.clone(), publisher.clone());
            spawn_batcher("claim", pool.clone(), move |client, ids| {
                let (owner, publisher) = (owner.clone(), publisher.clone());
                async move {
                    let (claims, events) =
                        leases::claim_executions(client, ids, &owner, lease).await?;
                    publisher.publish_events(&[], events).await;
                    Ok(claims)
                }
                .boxed()
            })
        };
        let steps = step_batcher("steps", pool.clone(), owner.clone(), publisher.clone());
        let started = step_batcher(
            "steps_started",
            trace_pool,
            owner.clone(),
            publisher.clone(),
        );
        let finishes = spawn_batcher("finish", pool.clone(), {
            let (owner, publisher) = (owner.clone(), publisher.clone());
            move |client, finishes: &[Finish]| {
                let (owner, publisher) = (owner.clone(), publisher.clone());
                async move {
                    let refs: Vec<&Finish> = finishes.iter().collect();
                    let done = db::finish_executions(client, &owner, &refs).await?;
                    // One events message for the outcomes this statement
                    // committed and the log events it numbered.
                    let events: Vec<ExecutionEvent> = finishes
                        .iter()
                        .filter(|f| done.contains(&f.id.0))
                        .map(|f| ExecutionEvent {
                            id: f.id,
                            status: f.outcome.status,
                        })
                        .collect();
                    let steps: Vec<&Step> = finishes.iter().flat_map(|f| &f.steps).collect();
                    publisher.publish_events(&events, done.events(&steps)).await;
                    Ok(finishes.iter().map(|f| done.contains(&f.id.0)).collect())
                }
                .boxed()
            }
        });
        let deferrals = spawn_batcher(
            "defer",
            pool.clone(),
            |client, items: &[(ExecutionId, Duration)]| {
                async move {
                    let deferred = db::defer_queued(client, items).await?;
                    Ok(items
                        .iter()
                        .map(|(id, _)| deferred.contains(&id.0))
                        .collect())
                }
                .boxed()
            },
        );
        Self {
            pool,
            publisher,
            owner,
            republish_after,
            claims,
            steps,
            started,
            finishes,
            deferrals,
        }
    }

    /// Takes the lease on `id`.
    pub async fn claim(&self, id: ExecutionId) -> Answer<Claim> {
        self.claims.submit(id).await.map_err(stopped)?
    }

    /// Puts a queued execution back for `delay` without claiming it (see
    /// `executions::defer_queued`); false when it was not queued.
    pub async fn defer_queued(&self, id: ExecutionId, delay: Duration) -> Answer<bool> {
        self.deferrals.submit((id, delay)).await.map_err(stopped)?
    }

    /// Writes steps of one execution; false when the lease was lost.
    pub async fn record(&self, steps: Vec<Step>) -> Answer<bool> {
        self.steps.submit(steps).await.map_err(stopped)?
    }

    /// Writes steps that have only started, with an asynchronous commit
    /// (see `create_trace_pool`): their finished form is written again,
    /// synchronously, later. False when the lease was lost. Queued at the
    /// call (see `Batcher::enqueue`): a caller may start what the rows
    /// announce and await the answer after.
    pub fn record_started(
        &self,
        steps: Vec<Step>,
    ) -> impl std::future::Future<Output = Answer<bool>> + Send + 'static {
        let answer = self.started.enqueue(steps);
        async move { answer.await.map_err(stopped)? }
    }

    /// Writes an execution's outcome with its last steps and announces it
    /// on the events exchange; false when the lease was lost and nothing
    /// was written.
    pub async fn finish(&self, finish: Finish) -> Answer<bool> {
        self.finishes.submit(finish).await.map_err(stopped)?
    }
}

impl Writer {
    /// Finishes a cancel request that no live worker will act on, and
    /// announces it; false when there was nothing to finish.
    pub async fn cancel_unclaimed(&self, id: ExecutionId) -> Answer<bool> {
        let client = self.pool.get().await?;
        let events = db::cancel_unclaimed(&client, id).await?;
        if events.is_empty() {
            return Ok(false);
        }
        let terminal = ExecutionEvent {
            id,
            status: llmq_shared::execution::ExecutionStatus::Cancelled,
        };
        self.publisher.publish_events(&[terminal], events).await;
        Ok(true)
    }

    /// Commits `steps` of `id` and keeps a paid result on its row (see
    /// `executions::checkpoint`); false when the lease was lost. One
    /// statement, only for executions where a step that can fail follows.
    pub async fn checkpoint(
        &self,
        id: ExecutionId,
        output: &serde_json::Value,
        usage: &llmq_shared::execution::Usage,
        steps: Vec<Step>,
    ) -> Answer<bool> {
        let client = self.pool.get().await?;
        let refs: Vec<&Step> = steps.iter().collect();
        let logged = db::checkpoint(&client, &self.owner, id, output, usage, &refs).await?;
        self.publisher
            .publish_events(&[], logged.events(&refs))
            .await;
        Ok(logged.contains(&id.0))
    }

    /// Gives the execution back for `delay` after a retryable error; false
    /// when the lease was lost.
    pub async fn schedule_retry(
        &self,
        id: ExecutionId,
        delay: Duration,
        error: &ErrorInfo,
    ) -> Answer<bool> {
        let client = self.pool.get().await?;
        let logged = db::schedule_retry(&client, id, &self.owner, delay, error).await?;
        self.publisher.publish_events(&[], logged.events(&[])).await;
        Ok(logged.contains(&id.0))
    }

    /// Gives the execution back for `delay` because a provider limit had
    /// no room (the attempt is not counted); false when the lease was lost.
    pub async fn defer_claimed(
        &self,
        id: ExecutionId,
        delay: Duration,
        error: &ErrorInfo,
    ) -> Answer<bool> {
        let client = self.pool.get().await?;
        let logged = db::defer_claimed(&client, id, &self.owner, delay, error).await?;
        self.publisher.publish_events(&[], logged.events(&[])).await;
        Ok(logged.contains(&id.0))
    }

    /// Gives leases back (shutdown) so redelivered messages run at once;
    /// the outbox mark covers a message the broker lost.
    pub async fn release(&self, ids: &[uuid::Uuid]) -> Answer<u64> {
        let client = self.pool.get().await?;
        let logged =
            leases::release_leases(&client, ids, &self.owner, self.republish_after).await?;
        self.publisher.publish_events(&[], logged.events(&[])).await;
        Ok(logged.written.len() as u64)
    }

    /// The steps earlier attempts of an execution left (a read, here so a
    /// run needs nothing but the writer).
    pub async fn earlier_steps(&self, tenant: &str, id: ExecutionId) -> Answer<Vec<Step>> {
        let client = self.pool.get().await?;
        db_steps::list_steps(&client, tenant, id).await
    }
}

fn step_batcher(
    name: &'static str,
    pool: Pool,
    owner: Arc<str>,
    publisher: Arc<Publisher>,
) -> Batcher<Vec<Step>, Answer<bool>> {
    spawn_batcher(name, pool, move |client, items: &[Vec<Step>]| {
        let (owner, publisher) = (owner.clone(), publisher.clone());
        async move {
            let steps: Vec<&Step> = items.iter().flatten().collect();
            let written = db_steps::record_steps(client, &owner, &steps).await?;
            publisher.publish_events(&[], written.events(&steps)).await;
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
