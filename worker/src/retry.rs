//! Retry decisions, made here and nowhere else: from an error's class and
//! the attempt number to "retry after this delay" or "give up". Timing is
//! backon's exponential backoff with jitter and a cap; a provider's
//! `Retry-After` is honoured when it asks for longer.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use llmq_shared::config::WorkerSettings;
use llmq_shared::prompt::PromptLimits;

#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub max: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    RetryAfter(Duration),
    GiveUp,
}

impl RetryPolicy {
    /// The worker's defaults, overridden by the prompt version's limits.
    pub fn new(defaults: &WorkerSettings, limits: &PromptLimits) -> Self {
        Self {
            max_attempts: limits.max_attempts.unwrap_or(defaults.max_attempts).max(1),
            base: Duration::from_millis(limits.retry_base_ms.unwrap_or(defaults.retry_base_ms)),
            max: Duration::from_millis(limits.retry_max_ms.unwrap_or(defaults.retry_max_ms)),
        }
    }

    /// What to do after attempt number `attempt` (1-based) failed.
    pub fn decide(&self, attempt: u32, retryable: bool, retry_after: Option<Duration>) -> Decision {
        if !retryable || attempt >= self.max_attempts {
            return Decision::GiveUp;
        }
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.base)
            .with_max_delay(self.max)
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(attempt as usize)
            .build()
            .nth(attempt.saturating_sub(1) as usize)
            .unwrap_or(self.max);
        Decision::RetryAfter(
            retry_after.map_or(backoff, |asked| asked.max(backoff).min(self.max.max(asked))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
        }
    }

    #[test]
    fn terminal_errors_and_the_last_attempt_give_up() {
        assert_eq!(policy().decide(1, false, None), Decision::GiveUp);
        assert_eq!(policy().decide(4, true, None), Decision::GiveUp);
    }

    #[test]
    fn delays_grow_with_jitter_and_stay_under_the_cap() {
        for attempt in 1..4 {
            let Decision::RetryAfter(d) = policy().decide(attempt, true, None) else {
                panic!("should retry")
            };
            let floor = Duration::from_millis(100) * 2u32.pow(attempt - 1);
            assert!(
                d >= floor.min(Duration::from_secs(2)),
                "attempt {attempt}: {d:?}"
            );
            assert!(d <= Duration::from_secs(4), "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn retry_after_is_honoured_when_longer() {
        let Decision::RetryAfter(d) = policy().decide(1, true, Some(Duration::from_secs(3))) else {
            panic!()
        };
        assert_eq!(d, Duration::from_secs(3));
    }

    #[test]
    fn prompt_limits_override_the_defaults() {
        let limits = PromptLimits {
            max_attempts: Some(2),
            ..Default::default()
        };
        assert_eq!(
            RetryPolicy::new(&WorkerSettings::default(), &limits).max_attempts,
            2
        );
    }
}
