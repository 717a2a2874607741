//! Group commit: many concurrent callers' writes coalesced into one
//! statement. Each caller submits an item and awaits its own answer; a
//! background task takes whatever has queued up (up to `max_batch`) as soon
//! as one of `max_in_flight` slots is free and runs it as one batch.
//!
//! At low load no timer is involved. When no batch is running, an item
//! goes out the moment it arrives, alone: nothing waits for company. Only
//! a busy batcher (its previous batch had company) lets its next batch
//! wait up to a short linger (`spawn_with_linger`; 2 ms for the database
//! batches) for more items: at 2,500 writes/s that halves the statements
//! and lowers Postgres's CPU per execution, where waiting costs least. While
//! a batch runs, the next one forms from what queues behind it, and starts
//! when the running one ends, or earlier, in a second slot, once a quarter
//! of a full batch has queued (enough company to be worth a statement of
//! its own). So batches grow with the load and the statement count per
//! item falls on its own, without a second slot splitting the queue into
//! one-item statements at saturation (measured: that cost a third of the
//! throughput at 0 ms).
//! Every batch records its size (`llmq_db_batch_size`) and every item the
//! time it queued before its batch started (`llmq_db_batch_wait_seconds`).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use tokio::time::Instant;

/// The batcher's task is gone (the process is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the {0} batcher has stopped")]
pub struct Stopped(pub &'static str);

/// An item, where its answer goes, and when it was queued.
type Job<I, O> = (I, oneshot::Sender<O>, Instant);

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
    pub fn spawn<F, Fut>(name: &'static str, max_batch: usize, max_in_flight: usize, run: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<O>> + Send + 'static,
    {
        Self::spawn_with_linger(name, max_batch, max_in_flight, Duration::ZERO, run)
    }

    /// Like [`Self::spawn`], and under load a batch waits up to `linger`
    /// for company before it starts. Under load means the previous batch
    /// had company: a lone item after a lone item still goes out at once,
    /// so only a busy batcher pays the wait, and it buys fewer, larger
    /// statements exactly when the database is busiest.
    pub fn spawn_with_linger<F, Fut>(
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
        // A second batch beside a running one needs this much company.
        let company = (max_batch / 4).max(1);
        let running = Arc::new(AtomicUsize::new(0));
        let ended = Arc::new(Notify::new());
        tokio::spawn(async move {
            let mut jobs = Vec::with_capacity(max_batch);
            let mut busy = false;
            loop {
                // Wait for a free slot first: whatever queues up meanwhile
                // goes into this batch. With a slot free, `recv_many` hands
                // over the first item as soon as it arrives.
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                if rx.recv_many(&mut jobs, max_batch).await == 0 {
                    return;
                }
                // Beside a running batch, gather until it ends or enough
                // company has queued. `recv_many` is cancel-safe.
                let mut open = true;
                while open && jobs.len() < company && running.load(Ordering::Acquire) > 0 {
                    let room = max_batch - jobs.len();
                    tokio::select! {
                        _ = ended.notified() => {}
                        n = rx.recv_many(&mut jobs, room) => open = n > 0,
                    }
                }
                // Under load, wait a little for company (see spawn_with_linger).
                if busy && !linger.is_zero() && jobs.len() < max_batch {
                    let until = Instant::now() + linger;
                    while jobs.len() < max_batch {
                        let room = max_batch - jobs.len();
                        tokio::select! {
                            _ = tokio::time::sleep_until(until) => break,
                            n = rx.recv_many(&mut jobs, room) => if n == 0 { break },
                        }
                    }
                }
                // A caller that stopped waiting (its request timed out and
                // was answered 503) must not have its item written later.
                jobs.retain(|(_, answer, _)| !answer.is_closed());
                if jobs.is_empty() {
                    continue;
                }
                let started = Instant::now();
                let wait = metrics::histogram!(crate::metrics::DB_BATCH_WAIT, "batch" => name);
                let mut items = Vec::with_capacity(jobs.len());
                let mut answers = Vec::with_capacity(jobs.len());
                for (item, answer, queued) in jobs.drain(..) {
                    wait.record(started.duration_since(queued).as_secs_f64());
                    items.push(item);
                    answers.push(answer);
                }
                metrics::histogram!(crate::metrics::DB_BATCH_SIZE, "batch" => name)
                    .record(items.len() as f64);
                busy = items.len() > 1;
                let run = run.clone();
                let (running, ended) = (running.clone(), ended.clone());
                running.fetch_add(1, Ordering::AcqRel);
                tokio::spawn(async move {
                    let outputs = run(items).await;
                    debug_assert_eq!(outputs.len(), answers.len(), "{name}: one output per item");
                    for (answer, output) in answers.into_iter().zip(outputs) {
                        // The caller may have gone away (cancelled); fine.
                        let _ = answer.send(output);
                    }
                    drop(slot);
                    running.fetch_sub(1, Ordering::AcqRel);
                    // A stored permit wakes the gathering loop at most once
                    // spuriously; it re-checks `running`.
                    ended.notify_one();
                });
            }
        });
        Self { name, tx }
    }

    /// Queues `item` for the next batch and waits for its output. Dropping
    /// the future withdraws the item if its batch has not started yet; once
    /// it has, the item's write happens whether anyone waits or not.
    pub async fn submit(&self, item: I) -> Result<O, Stopped> {
        self.enqueue(item).await
    }

    /// Queues `item` now and returns its answer to await later: the item
    /// is in line from this call on, before anything the caller does next.
    /// As with `submit`, dropping the answer before the item's batch
    /// starts takes the item out of it.
    pub fn enqueue(&self, item: I) -> impl Future<Output = Result<O, Stopped>> + Send + 'static {
        let (answer, output) = oneshot::channel();
        let name = self.name;
        let sent = self.tx.send((item, answer, Instant::now())).is_ok();
        async move {
            if !sent {
                return Err(Stopped(name));
            }
            output.await.map_err(|_| Stopped(name))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    /// Each batch's start and items, in order.
    type Log = Arc<Mutex<Vec<(Instant, Vec<u32>)>>>;

    /// A batcher whose batches take `statement` (paused time) and that
    /// records each batch's items and when it started.
    fn recording(
        max_batch: usize,
        max_in_flight: usize,
        statement: Duration,
    ) -> (Batcher<u32, u32>, Log) {
        recording_with_linger(max_batch, max_in_flight, statement, Duration::ZERO)
    }

    fn recording_with_linger(
        max_batch: usize,
        max_in_flight: usize,
        statement: Duration,
        linger: Duration,
    ) -> (Batcher<u32, u32>, Log) {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let seen = batches.clone();
        let batcher = Batcher::spawn_with_linger(
            "test",
            max_batch,
            max_in_flight,
            linger,
            move |items: Vec<u32>| {
                seen.lock().unwrap().push((Instant::now(), items.clone()));
                async move {
                    tokio::time::sleep(statement).await;
                    items.into_iter().map(|i| i * 2).collect::<Vec<_>>()
                }
            },
        );
        (batcher, batches)
    }

    fn submit_at(
        batcher: &Batcher<u32, u32>,
        after: Duration,
        item: u32,
    ) -> tokio::task::JoinHandle<u32> {
        let b = batcher.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            b.submit(item).await.unwrap()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_item_is_dispatched_without_waiting() {
        let (batcher, batches) = recording(64, 1, Duration::from_millis(3));
        let submitted = Instant::now();
        assert_eq!(batcher.submit(7).await.unwrap(), 14);
        let batches = batches.lock().unwrap();
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].1, vec![7]);
        // Paused time moves only when every task waits on a timer: a
        // linger (or any sleep before the batch) would show up here.
        assert_eq!(
            batches[0].0, submitted,
            "the batch started the instant its item came"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_busy_batcher_lingers_for_company() {
        let ms = Duration::from_millis;
        let (batcher, batches) = recording_with_linger(64, 1, ms(10), ms(5));
        let start = Instant::now();
        let calls: Vec<_> = [
            (0, 0),   // idle: at once
            (100, 1), // after a lone batch: at once
            (200, 4), // at once; 5 and 2 queue behind it
            (203, 5),
            (205, 2), // [5, 2] starts when [4] ends: [4] was lone
            (222, 3), // after [5, 2], a batch with company: waits 5 ms
            (225, 6), // and takes 6 along
            (300, 7), // after [3, 6]: waits 5 ms, alone
            (400, 8), // after a lone batch again: at once
        ]
        .into_iter()
        .map(|(at, item)| submit_at(&batcher, ms(at), item))
        .collect();
        for call in calls {
            call.await.unwrap();
        }
        assert_eq!(
            shape(&batches, start),
            vec![
                (0, vec![0]),
                (100, vec![1]),
                (200, vec![4]),
                (210, vec![5, 2]),
                (227, vec![3, 6]),
                (305, vec![7]),
                (400, vec![8]),
            ],
        );
    }

    #[tokio::test(start_paused = true)]
    async fn items_arriving_while_a_batch_runs_form_the_next_batch() {
        let (batcher, batches) = recording(64, 1, Duration::from_millis(100));
        let start = Instant::now();
        let calls: Vec<_> = [0u64, 10, 20, 30]
            .into_iter()
            .zip(0u32..)
            .map(|(ms, i)| submit_at(&batcher, Duration::from_millis(ms), i))
            .collect();
        for (i, call) in calls.into_iter().enumerate() {
            assert_eq!(
                call.await.unwrap(),
                2 * i as u32,
                "item {i} got its own output"
            );
        }
        let batches = batches.lock().unwrap();
        let items: Vec<_> = batches.iter().map(|(_, items)| items.clone()).collect();
        assert_eq!(items, vec![vec![0], vec![1, 2, 3]]);
        assert_eq!(batches[0].0, start, "the first item went out at once");
        assert_eq!(
            batches[1].0,
            start + Duration::from_millis(100),
            "the next batch starts when the first one's slot frees, not later"
        );
    }

    /// Each batch as (milliseconds after `start`, items).
    fn shape(batches: &Log, start: Instant) -> Vec<(u128, Vec<u32>)> {
        batches
            .lock()
            .unwrap()
            .iter()
            .map(|(at, items)| (at.duration_since(start).as_millis(), items.clone()))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn beside_a_running_batch_a_few_items_wait_for_it_to_end() {
        let (batcher, batches) = recording(64, 2, Duration::from_millis(100));
        let start = Instant::now();
        let calls: Vec<_> = [0u64, 10, 20, 30]
            .into_iter()
            .zip(0u32..)
            .map(|(ms, i)| submit_at(&batcher, Duration::from_millis(ms), i))
            .collect();
        for call in calls {
            call.await.unwrap();
        }
        assert_eq!(
            shape(&batches, start),
            vec![(0, vec![0]), (100, vec![1, 2, 3])],
            "three items are not worth a second statement: they go when the first ends"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn enough_company_takes_the_second_slot_at_once() {
        // A quarter of a batch of 8 is 2 items.
        let (batcher, batches) = recording(8, 2, Duration::from_millis(100));
        let start = Instant::now();
        let calls: Vec<_> = [0u64, 10, 10]
            .into_iter()
            .zip(0u32..)
            .map(|(ms, i)| submit_at(&batcher, Duration::from_millis(ms), i))
            .collect();
        for call in calls {
            call.await.unwrap();
        }
        assert_eq!(shape(&batches, start), vec![(0, vec![0]), (10, vec![1, 2])]);
    }

    #[tokio::test(start_paused = true)]
    async fn under_saturation_batches_fill_up_to_the_maximum() {
        let (batcher, batches) = recording(64, 1, Duration::from_millis(20));
        let calls: Vec<_> = (0..200u32)
            .map(|i| submit_at(&batcher, Duration::ZERO, i))
            .collect();
        for (i, call) in calls.into_iter().enumerate() {
            assert_eq!(call.await.unwrap(), 2 * i as u32);
        }
        let sizes: Vec<_> = batches
            .lock()
            .unwrap()
            .iter()
            .map(|(_, items)| items.len())
            .collect();
        assert_eq!(
            sizes.iter().sum::<usize>(),
            200,
            "every item ran once: {sizes:?}"
        );
        assert!(
            sizes.iter().filter(|&&n| n == 64).count() >= 2,
            "items queued behind a running batch fill whole batches: {sizes:?}"
        );
        assert!(sizes.iter().all(|&n| n <= 64), "{sizes:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_item_whose_caller_gave_up_before_its_batch_is_never_run() {
        let (batcher, batches) = recording(64, 1, Duration::from_millis(100));
        let first = submit_at(&batcher, Duration::ZERO, 1);
        tokio::time::sleep(Duration::from_millis(10)).await;
        // Gives up (a request deadline) while the first batch still runs.
        let gave_up = tokio::time::timeout(Duration::from_millis(20), batcher.submit(2)).await;
        assert!(gave_up.is_err());
        assert_eq!(first.await.unwrap(), 2);
        assert_eq!(batcher.submit(3).await.unwrap(), 6);
        let ran: Vec<_> = batches
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, items)| items.clone())
            .collect();
        assert_eq!(ran, vec![1, 3], "item 2 was withdrawn");
    }
}
