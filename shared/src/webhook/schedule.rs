//! How a receiver's answer is judged, and when the next attempt is due.
//! The one place these decisions are made: 2xx delivered; 410 gone (the
//! endpoint is disabled); 429, 502, 503 and 504 retried no sooner than
//! their `Retry-After`; anything else, 3xx included (redirects are not
//! followed), or no answer at all, retried on the schedule with jitter.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

/// What an attempt's answer means for the delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// 410: the receiver asks never to be called again.
    Gone,
    /// Try again: after `retry_after` when the receiver said so.
    Retry {
        retry_after: Option<Duration>,
    },
}

/// Judges an answer (`None`: no answer, a timeout or a connection error).
pub fn judge(status: Option<u16>, retry_after: Option<&str>, now: DateTime<Utc>) -> Verdict {
    match status {
        Some(200..=299) => Verdict::Delivered,
        Some(410) => Verdict::Gone,
        Some(429 | 502 | 503 | 504) => Verdict::Retry {
            retry_after: retry_after.and_then(|v| parse_retry_after(v, now)),
        },
        _ => Verdict::Retry { retry_after: None },
    }
}

/// `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// The delays before each attempt (`webhooks.retry_schedule_ms`).
#[derive(Clone, Debug)]
pub struct Schedule {
    delays: Vec<Duration>,
}

/// The longest wait a `Retry-After` can impose.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

impl Schedule {
    pub fn from_ms(delays: &[u64]) -> Self {
        let mut delays: Vec<Duration> =
            delays.iter().map(|ms| Duration::from_millis(*ms)).collect();
        if delays.is_empty() {
            delays.push(Duration::ZERO);
        }
        Self { delays }
    }

    pub fn attempts(&self) -> usize {
        self.delays.len()
    }

    /// The wait before the next attempt once `done` attempts of this
    /// round failed, or None when the schedule is used up (the delivery
    /// fails). A `Retry-After` replaces the scheduled delay (up to a day);
    /// the scheduled one gets up to a fifth of jitter either way.
    pub fn next_delay(&self, done: usize, retry_after: Option<Duration>) -> Option<Duration> {
        let scheduled = *self.delays.get(done)?;
        if let Some(after) = retry_after {
            return Some(after.min(MAX_RETRY_AFTER));
        }
        let factor = rand::rng().random_range(0.8..=1.2);
        Some(scheduled.mul_f64(factor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_judged_by_status() {
        let now = Utc::now();
        assert_eq!(judge(Some(204), None, now), Verdict::Delivered);
        assert_eq!(judge(Some(410), None, now), Verdict::Gone);
        assert_eq!(
            judge(Some(301), None, now),
            Verdict::Retry { retry_after: None }
        );
        assert_eq!(judge(None, None, now), Verdict::Retry { retry_after: None });
        assert_eq!(
            judge(Some(503), Some("7"), now),
            Verdict::Retry {
                retry_after: Some(Duration::from_secs(7))
            }
        );
        // Only the statuses that mean "later" are given their Retry-After.
        assert_eq!(
            judge(Some(500), Some("7"), now),
            Verdict::Retry { retry_after: None }
        );
        let date = (now + chrono::Duration::seconds(30)).to_rfc2822();
        let Verdict::Retry {
            retry_after: Some(d),
        } = judge(Some(429), Some(&date), now)
        else {
            panic!("429 with a date");
        };
        assert!(d <= Duration::from_secs(30) && d >= Duration::from_secs(28));
    }

    #[test]
    fn the_schedule_ends_and_jitters_within_a_fifth() {
        let s = Schedule::from_ms(&[0, 1000, 5000]);
        assert_eq!(s.next_delay(0, None), Some(Duration::ZERO));
        let d = s.next_delay(1, None).unwrap();
        assert!(d >= Duration::from_millis(800) && d <= Duration::from_millis(1200));
        assert_eq!(
            s.next_delay(1, Some(Duration::from_secs(9))),
            Some(Duration::from_secs(9))
        );
        assert_eq!(s.next_delay(3, None), None);
    }
}
