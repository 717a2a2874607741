//! Pacing of loops that wait for something to come back (a broker
//! connection, the database), and the one reconnect-until-cancelled loop
//! every long-lived broker session runs in.
//!
//! Delays are backon's exponential series, capped, unbounded in count and
//! restarted after each success. Jitter stays *within* the cap: each delay
//! is drawn from the upper half of the capped step (`[d/2, d]`), so a
//! caller that configures a 1 s cap never waits longer than 1 s — backon's
//! own jitter adds up to one more delay on top, which is how an API
//! publisher once waited 8.8 s with a 5 s cap after the broker was back.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use rand::Rng;
use tokio_util::sync::CancellationToken;

pub struct Backoff {
    builder: ExponentialBuilder,
    max: Duration,
    delays: ExponentialBackoff,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        let max = max.max(min);
        let builder = ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay(max)
            .with_factor(2.0)
            .without_max_times();
        Self {
            builder,
            max,
            delays: builder.build(),
        }
    }

    /// The pacing of broker reconnects: a session is back within half a
    /// second of its broker (two connection attempts a second per session
    /// during an outage are nothing to a broker).
    pub fn reconnect() -> Self {
        Self::new(Duration::from_millis(50), Duration::from_millis(500))
    }

    /// The wait before the next try: never longer than the cap.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.delays.next().unwrap_or(self.max).min(self.max);
        step.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    /// Starts again from the shortest wait (after a success).
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

/// Why one attempt of a [`retry_until_cancelled`] loop ended with an error.
#[derive(Debug)]
pub enum Ended<E> {
    /// The session could not be opened: wait longer each time.
    Failed(E),
    /// The session was open and was lost: start again from the shortest wait.
    Lost(E),
}

/// Runs `attempt` until it returns `Ok(())` (it stopped on purpose) or
/// `cancel` fires between attempts, waiting `backoff`'s delays between
/// failed attempts and logging each one under `name`. A running attempt is
/// never dropped: it watches `cancel` itself (also while it connects, see
/// [`unless_cancelled`]), closes its session in order and returns `Ok(())`.
pub async fn retry_until_cancelled<F, Fut, E>(
    name: &str,
    cancel: &CancellationToken,
    mut backoff: Backoff,
    mut attempt: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), Ended<E>>>,
    E: Display,
{
    while !cancel.is_cancelled() {
        let error = match attempt().await {
            Ok(()) => return,
            Err(Ended::Lost(e)) => {
                backoff.reset();
                e
            }
            Err(Ended::Failed(e)) => e,
        };
        let delay = backoff.next_delay();
        tracing::warn!(session = name, error = %error, retry_in_ms = delay.as_millis() as u64, "broker session ended; reconnecting");
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// `fut`'s output, or `None` if `cancel` fires first: for the connecting
/// part of an attempt, which has no session to close yet.
pub async fn unless_cancelled<F: Future>(cancel: &CancellationToken, fut: F) -> Option<F::Output> {
    tokio::select! {
        _ = cancel.cancelled() => None,
        out = fut => Some(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_delay_stays_within_the_cap_and_restarts_after_a_reset() {
        let cap = Duration::from_secs(1);
        let mut b = Backoff::new(Duration::from_millis(100), cap);
        let first = b.next_delay();
        let later: Vec<_> = (0..200).map(|_| b.next_delay()).collect();
        assert!(
            first >= Duration::from_millis(50) && first <= Duration::from_millis(100),
            "{first:?}"
        );
        assert!(later.iter().all(|d| *d <= cap), "{later:?}");
        // Capped steps still draw from the upper half of the cap.
        assert!(
            later[20..].iter().all(|d| *d >= cap / 2),
            "{:?}",
            &later[20..]
        );
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn the_reconnect_pacing_never_waits_more_than_half_a_second() {
        let mut b = Backoff::reconnect();
        assert!((0..500).all(|_| b.next_delay() <= Duration::from_millis(500)));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_failed_attempts_until_one_stops_on_purpose() {
        let attempts = AtomicUsize::new(0);
        let cancel = CancellationToken::new();
        retry_until_cancelled("test", &cancel, Backoff::reconnect(), || async {
            match attempts.fetch_add(1, Ordering::SeqCst) {
                0 => Err(Ended::Failed("refused")),
                1 => Err(Ended::Lost("dropped")),
                _ => Ok(()),
            }
        })
        .await;
        assert_eq!(attempts.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn stops_retrying_when_cancelled() {
        let attempts = AtomicUsize::new(0);
        let cancel = CancellationToken::new();
        let retrying = retry_until_cancelled("test", &cancel, Backoff::reconnect(), || async {
            attempts.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(Ended::Failed("refused"))
        });
        assert_eq!(unless_cancelled(&cancel, async { 1 }).await, Some(1));
        let stopper = async {
            while attempts.load(Ordering::SeqCst) < 3 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            cancel.cancel();
        };
        tokio::join!(retrying, stopper);
        assert!(attempts.load(Ordering::SeqCst) >= 3);
        assert_eq!(
            unless_cancelled(&cancel, std::future::pending::<()>()).await,
            None
        );
    }
}
