//! Pacing of loops that wait for something to come back (a broker
//! connection, the database): backon's exponential backoff with jitter,
//! capped and unbounded in count, restarted after each success.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

pub struct Backoff {
    builder: ExponentialBuilder,
    max: Duration,
    delays: ExponentialBackoff,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        let builder = ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay(max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Self {
            builder,
            max,
            delays: builder.build(),
        }
    }

    /// The wait before the next try.
    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.max)
    }

    /// Starts again from the shortest wait (after a success).
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_stay_under_the_cap_and_restart_after_a_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = b.next_delay();
        let later: Vec<_> = (0..20).map(|_| b.next_delay()).collect();
        assert!(
            first >= Duration::from_millis(100) && first < Duration::from_millis(300),
            "{first:?}"
        );
        // Jitter adds up to one more delay on top of the capped one.
        assert!(
            later.iter().all(|d| *d <= Duration::from_secs(2)),
            "{later:?}"
        );
        assert!(*later.last().unwrap() >= Duration::from_secs(1));
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(300));
    }
}
