//! Group commit: many concurrent callers' writes coalesced into one
//! statement. Each caller submits an item and awaits its own answer; a
//! background task takes whatever has queued up (up to `max_batch`) as soon
//! as one of `max_in_flight` slots is free and runs it as one batch.
//!
//! Items gather while earlier batches run, so batches grow with the load
//! and the statement count per item falls. A `linger` lets a batch wait a
//! little for company once its first item is in: at moderate rates, where
//! few items overlap a running statement, it is what keeps batches from
//! shrinking to one item each (and the CPU per item from rising). Zero
//! linger runs a lone item at once.

use std::future::Future;
use std::sync::Arc;

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};

/// The batcher's task is gone (the process is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the {0} batcher has stopped")]
pub struct Stopped(pub &'static str);

type Job<I, O> = (I, oneshot::Sender<O>);

/// Coalesces items of type `I` into batches; every item gets its own `O`.
pub struct Batcher<I, O> {
    name: &'static str,
    tx: mpsc::UnboundedSender<Job<I, O>>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Self {
            name: self.name,
            tx: self.tx.clone(),
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts the batching task. `run` receives a batch and must answer
    /// with exactly one output per item, in order. The task ends when every
    /// `Batcher` handle is dropped, after running what was submitted.
    pub fn spawn<F, Fut>(
        name: &'static str,
        max_batch: usize,
        max_in_flight: usize,
        linger: Duration,
        run: F,
    ) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<O>> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job<I, O>>();
        let run = Arc::new(run);
        let slots = Arc::new(Semaphore::new(max_in_flight.max(1)));
        let max_batch = max_batch.max(1);
        tokio::spawn(async move {
            let mut jobs = Vec::with_capacity(max_batch);
            loop {
                // Wait for a free slot first: whatever queues up meanwhile
                // goes into this batch.
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                if rx.recv_many(&mut jobs, max_batch).await == 0 {
                    return;
                }
                if !linger.is_zero() {
                    let until = tokio::time::Instant::now() + linger;
                    while jobs.len() < max_batch {
                        let room = max_batch - jobs.len();
                        match tokio::time::timeout_at(until, rx.recv_many(&mut jobs, room)).await {
                            Ok(n) if n > 0 => {}
                            _ => break, // time is up, or every handle is gone
                        }
                    }
                }
                // A caller that stopped waiting (its request timed out and
                // was answered 503) must not have its item written later.
                jobs.retain(|(_, answer)| !answer.is_closed());
                if jobs.is_empty() {
                    continue;
                }
                let (items, answers): (Vec<I>, Vec<oneshot::Sender<O>>) = jobs.drain(..).unzip();
                metrics::histogram!(crate::metrics::DB_BATCH_SIZE, "batch" => name)
                    .record(items.len() as f64);
                let run = run.clone();
                tokio::spawn(async move {
                    let outputs = run(items).await;
                    debug_assert_eq!(outputs.len(), answers.len(), "{name}: one output per item");
                    for (answer, output) in answers.into_iter().zip(outputs) {
                        // The caller may have gone away (cancelled); fine.
                        let _ = answer.send(output);
                    }
                    drop(slot);
                });
            }
        });
        Self { name, tx }
    }

    /// Queues `item` for the next batch and waits for its output. Dropping
    /// the future withdraws the item if its batch has not started yet; once
    /// it has, the item's write happens whether anyone waits or not.
    pub async fn submit(&self, item: I) -> Result<O, Stopped> {
        let (answer, output) = oneshot::channel();
        self.tx
            .send((item, answer))
            .map_err(|_| Stopped(self.name))?;
        output.await.map_err(|_| Stopped(self.name))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn every_item_gets_its_own_output_and_batches_form_under_load() {
        let batches = Arc::new(AtomicUsize::new(0));
        let counted = batches.clone();
        let batcher = Batcher::spawn("test", 64, 1, Duration::ZERO, move |items: Vec<u32>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                items.into_iter().map(|i| i * 2).collect::<Vec<_>>()
            }
        });
        let calls: Vec<_> = (0..200u32)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { (i, b.submit(i).await.unwrap()) })
            })
            .collect();
        for call in calls {
            let (i, out) = call.await.unwrap();
            assert_eq!(out, i * 2);
        }
        let n = batches.load(Ordering::SeqCst);
        assert!(
            (4..=20).contains(&n),
            "200 concurrent items at most 64 per batch, one batch at a time: {n} batches"
        );
    }

    #[tokio::test]
    async fn a_lone_item_runs_without_waiting_for_company() {
        let batcher = Batcher::spawn(
            "test",
            64,
            2,
            Duration::ZERO,
            |items: Vec<u32>| async move { items },
        );
        let out = tokio::time::timeout(Duration::from_secs(1), batcher.submit(7))
            .await
            .expect("a single item is not held back")
            .unwrap();
        assert_eq!(out, 7);
    }

    #[tokio::test(start_paused = true)]
    async fn an_item_whose_caller_gave_up_before_its_batch_is_never_run() {
        let ran = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = ran.clone();
        let batcher = Batcher::spawn("test", 64, 1, Duration::ZERO, move |items: Vec<u32>| {
            seen.lock().unwrap().extend(items.iter().copied());
            async move {
                // A slow statement: later items wait behind it.
                tokio::time::sleep(Duration::from_millis(100)).await;
                items
            }
        });
        let first = tokio::spawn({
            let b = batcher.clone();
            async move { b.submit(1).await.unwrap() }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        // Gives up (a request deadline) while the first batch still runs.
        let gave_up = tokio::time::timeout(Duration::from_millis(20), batcher.submit(2)).await;
        assert!(gave_up.is_err());
        assert_eq!(first.await.unwrap(), 1);
        assert_eq!(batcher.submit(3).await.unwrap(), 3);
        assert_eq!(*ran.lock().unwrap(), vec![1, 3], "item 2 was withdrawn");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lingering_batch_gathers_items_that_arrive_within_the_linger() {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let batcher = Batcher::spawn(
            "test",
            64,
            1,
            Duration::from_millis(5),
            move |items: Vec<u32>| {
                seen.lock().unwrap().push(items.len());
                async move { items }
            },
        );
        let calls: Vec<_> = (0..3u32)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(u64::from(i))).await;
                    b.submit(i).await.unwrap()
                })
            })
            .collect();
        for (i, call) in calls.into_iter().enumerate() {
            assert_eq!(call.await.unwrap(), i as u32);
        }
        assert_eq!(
            *sizes.lock().unwrap(),
            vec![3],
            "items 0, 1 and 2 ms apart share one batch"
        );
    }
}
